"""Quantized IR -> an int8 (or 16x8) .tflite flatbuffer that TFLite-Micro's reference kernels can run.

Same weights, scales and zero points as the generated C, so the tflite-micro runtime is an
independent check of our integer arithmetic. Each op's TFLite form is its handler's (`export_tflite`),
so a plugin op is checked too where TFLite has an equivalent. Written with the `model_editor` and schema modules the
tflite-micro wheel ships (imported lazily: they belong to the [verify] extra).

Tensor shapes: a (W, C) IR tensor is [1, 1, W, C] (1D as an h=1 image), a vector (F,) is [1, F]; the
graph's input and output keep the model's own shapes, joined to the rest by RESHAPE.
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ops.registry import Registry, build_registry
from onnx2cmsis.oracle.tflite_writer import Exporter, NotExportable, tflite_shape

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
    for name, model_shape, is_input in ((graph.inputs[0], graph.model_input_shapes[0], True),
                                        (graph.outputs[0], graph.model_output_shapes[0], False)):
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


def run_tflite_micro(tflite: bytes, inputs: np.ndarray, arena_size: int = 1 << 20) -> np.ndarray:
    """Run each input's codes (N, ...) through the tflite-micro runtime; returns (N, output elements)."""
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(tflite, arena_size=arena_size)
    details = interp.get_input_details(0)
    shape, dtype = details["shape"], details["dtype"]
    outs = []
    for x in inputs:
        interp.set_input(np.asarray(x, dtype).reshape(shape), 0)
        interp.invoke()
        outs.append(np.array(interp.get_output(0)).reshape(-1))
    return np.stack(outs)


def tflite_micro_arena(tflite: bytes, sample: np.ndarray) -> dict[str, int]:
    """TFLite-Micro's own arena figures for the model (what its users compare against).

    The runtime prints them to the process's stderr (file descriptor 2), so capture that descriptor.
    """
    import os
    import re
    import sys
    import tempfile

    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(tflite, arena_size=1 << 20)
    details = interp.get_input_details(0)
    interp.set_input(np.asarray(sample, details["dtype"]).reshape(details["shape"]), 0)
    interp.invoke()
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            interp.print_allocations()
        finally:
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode(errors="replace")
    figures = {}
    for key in ("total", "head", "tail"):
        m = re.search(rf"Arena allocation {key} (\d+) bytes", text)
        if m:
            figures[key] = int(m.group(1))
    return figures
