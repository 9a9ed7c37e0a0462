"""A quantized (QDQ) ONNX model -> the float model it describes + the quantization its file fixes.

ONNX Runtime's `quantize_static`, PyTorch's quantization-aware training export and the `.tflite`
reader write a quantized model as float ops between QuantizeLinear/DequantizeLinear pairs: each
activation goes through Q -> DQ, each weight is a DequantizeLinear of an int8 initializer, each bias
one of an int32 initializer. The importer takes the float graph between the pairs (every pair
removed, every quantized constant replaced by its dequantized float value) and the quantization of
each value and constant by name (ir.tensor.FileQuantization): quantization then takes the file's
parameters where a calibrated range would otherwise decide them.

What maps exactly onto TFLite's integer kernels is taken as it is: int8; uint8 as int8 with the zero
point 128 lower (the same reals); int16 (or uint16 around 32768) with a zero point of 0. What does
not (an asymmetric int16, 4-bit or blocked quantization, a per-channel activation, an integer value
read by anything but a DequantizeLinear) is refused, every such node named at once.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.frontends.graph_constants import constant_values
from onnx2cmsis.ir.tensor import ConstQuant, FileQuantization, QuantParams

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
QDQ_DOMAINS = ("", "ai.onnx", "com.microsoft")  # ONNX Runtime writes 16-bit pairs below opset 21 in its own
# (code type, its zero point's offset to the signed type of the same width) for the types that map
_INT_TYPES = {np.dtype(np.int8): (8, 0), np.dtype(np.uint8): (8, 128), np.dtype(np.int16): (16, 0),
              np.dtype(np.uint16): (16, 32768), np.dtype(np.int32): (32, 0)}


def is_qdq(node: onnx.NodeProto) -> bool:
    return node.op_type in QDQ_OPS and node.domain in QDQ_DOMAINS


def _name(node: onnx.NodeProto, index: int) -> str:
    return f"node '{node.name or f'{node.op_type}_{index}'}' ({node.op_type})"


class _Pair:
    """One Q or DQ node's parameters: scale (float32), zero point and code type, axis."""

    def __init__(self, node: onnx.NodeProto, consts: dict[str, np.ndarray], where: str,
                 codes_type: np.dtype | None = None) -> None:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if attrs.get("block_size", 0):
            raise ValueError(f"{where}: blocked quantization (block_size {attrs['block_size']}) is not supported")
        missing = [v for v in node.input[1:3] if v and v not in consts]
        if missing:
            raise ValueError(f"{where}: its scale or zero point '{missing[0]}' is not a constant")
        self.scale = np.asarray(consts[node.input[1]], np.float32)
        if len(node.input) > 2 and node.input[2]:
            self.zero_point = np.asarray(consts[node.input[2]])
        elif node.op_type == "DequantizeLinear" and node.input[0] in consts:
            self.zero_point = np.zeros((), consts[node.input[0]].dtype)
        elif node.op_type == "DequantizeLinear" and codes_type is not None:  # its input's type: the Q's
            self.zero_point = np.zeros((), codes_type)
        else:  # ONNX: no zero point means uint8 codes (opset 21's output_dtype aside)
            dtype = attrs.get("output_dtype", 0)
            self.zero_point = np.zeros((), helper.tensor_dtype_to_np_dtype(dtype) if dtype else np.uint8)
        if self.zero_point.dtype not in _INT_TYPES:
            raise ValueError(f"{where}: {self.zero_point.dtype} codes are not supported (int8, uint8, int16 and "
                             "int32 biases are)")
        if not np.all(np.isfinite(self.scale)) or np.any(self.scale <= 0):
            raise ValueError(f"{where}: its scale {self.scale.reshape(-1)[:4].tolist()} is not positive and finite")
        self.axis = int(attrs.get("axis", 1)) if self.scale.size > 1 else None
        self.bits, self.offset = _INT_TYPES[self.zero_point.dtype]

    def same_as(self, other: _Pair, rank: int | None) -> bool:
        """The same parameters (axes compared modulo `rank` where it is known)."""
        axes = (self.axis, other.axis)
        if rank and None not in axes:
            axes = (axes[0] % rank, axes[1] % rank)
        return (self.zero_point.dtype == other.zero_point.dtype and axes[0] == axes[1]
                and np.array_equal(self.scale, other.scale)
                and np.array_equal(self.zero_point.reshape(-1), other.zero_point.reshape(-1)))

    def activation(self, where: str) -> QuantParams:
        """These parameters as an activation's (per tensor, TFLite's signed codes)."""
        if self.scale.size > 1:
            raise ValueError(f"{where}: a per-channel quantized activation is not supported (TFLite's kernels take "
                             "one scale per activation)")
        zp = int(self.zero_point.reshape(-1)[0]) - self.offset
        if self.bits == 16 and zp != 0:
            raise ValueError(f"{where}: int16 activations with zero point {zp} (asymmetric): TFLite's 16x8 kernels "
                             "take symmetric int16 (zero point 0); quantize with ActivationSymmetric=True")
        if self.bits == 32:
            raise ValueError(f"{where}: int32 activations are not supported")
        return QuantParams(float(self.scale.reshape(-1)[0]), zp, self.bits)

    def broadcast(self, values: np.ndarray, rank: int) -> np.ndarray:
        """`values` (scale or zero point) shaped to broadcast against a rank-`rank` tensor."""
        if self.axis is None:
            return values.reshape(())
        shape = [1] * rank
        shape[self.axis % rank] = -1
        return values.reshape(shape)

    def constant(self, codes: np.ndarray) -> tuple[np.ndarray, ConstQuant]:
        """An integer constant's float value, as ONNX Runtime dequantizes it, and its quantization."""
        axis = None if self.axis is None else self.axis % codes.ndim
        zp = self.broadcast(self.zero_point.astype(np.int64), codes.ndim)
        values = (codes.astype(np.int64) - zp).astype(np.float32) * self.broadcast(self.scale, codes.ndim)
        return values.astype(np.float32), ConstQuant(codes, self.scale, self.zero_point, axis, self.bits,
                                                     self.offset == 0)

    def quantized(self, values: np.ndarray) -> np.ndarray:
        """A float constant's codes, as QuantizeLinear computes them (float32 division, halves to even)."""
        info = np.iinfo(self.zero_point.dtype)
        q = np.rint(values.astype(np.float32) / self.broadcast(self.scale, values.ndim)).astype(np.int64)
        q = q + self.broadcast(self.zero_point.astype(np.int64), values.ndim)
        return np.clip(q, info.min, info.max).astype(self.zero_point.dtype)


def split_qdq(model: onnx.ModelProto, source: str) -> tuple[onnx.ModelProto, FileQuantization | None]:
    """The float model between a QDQ model's pairs and the quantization they give (None: the model has
    no Q/DQ nodes, and is returned as it is)."""
    g = model.graph
    if not any(is_qdq(n) for n in g.node):
        return model, None
    consts = constant_values(g)
    producer = {o: n for n in g.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in g.node:
        for v in n.input:
            consumers[v].append(n)
    index = {id(n): i for i, n in enumerate(g.node)}
    fq = FileQuantization()
    pinned_by: dict[str, str] = {}  # value -> the node that quantized it (for the conflict message)
    alias: dict[str, str] = {}  # a DQ output -> the float value it stands for
    floats: dict[str, np.ndarray] = {}  # a DQ output of a constant -> its float value
    problems: list[str] = []
    for n in g.node:
        if not is_qdq(n):
            continue
        where = _name(n, index[id(n)])
        if n.op_type == "QuantizeLinear":
            readers = [c for c in consumers[n.output[0]] if not (is_qdq(c) and c.op_type == "DequantizeLinear")]
            if readers or n.output[0] in {o.name for o in g.output}:
                what = (f"{_name(readers[0], index[id(readers[0])])} reads" if readers else "the model outputs")
                problems.append(f"{where}: {what} its integer output: only float ops between QuantizeLinear/"
                                "DequantizeLinear pairs are supported")
            continue
        try:
            x = n.input[0]
            q = producer.get(x)
            if x in consts:  # a quantized constant: weights, biases
                dq = _Pair(n, consts, where)
                floats[n.output[0]], fq.constants[n.output[0]] = dq.constant(np.asarray(consts[x]))
                continue
            if q is None or not is_qdq(q) or q.op_type != "QuantizeLinear":
                raise ValueError(f"{where}: it reads '{x}', neither a constant nor a QuantizeLinear's output")
            qwhere = _name(q, index[id(q)])
            qp = _Pair(q, consts, qwhere)
            dq = _Pair(n, consts, where, qp.zero_point.dtype)
            rank = np.ndim(consts[q.input[0]]) if q.input[0] in consts else None
            if not qp.same_as(dq, rank):
                raise ValueError(f"{qwhere} and {where} quantize with different parameters")
            if q.input[0] in consts:  # a float constant the file quantizes (what QAT exports write)
                codes = qp.quantized(np.asarray(consts[q.input[0]]))
                floats[n.output[0]], fq.constants[n.output[0]] = dq.constant(codes)
                continue
            value = q.input[0]
            while value in alias:  # a DQ output quantized again
                value = alias[value]
            params = dq.activation(where)
            if value in fq.activations and fq.activations[value] != params:
                raise ValueError(f"'{value}' is quantized twice, by {pinned_by[value]} and {qwhere}, with different "
                                 "parameters (a requantization between two Q/DQ pairs is not supported)")
            fq.activations[value], pinned_by[value] = params, qwhere
            alias[n.output[0]] = value
        except ValueError as exc:
            problems.append(str(exc))
    if problems:
        raise UnsupportedOpError(f"the quantized model cannot be read as it is: {'; '.join(problems)}", source)
    return _float_model(model, fq, alias, floats), fq


def _float_model(model: onnx.ModelProto, fq: FileQuantization, alias: dict[str, str],
                 floats: dict[str, np.ndarray]) -> onnx.ModelProto:
    """The model without its Q/DQ nodes: readers of a DQ output read the float value it stands for,
    quantized constants become float initializers, and a model output keeps its name (the float value
    it was dequantized from takes it)."""
    g = model.graph
    for k in list(alias):
        while alias[k] in alias:
            alias[k] = alias[alias[k]]
    rename: dict[str, str] = {}
    copies: list[tuple[str, str]] = []  # (value, output) for an output that cannot take over its value's name
    boundary = {i.name for i in g.input} | {o.name for o in g.output}
    for out in g.output:
        value = alias.get(out.name)
        if value is None:
            continue
        if value not in rename and value not in boundary:
            rename[value] = out.name  # the producer writes the output's name, and readers read it
            fq.activations[out.name] = fq.activations.pop(value)
        else:  # a second output of one value, a model input or output dequantized: a copy (the importer
            copies.append((value, out.name))  # names what it makes of them)
            fq.activations[out.name] = fq.activations[rename.get(value, value)] if value in rename \
                else fq.activations[value]
    resolve = {**{k: rename.get(v, v) for k, v in alias.items()}, **rename}
    nodes = []
    for n in g.node:
        if is_qdq(n):
            continue
        m = onnx.NodeProto()
        m.CopyFrom(n)
        m.ClearField("input")
        m.input.extend(resolve.get(v, v) for v in n.input)
        m.ClearField("output")
        m.output.extend(rename.get(v, v) for v in n.output)
        nodes.append(m)
    nodes += [helper.make_node("Identity", [rename.get(value, value)], [name], name=f"{name}__copy")
              for value, name in copies]
    used = {v for n in nodes for v in n.input} | {o.name for o in g.output}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    kept = [i for i in g.initializer if i.name in used and i.name not in floats]
    del out.graph.initializer[:]
    out.graph.initializer.extend(kept)
    out.graph.initializer.extend(numpy_helper.from_array(v, k) for k, v in sorted(floats.items()) if k in used)
    fq.constants = {k: v for k, v in fq.constants.items() if k in used}
    dropped = {i.name for i in g.initializer} - {i.name for i in out.graph.initializer}
    inputs = [i for i in g.input if i.name not in dropped]  # old exports list initializers as inputs too
    del out.graph.input[:]
    out.graph.input.extend(inputs)
    known = {v for n in nodes for v in n.output} | used
    values = [v for v in g.value_info if v.name in known and v.name not in rename]
    del out.graph.value_info[:]
    out.graph.value_info.extend(values)
    return out


def saturating_float_model(model: onnx.ModelProto, fq: FileQuantization) -> onnx.ModelProto:
    """The float model the quantized file describes, without its rounding: split_qdq's float graph
    with each quantized value clipped to the range its integers hold. A quantizer drops a Relu whose
    Q/DQ pair clips at zero already (ONNX Runtime does), so without the clips the float graph would
    not be the file's model. This is the float reference; the importer reads split_qdq's graph, whose
    quantization clips by itself."""
    g = model.graph
    inputs = {i.name for i in g.input}
    clips: list[onnx.NodeProto] = []
    bounds: list[onnx.TensorProto] = []
    rename: dict[str, str] = {}
    for k, (value, q) in enumerate(sorted(fq.activations.items())):
        lo, hi = (-(1 << (q.bits - 1)), (1 << (q.bits - 1)) - 1)
        names = (f"{value}__file_min", f"{value}__file_max")
        bounds += [numpy_helper.from_array(np.float32(q.scale * (lo - q.zero_point)), names[0]),
                   numpy_helper.from_array(np.float32(q.scale * (hi - q.zero_point)), names[1])]
        if value in inputs:  # the input keeps its name: its readers read the clipped copy
            rename[value] = f"{value}__clipped"
            clips.append(helper.make_node("Clip", [value, *names], [rename[value]], name=f"clip_{k}"))
        else:  # the producer writes a new name, and the clip the value's own (the calibration's)
            rename[value] = f"{value}__unclipped"
            clips.append(helper.make_node("Clip", [rename[value], *names], [value], name=f"clip_{k}"))
    nodes = []
    for n in g.node:
        m = onnx.NodeProto()
        m.CopyFrom(n)
        for i, v in enumerate(m.input):
            if v in rename and v in inputs:
                m.input[i] = rename[v]
        for i, v in enumerate(m.output):
            if v in rename:
                m.output[i] = rename[v]
        nodes.append(m)
    produced_by = {o: i for i, n in enumerate(nodes) for o in n.output}
    ordered = list(nodes)
    for clip in reversed(clips):  # each right after what it reads (inputs first)
        at = produced_by.get(clip.input[0], -1)
        ordered.insert(at + 1, clip)
        produced_by = {o: i for i, n in enumerate(ordered) for o in n.output}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(ordered)
    out.graph.initializer.extend(bounds)
    return out
