"""The .tflite reader's translations of the operators that only move or reshape values (RESHAPE,
SQUEEZE, EXPAND_DIMS, TRANSPOSE) and of a dynamic batch's shape arithmetic (SHAPE, STRIDED_SLICE, PACK,
REDUCE_PROD, GATHER: folded to constants at import at batch 1), and REDUCE_MAX. Each writes ONNX nodes
through the reader's OnnxWriter (frontends/tflite.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from onnx import TensorProto

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.frontends.tflite_reader import TfliteOperator

if TYPE_CHECKING:
    from onnx2cmsis.frontends.tflite import OnnxWriter


def reshape(b: OnnxWriter, op: TfliteOperator) -> None:
    """To its shape input (a constant, or what a dynamic batch's SHAPE -> STRIDED_SLICE -> PACK computes:
    ONNX's shape folding evaluates it at batch 1), else its NewShape option. A file's static shapes
    hold 1 where its signature is dynamic, so they are not what a reshape makes."""
    target = b.model.tensors[op.inputs[1]] if len(op.inputs) > 1 and op.inputs[1] >= 0 else None
    if target is not None and target.data is not None:
        shape = b.const(target.data.astype(np.int64).reshape(-1), "shape")
    elif target is not None:
        shape = b.node("Cast", [b.read(op.inputs[1])], to=TensorProto.INT64)
    else:
        shape = b.const(np.array(op.options.get("NewShape") or b.model.tensors[op.outputs[0]].shape, np.int64), "shape")
    b.write(op.outputs[0], b.node("Reshape", [b.read(op.inputs[0]), shape]))


def expand_dims(b: OnnxWriter, op: TfliteOperator) -> None:
    axis = int(np.asarray(b.model.tensors[op.inputs[1]].data).reshape(-1)[0])
    b.write(op.outputs[0], b.node("Unsqueeze", [b.read(op.inputs[0]), b.const(np.array([axis], np.int64), "axes")]))


def squeeze(b: OnnxWriter, op: TfliteOperator) -> None:
    dims = [int(d) for d in op.options.get("SqueezeDims", [])]
    axes = [b.const(np.array(dims, np.int64), "axes")] if dims else []
    b.write(op.outputs[0], b.node("Squeeze", [b.read(op.inputs[0]), *axes]))


def shape(b: OnnxWriter, op: TfliteOperator) -> None:
    b.write(op.outputs[0], b.node("Shape", [b.read(op.inputs[0])]))


def strided_slice(b: OnnxWriter, op: TfliteOperator) -> None:
    """With constant begin/end/strides: ONNX Slice (the masks as open ends), then Squeeze for
    shrink_axis_mask."""
    begin, end, strides = (np.asarray(b.model.tensors[i].data).reshape(-1).astype(np.int64) for i in op.inputs[1:4])
    o = op.options
    if int(o.get("EllipsisMask", 0)) or int(o.get("NewAxisMask", 0)):
        raise UnsupportedOpError("STRIDED_SLICE with an ellipsis or new-axis mask is not supported", "")
    big = np.iinfo(np.int64).max
    starts, ends = begin.copy(), end.copy()
    shrink = []
    for axis in range(len(begin)):
        if int(o.get("ShrinkAxisMask", 0)) >> axis & 1:
            ends[axis] = begin[axis] + 1 if begin[axis] != -1 else big
            shrink.append(axis)
            continue
        if int(o.get("BeginMask", 0)) >> axis & 1:
            starts[axis] = 0 if strides[axis] > 0 else big
        if int(o.get("EndMask", 0)) >> axis & 1:
            ends[axis] = big if strides[axis] > 0 else -big
    y = b.node("Slice", [b.read(op.inputs[0]), b.const(starts, "starts"), b.const(ends, "ends"),
                         b.const(np.arange(len(begin), dtype=np.int64), "axes"), b.const(strides, "steps")])
    if shrink:
        y = b.node("Squeeze", [y, b.const(np.array(shrink, np.int64), "axes")])
    b.write(op.outputs[0], y)


def pack(b: OnnxWriter, op: TfliteOperator) -> None:
    axis = int(op.options.get("Axis", 0))
    axes = b.const(np.array([axis], np.int64), "axes")
    parts = [b.node("Unsqueeze", [b.read(i), axes]) for i in op.inputs]
    b.write(op.outputs[0], b.node("Concat", parts, axis=axis))


def reduce(b: OnnxWriter, op: TfliteOperator, onnx_op: str) -> None:
    """REDUCE_PROD (shape arithmetic), REDUCE_MAX (a global max pool over time): the axes as given."""
    axes = [int(a) for a in np.asarray(b.model.tensors[op.inputs[1]].data).reshape(-1)]
    keep = int(bool(op.options.get("KeepDims", False)))
    b.write(op.outputs[0], b.node(onnx_op, [b.read(op.inputs[0])], axes=axes, keepdims=keep))


def gather(b: OnnxWriter, op: TfliteOperator) -> None:
    b.write(op.outputs[0], b.node("Gather", [b.read(op.inputs[0]), b.read(op.inputs[1])],
                                  axis=int(op.options.get("Axis", 0))))


def transpose(b: OnnxWriter, op: TfliteOperator) -> None:
    perm = b.model.tensors[op.inputs[1]].data
    b.write(op.outputs[0], b.node("Transpose", [b.read(op.inputs[0])], perm=[int(p) for p in perm]))
