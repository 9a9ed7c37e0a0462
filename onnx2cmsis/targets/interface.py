"""What every place that runs generated C offers: the host (gcc, ctypes) and each Cortex-M board on
QEMU. `verify` builds, runs and counts through this interface only, so a new target is one more
implementation, not one more branch in the driver.

A target builds one conversion (with its stream push when the conversion streams), runs N samples
(and the stream's pushes), and reports the figures it measures; a figure it cannot measure (the
host counts no instructions) is None, never a guess.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np

from onnx2cmsis.errors import ToolchainError


class DoesNotFit(ToolchainError):
    """The models do not fit the board's flash or RAM (e.g. the micro:bit's 16 KB)."""


@dataclass(frozen=True)
class Counts:
    """What a target measured while it ran; None where it does not measure it."""

    instructions: np.ndarray | None = None  # per sample: exact instructions of one NAME_invoke
    stack_bytes: np.ndarray | None = None  # per sample: stack NAME_invoke used
    push_instructions: np.ndarray | None = None  # per push: instructions of one NAME_stream_push
    flash_bytes: int | None = None  # the image: code + constants
    ram_bytes: int | None = None  # the image's static RAM: data + bss (the arena is in bss)


@dataclass(frozen=True)
class Ran:
    """One run's outputs: (N, output elements) codes; for a streaming build also each push's status
    (1: an output is ready) and the outputs of the pushes that reported one, in order."""

    outputs: np.ndarray
    counts: Counts
    push_statuses: list[int] | None = None
    pushed: np.ndarray | None = None


@runtime_checkable
class Built(Protocol):
    """One conversion compiled for one target, ready to run."""

    def run(self, samples: np.ndarray, pushes: np.ndarray | None = None) -> Ran:
        """Every sample through NAME_invoke; with `pushes` ((pushes, HOP * channels) codes, a build
        made with `stream=True`), each through NAME_stream_push from a reset state."""
        ...


@runtime_checkable
class Target(Protocol):
    """A place generated C runs: its name as users write it, the machine it stands for, and what
    its build step does (the progress phrase)."""

    name: str
    machine: str  # where it runs ("microbit"): what a model too big for its memory does not fit
    building: str  # what the build step does, for progress: "building", "building ... running on QEMU"

    def build(self, conv, workdir: Path, stream: bool = False) -> Built:
        """`conv` (an api.Conversion) compiled in `workdir`, with its stream push when `stream`.
        Raises DoesNotFit when the model does not fit the machine's memory."""
        ...
