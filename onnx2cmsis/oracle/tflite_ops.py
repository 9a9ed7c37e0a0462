"""One exporter per IR op: the TFLite-Micro operator(s) with the same arithmetic as our kernel."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnx2cmsis.ir.graph import Node
from onnx2cmsis.ops.conv import block_diagonal
from onnx2cmsis.oracle.tflite_writer import Exporter, NotExportable


def _conv1d(ex: Exporter, node: Node) -> None:
    fb, qp, a = ex.fb, node.qparams, node.attrs
    src = ex.padded(ex.activation(node.inputs[0]), node)
    w = block_diagonal(qp["weight"], a.get("groups", 1))  # (C_out, K, C_in): same sums as the groups
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


def _dwconv1d(ex: Exporter, node: Node) -> None:
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


def _maxpool1d(ex: Exporter, node: Node) -> None:
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


def _avgpool1d(ex: Exporter, node: Node) -> None:
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


def _pad1d(ex: Exporter, node: Node) -> None:
    fb = ex.fb
    left, right = node.attrs["pad"]
    pads = ex.const(np.array([[0, 0], [0, 0], [left, right], [0, 0]], np.int32), fb.TensorType.INT32,
                    f"{node.output}_pads")
    ex.op(fb.BuiltinOperator.PAD, [ex.activation(node.inputs[0]), pads], [ex.activation(node.output)],
          fb.BuiltinOptions.PadOptions, fb.PadOptionsT())


def _add(ex: Exporter, node: Node) -> None:
    opts = ex.fb.AddOptionsT()
    opts.fusedActivationFunction = ex.fused(node)
    ex.op(ex.fb.BuiltinOperator.ADD, [ex.activation(t) for t in node.inputs], [ex.activation(node.output)],
          ex.fb.BuiltinOptions.AddOptions, opts)


def _upsample1d(ex: Exporter, node: Node) -> None:
    fb = ex.fb
    w_out = ex.graph.tensors[node.output].shape[0]
    size = ex.const(np.array([1, w_out], np.int32), fb.TensorType.INT32, f"{node.output}_size")
    opts = fb.ResizeNearestNeighborOptionsT()
    opts.alignCorners, opts.halfPixelCenters = False, True  # floor((t + 0.5) / f) == t // f, free of float error
    ex.op(fb.BuiltinOperator.RESIZE_NEAREST_NEIGHBOR, [ex.activation(node.inputs[0]), size],
          [ex.activation(node.output)], fb.BuiltinOptions.ResizeNearestNeighborOptions, opts)


def _concat(ex: Exporter, node: Node) -> None:
    opts = ex.fb.ConcatenationOptionsT()
    opts.axis = {"channel": 3, "time": 2, "flat": 1}[node.attrs["kind"]]
    ex.op(ex.fb.BuiltinOperator.CONCATENATION, [ex.activation(t) for t in node.inputs], [ex.activation(node.output)],
          ex.fb.BuiltinOptions.ConcatenationOptions, opts)


def _dense(ex: Exporter, node: Node) -> None:
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


def _softmax(ex: Exporter, node: Node) -> None:
    opts = ex.fb.SoftmaxOptionsT()
    opts.beta = 1.0
    ex.op(ex.fb.BuiltinOperator.SOFTMAX, [ex.activation(node.inputs[0])], [ex.activation(node.output)],
          ex.fb.BuiltinOptions.SoftmaxOptions, opts)


def _transpose(ex: Exporter, node: Node) -> None:
    perm = ex.const(np.array([0, 1, 3, 2], np.int32), ex.fb.TensorType.INT32, f"{node.output}_perm")
    ex.op(ex.fb.BuiltinOperator.TRANSPOSE, [ex.activation(node.inputs[0]), perm], [ex.activation(node.output)],
          ex.fb.BuiltinOptions.TransposeOptions, ex.fb.TransposeOptionsT())


def _slice1d(ex: Exporter, node: Node) -> None:
    fb = ex.fb
    _, c = ex.graph.tensors[node.inputs[0]].shape
    begin = ex.const(np.array([0, 0, node.attrs["start"], 0], np.int32), fb.TensorType.INT32, f"{node.output}_begin")
    size = ex.const(np.array([1, 1, node.attrs["width"], c], np.int32), fb.TensorType.INT32, f"{node.output}_size")
    ex.op(fb.BuiltinOperator.SLICE, [ex.activation(node.inputs[0]), begin, size], [ex.activation(node.output)],
          fb.BuiltinOptions.SliceOptions, fb.SliceOptionsT())


def _gather(ex: Exporter, node: Node) -> None:
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


def _reshape(ex: Exporter, node: Node) -> None:
    ex.reshape(ex.activation(node.inputs[0]), ex.activation(node.output))


def _lut(ex: Exporter, node: Node) -> None:
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


EXPORTERS: dict[str, Callable[[Exporter, Node], None]] = {
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


