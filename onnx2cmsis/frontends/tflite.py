"""A .tflite model -> a QDQ ONNX model (issue 33): everything still flows through ONNX.

Each quantized TFLite tensor becomes a QuantizeLinear/DequantizeLinear pair with the file's exact
float32 scales and zero points; int8 weights and int32 biases become DequantizeLinear of their codes
(per channel along TFLite's quantized dimension, moved to ONNX's output-channel axis); float tensors
stay float. frontends/qdq.py then splits the pairs off like any quantized ONNX model, so an int8
.tflite converts with no calibration, and the C computes what TFLite-Micro's kernels compute for the
file. TFLite's NHWC feature maps meet ONNX's NCHW convolutions and pools through Transposes, which
the importer resolves as layout (no copies).

Read here (frontends/tflite_reader.py for the file itself): CONV_2D, DEPTHWISE_CONV_2D,
FULLY_CONNECTED, MAX_POOL_2D, AVERAGE_POOL_2D, MEAN, ADD, SUB, MUL, PAD, PADV2, CONCATENATION,
RESHAPE, SQUEEZE, EXPAND_DIMS, TRANSPOSE, RESIZE_NEAREST_NEIGHBOR, TILE, SOFTMAX, TANH, LOGISTIC, RELU, RELU6,
LEAKY_RELU, HARD_SWISH, REDUCE_MAX, UNIDIRECTIONAL_SEQUENCE_LSTM (frontends/tflite_lstm.py),
and QUANTIZE/DEQUANTIZE between float and integer at the edges; SHAPE, STRIDED_SLICE, PACK,
REDUCE_PROD and GATHER as the shape arithmetic of a dynamic batch (ONNX's, folded at import at batch
1: a file's static shapes hold 1 wherever its signature is dynamic, so a reshape's target is computed,
not read from them). Any other operator is refused, every one at once.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.frontends.tflite_graph import fuse_space_to_batch, needed_operators, not_exact_yet
from onnx2cmsis.frontends import tflite_shape_ops as shape_ops
from onnx2cmsis.frontends.tflite_lstm import translate_lstm
from onnx2cmsis.frontends.tflite_reader import TfliteModel, TfliteOperator, TfliteTensor, read_tflite

OPSET = 14  # HardSwish
HELPER_OPS = frozenset({"Transpose", "QuantizeLinear", "DequantizeLinear", "Unsqueeze", "Squeeze", "Cast",
                        "Identity", "Shape", "Slice", "Reshape"})
NHWC_TO_NCHW, NCHW_TO_NHWC = [0, 3, 1, 2], [0, 2, 3, 1]
_ACTIVATIONS = {0: None, 1: ("Relu", None, None), 2: ("Clip", -1.0, 1.0), 3: ("Clip", 0.0, 6.0)}


class OnnxWriter:
    """The ONNX graph being written: each TFLite tensor's float value, and the nodes and constants."""

    def __init__(self, model: TfliteModel) -> None:
        self.model = model
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.readable: dict[int, str] = {}  # tensor index -> the float value its readers read
        counts: dict[str, int] = {}
        for t in model.tensors:
            counts[t.name] = counts.get(t.name, 0) + 1
        self.names = {t.index: t.name if counts[t.name] == 1 else f"{t.name}__{t.index}" for t in model.tensors}
        self.fresh = 0
        self.layer = "input"  # the TFLite operator being translated, which names its nodes
        self.used: set[str] = set()
        self.metadata: dict[str, dict] = {}  # model metadata (frontends/tflite_lstm.py: cell clips)

    def temp(self, hint: str) -> str:
        self.fresh += 1
        return f"{hint}__t{self.fresh}"

    def node(self, op: str, inputs: list[str], outputs: list[str] | None = None, **attrs) -> str:
        outputs = outputs or [self.temp(op.lower())]
        # named after the TFLite operator (its code and index in the file, as Netron shows them); the
        # ONNX nodes that only carry it (layout, quantization pairs) by it and their own op
        name = self.layer if op not in HELPER_OPS and self.layer not in self.used else f"{self.layer}/{op}"
        while name in self.used:
            name += "'"
        self.used.add(name)
        self.nodes.append(helper.make_node(op, inputs, outputs, name=name, **attrs))
        return outputs[0]

    def const(self, values: np.ndarray, hint: str) -> str:
        name = self.temp(hint)
        self.inits.append(numpy_helper.from_array(np.asarray(values), name))
        return name

    def _params(self, t: TfliteTensor, axis: int | None) -> list[str]:
        scale = t.scales if t.scales.size > 1 else t.scales.reshape(())
        zp_type = np.dtype(np.int32) if t.dtype == np.int32 else t.dtype
        zp = t.zero_points.astype(zp_type)
        zp = zp if t.scales.size > 1 else zp.reshape(())
        return [self.const(scale.astype(np.float32), f"{self.names[t.index]}_scale"),
                self.const(zp, f"{self.names[t.index]}_zero_point")]

    def read(self, index: int, layout: tuple[int, ...] | None = None) -> str:
        """The float value of tensor `index` (a constant: dequantized from its codes, its per-channel
        axis moved as `layout` moves the axes)."""
        if index in self.readable:
            return self.readable[index]
        t = self.model.tensors[index]
        if t.data is None:
            raise UnsupportedOpError(f"tensor '{t.name}' is read before anything writes it", "")
        data = t.data if layout is None else t.data.transpose(layout)
        if not t.quantized or t.dtype == np.float32:  # integers: shapes, axes, indices (ONNX's are int64)
            return self.const(data.astype(np.float32 if t.dtype == np.float32 else np.int64), self.names[index])
        axis = None if t.scales.size == 1 else (t.axis if layout is None else list(layout).index(t.axis))
        if data.dtype == np.int64:  # a 16x8 bias: DequantizeLinear takes int32, which holds such biases
            if np.any(np.abs(data) > np.iinfo(np.int32).max):
                raise UnsupportedOpError(f"the 16x8 bias '{t.name}' has codes beyond int32", "")
            data = data.astype(np.int32)
            t = TfliteTensor(t.index, t.name, t.shape, np.dtype(np.int32), data, t.scales, t.zero_points, t.axis)
        codes = self.const(data, f"{self.names[index]}_codes")
        extra = {} if axis is None else {"axis": axis}
        return self.node("DequantizeLinear", [codes, *self._params(t, axis)], [self.temp(self.names[index])], **extra)

    def write(self, index: int, raw: str) -> None:
        """Tensor `index` is the float value `raw`: quantized, through its own Q/DQ pair."""
        t = self.model.tensors[index]
        name = self.names[index]
        if not t.quantized or t.dtype == np.float32:
            self.readable[index] = self.node("Identity", [raw], [name])
            return
        if t.scales.size != 1:
            raise UnsupportedOpError(f"tensor '{t.name}' is quantized per channel: activations take one scale", "")
        params = self._params(t, None)
        q = self.node("QuantizeLinear", [raw, *params], [self.temp(f"{name}_q")])
        self.readable[index] = self.node("DequantizeLinear", [q, *params], [name])

    def activation(self, value: str, code: int) -> str:
        act = _ACTIVATIONS.get(code, "unknown")
        if act == "unknown":
            raise UnsupportedOpError(f"fused activation {code} is not supported", "")
        if act is None:
            return value
        kind, lo, hi = act
        if kind == "Relu":
            return self.node("Relu", [value])
        return self.node("Clip", [value, self.const(np.float32(lo), "min"), self.const(np.float32(hi), "max")])


def _same_pads(size: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite SAME: the output is ceil(size / stride), the odd padding column at the end."""
    out = -(-size // stride)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def _window_attrs(b: OnnxWriter, op: TfliteOperator, shape: tuple[int, ...], kernel: tuple[int, int],
                  dilation: tuple[int, int] = (1, 1)) -> dict:
    o = op.options
    strides = (int(o.get("StrideH", 1)), int(o.get("StrideW", 1)))
    if o.get("Padding") == "explicit":  # a fused dilated conv's (frontends/tflite_graph.py)
        pads = list(o["ExplicitPads"])
    elif int(o.get("Padding", 1)) == 0:  # SAME
        (t, bt), (l, r) = (_same_pads(shape[1 + k], kernel[k], strides[k], dilation[k]) for k in range(2))
        pads = [t, l, bt, r]
    else:
        pads = [0, 0, 0, 0]
    return {"strides": list(strides), "pads": pads}


def _conv(b: OnnxWriter, op: TfliteOperator, depthwise: bool) -> None:
    x_t, w_t = (b.model.tensors[i] for i in op.inputs[:2])
    o = op.options
    layout = (3, 0, 1, 2) if depthwise else (0, 3, 1, 2)  # [1, KH, KW, C*m] / OHWI -> O I H W
    w = b.read(op.inputs[1], layout)
    kernel = (w_t.shape[1], w_t.shape[2])
    dilation = (int(o.get("DilationHFactor", 1)), int(o.get("DilationWFactor", 1)))
    x = b.read(op.inputs[0])
    shape = x_t.shape
    if len(shape) == 3:  # a fused dilated conv (frontends/tflite_graph.py) reads the (1, W, C) map itself
        x = b.node("Unsqueeze", [x, b.const(np.array([1], np.int64), "axes")])
        shape = (shape[0], 1, *shape[1:])
    inputs = [b.node("Transpose", [x], perm=NHWC_TO_NCHW), w]
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        inputs.append(b.read(op.inputs[2]))
    attrs = _window_attrs(b, op, shape, kernel, dilation)
    attrs.update(dilations=list(dilation), kernel_shape=list(kernel), group=shape[3] if depthwise else 1)
    y = b.activation(b.node("Conv", inputs, **attrs), int(o.get("FusedActivationFunction", 0)))
    y = b.node("Transpose", [y], perm=NCHW_TO_NHWC)
    if len(b.model.tensors[op.outputs[0]].shape) == 3:
        y = b.node("Squeeze", [y, b.const(np.array([1], np.int64), "axes")])
    b.write(op.outputs[0], y)


def _pool(b: OnnxWriter, op: TfliteOperator, onnx_op: str) -> None:
    x_t = b.model.tensors[op.inputs[0]]
    o = op.options
    kernel = (int(o["FilterHeight"]), int(o["FilterWidth"]))
    attrs = _window_attrs(b, op, x_t.shape, kernel)
    attrs["kernel_shape"] = list(kernel)
    if onnx_op == "AveragePool":
        attrs["count_include_pad"] = 0  # TFLite averages only the taps inside
    y = b.node(onnx_op, [b.node("Transpose", [b.read(op.inputs[0])], perm=NHWC_TO_NCHW)], **attrs)
    y = b.activation(y, int(o.get("FusedActivationFunction", 0)))
    b.write(op.outputs[0], b.node("Transpose", [y], perm=NCHW_TO_NHWC))


def _fully_connected(b: OnnxWriter, op: TfliteOperator) -> None:
    """TFLite flattens the input to rows of the weights' width; keep_num_dims gives the rows back the
    input's leading dimensions."""
    w_t = b.model.tensors[op.inputs[1]]
    source = b.read(op.inputs[0])
    x = b.node("Reshape", [source, b.const(np.array([-1, w_t.shape[1]], np.int64), "shape")])
    inputs = [x, b.read(op.inputs[1])]
    if len(op.inputs) > 2 and op.inputs[2] >= 0:
        inputs.append(b.read(op.inputs[2]))
    y = b.activation(b.node("Gemm", inputs, transB=1), int(op.options.get("FusedActivationFunction", 0)))
    if op.options.get("KeepNumDims"):
        leading = b.node("Slice", [b.node("Shape", [source]), b.const(np.array([0], np.int64), "start"),
                                   b.const(np.array([-1], np.int64), "end")])
        shape = b.node("Concat", [leading, b.const(np.array([w_t.shape[0]], np.int64), "width")], axis=0)
        y = b.node("Reshape", [y, shape])
    b.write(op.outputs[0], y)


def _resize_nearest(b: OnnxWriter, op: TfliteOperator) -> None:
    """NHWC -> ONNX Resize (nearest) to the size input, with TFLite's coordinate rule (align_corners
    refused; half_pixel_centers or not, an integer factor repeats each step: the importer checks)."""
    if op.options.get("AlignCorners"):
        raise UnsupportedOpError("RESIZE_NEAREST_NEIGHBOR with align_corners is not supported", "")
    x_t = b.model.tensors[op.inputs[0]]
    size = np.asarray(b.model.tensors[op.inputs[1]].data).reshape(-1).astype(np.int64)
    sizes = b.const(np.array([x_t.shape[0], x_t.shape[3], *size], np.int64), "sizes")
    mode = ("half_pixel", "round_prefer_ceil") if op.options.get("HalfPixelCenters") else ("asymmetric", "floor")
    y = b.node("Resize", [b.node("Transpose", [b.read(op.inputs[0])], perm=NHWC_TO_NCHW), "", "", sizes],
               mode="nearest", coordinate_transformation_mode=mode[0], nearest_mode=mode[1])
    b.write(op.outputs[0], b.node("Transpose", [y], perm=NCHW_TO_NHWC))


def _tile(b: OnnxWriter, op: TfliteOperator) -> None:
    """ONNX Tile with the multiples (Keras' UpSampling1D: EXPAND_DIMS -> TILE -> RESHAPE, which the
    importer resolves as a nearest upsampling)."""
    repeats = b.node("Cast", [b.read(op.inputs[1])], to=TensorProto.INT64)
    b.write(op.outputs[0], b.node("Tile", [b.read(op.inputs[0]), repeats]))


def _pad(b: OnnxWriter, op: TfliteOperator) -> None:
    pads = b.model.tensors[op.inputs[1]].data.astype(np.int64)
    inputs = [b.read(op.inputs[0]), b.const(np.concatenate([pads[:, 0], pads[:, 1]]), "pads")]
    if len(op.inputs) > 2 and op.inputs[2] >= 0:  # PADV2's value, as a real number
        value = b.model.tensors[op.inputs[2]]
        real = (value.data.astype(np.float64) - (value.zero_points[0] if value.quantized else 0)) * \
            (value.scales[0] if value.quantized else 1.0)
        inputs.append(b.const(np.float32(real.reshape(-1)[0]), "pad_value"))
    b.write(op.outputs[0], b.node("Pad", inputs, mode="constant"))


def _elementwise(onnx_op: str) -> Callable[[OnnxWriter, TfliteOperator], None]:
    def translate(b: OnnxWriter, op: TfliteOperator) -> None:
        y = b.node(onnx_op, [b.read(i) for i in op.inputs])
        b.write(op.outputs[0], b.activation(y, int(op.options.get("FusedActivationFunction", 0))))
    return translate


def _unary(onnx_op: str, **attrs) -> Callable[[OnnxWriter, TfliteOperator], None]:
    def translate(b: OnnxWriter, op: TfliteOperator) -> None:
        extra = dict(attrs)
        if onnx_op == "LeakyRelu":
            extra["alpha"] = float(op.options.get("Alpha", 0.2))
        b.write(op.outputs[0], b.node(onnx_op, [b.read(op.inputs[0])], **extra))
    return translate


def _relu6(b: OnnxWriter, op: TfliteOperator) -> None:
    b.write(op.outputs[0], b.activation(b.read(op.inputs[0]), 3))


def _softmax(b: OnnxWriter, op: TfliteOperator) -> None:
    b.write(op.outputs[0], b.node("Softmax", [b.read(op.inputs[0])], axis=-1))


def _mean(b: OnnxWriter, op: TfliteOperator) -> None:
    axes = [int(a) for a in np.asarray(b.model.tensors[op.inputs[1]].data).reshape(-1)]
    keep = int(bool(op.options.get("KeepDims", False)))
    b.write(op.outputs[0], b.node("ReduceMean", [b.read(op.inputs[0])], axes=axes, keepdims=keep))


def _concatenation(b: OnnxWriter, op: TfliteOperator) -> None:
    y = b.node("Concat", [b.read(i) for i in op.inputs], axis=int(op.options.get("Axis", -1)))
    b.write(op.outputs[0], b.activation(y, int(op.options.get("FusedActivationFunction", 0))))


def _edge(b: OnnxWriter, op: TfliteOperator) -> None:
    """QUANTIZE from float / DEQUANTIZE to float: the same reals, the pair on the integer side."""
    b.write(op.outputs[0], b.node("Identity", [b.read(op.inputs[0])]))


TRANSLATORS: dict[str, Callable[[OnnxWriter, TfliteOperator], None]] = {
    "CONV_2D": lambda b, op: _conv(b, op, False),
    "DEPTHWISE_CONV_2D": lambda b, op: _conv(b, op, True),
    "FULLY_CONNECTED": _fully_connected,
    "MAX_POOL_2D": lambda b, op: _pool(b, op, "MaxPool"),
    "AVERAGE_POOL_2D": lambda b, op: _pool(b, op, "AveragePool"),
    "MEAN": _mean,
    "ADD": _elementwise("Add"), "SUB": _elementwise("Sub"), "MUL": _elementwise("Mul"),
    "PAD": _pad, "PADV2": _pad,
    "CONCATENATION": _concatenation,
    "RESHAPE": shape_ops.reshape, "SQUEEZE": shape_ops.squeeze, "EXPAND_DIMS": shape_ops.expand_dims,
    # shape arithmetic (a dynamic batch's reshape targets): folded to constants at import
    "SHAPE": shape_ops.shape, "STRIDED_SLICE": shape_ops.strided_slice, "PACK": shape_ops.pack, "REDUCE_PROD": lambda b, op: shape_ops.reduce(b, op, "ReduceProd"), "GATHER": shape_ops.gather,
    "TRANSPOSE": shape_ops.transpose,
    "RESIZE_NEAREST_NEIGHBOR": _resize_nearest, "TILE": _tile,
    "SOFTMAX": _softmax,
    "TANH": _unary("Tanh"), "LOGISTIC": _unary("Sigmoid"), "RELU": _unary("Relu"), "RELU6": _relu6,
    "LEAKY_RELU": _unary("LeakyRelu"), "HARD_SWISH": _unary("HardSwish"), "REDUCE_MAX": lambda b, op: shape_ops.reduce(b, op, "ReduceMax"),
    "QUANTIZE": _edge, "DEQUANTIZE": _edge,
    "UNIDIRECTIONAL_SEQUENCE_LSTM": translate_lstm,  # frontends/tflite_lstm.py
}


def tflite_to_onnx(model: TfliteModel, where: str) -> onnx.ModelProto:
    model = fuse_space_to_batch(model)
    model = TfliteModel(model.tensors, needed_operators(model), model.inputs, model.outputs)
    gaps = sorted({f"{op.code} (operator {op.index})" for op in model.operators if op.code not in TRANSLATORS})
    if gaps:
        raise UnsupportedOpError(f"{len(gaps)} operator(s) have no translation: {', '.join(gaps)} (supported: "
                                 f"{', '.join(sorted(TRANSLATORS))})", where)
    refused = not_exact_yet(model)
    if refused:
        raise UnsupportedOpError("; ".join(refused), where)
    b = OnnxWriter(model)
    inputs = []
    for index in model.inputs:
        t = model.tensors[index]
        name = b.names[index]
        inputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, list(t.shape)))
        if t.quantized and t.dtype != np.float32:
            params = b._params(t, None)
            q = b.node("QuantizeLinear", [name, *params], [b.temp(f"{name}_q")])
            b.readable[index] = b.node("DequantizeLinear", [q, *params], [b.temp(f"{name}_dq")])
        else:
            b.readable[index] = name
    for op in model.operators:
        b.layer = f"{op.code}_{op.index}"
        try:
            TRANSLATORS[op.code](b, op)
        except UnsupportedOpError as exc:
            raise UnsupportedOpError(f"operator {op.index} ({op.code}): {exc.message}", where) from None
    outputs = [helper.make_tensor_value_info(b.readable[i], TensorProto.FLOAT, list(model.tensors[i].shape))
               for i in model.outputs]
    graph = helper.make_graph(b.nodes, "tflite", inputs, outputs, initializer=b.inits)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)],
                                   producer_name="onnx2cmsis .tflite reader")
    onnx_model.ir_version = 8
    for key, value in sorted(b.metadata.items()):
        onnx_model.metadata_props.add(key=key, value=json.dumps(value, sort_keys=True))
    return onnx_model


def load_tflite(path: Path) -> onnx.ModelProto:
    """A .tflite file as QDQ ONNX (not yet normalized: frontends.read_model splits and normalizes it)."""
    return tflite_to_onnx(read_tflite(path), str(path))
