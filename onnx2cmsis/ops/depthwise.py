"""Depthwise Conv1D (ONNX Conv with group == C_in) -> arm_depthwise_conv_s8(_opt), per-channel int8.

Output channel o reads input channel o // mult (mult = C_out / C_in, TFLite's depth multiplier). A
per-channel scale/shift that cannot fold into a producer (a BatchNorm after a ReLU) is the same op
with a 1-tap kernel: exact in both CMSIS-NN and TFLite-Micro.
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import CArray, KernelCall, TfliteContext, check_uint16
from onnx2cmsis.ops.conv import (
    WeightedOp,
    per_channel_call_parts,
    quantize_per_channel,
    requantize_output,
)
from onnx2cmsis.ops.windowed import WindowedOp, window_columns, window_of

def dw_scratch_bytes(kernel: int, channels: int) -> int:
    """arm_depthwise_conv_s8_opt_get_buffer_size of a DSP build (int16 copies of the input columns).

    On MVE the _opt kernel buffers 124 channels x kernel x 4 bytes whatever the layer's width (1.5 KB
    for a 3-tap kernel), more than many whole 1D models need; the generated C calls the scratch-free
    arm_depthwise_conv_s8 there instead, so the arena does not grow for one ISA."""
    return 2 * channels * kernel


def dw_s16_scratch_bytes(kernel: int, channels: int, fast: bool) -> int:
    """arm_depthwise_conv_wrapper_s16_get_buffer_size, the largest of the DSP (int16 columns) and MVE
    (four of them, plus 8 bytes of over-read) builds; none where the wrapper takes the plain kernel."""
    return 4 * channels * kernel * 2 + 8 if fast else 0


def _feature_map(shape: tuple[int, ...]) -> tuple[int, int]:
    return (1, shape[0]) if len(shape) == 1 else (shape[0], shape[1])


class DepthwiseConv1DHandler(WindowedOp, WeightedOp):
    op = "dwconv1d"  # imported by ops/conv.py (a Conv with group == C_in) and by the affine lowering
    activation_bits = (8, 16)
    fuses_activation = free_output_quant = absorbs_zero_pad = fits_weight_rounding = True

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        w_in, _ = _feature_map(input_shapes[0])
        w_out = window_of(node).out_width(w_in)
        c_out = node.consts["weight"].shape[0]
        return [(c_out,) if len(input_shapes[0]) == 1 else (w_out, c_out)]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        super().quantize(node, graph, ranges)
        quantize_per_channel(node, graph)  # weight (C_out, K): per output channel, as a full conv

    def weight_columns(self, node: Node, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        # each output channel alone: its taps over its one input channel
        n, (w_in, c_in) = len(x), _feature_map(x.shape[1:])
        window = window_of(node)
        cols = window_columns(x.reshape(n, w_in, c_in), window, window.out_width(w_in))  # (N, w_out, K, C_in)
        c_out, k = node.consts["weight"].shape
        mult = c_out // c_in
        return [(np.array([c]), cols[..., c // mult].reshape(-1, k)) for c in range(c_out)]

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        qp = node.qparams
        q_in = graph.tensors[node.inputs[0]].quant
        n, (w_in, c_in) = len(inputs[0]), _feature_map(inputs[0].shape[1:])
        x = inputs[0].reshape(n, w_in, c_in).astype(np.int64) - q_in.zero_point
        c_out = qp["weight"].shape[0]
        w_out = window_of(node).out_width(w_in)
        mult = c_out // c_in
        cols = window_columns(x, window_of(node), w_out)[..., np.arange(c_out) // mult]  # (N, w_out, K, C_out)
        acc = np.einsum("ntkc,ck->ntc", cols, qp["weight"].astype(np.int64)) + qp["bias"].astype(np.int64)
        return [requantize_output(acc, node, graph).reshape(n, *graph.tensors[node.output].shape)]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        qp, window = node.qparams, window_of(node)
        (w_in, c_in) = _feature_map(graph.tensors[node.inputs[0]].shape)
        (w_out, c_out) = _feature_map(graph.tensors[node.output].shape)
        check_uint16(node.where, width=w_in, channels=c_out, kernel=window.kernel, pad=window.pad_left)
        mult = c_out // c_in
        common, arrays = per_channel_call_parts(node, graph)
        weights = CArray("weights", "int8_t", np.ascontiguousarray(qp["weight"].T),
                         f"[1][{window.kernel}][{c_out}] per-channel int8")
        macs = w_out * c_out * window.kernel
        if graph.tensors[node.inputs[0]].quant.bits == 16:
            # the wrapper's own choice (USE_FAST_DW_CONV_S16_FUNCTION), the same at every level
            fast_s16 = mult == 1 and window.dilation == 1 and window.kernel < 512
            scratch = dw_s16_scratch_bytes(window.kernel, c_in, fast_s16)
            return KernelCall(
                template="dwconv1d_s16.c.j2", kernel="arm_depthwise_conv_wrapper_s16",
                context={"w_in": w_in, "c_in": c_in, "w_out": w_out, "c_out": c_out, "k": window.kernel, "mult": mult,
                         **common, "scratch_bytes": scratch},
                arrays=[weights, *arrays],
                functions=["arm_depthwise_conv_wrapper_s16", "arm_depthwise_conv_wrapper_s16_get_buffer_size"],
                scratch_bytes=scratch, macs=macs)
        fast = mult == 1 and window.dilation == 1
        kernel = "arm_depthwise_conv_s8_opt" if fast else "arm_depthwise_conv_s8"
        scratch = dw_scratch_bytes(window.kernel, c_in) if fast else 0
        return KernelCall(
            template="dwconv1d.c.j2",
            kernel=kernel,
            context={
                "w_in": w_in, "c_in": c_in, "w_out": w_out, "c_out": c_out, "k": window.kernel, "mult": mult,
                **common, "scratch_bytes": scratch, "fast": fast,
            },
            arrays=[weights, *arrays],
            functions=[kernel] + (["arm_depthwise_conv_s8", "arm_depthwise_conv_s8_opt_get_buffer_size"] if fast else []),
            scratch_bytes=scratch,
            macs=macs,
        )

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        fb, qp, window = ex.fb, node.qparams, window_of(node)
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
        wide = qp["bias"].dtype == np.int64
        bias = ex.const(qp["bias"], fb.TensorType.INT64 if wide else fb.TensorType.INT32, f"{node.output}_b", bq)
        opts = fb.DepthwiseConv2DOptionsT()
        opts.padding = fb.Padding.VALID
        opts.strideW, opts.strideH = window.stride, 1
        opts.dilationWFactor, opts.dilationHFactor = window.dilation, 1
        opts.depthMultiplier = c_out // c_in
        opts.fusedActivationFunction = ex.fused(node)
        ex.op(fb.BuiltinOperator.DEPTHWISE_CONV_2D, [src, weights, bias], [ex.as_feature_map(node.output, True)],
              fb.BuiltinOptions.DepthwiseConv2DOptions, opts)
