"""What `verify` runs for a streaming conversion: the data's windows laid end to end as one stream,
pushed HOP steps at a time, each reported output checked against the integer reference on the same
window (the reference is checked against tflite-micro on the data itself); for a stateful stream,
every push's output against the reference run once over every step pushed since the reset."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx2cmsis.api import Conversion
from onnx2cmsis.plan.stateful import plan_stateful, retimed_graph
from onnx2cmsis.quant.quantize import run_reference


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


def stateful_ready(conv: Conversion, stream: np.ndarray) -> list[int]:
    """The pushes (0-based) of a stateful stream that report an output: from NAME.json's
    first_output_push on (the ones before have fewer steps than the model's layers need)."""
    s = conv.report["stream"]
    return list(range(s["first_output_push"] - 1, len(stream) // s["hop"]))


def stateful_want(conv: Conversion, stream: np.ndarray) -> np.ndarray:
    """A stateful stream's contract: after push k, the integer reference of the graph run once over
    the first k x HOP steps (plan/stateful.py retimes it), for each push that reports one.
    (reporting pushes, output elements)."""
    s = conv.report["stream"]
    hop = s["hop"]
    sp = plan_stateful(conv.graph, conv.registry, hop, s["window"], s["channels"])
    rows = []
    for k in (push + 1 for push in stateful_ready(conv, stream)):
        g = retimed_graph(conv.graph, conv.registry, sp, s["window"], k * hop)
        seen = stream[:k * hop]
        x = (seen if s["time_major"] else seen.T).reshape(g.tensors[g.inputs[0]].shape)
        out = run_reference(g, conv.registry, x)[g.outputs[0]]
        steps = s.get("output_steps_per_push")  # a time-resolved output: the push's new steps
        rows.append((out[-steps:] if steps else out).reshape(-1))
    return np.stack(rows)


def stream_run(conv: Conversion, xq: np.ndarray, min_outputs: int = 50) -> StreamRun:
    """The samples `xq` (model input codes) end to end, repeated until the stream gives `min_outputs`."""
    s = conv.report["stream"]
    hop, window, channels = s["hop"], s["window"], s["channels"]
    steps = [w.reshape(window, channels) if s["time_major"] else w.reshape(channels, window).T for w in xq]
    need = window - window % hop + hop * min_outputs
    stream = np.concatenate(steps * -(-need // (window * len(steps))))[:need]
    if s.get("stateful"):  # each push reports (once the layers have their steps), on every step since the reset
        ready = stateful_ready(conv, stream)
        return StreamRun(stream, hop, ready, np.zeros((len(ready), 0)), stateful_want(conv, stream))
    ready, windows = stream_windows(conv, stream)
    return StreamRun(stream, hop, ready, windows, conv.references(windows))

