"""Transposed Conv1D (ONNX ConvTranspose on (N, C, W), or over a unit axis) -> arm_convolve_s8 over the
upscaled input with the filter reversed in flash, or arm_transpose_conv_s8, else an own exact loop;
per-channel int8 weights, int32 bias (int64 at 16x8), TFLite TRANSPOSE_CONV's arithmetic.

Input column i adds x[i] * w[k] to output column i * stride + k - crop, for every tap k: the full
output is (W_in - 1) * stride + K columns, the first `crop` (ONNX's begin pad) and whatever lies
past the model's output width (its end pad, less output_padding) are dropped. Which code runs
(level 7, int8; facts from the v7.0.0 and main trees, the same for a 1-row input):
- more than 16 input channels and stride <= 2 (where arm_transpose_conv_wrapper_s8 would reverse
  the filter into RAM on every call): arm_convolve_s8 over the input upscaled by the stride
  (`upscale_dims`), stride 1, padding K - 1 - crop, with the filter reversed along K once, at
  conversion, in flash;
- else, when the output lies within the kernel's row buffer (crop + W_out <= (W_in - 1) * stride +
  max(K, stride); past it the kernel reads columns it never wrote): arm_transpose_conv_s8, its
  scratch computed here (arm_transpose_conv_s8_get_buffer_size takes max(K, the H stride) and falls
  short when K < stride);
- else, at int16 and at level 2024.01: an own loop that gathers per output column the taps
  TFLite-Micro's reference kernel scatters, in the same int32 (int64 at 16x8) sums. The snapshot's
  arm_transpose_conv_s8 is another algorithm (every input column's taps, W_in * K * C_out int32, and
  the output's sums, W_out * C_out int32, both in scratch; its padding offset set to the end crop
  makes it walk every input column). Measured on the trained decoders of benchmarks/decoders.py it is
  exact on the host, M4 and M55, but takes 5-8% fewer M4 instructions (1-8% on M55) for 3-5 times
  the arena (the autoencoder's 2,368 B -> 12,288 B): not worth it, so not used.
The TFLite form is a VALID TRANSPOSE_CONV whose `output_shape` carries the width, followed by a
SLICE where the begin pad is not zero.
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.errors import ConversionError, UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import (
    CArray,
    check_uint16,
    ImportContext,
    KernelCall,
    OnnxNodeView,
    TfliteContext,
    int_attr_list,
    spatial_1d,
)
from onnx2cmsis.ops.conv import (
    WeightedOp,
    conv_scratch_bytes,
    file_weights,
    per_channel_call_parts,
    per_channel_tflite_constants,
    quantize_per_channel,
    requantize_output,
)
from onnx2cmsis.arith.rules import reduce_multiplier


REVERSE_CONV_MIN_CHANNELS = 17  # REVERSE_TCOL_EFFICIENT_THRESHOLD (16) + 1: where the wrapper reverses the filter


def transposed_conv_path(graph: Graph, w_in: int, c_in: int, w_out: int, k: int, stride: int, crop: int,
                         wide: bool) -> str:
    """"reverse" (arm_convolve_s8 upscaled, the filter reversed in flash), "transpose"
    (arm_transpose_conv_s8) or "loop" (the own loop): see the module docstring."""
    if wide or not graph.cmsis_api.transpose_conv_wrapper:
        return "loop"
    if c_in >= REVERSE_CONV_MIN_CHANNELS and stride <= 2 and crop <= k - 1 and graph.cmsis_api.conv_upscale_dims:
        return "reverse"
    if crop + w_out <= (w_in - 1) * stride + max(k, stride):
        return "transpose"
    return "loop"


class ConvTranspose1DHandler(WeightedOp):
    op = "convtr1d"
    activation_bits = (8, 16)
    onnx_ops = ("ConvTranspose",)
    fuses_activation = free_output_quant = True

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        w = ctx.const(node.inputs[1])
        if w is None:
            raise UnsupportedOpError("transposed convolution weights must be constant", node.where)
        in_shape = ctx.logical_shape(node.inputs[0])
        two_d = len(in_shape) == 3
        output_padding = int_attr_list(node, "output_padding", [0] * (2 if two_d else 1), 2 if two_d else 1)
        view, axes = spatial_1d(node, ctx, list(w.shape[2:]))
        if two_d and output_padding[2 - axes[0]] != 0:  # the unit axis: H when time is W, and back
            raise UnsupportedOpError(f"output_padding {output_padding} along the unit axis: a 2-D transposed "
                                     "convolution", node.where)
        group = int(node.attr("group", 1))
        (dilation,) = int_attr_list(view, "dilations", [1], 1)
        if group != 1 or dilation != 1:
            raise UnsupportedOpError(f"transposed convolution with group={group}, dilation={dilation}: only "
                                     "group 1 and dilation 1 are supported", node.where)
        c_in, w_in = in_shape[0], in_shape[axes[0]]
        c_out, k = w.shape[1], int(np.prod(w.shape[2:]))
        if w.shape[0] != c_in:
            raise ConversionError(f"weights of shape {list(w.shape)} do not fit {c_in} input channels", node.where)
        (stride,) = int_attr_list(view, "strides", [1], 1)
        w_out = ctx.logical_shape(node.outputs[0])[axes[0]]
        crop = self._begin_pad(view, w_in, w_out, k, stride, sum(output_padding))
        bias = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        bias = np.zeros(c_out, np.float32) if bias is None else bias.reshape(c_out).astype(np.float32)
        weight = w.reshape(c_in, c_out, k).transpose(1, 2, 0)  # (C_out, K, C_in)
        pinned = file_weights(node, ctx, 1, c_out)  # the file's weights are (C_in, C_out, K)
        ctx.add_node(Node(node.name, self.op, [ctx.tensor(node.inputs[0], axes)], [ctx.tensor(node.outputs[0], axes)],
                          attrs={"kernel": k, "stride": stride, "crop": crop, "width": w_out,
                                 **({"file_weights": pinned} if pinned is not None else {})},
                          consts={"weight": np.ascontiguousarray(weight, np.float32), "bias": bias},
                          origin=node.op_type))

    @staticmethod
    def _begin_pad(node: OnnxNodeView, w_in: int, w_out: int, k: int, stride: int, output_padding: int) -> int:
        """ONNX's begin pad: explicit, or from auto_pad / output_shape (the odd column goes to the end
        under SAME_UPPER, to the beginning under SAME_LOWER and with output_shape, as ONNX says)."""
        auto_pad = node.attr("auto_pad", "NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        total = stride * (w_in - 1) + output_padding + k - w_out
        if auto_pad == "VALID":
            return 0
        if auto_pad in ("SAME_UPPER", "SAME_LOWER") or node.attr("output_shape", None) is not None:
            return total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
        pads = int_attr_list(node, "pads", [0, 0], 2)
        if min(pads) < 0:
            raise UnsupportedOpError(f"negative pads {pads} are not supported", node.where)
        return pads[0]

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [(node.attrs["width"], node.consts["weight"].shape[0])]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        super().quantize(node, graph, ranges)
        quantize_per_channel(node, graph)

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        a, qp = node.attrs, node.qparams
        x = inputs[0].astype(np.int64) - graph.tensors[node.inputs[0]].quant.zero_point
        n, w_in, _ = x.shape
        stride, k, crop, width = a["stride"], a["kernel"], a["crop"], a["width"]
        wq = qp["weight"].astype(np.int64)  # (C_out, K, C_in)
        full = np.zeros((n, max((w_in - 1) * stride + k, crop + width), wq.shape[0]), np.int64)
        for tap in range(k):  # input column i reaches output column i * stride + tap
            full[:, tap:tap + (w_in - 1) * stride + 1:stride] += x @ wq[:, tap, :].T
        acc = full[:, crop:crop + width] + qp["bias"].astype(np.int64)
        return [requantize_output(acc, node, graph)]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        a, qp = node.attrs, node.qparams
        (w_in, c_in), (w_out, c_out) = graph.tensors[node.inputs[0]].shape, graph.tensors[node.output].shape
        k, stride, crop = a["kernel"], a["stride"], a["crop"]
        wide = graph.tensors[node.inputs[0]].quant.bits == 16
        common, arrays = per_channel_call_parts(node, graph)
        macs = w_in * k * c_in * c_out
        context = {"w_in": w_in, "c_in": c_in, "w_out": w_out, "c_out": c_out, "k": k, "stride_": stride,
                   "crop": crop, "wide": wide, **common}
        weights = CArray("weights", "int8_t", qp["weight"], f"[{c_out}][{k}][{c_in}] per-channel int8")
        path = transposed_conv_path(graph, w_in, c_in, w_out, k, stride, crop, wide)
        if path == "reverse":
            check_uint16(node.where, width=w_in * stride, in_channels=c_in, out_channels=c_out, kernel=k,
                         pad=k - 1 - crop)
            scratch = conv_scratch_bytes(k, c_in, graph.cmsis_api)
            reversed_weights = np.ascontiguousarray(qp["weight"][:, ::-1, :])
            return KernelCall(
                template="convtr1d_reverse.c.j2", kernel="arm_convolve_s8",
                context={**context, "scratch_bytes": scratch, "pad": k - 1 - crop},
                arrays=[CArray("weights", "int8_t", reversed_weights,
                               f"[{c_out}][1][{k}][{c_in}] per-channel int8, reversed along the kernel"), *arrays],
                functions=["arm_convolve_s8", "arm_convolve_s8_get_buffer_size"], scratch_bytes=scratch,
                macs=w_in * stride * k * c_in * c_out)  # the upscaled columns' zeros are multiplied too
        if path == "transpose":
            check_uint16(node.where, width=w_in, in_channels=c_in, out_channels=c_out, kernel=k, pad=crop)
            scratch = ((w_in - 1) * stride + max(k, stride)) * c_out * 4
            return KernelCall(
                template="convtr1d_cmsis.c.j2", kernel="arm_transpose_conv_s8",
                context={**context, "scratch_bytes": scratch}, arrays=[weights, *arrays],
                functions=["arm_transpose_conv_s8"], scratch_bytes=scratch, macs=macs)
        if wide:  # arm_nn_requantize_s64 takes the 16-bit reduced multiplier
            arrays = [arr if arr.suffix != "multiplier" else
                      CArray("multiplier", "int32_t", reduce_multiplier(qp["multiplier"]), "per-channel reduced multiplier")
                      for arr in arrays]
        return KernelCall(template="convtr1d.c.j2", kernel="own loop", context=context, arrays=[weights, *arrays],
                          macs=macs)

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        fb, a = ex.fb, node.attrs
        c_out = node.qparams["weight"].shape[0]
        weights, bias = per_channel_tflite_constants(ex, node, node.qparams["weight"])
        full_width = a["crop"] + a["width"]
        shape = ex.const(np.array([1, 1, full_width, c_out], np.int32), fb.TensorType.INT32, f"{node.output}_shape")
        dst = ex.activation(node.output)
        if a["crop"]:
            dst = ex.me.Tensor(shape=[1, 1, full_width, c_out], dtype=dst.dtype, quantization=dst.quantization,
                               name=f"{node.output}_uncropped")
        opts = fb.TransposeConvOptionsT()
        opts.padding = fb.Padding.VALID
        opts.strideW, opts.strideH = a["stride"], 1
        opts.fusedActivationFunction = ex.fused(node)
        ex.op(fb.BuiltinOperator.TRANSPOSE_CONV, [shape, weights, ex.activation(node.inputs[0]), bias], [dst],
              fb.BuiltinOptions.TransposeConvOptions, opts)
        if a["crop"]:
            begin = ex.const(np.array([0, 0, a["crop"], 0], np.int32), fb.TensorType.INT32, f"{node.output}_begin")
            size = ex.const(np.array([1, 1, a["width"], c_out], np.int32), fb.TensorType.INT32, f"{node.output}_size")
            ex.op(fb.BuiltinOperator.SLICE, [dst, begin, size], [ex.activation(node.output)],
                  fb.BuiltinOptions.SliceOptions, fb.SliceOptionsT())
