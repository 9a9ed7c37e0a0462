"""Quantized IR -> an int8 .tflite flatbuffer that TFLite-Micro's reference kernels can run.

Same weights, scales and zero points as the generated C, so the tflite-micro runtime is an
independent check of our integer arithmetic. Written with the `model_editor` and schema modules the
tflite-micro wheel ships (imported lazily: they belong to the [verify] extra).

Tensor shapes: a (W, C) IR tensor is [1, 1, W, C] (1D as an h=1 image), a vector (F,) is [1, F]; the
graph's input and output keep the model's own shapes, joined to the rest by RESHAPE.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.quant.rules import QuantParams


class NotExportable(ConversionError):
    """The node has no TFLite-Micro equivalent with identical arithmetic."""


def _modules() -> tuple[Any, Any]:
    try:
        from tflite_micro.tensorflow.lite.micro.compression import model_editor as me
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConversionError("the TFLite-Micro oracle needs the [verify] extra: pip install 'onnx2cmsis[verify]'") from exc
    return me, fb


def tflite_shape(shape: tuple[int, ...]) -> list[int]:
    return [1, 1, *shape] if len(shape) == 2 else [1, *shape]


class _Exporter:
    def __init__(self, graph: Graph) -> None:
        self.me, self.fb = _modules()
        self.graph = graph
        self.sg = self.me.Subgraph()
        self.tensors: dict[str, Any] = {}
        self.pending_reshapes: list[tuple[Any, Any]] = []  # (4-D result, its vector view) after the op

    def quant(self, q: QuantParams) -> Any:
        return self.me.Quantization(scales=[q.scale], zero_points=[q.zero_point])

    def activation(self, name: str, shape: list[int] | None = None) -> Any:
        if name not in self.tensors:
            t = self.graph.tensors[name]
            self.tensors[name] = self.me.Tensor(shape=shape or tflite_shape(t.shape), dtype=self.fb.TensorType.INT8,
                                                quantization=self.quant(t.quant), name=name)
        return self.tensors[name]

    def const(self, values: np.ndarray, dtype: int, name: str, quant: Any = None) -> Any:
        return self.me.Tensor(shape=list(values.shape), dtype=dtype, data=np.ascontiguousarray(values),
                              quantization=quant, name=name)

    def op(self, code: int, inputs: list[Any], outputs: list[Any], options_type: int = 0, options: Any = None) -> None:
        o = self.me.Operator(opcode=code, inputs=inputs, outputs=outputs)
        if options is not None:
            o._fb.builtinOptionsType = options_type
            o._fb.builtinOptions = options
        self.sg.operators.append(o)

    def reshape(self, src: Any, dst: Any) -> None:
        opts = self.fb.ReshapeOptionsT()
        opts.newShape = list(dst.shape)
        shape = self.const(np.array(dst.shape, np.int32), self.fb.TensorType.INT32, f"{dst.name}_shape")
        self.op(self.fb.BuiltinOperator.RESHAPE, [src, shape], [dst], self.fb.BuiltinOptions.ReshapeOptions, opts)

    def as_feature_map(self, name: str, output: bool = False) -> Any:
        """The tensor as [1, 1, W, C]; a vector (F,) is reshaped from/to [1, 1, 1, F]."""
        t = self.activation(name)
        if len(t.shape) == 4:
            return t
        fm = self.me.Tensor(shape=[1, 1, 1, t.shape[-1]], dtype=self.fb.TensorType.INT8, quantization=t.quantization,
                            name=f"{name}_as_4d")
        if output:
            self.pending_reshapes.append((fm, t))
        else:
            self.reshape(t, fm)
        return fm

    def padded(self, src: Any, node: Node) -> Any:
        """A conv's input with node.attrs["pad"] applied by PAD, for a VALID conv after it. PAD fills
        with the input zero point: the same as CMSIS-NN skipping the tap."""
        pad_l, pad_r = node.attrs["pad"]
        if not (pad_l or pad_r):
            return src
        _, _, w_in, c = src.shape
        padded = self.me.Tensor(shape=[1, 1, w_in + pad_l + pad_r, c], dtype=self.fb.TensorType.INT8,
                                quantization=src.quantization, name=f"{node.output}_padded")
        pads = self.const(np.array([[0, 0], [0, 0], [pad_l, pad_r], [0, 0]], np.int32), self.fb.TensorType.INT32,
                          f"{node.output}_pads")
        self.op(self.fb.BuiltinOperator.PAD, [src, pads], [padded], self.fb.BuiltinOptions.PadOptions,
                self.fb.PadOptionsT())
        return padded

    def fused(self, node: Node) -> int:
        lo, hi = node.attrs.get("act", (None, None))
        A = self.fb.ActivationFunctionType
        if lo is None and hi is None:
            return A.NONE
        if lo == 0.0 and hi is None:
            return A.RELU
        if lo == 0.0 and hi == 6.0:
            return A.RELU6
        raise NotExportable(f"activation range [{lo}, {hi}] has no TFLite fused activation", node.name)


def _conv1d(ex: _Exporter, node: Node) -> None:
    fb, qp, a = ex.fb, node.qparams, node.attrs
    src = ex.padded(ex.activation(node.inputs[0]), node)
    w = qp["weight"]  # (C_out, K, C_in)
    s_in = ex.graph.tensors[node.inputs[0]].quant.scale
    wq = ex.me.Quantization(scales=[float(s) for s in qp["weight_scales"]], zero_points=[0] * w.shape[0], axis=0)
    bq = ex.me.Quantization(scales=[float(np.float32(s_in) * np.float64(s)) for s in qp["weight_scales"]],
                            zero_points=[0] * w.shape[0], axis=0)
    weights = ex.const(w.reshape(w.shape[0], 1, w.shape[1], w.shape[2]), fb.TensorType.INT8, f"{node.output}_w", wq)
    bias = ex.const(qp["bias"], fb.TensorType.INT32, f"{node.output}_b", bq)
    opts = fb.Conv2DOptionsT()
    opts.padding = fb.Padding.VALID
    opts.strideW, opts.strideH = a["stride"], 1
    opts.dilationWFactor, opts.dilationHFactor = a["dilation"], 1
    opts.fusedActivationFunction = ex.fused(node)
    ex.op(fb.BuiltinOperator.CONV_2D, [src, weights, bias], [ex.activation(node.output)],
          fb.BuiltinOptions.Conv2DOptions, opts)


def _dwconv1d(ex: _Exporter, node: Node) -> None:
    fb, qp, a = ex.fb, node.qparams, node.attrs
    src = ex.as_feature_map(node.inputs[0])
    c_in = src.shape[3]
    src = ex.padded(src, node)
    w = qp["weight"]  # (C_out, K)
    c_out = w.shape[0]
    s_in = ex.graph.tensors[node.inputs[0]].quant.scale
    wq = ex.me.Quantization(scales=[float(s) for s in qp["weight_scales"]], zero_points=[0] * c_out, axis=3)
    bq = ex.me.Quantization(scales=[float(np.float32(s_in) * np.float64(s)) for s in qp["weight_scales"]],
                            zero_points=[0] * c_out, axis=0)
    weights = ex.const(np.ascontiguousarray(w.T).reshape(1, 1, w.shape[1], c_out), fb.TensorType.INT8,
                       f"{node.output}_w", wq)
    bias = ex.const(qp["bias"], fb.TensorType.INT32, f"{node.output}_b", bq)
    opts = fb.DepthwiseConv2DOptionsT()
    opts.padding = fb.Padding.VALID
    opts.strideW, opts.strideH = a["stride"], 1
    opts.dilationWFactor, opts.dilationHFactor = a["dilation"], 1
    opts.depthMultiplier = c_out // c_in
    opts.fusedActivationFunction = ex.fused(node)
    ex.op(fb.BuiltinOperator.DEPTHWISE_CONV_2D, [src, weights, bias], [ex.as_feature_map(node.output, True)],
          fb.BuiltinOptions.DepthwiseConv2DOptions, opts)


def _maxpool1d(ex: _Exporter, node: Node) -> None:
    fb, a = ex.fb, node.attrs
    w_in, c = ex.graph.tensors[node.inputs[0]].shape
    k, s, p, out_w = a["kernel"], a["stride"], a["pad_left"], a["out_w"]
    if a.get("dilation", 1) != 1:
        raise NotExportable("TFLite's MAX_POOL_2D has no dilation", node.name)
    src = ex.activation(node.inputs[0])
    pad_r = max(0, (out_w - 1) * s + k - w_in - p)
    if p or pad_r:
        # PADV2 with -128 then VALID: a padded tap never wins the max, as CMSIS-NN skips it.
        padded = ex.me.Tensor(shape=[1, 1, w_in + p + pad_r, c], dtype=fb.TensorType.INT8,
                              quantization=src.quantization, name=f"{node.output}_padded")
        pads = ex.const(np.array([[0, 0], [0, 0], [p, pad_r], [0, 0]], np.int32), fb.TensorType.INT32,
                        f"{node.output}_pads")
        low = ex.const(np.array([-128], np.int8), fb.TensorType.INT8, f"{node.output}_pad_value", src.quantization)
        ex.op(fb.BuiltinOperator.PADV2, [src, pads, low], [padded], fb.BuiltinOptions.PadV2Options,
              fb.PadV2OptionsT())
        src = padded
    opts = fb.Pool2DOptionsT()
    opts.padding = fb.Padding.VALID
    opts.strideW, opts.strideH = s, 1
    opts.filterWidth, opts.filterHeight = k, 1
    opts.fusedActivationFunction = ex.fused(node)
    ex.op(fb.BuiltinOperator.MAX_POOL_2D, [src], [ex.activation(node.output)], fb.BuiltinOptions.Pool2DOptions, opts)


def _avgpool1d(ex: _Exporter, node: Node) -> None:
    fb, a = ex.fb, node.attrs
    w_in = ex.graph.tensors[node.inputs[0]].shape[0]
    k, s, p, out_w = a["kernel"], a["stride"], a["pad_left"], a["out_w"]
    if p == 0 and out_w == (w_in - k) // s + 1:
        padding = fb.Padding.VALID
    elif out_w == -(-w_in // s) and p == max((out_w - 1) * s + k - w_in, 0) // 2:
        padding = fb.Padding.SAME  # TFLite divides by the valid taps too
    else:
        raise NotExportable("average pool padding is neither TFLite SAME nor VALID", node.name)
    opts = fb.Pool2DOptionsT()
    opts.padding = padding
    opts.strideW, opts.strideH = s, 1
    opts.filterWidth, opts.filterHeight = k, 1
    opts.fusedActivationFunction = ex.fused(node)
    ex.op(fb.BuiltinOperator.AVERAGE_POOL_2D, [ex.activation(node.inputs[0])], [ex.activation(node.output)],
          fb.BuiltinOptions.Pool2DOptions, opts)


def _pad1d(ex: _Exporter, node: Node) -> None:
    fb = ex.fb
    left, right = node.attrs["pad"]
    pads = ex.const(np.array([[0, 0], [0, 0], [left, right], [0, 0]], np.int32), fb.TensorType.INT32,
                    f"{node.output}_pads")
    ex.op(fb.BuiltinOperator.PAD, [ex.activation(node.inputs[0]), pads], [ex.activation(node.output)],
          fb.BuiltinOptions.PadOptions, fb.PadOptionsT())


def _add(ex: _Exporter, node: Node) -> None:
    opts = ex.fb.AddOptionsT()
    opts.fusedActivationFunction = ex.fused(node)
    ex.op(ex.fb.BuiltinOperator.ADD, [ex.activation(t) for t in node.inputs], [ex.activation(node.output)],
          ex.fb.BuiltinOptions.AddOptions, opts)


def _upsample1d(ex: _Exporter, node: Node) -> None:
    fb = ex.fb
    w_out = ex.graph.tensors[node.output].shape[0]
    size = ex.const(np.array([1, w_out], np.int32), fb.TensorType.INT32, f"{node.output}_size")
    opts = fb.ResizeNearestNeighborOptionsT()
    opts.alignCorners, opts.halfPixelCenters = False, True  # floor((t + 0.5) / f) == t // f, free of float error
    ex.op(fb.BuiltinOperator.RESIZE_NEAREST_NEIGHBOR, [ex.activation(node.inputs[0]), size],
          [ex.activation(node.output)], fb.BuiltinOptions.ResizeNearestNeighborOptions, opts)


def _concat(ex: _Exporter, node: Node) -> None:
    opts = ex.fb.ConcatenationOptionsT()
    opts.axis = {"channel": 3, "time": 2, "flat": 1}[node.attrs["kind"]]
    ex.op(ex.fb.BuiltinOperator.CONCATENATION, [ex.activation(t) for t in node.inputs], [ex.activation(node.output)],
          ex.fb.BuiltinOptions.ConcatenationOptions, opts)


def _dense(ex: _Exporter, node: Node) -> None:
    fb, qp = ex.fb, node.qparams
    s_in = ex.graph.tensors[node.inputs[0]].quant.scale
    wq = ex.me.Quantization(scales=[qp["weight_scale"]], zero_points=[0])
    bq = ex.me.Quantization(scales=[float(np.float32(s_in) * np.float64(qp["weight_scale"]))], zero_points=[0])
    weights = ex.const(qp["weight"], fb.TensorType.INT8, f"{node.output}_w", wq)
    bias = ex.const(qp["bias"], fb.TensorType.INT32, f"{node.output}_b", bq)
    opts = fb.FullyConnectedOptionsT()
    opts.fusedActivationFunction = ex.fused(node)
    ex.op(fb.BuiltinOperator.FULLY_CONNECTED, [ex.activation(node.inputs[0]), weights, bias],
          [ex.activation(node.output)], fb.BuiltinOptions.FullyConnectedOptions, opts)


def _softmax(ex: _Exporter, node: Node) -> None:
    opts = ex.fb.SoftmaxOptionsT()
    opts.beta = 1.0
    ex.op(ex.fb.BuiltinOperator.SOFTMAX, [ex.activation(node.inputs[0])], [ex.activation(node.output)],
          ex.fb.BuiltinOptions.SoftmaxOptions, opts)


def _transpose(ex: _Exporter, node: Node) -> None:
    perm = ex.const(np.array([0, 1, 3, 2], np.int32), ex.fb.TensorType.INT32, f"{node.output}_perm")
    ex.op(ex.fb.BuiltinOperator.TRANSPOSE, [ex.activation(node.inputs[0]), perm], [ex.activation(node.output)],
          ex.fb.BuiltinOptions.TransposeOptions, ex.fb.TransposeOptionsT())


def _slice1d(ex: _Exporter, node: Node) -> None:
    fb = ex.fb
    _, c = ex.graph.tensors[node.inputs[0]].shape
    begin = ex.const(np.array([0, 0, node.attrs["start"], 0], np.int32), fb.TensorType.INT32, f"{node.output}_begin")
    size = ex.const(np.array([1, 1, node.attrs["width"], c], np.int32), fb.TensorType.INT32, f"{node.output}_size")
    ex.op(fb.BuiltinOperator.SLICE, [ex.activation(node.inputs[0]), begin, size], [ex.activation(node.output)],
          fb.BuiltinOptions.SliceOptions, fb.SliceOptionsT())


def _gather(ex: _Exporter, node: Node) -> None:
    fb = ex.fb
    src, dst = ex.activation(node.inputs[0]), ex.activation(node.output)
    index = node.attrs["index"].astype(np.int32)
    flat_src = ex.me.Tensor(shape=[int(np.prod(src.shape))], dtype=fb.TensorType.INT8,
                            quantization=src.quantization, name=f"{node.output}_flat_in")
    flat_dst = ex.me.Tensor(shape=[index.size], dtype=fb.TensorType.INT8, quantization=dst.quantization,
                            name=f"{node.output}_flat_out")
    ex.reshape(src, flat_src)
    opts = fb.GatherOptionsT()
    opts.axis, opts.batchDims = 0, 0
    ex.op(fb.BuiltinOperator.GATHER, [flat_src, ex.const(index, fb.TensorType.INT32, f"{node.output}_index")],
          [flat_dst], fb.BuiltinOptions.GatherOptions, opts)
    ex.reshape(flat_dst, dst)


def _reshape(ex: _Exporter, node: Node) -> None:
    ex.reshape(ex.activation(node.inputs[0]), ex.activation(node.output))


def _lut(ex: _Exporter, node: Node) -> None:
    fb, fn = ex.fb, node.attrs["fn"]
    io = ([ex.activation(node.inputs[0])], [ex.activation(node.output)])
    if fn == "tanh":
        ex.op(fb.BuiltinOperator.TANH, *io)
    elif fn == "sigmoid":
        ex.op(fb.BuiltinOperator.LOGISTIC, *io)
    elif fn == "leaky_relu":
        opts = fb.LeakyReluOptionsT()
        opts.alpha = node.attrs["alpha"]
        ex.op(fb.BuiltinOperator.LEAKY_RELU, *io, fb.BuiltinOptions.LeakyReluOptions, opts)
    elif fn == "requantize":
        ex.op(fb.BuiltinOperator.QUANTIZE, *io)
    else:
        # TFLite-Micro has no RELU_N1_TO_1 kernel
        codes = {(0.0, None): fb.BuiltinOperator.RELU, (0.0, 6.0): fb.BuiltinOperator.RELU6}
        lo, hi = node.attrs["act"]
        key = (None if lo is None else float(lo), None if hi is None else float(hi))
        if key not in codes:
            raise NotExportable(f"clip range [{lo}, {hi}] has no TFLite operator", node.name)
        ex.op(codes[key], *io)


EXPORTERS: dict[str, Callable[[_Exporter, Node], None]] = {
    "lut": _lut,
    "concat": _concat,
    "upsample1d": _upsample1d,
    "add": _add,
    "avgpool1d": _avgpool1d,
    "pad1d": _pad1d,
    "conv1d": _conv1d,
    "dwconv1d": _dwconv1d,
    "maxpool1d": _maxpool1d,
    "dense": _dense,
    "softmax": _softmax,
    "transpose": _transpose,
    "reshape": _reshape,
    "slice1d": _slice1d,
    "gather": _gather,
}


def export_tflite(graph: Graph) -> bytes:
    """The whole quantized graph as .tflite bytes; input/output shaped as the model declares them."""
    ex = _Exporter(graph)
    for node in graph.nodes:
        fn = EXPORTERS.get(node.op)
        if fn is None:
            raise NotExportable(f"no TFLite export for op '{node.op}'", node.name)
        fn(ex, node)
        for src, dst in ex.pending_reshapes:
            ex.reshape(src, dst)
        ex.pending_reshapes.clear()
    for name, model_shape, is_input in ((graph.inputs[0], graph.model_input_shapes[0], True),
                                        (graph.outputs[0], graph.model_output_shapes[0], False)):
        inner = ex.activation(name)
        outer = inner
        if list(model_shape) != list(inner.shape):
            outer = ex.me.Tensor(shape=list(model_shape), dtype=ex.fb.TensorType.INT8, quantization=inner.quantization,
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
    """Run each int8 input (N, ...) through the tflite-micro runtime; returns (N, output elements)."""
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(tflite, arena_size=arena_size)
    shape = interp.get_input_details(0)["shape"]
    outs = []
    for x in inputs:
        interp.set_input(np.asarray(x, np.int8).reshape(shape), 0)
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
    interp.set_input(np.asarray(sample, np.int8).reshape(interp.get_input_details(0)["shape"]), 0)
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
