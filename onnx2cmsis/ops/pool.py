"""1D pooling: MaxPool / AveragePool / global max -> arm_max_pool_s8 / arm_avgpool_s8 (_s16 at 16x8).

Outputs keep the input's quantization (a TFLite rule), so pooling averages or compares raw codes.
GlobalMaxPool and ReduceMax over time are pools whose kernel spans the whole width; the global
averages are ops/mean.py's.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from onnx2cmsis.errors import NotExportable, UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ir.window import Window
from onnx2cmsis.ops.base import (
    ImportContext,
    KernelCall,
    OnnxNodeView,
    TfliteContext,
    TimeGeometry,
    check_uint16,
    explicit_pads,
    fused_activation_range,
    int_attr_list,
    spatial_1d,
)
from onnx2cmsis.arith.rules import int_range, saturate
from onnx2cmsis.ops.windowed import WindowedOp, window_of

GLOBAL_OPS = ("GlobalMaxPool", "ReduceMax")


def _reduced_axes(node: OnnxNodeView, ctx: ImportContext, rank: int) -> list[int]:
    """Logical axes a global pool or Reduce* op averages/maxes over."""
    if node.op_type.startswith("Global"):
        return list(range(1, rank))
    axes = node.attr("axes")
    if axes is None and len(node.inputs) > 1 and node.inputs[1]:
        const = ctx.const(node.inputs[1])
        if const is None:
            raise UnsupportedOpError(f"{node.op_type} with computed axes is not supported", node.where)
        axes = const.reshape(-1).tolist()
    if axes is None:
        raise UnsupportedOpError(f"{node.op_type} over every axis is not supported", node.where)
    full = sorted(int(a) % (rank + 1) for a in axes)
    if 0 in full:
        raise UnsupportedOpError(f"{node.op_type} over the batch axis is not supported", node.where)
    return [a - 1 for a in full]


def add_global_pool(node: OnnxNodeView, ctx: ImportContext, op: str) -> None:
    """A pool over the whole of time: (W, C) -> (C,), written by the pool itself (attribute "vector"),
    so a global average or max stays one layer, not a pool and a view; a fully reduced (scalar)
    output is the (1, C) pool and a view."""
    shape = ctx.logical_shape(node.inputs[0])
    reduced = _reduced_axes(node, ctx, len(shape))
    kept = [a for a in range(len(shape)) if a not in reduced]
    if sum(shape[a] > 1 for a in reduced) > 1 or sum(shape[a] > 1 for a in kept) > 1:
        raise UnsupportedOpError(f"{node.op_type} over axes {reduced} of {list(shape)} is not a pool over time",
                                 node.where)
    time = next((a for a in reduced if shape[a] > 1), reduced[0])
    channel = next((a for a in kept if shape[a] > 1), kept[0] if kept else None)
    if channel is None:
        raise UnsupportedOpError(f"{node.op_type} over every axis is not supported", node.where)
    c = shape[channel]
    out_shape = ctx.logical_shape(node.outputs[0])
    out_channel = next((a for a, n in enumerate(out_shape) if n > 1), 0)
    if len(out_shape):
        out = ctx.tensor(node.outputs[0], (out_channel,))
        ctx.add_node(Node(node.name, op, [ctx.tensor(node.inputs[0], (time, channel))], [out],
                          attrs={"window": Window(shape[time]), "vector": True},
                          origin=node.op_type))
        return
    pooled = ctx.new_tensor((1, c), node.outputs[0] + "_pooled", calib_name=node.outputs[0])
    ctx.add_node(Node(node.name, op, [ctx.tensor(node.inputs[0], (time, channel))], [pooled],
                      attrs={"window": Window(shape[time])}, origin=node.op_type))
    out = ctx.tensor(node.outputs[0], (out_channel,) if len(out_shape) else ())
    ctx.add_node(Node(node.name, "reshape", [pooled], [out], origin=node.op_type))


def _window_taps(window: Window, w_in: int) -> tuple[np.ndarray, np.ndarray]:
    """Input index of every tap of every window, clipped into range, and which taps are real."""
    taps = window.taps(window.out_width(w_in))
    valid = (taps >= 0) & (taps < w_in)
    return np.clip(taps, 0, w_in - 1), valid


def _windowed_pool(node: OnnxNodeView, ctx: ImportContext, op: str) -> tuple[Node, int, int]:
    """Node, the model's right padding and input width for MaxPool / AveragePool with their attributes.

    The window's own right padding is what the model's output width reaches: with ceil_mode more than
    the model's pads, with a last window ending inside the input none."""
    node, axes = spatial_1d(node, ctx, [int(k) for k in node.attr("kernel_shape", [1])])
    w_in = ctx.logical_shape(node.inputs[0])[axes[0]]
    (k,) = int_attr_list(node, "kernel_shape", [1], 1)
    (stride,) = int_attr_list(node, "strides", [1], 1)
    (dilation,) = int_attr_list(node, "dilations", [1], 1)
    if dilation != 1 and op != "maxpool1d":
        raise UnsupportedOpError(f"{node.op_type} with dilation {dilation} is not supported", node.where)
    pad_l, pad_r = explicit_pads(node, w_in, k, stride, dilation)
    out_w = ctx.logical_shape(node.outputs[0])[axes[0]]
    window = Window(k, stride, dilation, pad_l)
    window = replace(window, pad_right=window.right_pad_for(w_in, out_w))
    if window.out_width(w_in) != out_w:
        raise UnsupportedOpError(f"{node.op_type} declares {out_w} output columns, fewer than its pads give",
                                 node.where)
    if not _window_taps(window, w_in)[1].any(axis=1).all():
        # ceil_mode can declare a last window that starts in the padding: ONNX shape inference keeps
        # it, ONNX Runtime and PyTorch drop it. With no agreed meaning, refuse rather than pick one.
        raise UnsupportedOpError(f"{node.op_type} has an output window that covers only padding (ceil_mode: ONNX "
                                 "keeps it, ONNX Runtime drops it; export with ceil_mode=0 or other padding)",
                                 node.where)
    return Node(node.name, op, [ctx.tensor(node.inputs[0], axes)], [ctx.tensor(node.outputs[0], axes)],
                attrs={"window": window}, origin=node.op_type), pad_r, w_in


class MaxPool1DHandler(WindowedOp):
    op = "maxpool1d"
    activation_bits = (8, 16)
    onnx_ops = ("MaxPool", "GlobalMaxPool", "ReduceMax")
    fuses_activation = True  # a clamp in the (shared) input/output quantization

    def time_geometry(self, node: Node, graph: Graph) -> TimeGeometry | None:
        if window_of(node).out_width(graph.tensors[node.inputs[0]].shape[0]) == 1:
            return None  # a global pool: the head of a stream
        return super().time_geometry(node, graph)

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        if node.op_type in GLOBAL_OPS:
            add_global_pool(node, ctx, self.op)
            return
        if len(node.outputs) > 1 and node.outputs[1]:
            raise UnsupportedOpError("MaxPool with an Indices output is not supported", node.where)
        ctx.add_node(_windowed_pool(node, ctx, self.op)[0])

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        c = input_shapes[0][1]
        # "vector": a global max whose model output drops the time axis writes (C,), the same bytes
        return [(c,) if node.attrs.get("vector") else (window_of(node).out_width(input_shapes[0][0]), c)]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        graph.tensors[node.output].quant = graph.tensors[node.inputs[0]].quant
        node.qparams = {"act_range": fused_activation_range(node, graph)}

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        x = inputs[0]
        bits = graph.tensors[node.output].quant.bits
        taps, valid = _window_taps(window_of(node), x.shape[1])
        windows = np.where(valid[:, :, None], x[:, taps], int_range(bits)[0])  # a padded tap never wins
        pooled = saturate(windows.max(axis=2), bits, *node.qparams["act_range"])
        return [pooled.reshape(len(x), *graph.tensors[node.output].shape)]

    def _context(self, node: Node, graph: Graph) -> dict:
        (w_in, c), window = graph.tensors[node.inputs[0]].shape, window_of(node)
        bits = graph.tensors[node.output].quant.bits
        return {"w_in": w_in, "c": c, "w_out": window.out_width(w_in), "k": window.kernel, "stride": window.stride,
                "pad": window.pad_left, "dilation": window.dilation, "act_min": node.qparams["act_range"][0],
                "act_max": node.qparams["act_range"][1], "type_min": int_range(bits)[0], "s": f"s{bits}"}

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        ctx = self._context(node, graph)
        if ctx["dilation"] != 1 or max(ctx["w_in"], ctx["c"], ctx["k"], ctx["w_out"]) > 0xFFFF:
            # CMSIS-NN has no dilated max pool and casts dimensions to uint16: an own loop covers both
            return KernelCall(template="maxpool1d_loop.c.j2", kernel="own loop", context=ctx)
        kernel = f"arm_max_pool_{ctx['s']}"
        return KernelCall(template="maxpool1d.c.j2", kernel=kernel, context=ctx, functions=[kernel])

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        fb, window = ex.fb, window_of(node)
        w_in, c = ex.graph.tensors[node.inputs[0]].shape
        k, s, p = window.kernel, window.stride, window.pad_left
        if window.dilation != 1:
            raise NotExportable("TFLite's MAX_POOL_2D has no dilation", node.name)
        src = ex.activation(node.inputs[0])
        pad_r = window.right_pad_for(w_in, window.out_width(w_in))
        if p or pad_r:
            # PADV2 with the lowest code then VALID: a padded tap never wins the max, as CMSIS-NN skips it.
            q = ex.graph.tensors[node.inputs[0]].quant
            padded = ex.me.Tensor(shape=[1, 1, w_in + p + pad_r, c], dtype=src.dtype,
                                  quantization=src.quantization, name=f"{node.output}_padded")
            pads = ex.const(np.array([[0, 0], [0, 0], [p, pad_r], [0, 0]], np.int32), fb.TensorType.INT32,
                            f"{node.output}_pads")
            low = ex.const(np.array([int_range(q.bits)[0]], q.dtype), src.dtype, f"{node.output}_pad_value",
                           src.quantization)
            ex.op(fb.BuiltinOperator.PADV2, [src, pads, low], [padded], fb.BuiltinOptions.PadV2Options,
                  fb.PadV2OptionsT())
            src = padded
        opts = fb.Pool2DOptionsT()
        opts.padding = fb.Padding.VALID
        opts.strideW, opts.strideH = s, 1
        opts.filterWidth, opts.filterHeight = k, 1
        opts.fusedActivationFunction = ex.fused(node)
        out = ex.as_feature_map(node.output, output=True) if node.attrs.get("vector") else ex.activation(node.output)
        ex.op(fb.BuiltinOperator.MAX_POOL_2D, [src], [out], fb.BuiltinOptions.Pool2DOptions, opts)


class AvgPool1DHandler(MaxPool1DHandler):
    """Average of the valid taps, rounded half away from zero (arm_avgpool_s8 == TFLite AVERAGE_POOL_2D).

    PyTorch's default count_include_pad=1 divides by the full kernel: that is a Pad with the zero
    point (a real 0.0) followed by an unpadded average, so it is imported as exactly that.
    """

    op = "avgpool1d"
    onnx_ops = ("AveragePool",)  # the global averages are ops/mean.py's (they requantize)

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        pool, pad_r, w_in = _windowed_pool(node, ctx, self.op)
        window = window_of(pool)
        if int(node.attr("count_include_pad", 0)) and (window.pad_left or pad_r):
            padded_w = w_in + window.pad_left + pad_r
            if window.sliced(0, 0).out_width(padded_w) != window.out_width(w_in):
                raise UnsupportedOpError("AveragePool with count_include_pad=1 and ceil_mode windows past the "
                                         "padding is not supported", node.where)
            c = ctx.physical_shape(pool.inputs[0])[1]
            padded = ctx.new_tensor((padded_w, c), node.outputs[0] + "_padded")
            ctx.add_node(Node(node.name, "pad1d", list(pool.inputs), [padded], attrs={"pad": (window.pad_left, pad_r)},
                              origin="AveragePool count_include_pad"))
            pool.inputs, pool.attrs["window"] = [padded], window.sliced(0, 0)  # the zeros are real columns now
        ctx.add_node(pool)

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        x = inputs[0].astype(np.int64)
        window = window_of(node)
        k, s, p, out_w = window.kernel, window.stride, window.pad_left, window.out_width(x.shape[1])
        out = np.empty((len(x), out_w, x.shape[2]), np.int64)
        for o in range(out_w):
            lo, hi = max(0, o * s - p), min(x.shape[1], o * s - p + k)
            total, count = x[:, lo:hi].sum(axis=1), hi - lo
            half = count // 2
            out[:, o] = np.where(total > 0, (total + half) // count, -((half - total) // count))
        return [saturate(out, graph.tensors[node.output].quant.bits, *node.qparams["act_range"])]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        ctx = self._context(node, graph)
        check_uint16(node.where, width=ctx["w_in"], channels=ctx["c"], kernel=ctx["k"])
        ctx["scratch_bytes"] = 4 * ctx["c"]  # the DSP build's int32 row of sums (pure C and MVE need none)
        kernel = f"arm_avgpool_{ctx['s']}"
        return KernelCall(template="avgpool1d.c.j2", kernel=kernel, context=ctx,
                          functions=[kernel, f"{kernel}_get_buffer_size"], scratch_bytes=ctx["scratch_bytes"])

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        fb, window = ex.fb, window_of(node)
        w_in = ex.graph.tensors[node.inputs[0]].shape[0]
        k, s, p, out_w = window.kernel, window.stride, window.pad_left, window.out_width(w_in)
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
