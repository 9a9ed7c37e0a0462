"""Conv1D: ONNX Conv on (N, C, W) -> arm_convolve_s8 / arm_convolve_1x1_s8_fast, per-channel int8 weights;
at 16x8 (int16 activations) arm_convolve_wrapper_s16 with int64 biases."""

from __future__ import annotations

import numpy as np

from onnx2cmsis.ir.target import CmsisApi
from onnx2cmsis.errors import ConversionError, UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ir.tensor import FileWeights, QuantParams
from onnx2cmsis.ir.window import Window
from onnx2cmsis.ops.base import (
    CArray,
    ImportContext,
    KernelCall,
    OnnxNodeView,
    OpHandler,
    TfliteContext,
    check_uint16,
    explicit_pads,
    fused_activation_range,
    int_attr_list,
    spatial_1d,
)
from onnx2cmsis.arith.rules import (
    check_accumulator_headroom,
    check_accumulator_headroom_s16,
    integer_matmul,
    quantize_bias,
    quantize_multiplier,
    quantize_weights,
    requantize,
    requantize_s64,
    saturate,
    symmetric_weight_scales,
)
from onnx2cmsis.ops.windowed import WindowedOp, window_columns, window_of


def conv_scratch_bytes(kernel: int, in_ch: int, api: CmsisApi) -> int:
    """arm_convolve_s8_get_buffer_size for the largest of the pure-C/DSP and MVE builds (the MVE
    im2col rows are padded to api.mve_im2col_lanes)."""
    cols = kernel * in_ch
    dsp = 4 * ((cols + 3) // 4 * 4)
    lanes = api.mve_im2col_lanes
    mve = 4 * ((cols + lanes - 1) // lanes) * lanes
    return max(dsp, mve)


def conv_s16_scratch_bytes(kernel: int, in_ch: int, api: CmsisApi) -> int:
    """arm_convolve_wrapper_s16_get_buffer_size, the largest over pure-C, DSP and MVE builds: two int16
    im2col columns on DSP (level 7: also pure C), four 8-lane-padded ones on MVE (level 7 only)."""
    cols = kernel * in_ch
    dsp = 2 * cols * 2
    return max(dsp, 4 * ((cols + 7) // 8) * 8 * 2) if api.conv_s16_bias_struct else dsp


def block_diagonal(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped conv's (C_out, K, C_in / groups) weights as the equivalent full conv's
    (C_out, K, C_in): each group's block on the diagonal, exact zeros elsewhere."""
    if groups == 1:
        return weight
    c_out, k, per_in = weight.shape
    per_out = c_out // groups
    full = np.zeros((c_out, k, per_in * groups), weight.dtype)
    for g in range(groups):
        full[g * per_out:(g + 1) * per_out, :, g * per_in:(g + 1) * per_in] = weight[g * per_out:(g + 1) * per_out]
    return full


def quantize_per_channel(node: Node, graph: Graph, headroom: bool = True) -> None:
    """node.qparams of a per-channel conv (full or depthwise): weights symmetric per output channel
    (axis 0 of node.consts["weight"]), int32 bias (int64 at 16x8), one multiplier/shift per channel.
    `headroom`: refuse weights whose accumulator the kernel can overflow (see rules.py)."""
    q_in, q_out = graph.tensors[node.inputs[0]].quant, graph.tensors[node.output].quant
    assert q_in is not None and q_out is not None
    s_w, weight = layer_weights(node, axis=0)
    mults, shifts = zip(*(quantize_multiplier(float(q_in.scale) * float(s) / float(q_out.scale)) for s in s_w))
    where = node.where
    node.qparams = {
        "weight": weight,
        "weight_scales": s_w,
        "bias": layer_bias(node, q_in, s_w),
        "multiplier": np.array(mults, np.int32),
        "shift": np.array(shifts, np.int32),
        "act_range": fused_activation_range(node, graph),
    }
    if not headroom:
        return
    if q_in.bits == 16:
        check_accumulator_headroom_s16(node.qparams["weight"], where)
    else:
        check_accumulator_headroom(node.qparams["weight"], node.qparams["bias"], q_in.zero_point,
                                   node.qparams["shift"], where)


def layer_weights(node: Node, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The weight scales (per output channel, axis 0, or one per layer, axis None) and int8 codes of a
    conv/dense layer: the model file's scales and codes (-128 included) where it gave them, else
    TFLite's symmetric ones in [-127, 127]."""
    w = node.consts["weight"]
    pinned: FileWeights | None = node.attrs.get("file_weights")
    if pinned is None:
        scales = fitted_scales(node, axis)
        scales = symmetric_weight_scales(w, axis=axis) if scales is None else scales
        return scales, quantize_weights(w, scales, axis=axis)
    scales = pinned.scales if axis is not None else pinned.scales[:1]
    return scales, quantize_weights(w, scales, axis=axis, lowest=-128)


def fitted_scales(node: Node, axis: int | None) -> np.ndarray | None:
    """The scales fitted weight rounding (tuning/weight_rounding.py) put the weights' codes on, where
    it did and at the granularity asked (its weights are those codes times these scales, so rounding
    them gives the codes back); else None."""
    scales = node.attrs.get("fitted_weight_scales")
    if scales is None:
        return None
    if axis is None:
        return scales[:1] if np.all(scales == scales[0]) else None
    return scales


def file_weights(node: OnnxNodeView, ctx: ImportContext, out_axis: int, c_out: int, weight_factor: float = 1.0,
                 bias_input: int | None = 2) -> FileWeights | None:
    """How the model file quantized a conv/dense node's weights (input 1, its output channels along
    `out_axis` of the file's weight tensor) and bias (input `bias_input`), or None (a float model, or
    float weights). `weight_factor`: what the import multiplies the weights by (Gemm's alpha)."""
    wq = ctx.const_quant(node.inputs[1])
    if wq is None:
        return None
    if weight_factor <= 0:
        raise UnsupportedOpError(f"quantized weights scaled by {weight_factor} (Gemm alpha): only a positive "
                                 "factor keeps the file's codes", node.where)
    if wq.bits != 8 or not wq.signed or np.any(wq.zero_point != 0):
        zps = sorted({int(z) for z in wq.zero_point.reshape(-1)})[:3]
        raise UnsupportedOpError(f"weights quantized as {'' if wq.signed else 'u'}int{wq.bits} with zero point "
                                 f"{zps[0] if len(zps) == 1 else zps}: CMSIS-NN's kernels take symmetric int8 "
                                 "weights (zero point 0)", node.where)
    if wq.axis is None:
        scales, per_channel = np.full(c_out, wq.scale.reshape(-1)[0], np.float32), False
    elif wq.axis == out_axis % wq.codes.ndim and wq.scale.size == c_out:
        scales, per_channel = wq.scale.reshape(-1), True
    else:
        raise UnsupportedOpError(f"weights quantized per slice along axis {wq.axis}, not per output channel (axis "
                                 f"{out_axis % wq.codes.ndim})", node.where)
    bias = bias_scale = None
    bq = ctx.const_quant(node.inputs[bias_input]) if bias_input is not None and len(node.inputs) > bias_input \
        and node.inputs[bias_input] else None
    if bq is not None:
        if bq.bits != 32 or np.any(bq.zero_point != 0) or bq.codes.size not in (1, c_out):
            raise UnsupportedOpError(f"a bias quantized as int{bq.bits} of {bq.codes.size} values with zero points "
                                     f"{sorted({int(z) for z in bq.zero_point.reshape(-1)})[:3]}: one int32 per "
                                     "output channel with zero point 0 expected", node.where)
        bias = np.broadcast_to(bq.codes.reshape(-1), (c_out,)).astype(np.int32)
        bias_scale = np.broadcast_to(bq.scale.reshape(-1), (c_out,)).astype(np.float32)
    return FileWeights((scales * np.float32(weight_factor)).astype(np.float32), per_channel, bias, bias_scale)


def layer_bias(node: Node, q_in: QuantParams, s_w: np.ndarray) -> np.ndarray:
    """The int32 bias (int64 at 16x8) at the scale the kernels add it at, s_in * s_w[c]: the model
    file's codes where it gave them at that scale (to float32 precision, as ONNX Runtime computes
    it), else its float bias rounded to it (a float model's, or a file's bias at another scale)."""
    bits = 64 if q_in.bits == 16 else 32
    pinned: FileWeights | None = node.attrs.get("file_weights")
    if pinned is None or pinned.bias is None:
        return quantize_bias(node.consts["bias"], q_in.scale, s_w, node.where, bits)
    kernel_scale = np.float64(np.float32(q_in.scale)) * s_w.astype(np.float64)
    if np.allclose(pinned.bias_scale.astype(np.float64), np.broadcast_to(kernel_scale, pinned.bias.shape),
                   rtol=2.0**-20, atol=0.0):
        return pinned.bias.astype(np.int32 if bits == 32 else np.int64)
    real = pinned.bias.astype(np.float64) * pinned.bias_scale.astype(np.float64)
    return quantize_bias(real, q_in.scale, s_w, node.where, bits)


def requantize_output(acc: np.ndarray, node: Node, graph: Graph) -> np.ndarray:
    """A conv/dense accumulator (bias included) -> the output codes: double-rounding requantize plus
    the zero point at int8, the 64-bit requantize at 16x8; then the fused activation clamp."""
    qp, q_out = node.qparams, graph.tensors[node.output].quant
    if graph.tensors[node.inputs[0]].quant.bits == 16:
        y = requantize_s64(acc, qp["multiplier"], qp["shift"])
    else:
        y = requantize(acc, qp["multiplier"], qp["shift"]) + q_out.zero_point
    return saturate(y, q_out.bits, *qp["act_range"])


def fold_affine_into_weights(node: Node, scale: np.ndarray, shift: np.ndarray) -> bool:
    """y * scale[c] + shift[c] after a conv or dense layer, as its weights (output channel first) and bias."""
    if scale.shape != node.consts["bias"].shape or "file_weights" in node.attrs:
        return False  # a model file's own weight codes stay as they are
    w = node.consts["weight"]
    if np.any(scale != 1):  # other weights: their fitted codes no longer apply
        node.attrs.pop("fitted_weight_scales", None)
        node.attrs.pop("weight_rounding", None)
    node.consts["weight"] = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
    node.consts["bias"] = (node.consts["bias"] * scale + shift).astype(np.float32)
    return True


class WeightedOp(OpHandler):
    """A handler whose nodes hold weights (output channel first) and a bias in node.consts: a
    following per-channel scale/shift folds into them."""

    folds_affine = True

    def fold_affine(self, node: Node, scale: np.ndarray, shift: np.ndarray) -> bool:
        return fold_affine_into_weights(node, scale, shift)


def per_channel_call_parts(node: Node, graph: Graph) -> tuple[dict, list[CArray]]:
    """What every per-channel conv call (full or depthwise) passes alike: stride/dilation/pad,
    offsets and activation range for the template, and the bias/multiplier/shift arrays."""
    a, qp = node.attrs, node.qparams
    q_in, q_out = graph.tensors[node.inputs[0]].quant, graph.tensors[node.output].quant
    window = a.get("window", Window())  # a dense layer (one step) has no stride, dilation or padding
    context = {
        "stride": window.stride, "dilation": window.dilation, "pad": window.pad_left,
        "input_offset": -q_in.zero_point, "output_offset": q_out.zero_point,
        "act_min": qp["act_range"][0], "act_max": qp["act_range"][1],
    }
    wide = qp["bias"].dtype == np.int64
    arrays = [
        CArray("bias", "int64_t" if wide else "int32_t", qp["bias"], f"int{64 if wide else 32}, scale s_in*s_w[c]"),
        CArray("multiplier", "int32_t", qp["multiplier"], "per-channel requantization multiplier"),
        CArray("shift", "int32_t", qp["shift"], "per-channel requantization shift (>0: left)"),
    ]
    return context, arrays


class Conv1DHandler(WindowedOp, WeightedOp):
    op = "conv1d"
    activation_bits = (8, 16)
    onnx_ops = ("Conv",)
    fuses_activation = free_output_quant = absorbs_zero_pad = fits_weight_rounding = True

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        w = ctx.const(node.inputs[1])
        if w is None:
            raise UnsupportedOpError("convolution weights must be constant", node.where)
        node, axes = spatial_1d(node, ctx, list(w.shape[2:]))
        in_shape = ctx.logical_shape(node.inputs[0])
        c_in, w_in = in_shape[0], in_shape[axes[0]]
        group = int(node.attr("group", 1))
        depthwise = group > 1 and group == c_in
        c_out, k = w.shape[0], int(np.prod(w.shape[2:]))
        if w.shape[1] * group != c_in or c_out % group:
            raise ConversionError(f"weights of shape {list(w.shape)} do not fit {c_in} input channels in {group} "
                                  "groups", node.where)
        (stride,) = int_attr_list(node, "strides", [1], 1)
        (dilation,) = int_attr_list(node, "dilations", [1], 1)
        pad_l, pad_r = explicit_pads(node, w_in, k, stride, dilation)
        bias = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        bias = np.zeros(c_out, np.float32) if bias is None else bias.reshape(c_out).astype(np.float32)
        weight = w.reshape(c_out, c_in // group, k).transpose(0, 2, 1)  # (C_out, K, C_in / group)
        grouped = group > 1 and not depthwise
        pinned = file_weights(node, ctx, 0, c_out)
        ctx.add_node(
            Node(
                node.name,
                "dwconv1d" if depthwise else self.op,
                [ctx.tensor(node.inputs[0], axes)],
                [ctx.tensor(node.outputs[0], axes)],
                attrs={"window": Window(k, stride, dilation, pad_l, pad_r), **({"groups": group} if grouped else {}),
                       **({"file_weights": pinned} if pinned is not None else {})},
                consts={"weight": np.ascontiguousarray(weight[:, :, 0] if depthwise else weight, np.float32),
                        "bias": bias},
                origin=f"{node.op_type} group={group}" if grouped else node.op_type,
            )
        )

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        w_in, _ = input_shapes[0]
        return [(window_of(node).out_width(w_in), node.consts["weight"].shape[0])]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        super().quantize(node, graph, ranges)
        quantize_per_channel(node, graph)

    def weight_columns(self, node: Node, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        # every output position's window of inputs (real zeros where it falls in the padding), each
        # group's output channels reading only its own input channels
        window = window_of(node)
        cols = window_columns(x, window, window.out_width(x.shape[1]))  # (N, w_out, K, C_in)
        c_out, k, per_in = node.consts["weight"].shape
        groups = node.attrs.get("groups", 1)
        per_out = c_out // groups
        return [(np.arange(g * per_out, (g + 1) * per_out),
                 cols[..., g * per_in:(g + 1) * per_in].reshape(-1, k * per_in)) for g in range(groups)]

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        a, qp = node.attrs, node.qparams
        q_in = graph.tensors[node.inputs[0]].quant
        # input_offset = -zp: padding contributes 0. int32 holds x - zp, and the im2col below (K / stride
        # copies of the input) is half its int64 size
        x = inputs[0].astype(np.int32) - np.int32(q_in.zero_point)
        n, w_in = x.shape[:2]
        w_out = window_of(node).out_width(w_in)
        cols = window_columns(x, window_of(node), w_out).reshape(n, w_out, -1)  # (N, w_out, k*c_in)
        wq = block_diagonal(qp["weight"], a.get("groups", 1)).astype(np.int64)
        acc = integer_matmul(cols, wq.reshape(wq.shape[0], -1).T) + qp["bias"].astype(np.int64)
        return [requantize_output(acc, node, graph)]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        a, qp, window = node.attrs, node.qparams, window_of(node)
        (w_in, c_in), (w_out, c_out) = graph.tensors[node.inputs[0]].shape, graph.tensors[node.output].shape
        where = node.where
        check_uint16(where, width=w_in, in_channels=c_in, out_channels=c_out, kernel=window.kernel,
                     pad=window.pad_left)
        # A grouped conv runs natively where arm_convolve_s8 takes filter channels = C_in / groups;
        # otherwise it is the block-diagonal full conv, which adds only exact zeros at `groups` times
        # the weights and MACs. Same bytes out either way.
        groups = a.get("groups", 1)
        if graph.tensors[node.inputs[0]].quant.bits == 16:
            return conv_s16_call(node, graph, block_diagonal(qp["weight"], groups), w_in, w_out)
        native_groups = groups > 1 and graph.cmsis_api.conv_native_groups
        weight = qp["weight"] if native_groups else block_diagonal(qp["weight"], groups)
        filter_c = weight.shape[2]
        pointwise = window.pointwise and not native_groups
        kernel = "arm_convolve_1x1_s8_fast" if pointwise else "arm_convolve_s8"
        scratch = 0 if pointwise else conv_scratch_bytes(window.kernel, c_in, graph.cmsis_api)
        common, arrays = per_channel_call_parts(node, graph)
        return KernelCall(
            template="conv1d.c.j2",
            kernel=kernel,
            context={
                "w_in": w_in, "c_in": c_in, "w_out": w_out, "c_out": c_out, "k": window.kernel, "filter_c": filter_c,
                **common, "scratch_bytes": scratch, "upscale_arg": graph.cmsis_api.conv_upscale_dims,
            },
            arrays=[
                CArray("weights", "int8_t", weight, f"[{c_out}][1][{window.kernel}][{filter_c}] per-channel int8"
                       + (f", {groups} groups" if native_groups else " (block-diagonal)" if groups > 1 else "")),
                *arrays,
            ],
            functions=[kernel] + ([] if pointwise else ["arm_convolve_s8_get_buffer_size"]),
            scratch_bytes=scratch,
            macs=w_out * c_out * window.kernel * filter_c,
        )

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        src = ex.padded(ex.activation(node.inputs[0]), node)
        w = block_diagonal(node.qparams["weight"], node.attrs.get("groups", 1))  # same sums as the groups
        export_conv2d(ex, node, src, w, ex.activation(node.output))


def export_conv2d(ex: TfliteContext, node: Node, src, weight: np.ndarray, dst) -> None:
    """CONV_2D of (C_out, K, C_in) per-channel weights with node's bias, stride, dilation and fused
    activation (int32 bias at int8, int64 at 16x8): the TFLite form of a conv (and of a per-channel
    dense layer over one step)."""
    fb, window = ex.fb, node.attrs.get("window", Window())
    weights, bias = per_channel_tflite_constants(ex, node, weight)
    opts = fb.Conv2DOptionsT()
    opts.padding = fb.Padding.VALID
    opts.strideW, opts.strideH = window.stride, 1
    opts.dilationWFactor, opts.dilationHFactor = window.dilation, 1
    opts.fusedActivationFunction = ex.fused(node)
    ex.op(fb.BuiltinOperator.CONV_2D, [src, weights, bias], [dst], fb.BuiltinOptions.Conv2DOptions, opts)


def per_channel_tflite_constants(ex: TfliteContext, node: Node, weight: np.ndarray) -> tuple:
    """The TFLite filter [C_out, 1, K, C_in] of (C_out, K, C_in) per-channel int8 weights, and the bias
    (int32 at int8, int64 at 16x8) on scales s_in * s_w[c]: what CONV_2D and TRANSPOSE_CONV both take."""
    fb, qp = ex.fb, node.qparams
    s_in = ex.graph.tensors[node.inputs[0]].quant.scale
    c_out = weight.shape[0]
    wq = ex.me.Quantization(scales=[float(s) for s in qp["weight_scales"]], zero_points=[0] * c_out, axis=0)
    bq = ex.me.Quantization(scales=[float(np.float32(s_in) * np.float64(s)) for s in qp["weight_scales"]],
                            zero_points=[0] * c_out, axis=0)
    weights = ex.const(weight.reshape(c_out, 1, weight.shape[1], weight.shape[2]), fb.TensorType.INT8,
                       f"{node.output}_w", wq)
    wide = qp["bias"].dtype == np.int64
    bias = ex.const(qp["bias"], fb.TensorType.INT64 if wide else fb.TensorType.INT32, f"{node.output}_b", bq)
    return weights, bias


def conv_s16_call(node: Node, graph: Graph, weight: np.ndarray, w_in: int, w_out: int) -> KernelCall:
    """arm_convolve_wrapper_s16 for (C_out, K, C_in) weights: per-channel int8 weights, int64 bias. Its
    bias argument is a cmsis_nn_bias_data at level 7 and a plain int64_t pointer before."""
    c_out, k, c_in = weight.shape
    check_uint16(node.where, width=w_in, in_channels=c_in, out_channels=c_out, kernel=k,
                 pad=node.attrs.get("window", Window()).pad_left)
    scratch = conv_s16_scratch_bytes(k, c_in, graph.cmsis_api)
    common, arrays = per_channel_call_parts(node, graph)
    return KernelCall(
        template="conv1d_s16.c.j2",
        kernel="arm_convolve_wrapper_s16",
        context={"w_in": w_in, "c_in": c_in, "w_out": w_out, "c_out": c_out, "k": k, **common,
                 "scratch_bytes": scratch, "bias_struct": graph.cmsis_api.conv_s16_bias_struct},
        arrays=[CArray("weights", "int8_t", weight, f"[{c_out}][1][{k}][{c_in}] per-channel int8"), *arrays],
        functions=["arm_convolve_wrapper_s16", "arm_convolve_wrapper_s16_get_buffer_size"],
        scratch_bytes=scratch,
        macs=w_out * c_out * k * c_in,
    )
