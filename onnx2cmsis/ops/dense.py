"""Dense (Gemm, MatMul) -> arm_fully_connected_s8 (per-tensor int8 weights) or, where the node is
quantized per channel (QuantOptions.weights_of: the --dense-weights option, or per layer the search's
choice under "auto", the default), one weight scale per output feature as TFLite 2.21's converter
writes FULLY_CONNECTED: arm_fully_connected_per_channel_s8 where CMSIS-NN has it
(v7.0.0 on, level 7), else the equivalent 1x1 convolution over one step (level 2024.01).

At 16x8 (int16 activations): arm_fully_connected_s16 per tensor (int64 bias); per channel, which
that kernel does not take, an own loop with TFLite-Micro's 16x8 arithmetic (64-bit sums, the 64-bit
requantize): the 1x1 s16 convolution would need four im2col columns of scratch on MVE (8 bytes per
input feature) for a single step.
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.ir.target import CmsisApi
from onnx2cmsis.errors import ConversionError, UnsupportedOpError
from onnx2cmsis.ir.graph import WEIGHT_GRANULARITIES, Graph, Node
from onnx2cmsis.ir.window import Window
from onnx2cmsis.ops.base import (
    CArray,
    ImportContext,
    KernelCall,
    OnnxNodeView,
    TfliteContext,
    check_uint16,
    fused_activation_range,
)
from onnx2cmsis.ops.conv import (
    WeightedOp,
    export_conv2d,
    file_weights,
    layer_bias,
    layer_weights,
    per_channel_call_parts,
    quantize_per_channel,
    requantize_output,
)
from onnx2cmsis.arith.rules import (
    check_accumulator_headroom,
    integer_matmul,
    quantize_multiplier,
    reduce_multiplier,
)


def mve_kernel_sums(weight: np.ndarray, bias: np.ndarray, input_offset: int, api: CmsisApi) -> np.ndarray:
    """What arm_fully_connected_s8's MVE path reads from ctx.buf (arm_vector_sum_s8's output). The
    2024.01 snapshot scales plain row sums by the input offset itself and adds the bias; from level 7
    on the kernel starts each accumulator at bias + input_offset * row sum (wrapping int32)."""
    sums = weight.astype(np.int64).sum(axis=1)
    if api.fc_kernel_sums_with_bias:
        sums = bias.astype(np.int64) + input_offset * sums
    return ((sums + 2**31) % 2**32 - 2**31).astype(np.int32)


class DenseHandler(WeightedOp):
    op = "dense"
    activation_bits = (8, 16)
    fits_weight_rounding = True
    onnx_ops = ("Gemm", "MatMul")
    fuses_activation = free_output_quant = reads_transposed_input = True
    weight_granularities = WEIGHT_GRANULARITIES

    def read_input_transposed(self, node: Node, rows: int, cols: int) -> None:
        w = node.consts["weight"]
        n_out = w.shape[0]
        node.consts["weight"] = np.ascontiguousarray(w.reshape(n_out, cols, rows).transpose(0, 2, 1).reshape(n_out, -1))
        node.origin += " (weights reordered for channel-last input)"

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        full = ctx.full_shape(node.inputs[0])
        per_step = len(full) == 3 or (len(full) == 2 and full[0] != 1)  # (1, W, K), or (W, K) rows fed to MatMul
        if len(full) not in (2, 3) or (per_step and node.op_type == "Gemm" and len(full) == 3):
            raise UnsupportedOpError(f"dense layers on input of shape {list(full)} are not supported", node.where)
        n_in = full[-1]
        b = ctx.const(node.inputs[1])
        if b is None:
            raise UnsupportedOpError("the weight matrix must be constant", node.where)
        if node.op_type == "Gemm":
            if node.attr("transA", 0):
                raise UnsupportedOpError("Gemm with transA=1 is not supported", node.where)
            b = b.T if node.attr("transB", 0) else b
            b = b * float(node.attr("alpha", 1.0))
        if b.ndim != 2 or b.shape[0] != n_in:
            raise ConversionError(f"weights of shape {b.shape} do not match input features {n_in}", node.where)
        out_features = b.shape[1]
        bias = np.zeros(out_features, np.float32)
        if node.op_type == "Gemm" and len(node.inputs) > 2 and node.inputs[2]:
            c = ctx.const(node.inputs[2])
            if c is None:
                raise UnsupportedOpError("the Gemm bias must be constant", node.where)
            bias = np.broadcast_to(c * float(node.attr("beta", 1.0)), (1, out_features)).reshape(-1)
        # the file's weights are (N, K) under Gemm's transB, else (K, N); Gemm's beta rescales its float bias
        out_axis = 0 if node.op_type == "Gemm" and node.attr("transB", 0) else 1
        pinned = file_weights(node, ctx, out_axis, out_features, float(node.attr("alpha", 1.0)),
                              2 if node.op_type == "Gemm" and float(node.attr("beta", 1.0)) == 1.0 else None)
        attrs = {} if pinned is None else {"file_weights": pinned,
                                           "weights": "per-channel" if pinned.per_channel else "per-tensor"}
        if per_step:
            # The same dense layer at every time step is a pointwise convolution (per-channel, too).
            batched = len(full) == 3
            ctx.add_node(Node(node.name, "conv1d", [ctx.tensor(node.inputs[0], (0, 1), batched)],
                              [ctx.tensor(node.outputs[0], (0, 1), batched)],
                              attrs={"window": Window(), **attrs},
                              consts={"weight": np.ascontiguousarray(b.T[:, None, :], np.float32),
                                      "bias": bias.astype(np.float32)},
                              origin=f"{node.op_type} per time step"))
            return
        ctx.add_node(
            Node(
                node.name,
                self.op,
                [ctx.tensor(node.inputs[0], (0,))],
                [ctx.tensor(node.outputs[0], (0,))],
                attrs=attrs,
                consts={"weight": np.ascontiguousarray(b.T, np.float32), "bias": bias.astype(np.float32)},
                origin=node.op_type,
            )
        )

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [(node.consts["weight"].shape[0],)]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        super().quantize(node, graph, ranges)
        if graph.quant_options.weights_of(node) == "per-channel":
            # one weight scale per output feature, as TFLite 2.21 writes it; the own int16 loop sums in 64 bits
            quantize_per_channel(node, graph, headroom=graph.tensors[node.inputs[0]].quant.bits == 8)
            return
        q_in, q_out = graph.tensors[node.inputs[0]].quant, graph.tensors[node.output].quant
        s_w, wq = layer_weights(node, axis=None)
        m, sh = quantize_multiplier(float(q_in.scale) * float(s_w[0]) / float(q_out.scale))
        wide = q_in.bits == 16
        node.qparams = {
            "weight": wq,
            "weight_scales": s_w,
            "bias": layer_bias(node, q_in, s_w),
            "multiplier": m,
            "shift": sh,
            "act_range": fused_activation_range(node, graph),
        }
        if not wide:  # arm_fully_connected_s16 sums in 64 bits past 512 columns: no overflow at 16x8
            check_accumulator_headroom(wq, node.qparams["bias"], q_in.zero_point, sh, node.where)

    def weight_columns(self, node: Node, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        return [(np.arange(node.consts["weight"].shape[0]), x.reshape(len(x), -1))]  # one position per sample

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        qp = node.qparams
        q_in = graph.tensors[node.inputs[0]].quant
        x = inputs[0].reshape(len(inputs[0]), -1).astype(np.int64) - q_in.zero_point
        acc = integer_matmul(x, qp["weight"].T) + qp["bias"].astype(np.int64)
        return [requantize_output(acc, node, graph).reshape(len(x), *graph.tensors[node.output].shape)]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        qp = node.qparams
        q_in, q_out = graph.tensors[node.inputs[0]].quant, graph.tensors[node.output].quant
        n_out, n_in = qp["weight"].shape
        check_uint16(node.where, in_features=n_in, out_features=n_out)
        if q_in.bits == 16:
            return self._emit_s16(node, graph)
        kernel_sums = CArray("kernel_sums", "int32_t", mve_kernel_sums(qp["weight"], qp["bias"], -q_in.zero_point,
                                                                      graph.cmsis_api),
                             "per-row sums the MVE kernel starts from", guard="defined(ARM_MATH_MVEI)")
        if np.ndim(qp["multiplier"]) == 0:  # per-tensor
            return KernelCall(
                template="dense.c.j2",
                kernel="arm_fully_connected_s8",
                context={
                    "n_in": n_in, "n_out": n_out, "input_offset": -q_in.zero_point,
                    "output_offset": q_out.zero_point, "multiplier": qp["multiplier"], "shift": qp["shift"],
                    "act_min": qp["act_range"][0], "act_max": qp["act_range"][1],
                },
                arrays=[
                    CArray("weights", "int8_t", qp["weight"], f"[{n_out}][{n_in}] per-tensor int8"),
                    CArray("bias", "int32_t", qp["bias"], "int32, scale s_in*s_w"),
                    kernel_sums,
                ],
                functions=["arm_fully_connected_s8"],
                macs=n_in * n_out,
            )
        if not graph.cmsis_api.fc_per_channel:
            return self._as_pointwise_conv(node, graph)
        return KernelCall(
            template="dense_per_channel.c.j2",
            kernel="arm_fully_connected_per_channel_s8",
            context={
                "n_in": n_in, "n_out": n_out, "input_offset": -q_in.zero_point, "output_offset": q_out.zero_point,
                "act_min": qp["act_range"][0], "act_max": qp["act_range"][1],
            },
            arrays=[
                CArray("weights", "int8_t", qp["weight"], f"[{n_out}][{n_in}] per-channel int8"),
                CArray("bias", "int32_t", qp["bias"], "int32, scale s_in*s_w[c]"),
                CArray("multiplier", "int32_t", qp["multiplier"], "per-channel requantization multiplier"),
                CArray("shift", "int32_t", qp["shift"], "per-channel requantization shift (>0: left)"),
                kernel_sums,
            ],
            functions=["arm_fully_connected_per_channel_s8"],
            macs=n_in * n_out,
        )

    def _emit_s16(self, node: Node, graph: Graph) -> KernelCall:
        qp = node.qparams
        n_out, n_in = qp["weight"].shape
        if np.ndim(qp["multiplier"]) != 0:  # per channel: arm_fully_connected_s16 takes one multiplier
            return KernelCall(
                template="dense_per_channel_s16.c.j2",
                kernel="own loop",
                context={"n_in": n_in, "n_out": n_out, "act_min": qp["act_range"][0], "act_max": qp["act_range"][1]},
                arrays=[
                    CArray("weights", "int8_t", qp["weight"], f"[{n_out}][{n_in}] per-channel int8"),
                    CArray("bias", "int64_t", qp["bias"], "int64, scale s_in*s_w[c]"),
                    CArray("multiplier", "int32_t", reduce_multiplier(qp["multiplier"]),
                           "per-channel requantization multiplier, Q15 (REDUCE_MULTIPLIER)"),
                    CArray("shift", "int32_t", qp["shift"], "per-channel requantization shift (>0: left)"),
                ],
                macs=n_in * n_out,
            )
        return KernelCall(
            template="dense_s16.c.j2",
            kernel="arm_fully_connected_s16",
            context={"n_in": n_in, "n_out": n_out, "multiplier": qp["multiplier"], "shift": qp["shift"],
                     "act_min": qp["act_range"][0], "act_max": qp["act_range"][1]},
            arrays=[
                CArray("weights", "int8_t", qp["weight"], f"[{n_out}][{n_in}] per-tensor int8"),
                CArray("bias", "int64_t", qp["bias"], "int64, scale s_in*s_w"),
            ],
            functions=["arm_fully_connected_s16"],
            macs=n_in * n_out,
        )

    def _as_pointwise_conv(self, node: Node, graph: Graph) -> KernelCall:
        """Where CMSIS-NN has no per-channel fully-connected kernel (the 2024.01 snapshot): the same
        arithmetic as a 1x1 convolution over one time step, which is per-channel in every version."""
        qp = node.qparams
        n_out, n_in = qp["weight"].shape
        common, arrays = per_channel_call_parts(node, graph)
        return KernelCall(
            template="conv1d.c.j2",
            kernel="arm_convolve_1x1_s8_fast",
            context={"w_in": 1, "c_in": n_in, "w_out": 1, "c_out": n_out, "k": 1, "filter_c": n_in, **common,
                     "scratch_bytes": 0, "upscale_arg": False},
            arrays=[CArray("weights", "int8_t", qp["weight"], f"[{n_out}][1][1][{n_in}] per-channel int8"), *arrays],
            functions=["arm_convolve_1x1_s8_fast"],
            macs=n_in * n_out,
        )

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        fb, qp = ex.fb, node.qparams
        wide = qp["bias"].dtype == np.int64
        if wide and np.ndim(qp["multiplier"]) != 0:
            # per channel at 16x8 as a 1x1 convolution: TFLite-Micro's 16x8 CONV_2D has the own loop's
            # arithmetic (64-bit sums, the 64-bit requantize)
            export_conv2d(ex, node, ex.as_feature_map(node.inputs[0]), qp["weight"][:, None, :],
                          ex.as_feature_map(node.output, True))
            return
        s_in = ex.graph.tensors[node.inputs[0]].quant.scale
        scales = [float(s) for s in qp["weight_scales"]]  # one (per tensor) or one per output feature
        wq = ex.me.Quantization(scales=scales, zero_points=[0] * len(scales), axis=0)
        bq = ex.me.Quantization(scales=[float(np.float32(s_in) * np.float64(s)) for s in scales],
                                zero_points=[0] * len(scales), axis=0)
        weights = ex.const(qp["weight"], fb.TensorType.INT8, f"{node.output}_w", wq)
        bias = ex.const(qp["bias"], fb.TensorType.INT64 if wide else fb.TensorType.INT32, f"{node.output}_b", bq)
        opts = fb.FullyConnectedOptionsT()
        opts.fusedActivationFunction = ex.fused(node)
        ex.op(fb.BuiltinOperator.FULLY_CONNECTED, [ex.activation(node.inputs[0]), weights, bias],
              [ex.activation(node.output)], fb.BuiltinOptions.FullyConnectedOptions, opts)
