"""Quantized IR -> an int8 (or 16x8) .tflite flatbuffer that TFLite-Micro's reference kernels can run.

Same weights, scales and zero points as the generated C, so the tflite-micro runtime is an
independent check of our integer arithmetic. Each op's TFLite form is its handler's (`export_tflite`),
so a plugin op is checked too where TFLite has an equivalent. Written with the `model_editor` and schema modules the
tflite-micro wheel ships (imported lazily: they belong to the [verify] extra).

Tensor shapes: a (W, C) IR tensor is [1, 1, W, C] (1D as an h=1 image), a vector (F,) is [1, F]; the
graph's input and output keep the model's own shapes, joined to the rest by RESHAPE.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager

import numpy as np

from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ops.registry import Registry, build_registry
from onnx2cmsis.oracle.tflite_writer import Exporter, NotExportable, tflite_shape
from onnx2cmsis.data.samples import sample_inputs

__all__ = ["NotExportable", "export_tflite", "run_tflite_micro", "tflite_micro_arena", "tflite_shape"]


def export_tflite(graph: Graph, registry: Registry | None = None) -> bytes:
    """The whole quantized graph as .tflite bytes; input/output shaped as the model declares them.
    `registry`: the handlers the graph was converted with (a Conversion's), else the built-ins and
    the installed plugins."""
    registry = registry or build_registry()
    ex = Exporter(graph)
    for node in graph.nodes:
        registry.for_op(node.op).export_tflite(ex, node)
        for src, dst in ex.pending_reshapes:
            ex.reshape(src, dst)
        ex.pending_reshapes.clear()
    boundary = [(t, shape, True) for t, shape in zip(graph.inputs, graph.model_input_shapes)]
    boundary += [(t, shape, False) for t, shape in zip(graph.outputs, graph.model_output_shapes)]
    for name, model_shape, is_input in boundary:  # in the model's order: TFLite numbers them the same
        inner = ex.activation(name)
        outer = inner
        if list(model_shape) != list(inner.shape):
            outer = ex.me.Tensor(shape=list(model_shape), dtype=inner.dtype, quantization=inner.quantization,
                                 name=f"{name}_model_shape")
            if is_input:
                ex.reshape(outer, inner)
                ex.sg.operators.insert(0, ex.sg.operators.pop())
            else:
                ex.reshape(inner, outer)
        (ex.sg.inputs if is_input else ex.sg.outputs).append(outer)
    model = ex.me.Model(subgraphs=[ex.sg], description="onnx2cmsis")
    return bytes(model.build())


def run_tflite_micro(tflite: bytes, inputs, arena_size: int = 1 << 20, keep_state: bool = False) -> np.ndarray:
    """Run each sample's input codes through the tflite-micro runtime: `inputs` is (N, ...) codes, or
    for several inputs MultiSamples (one (N, ...) array per input). Returns (N, output elements), the
    outputs side by side in order (as quant.quantize.output_codes). `keep_state`: the samples are one
    stream's pushes, each invoke going on from the LSTM state the last one left."""
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(tflite, arena_size=arena_size)
    outputs = _count(interp.get_output_details)
    rows = []
    for x in inputs:
        if not keep_state:
            interp.reset()  # each sample from zero recurrent state: TFLite-Micro keeps LSTM state across invoke()
        _set_inputs(interp, x)
        interp.invoke()
        rows.append(np.concatenate([np.array(interp.get_output(k)).reshape(-1) for k in range(outputs)]))
    return np.stack(rows)


def _set_inputs(interp, sample) -> None:
    """One sample's codes into the interpreter's inputs, each in its declared shape and type."""
    for k, part in enumerate(sample_inputs(sample)):
        details = interp.get_input_details(k)
        interp.set_input(np.asarray(part, details["dtype"]).reshape(details["shape"]), k)


@contextmanager
def _stderr_into(fd: int):
    """File descriptor 2 (where the runtime prints) sent to `fd` for the block."""
    sys.stderr.flush()
    saved = os.dup(2)
    os.dup2(fd, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _count(details) -> int:
    """How many inputs or outputs the interpreter has (it offers no count: ask until it refuses; the
    refusal, which the runtime also prints to file descriptor 2, is kept off the terminal)."""
    with open(os.devnull, "wb") as quiet, _stderr_into(quiet.fileno()):
        n = 0
        while True:
            try:
                details(n)
            except Exception:
                return n
            n += 1


def tflite_micro_arena(tflite: bytes, sample) -> dict[str, int]:
    """TFLite-Micro's own arena figures for the model (what its users compare against).

    The runtime prints them to the process's stderr (file descriptor 2), so capture that descriptor.
    """
    import re
    import tempfile

    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(tflite, arena_size=1 << 20)
    _set_inputs(interp, sample)
    interp.invoke()
    with tempfile.TemporaryFile(mode="w+b") as capture:
        with _stderr_into(capture.fileno()):
            interp.print_allocations()
        capture.seek(0)
        text = capture.read().decode(errors="replace")
    figures = {}
    for key in ("total", "head", "tail"):
        m = re.search(rf"Arena allocation {key} (\d+) bytes", text)
        if m:
            figures[key] = int(m.group(1))
    return figures
