"""The targets by the names users give them: the host, then each Cortex-M board on QEMU."""

from __future__ import annotations

from onnx2cmsis.errors import OptionError
from onnx2cmsis.targets.host import HostTarget
from onnx2cmsis.targets.interface import Target
from onnx2cmsis.targets.qemu import TARGETS, QemuTarget

TARGET_NAMES: tuple[str, ...] = ("host", *TARGETS)


def target_named(name: str) -> Target:
    """The target called `name` ("host", "m0plus", "m4", "m7", "m55")."""
    if name == "host":
        return HostTarget()
    if name in TARGETS:
        return QemuTarget(name)
    raise OptionError(f"unknown {{opt:targets}} {name!r} (choose from {', '.join(TARGET_NAMES)})")
