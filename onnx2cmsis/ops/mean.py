"""Global average over time (GlobalAveragePool, ReduceMean) -> an own loop with TFLite MEAN's arithmetic.

Unlike a windowed average pool, the mean gets its own calibrated output quantization: averaging W
steps shrinks the range (a ReLU feature map reaching 30 may average to at most 15), and keeping the
input's scale, as arm_avgpool_s8 must, would throw that resolution away right before the classifier.
TFLite's converter does the same. CMSIS-NN has no mean kernel, so the C is a short loop: per channel
an int32 sum, then one requantize whose multiplier has 1/W folded in, as TFLite-Micro's reference
MEAN computes it (reduce.h, QuantizedMeanOrSum), which the oracle checks.
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import ImportContext, KernelCall, OnnxNodeView, OpHandler, TfliteContext, calibrated_quant
from onnx2cmsis.ops.pool import add_global_pool
from onnx2cmsis.arith.rules import int_range, quantize_multiplier, requantize, saturate


def mean_multiplier(input_scale: float, output_scale: float, count: int) -> tuple[int, int]:
    """TFLite-Micro's MEAN rescale: QuantizeMultiplier(in/out), then 1/count folded into the multiplier
    with as many extra bits as count has (at most 32, and never below a shift of -31)."""
    multiplier, shift = quantize_multiplier(float(input_scale) / float(output_scale))
    extra = min(count.bit_length() - 1, 32, 31 + shift)
    return (multiplier << extra) // count, shift - extra


class Mean1DHandler(OpHandler):
    op = "mean1d"
    activation_bits = (8, 16)
    onnx_ops = ("GlobalAveragePool", "ReduceMean")
    free_output_quant = True

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        add_global_pool(node, ctx, self.op)

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        # "vector": the (C,) form of the same bytes, when the model drops the time axis
        return [(input_shapes[0][1],) if node.attrs.get("vector") else (1, input_shapes[0][1])]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        q_in = graph.tensors[node.inputs[0]].quant
        q_out = graph.tensors[node.output].quant = calibrated_quant(graph, node.output, ranges)
        steps = graph.tensors[node.inputs[0]].shape[0]
        if steps * (1 << q_in.bits) > 2**31 - 1:
            raise ConversionError(f"{node.where}: a mean over {steps} steps can overflow its int32 sum")
        multiplier, shift = mean_multiplier(q_in.scale, q_out.scale, steps)
        node.qparams = {"multiplier": multiplier, "shift": shift,
                        "offset": -q_in.zero_point * steps, "output_offset": q_out.zero_point}

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        q = node.qparams
        total = inputs[0].astype(np.int64).sum(axis=1, keepdims=True) + q["offset"]
        bits = graph.tensors[node.output].quant.bits
        out = saturate(requantize(total, q["multiplier"], q["shift"]) + q["output_offset"], bits)
        return [out.reshape(len(out), *graph.tensors[node.output].shape)]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        steps, channels = graph.tensors[node.inputs[0]].shape
        out_min, out_max = int_range(graph.tensors[node.output].quant.bits)
        return KernelCall(template="mean1d.c.j2", kernel="own loop", context={
            "w_in": steps, "c": channels, "out_min": out_min, "out_max": out_max,
            "in_zero_point": graph.tensors[node.inputs[0]].quant.zero_point, **node.qparams})

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        fb = ex.fb
        axis = ex.const(np.array([2], np.int32), fb.TensorType.INT32, f"{node.output}_axis")
        opts = fb.ReducerOptionsT()
        opts.keepDims = True
        out = ex.as_feature_map(node.output, output=True) if node.attrs.get("vector") else ex.activation(node.output)
        ex.op(fb.BuiltinOperator.MEAN, [ex.activation(node.inputs[0]), axis], [out],
              fb.BuiltinOptions.ReducerOptions, opts)
