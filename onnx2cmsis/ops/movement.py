"""Data movement: ONNX ops that only rearrange elements, and the IR copies layout changes become.

`MovementHandler` imports Reshape/Flatten/Squeeze/Unsqueeze/Identity/Dropout/Transpose/Tile/Slice/
Split/Expand/Gather (constant indices) without emitting anything: it applies the op, with numpy, to the value's index array
(or folds it when the input is a constant). The importer materializes a layout only where a compute
op consumes it (ir/layout.py), as one of: a view, a transpose (ops/layout.py), a nearest upsampling
(ops/resize.py), a crop along time (`slice1d`) or, for any other arrangement, a `gather` through an
index table. All of them copy bytes, so they keep the input's quantization (a TFLite rule).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import numpy as np

from onnx2cmsis.errors import NotExportable, UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import CArray, ImportContext, KernelCall, OnnxNodeView, OpHandler, TfliteContext, TimeGeometry

INT64_MAX = np.iinfo(np.int64).max


def _const_input(node: OnnxNodeView, ctx: ImportContext, i: int, what: str) -> np.ndarray | None:
    if len(node.inputs) <= i or not node.inputs[i]:
        return None
    c = ctx.const(node.inputs[i])
    if c is None:
        raise UnsupportedOpError(f"{node.op_type} with a computed {what} is not supported", node.where)
    return c.astype(np.int64).reshape(-1)


def _slice_fn(node: OnnxNodeView, ctx: ImportContext) -> Callable[[np.ndarray], np.ndarray]:
    starts = _const_input(node, ctx, 1, "starts")
    if starts is None:  # opset < 10 keeps them as attributes
        starts = np.array(node.attr("starts"), np.int64)
        ends = np.array(node.attr("ends"), np.int64)
        axes = node.attr("axes")
        steps = None
    else:
        ends = _const_input(node, ctx, 2, "ends")
        axes = _const_input(node, ctx, 3, "axes")
        steps = _const_input(node, ctx, 4, "steps")
    axes = list(range(len(starts))) if axes is None else [int(a) for a in axes]
    steps = [1] * len(starts) if steps is None else [int(s) for s in steps]

    def apply(x: np.ndarray) -> np.ndarray:
        index: list[slice] = [slice(None)] * x.ndim
        for start, end, axis, step in zip(starts.tolist(), ends.tolist(), axes, steps):
            dim, axis = x.shape[axis % x.ndim], axis % x.ndim
            start = start + dim if start < 0 else start
            end = end + dim if end < 0 else end
            if step > 0:
                index[axis] = slice(min(max(start, 0), dim), min(max(end, 0), dim), step)
            else:
                s, e = min(max(start, 0), dim - 1), max(min(end, dim - 1), -1)
                index[axis] = slice(s, None if e < 0 else e, step)
        return x[tuple(index)]

    return apply


def _split_fn(node: OnnxNodeView, ctx: ImportContext) -> Callable[[np.ndarray], list[np.ndarray]]:
    axis = int(node.attr("axis", 0))
    sizes = _const_input(node, ctx, 1, "split")
    if sizes is None and node.attr("split") is not None:
        sizes = np.array(node.attr("split"), np.int64)

    def apply(x: np.ndarray) -> list[np.ndarray]:
        if sizes is None:
            n = len(node.outputs)
            per = -(-x.shape[axis] // n)
            cuts = [per * i for i in range(1, n)]
        else:
            cuts = np.cumsum(sizes)[:-1].tolist()
        return np.split(x, cuts, axis=axis)

    return apply


class MovementHandler(OpHandler):
    """Imports pure data movement; never appears in the IR."""

    op = "movement"
    onnx_ops = ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout", "Transpose", "Tile", "Slice",
                "Split", "Expand", "Gather")

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        op = node.op_type
        if op == "Dropout" and len(node.outputs) > 1 and node.outputs[1]:
            raise UnsupportedOpError("Dropout with a mask output is not supported", node.where)
        if op == "Identity" and _requantizes(node, ctx):  # a .tflite's QUANTIZE between integer types
            ctx.delegate("requantize", node)
            return
        if op in ("Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Dropout"):
            shape = ctx.full_shape(node.outputs[0])
            fn: Callable[[np.ndarray], object] = lambda x: x.reshape(shape)
        elif op == "Transpose":
            perm = node.attr("perm")
            fn = lambda x: np.transpose(x, perm)
        elif op == "Tile":
            repeats = _const_input(node, ctx, 1, "repeats")
            fn = lambda x: np.tile(x, repeats.tolist())
        elif op == "Expand":
            shape = ctx.full_shape(node.outputs[0])
            fn = lambda x: np.broadcast_to(x, shape).copy()
        elif op == "Slice":
            fn = _slice_fn(node, ctx)
        elif op == "Gather":  # constant indices (e.g. a sequence's last step): a selection
            indices = ctx.const(node.inputs[1]) if len(node.inputs) > 1 else None
            if indices is None:
                raise UnsupportedOpError("Gather with computed indices is not supported", node.where)
            axis = int(node.attr("axis", 0))
            fn = lambda x: np.take(x, indices.astype(np.int64), axis=axis)
        else:
            fn = _split_fn(node, ctx)
        outputs = [o for o in node.outputs[:1]] if op != "Split" else list(node.outputs)

        def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
            out = fn(arrays[0])
            return list(out) if isinstance(out, list) else [out]

        ctx.move(outputs, node.inputs[:1], run)


def _requantizes(node: OnnxNodeView, ctx: ImportContext) -> bool:
    """The model file quantizes the Identity's input and output differently: a requantization."""
    q_in, q_out = ctx.activation_quant(node.inputs[0]), ctx.activation_quant(node.outputs[0])
    return q_in is not None and q_out is not None and q_in != q_out


class Slice1DHandler(OpHandler):
    """A crop along time of a (W, C) tensor: one contiguous byte range, copied."""

    op = "slice1d"
    activation_bits = (8, 16)

    def time_geometry(self, node: Node, graph: Graph) -> TimeGeometry | None:
        return TimeGeometry(pad_left=-node.attrs["start"])  # output column j is input column j + start

    def time_slice(self, node: Node, pad_left: int, pad_right: int, out_w: int) -> Node:
        return replace(node, attrs={**node.attrs, "start": 0, "width": out_w})

    def retimed(self, node: Node, graph: Graph, widths: list[int]) -> Node:
        """A crop that ends at its input's last column (a recurrent layer's last step) still does."""
        if node.attrs["start"] + node.attrs["width"] != graph.tensors[node.inputs[0]].shape[0]:
            return node
        return replace(node, attrs={**node.attrs, "start": widths[0] - node.attrs["width"]})

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [(node.attrs["width"], input_shapes[0][1])]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        graph.tensors[node.output].quant = graph.tensors[node.inputs[0]].quant

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        start = node.attrs["start"]
        return [inputs[0][:, start:start + node.attrs["width"]].copy()]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        w, c = graph.tensors[node.inputs[0]].shape
        return KernelCall(template="slice1d.c.j2", kernel="own loop (memmove)", context={
            "w_in": w, "c": c, "start": node.attrs["start"], "width": node.attrs["width"]})

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        fb = ex.fb
        _, c = ex.graph.tensors[node.inputs[0]].shape
        begin = ex.const(np.array([0, 0, node.attrs["start"], 0], np.int32), fb.TensorType.INT32, f"{node.output}_begin")
        size = ex.const(np.array([1, 1, node.attrs["width"], c], np.int32), fb.TensorType.INT32, f"{node.output}_size")
        ex.op(fb.BuiltinOperator.SLICE, [ex.activation(node.inputs[0]), begin, size], [ex.activation(node.output)],
              fb.BuiltinOptions.SliceOptions, fb.SliceOptionsT())


class GatherHandler(OpHandler):
    """Any other rearrangement: out[i] = in[index[i]] through a constant index table."""

    op = "gather"
    activation_bits = (8, 16)

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [tuple(node.attrs["shape"])]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        graph.tensors[node.output].quant = graph.tensors[node.inputs[0]].quant

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        x = inputs[0]
        return [x.reshape(len(x), -1)[:, node.attrs["index"]].reshape(len(x), *node.attrs["shape"])]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        index = node.attrs["index"]
        ctype = "uint16_t" if graph.tensors[node.inputs[0]].size <= 0x10000 else "uint32_t"
        return KernelCall(template="gather.c.j2", kernel="own loop (index table)", context={"count": index.size},
                          arrays=[CArray("index", ctype, index.astype(np.uint16 if ctype == "uint16_t" else np.uint32),
                                         "source byte of every output byte")])

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        fb = ex.fb
        shape = ex.graph.tensors[node.inputs[0]].shape
        if len(shape) == 2 and tuple(node.attrs["shape"]) == tuple(shape) and np.array_equal(
                node.attrs["index"], np.arange(int(np.prod(shape))).reshape(shape)[::-1].reshape(-1)):
            # the steps in reverse order (a backward LSTM's): REVERSE_V2 along time, int8 and int16
            axis = ex.const(np.array([2], np.int32), fb.TensorType.INT32, f"{node.output}_axis")
            ex.op(fb.BuiltinOperator.REVERSE_V2, [ex.activation(node.inputs[0]), axis], [ex.activation(node.output)],
                  fb.BuiltinOptions.ReverseV2Options, fb.ReverseV2OptionsT())
            return
        if ex.graph.tensors[node.inputs[0]].quant.bits == 16:
            raise NotExportable("TFLite-Micro's GATHER has no int16 kernel", node.name)
        src, dst = ex.activation(node.inputs[0]), ex.activation(node.output)
        index = node.attrs["index"].astype(np.int32)
        flat_src = ex.me.Tensor(shape=[int(np.prod(src.shape))], dtype=src.dtype,
                                quantization=src.quantization, name=f"{node.output}_flat_in")
        flat_dst = ex.me.Tensor(shape=[index.size], dtype=dst.dtype, quantization=dst.quantization,
                                name=f"{node.output}_flat_out")
        ex.reshape(src, flat_src)
        opts = fb.GatherOptionsT()
        opts.axis, opts.batchDims = 0, 0
        ex.op(fb.BuiltinOperator.GATHER, [flat_src, ex.const(index, fb.TensorType.INT32, f"{node.output}_index")],
              [flat_dst], fb.BuiltinOptions.GatherOptions, opts)
        ex.reshape(flat_dst, dst)
