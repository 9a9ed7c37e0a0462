"""What `verify` runs for a streaming conversion: the data's windows laid end to end as one stream,
pushed HOP steps at a time, each reported output checked against the integer reference on the same
window (the reference is checked against tflite-micro on the data itself)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx2cmsis.api import Conversion


@dataclass
class StreamRun:
    stream: np.ndarray  # (steps, channels) time-major input codes
    hop: int
    ready: list[int]  # the pushes that report an output
    windows: np.ndarray  # (len(ready), input size): the model input each of them stands for
    want: np.ndarray  # the reference's output on each

    def pushes(self) -> np.ndarray:
        """(pushes, HOP * channels): what each push gets."""
        return self.stream[: len(self.stream) // self.hop * self.hop].reshape(-1, self.hop * self.stream.shape[1])


def stream_windows(conv: Conversion, stream: np.ndarray) -> tuple[list[int], np.ndarray]:
    """For a (steps, channels) time-major stream pushed HOP steps at a time: which pushes report an
    output (WINDOW steps have arrived), and the model input each stands for (the last WINDOW steps,
    in the model's own layout)."""
    s = conv.report["stream"]
    hop, window = s["hop"], s["window"]
    ready = [k for k in range(len(stream) // hop) if (k + 1) * hop >= window]
    cut = [stream[(k + 1) * hop - window:(k + 1) * hop] for k in ready]
    return ready, np.stack([w.reshape(-1) if s["time_major"] else w.T.reshape(-1) for w in cut])


def stream_run(conv: Conversion, xq: np.ndarray, min_outputs: int = 50) -> StreamRun:
    """The samples `xq` (model input codes) end to end, repeated until the stream gives `min_outputs`."""
    s = conv.report["stream"]
    hop, window, channels = s["hop"], s["window"], s["channels"]
    steps = [w.reshape(window, channels) if s["time_major"] else w.reshape(channels, window).T for w in xq]
    need = window - window % hop + hop * min_outputs
    stream = np.concatenate(steps * -(-need // (window * len(steps))))[:need]
    ready, windows = stream_windows(conv, stream)
    return StreamRun(stream, hop, ready, windows, conv.references(windows))

