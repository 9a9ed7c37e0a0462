"""Add, Sub or Mul of a tensor and a constant the model file quantized: TFLite's int8 ADD, SUB and MUL
exactly.

A quantized file (a .tflite's unfolded BatchNorm, a per-step Dense's bias ADD; ONNX Runtime's QDQ
Mul/Add of an int8 constant) rounds after each of these, so they cannot fold into a neighbour's
weights, nor become the affine a float model's would (one rounding where the file does two). Each
stays the op TFLite-Micro runs: the constant's int8 codes, broadcast to the tensor's shape in flash,
go to `arm_elementwise_add_s8` (TFLite ADD's common-scale arithmetic, ops/add.py) or
`arm_elementwise_mul_s8` ((x - zp_x)(c - zp_c) requantized by s_x s_c / s_out). SUB is ADD's
arithmetic with the second operand's rescaled value subtracted (TFLite-Micro's SubElementwise); no
CMSIS-NN function does that, so an own loop runs it, with each constant's rescaled value in flash
(int32: rescaling its negation would round the other way at ties). A float model's constant never
comes here: its Add/Sub/Mul is an affine (ops/elementwise.py).
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.arith.rules import (QuantParams, add_params, at_common_scale, quantize_multiplier, requantize, saturate,
                                   tflite_add)
from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import (
    CArray,
    ImportContext,
    KernelCall,
    OnnxNodeView,
    OpHandler,
    TfliteContext,
    TimeGeometry,
    fused_activation_range,
)

OP = "binary_const"


def file_constant_operand(node: OnnxNodeView, ctx: ImportContext) -> bool:
    """The node combines a tensor with a constant its model file quantized (this handler's case)."""
    return len(node.inputs) == 2 and any(ctx.const(i) is not None and ctx.const_quant(i) is not None
                                         for i in node.inputs)


class BinaryConstHandler(OpHandler):
    op = OP
    fuses_activation = free_output_quant = True
    activation_bits = (8, 16)  # 16x8 files: int16 constants with zero point 0, CMSIS-NN's _s16 functions

    def time_geometry(self, node: Node, graph: Graph) -> TimeGeometry | None:
        return None  # the constant differs per column: a stream runs it whole

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        k = 0 if ctx.const(node.inputs[0]) is not None else 1
        data, constant = node.inputs[1 - k], node.inputs[k]
        cq = ctx.const_quant(constant)
        if cq.scale.size != 1 or cq.bits not in (8, 16) or (cq.bits == 16 and np.any(cq.zero_point != 0)):
            raise UnsupportedOpError(f"a constant quantized as {cq.bits}-bit with {cq.scale.size} scales: one int8 "
                                     "scale (or int16, zero point 0) expected", node.where)
        axes = ctx.layout(data)
        x = ctx.tensor(data, axes)
        logical = ctx.logical_shape(data)
        codes = np.broadcast_to(cq.codes.astype(np.int64), (1, *logical))[0]
        order = list(axes) + [a for a in range(len(logical)) if a not in axes]  # the layout leaves unit axes out
        physical = np.ascontiguousarray(codes.transpose(order)).reshape(ctx.physical_shape(x))
        offset = 0 if cq.signed else 128  # uint8 codes: the same reals as int8 with the zero point 128 lower
        quant = QuantParams(float(cq.scale.reshape(-1)[0]), int(cq.zero_point.reshape(-1)[0]) - offset, cq.bits)
        fn = node.op_type.lower() if node.op_type != "Sub" or k == 1 else "rsub"  # rsub: constant - tensor
        ctx.add_node(Node(node.name, self.op, [x], [ctx.tensor(node.outputs[0], axes)],
                          attrs={"fn": fn, "operand_quant": quant},
                          consts={"operand": (physical - offset).astype(quant.dtype)}, origin=node.op_type))

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [input_shapes[0]]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        super().quantize(node, graph, ranges)
        q_x, q_c = graph.tensors[node.inputs[0]].quant, node.attrs["operand_quant"]
        q_out = graph.tensors[node.output].quant
        if q_c.bits != q_x.bits:
            raise UnsupportedOpError(f"an int{q_c.bits} constant with int{q_x.bits} activations", node.where)
        if node.attrs["fn"] in ("add", "sub", "rsub"):  # TFLite SUB's Prepare is ADD's
            params = add_params(q_x.scale, q_c.scale, q_out.scale, q_out.bits)
        else:  # TFLite MUL's Prepare: the product of the scales over the output's, in double
            m, sh = quantize_multiplier(float(q_x.scale) * float(q_c.scale) / float(q_out.scale))
            params = {"mult_out": m, "shift_out": sh}
        node.qparams = {**params, "act_range": fused_activation_range(node, graph)}

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        qp = node.qparams
        q_x, q_c = graph.tensors[node.inputs[0]].quant, node.attrs["operand_quant"]
        q_out = graph.tensors[node.output].quant
        x = inputs[0].astype(np.int64) - q_x.zero_point
        c = node.consts["operand"].astype(np.int64)[np.newaxis] - q_c.zero_point
        if node.attrs["fn"] == "add":
            y = tflite_add(x, c, qp)
        elif node.attrs["fn"] in ("sub", "rsub"):
            diff = at_common_scale(x, qp, 1) - _scaled_operand(node)[np.newaxis]
            y = requantize(diff if node.attrs["fn"] == "sub" else -diff, qp["mult_out"], qp["shift_out"])
        else:
            y = requantize(x * c, qp["mult_out"], qp["shift_out"])
        return [saturate(y + q_out.zero_point, q_out.bits, *qp["act_range"])]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        qp = node.qparams
        q_x, q_c = graph.tensors[node.inputs[0]].quant, node.attrs["operand_quant"]
        q_out = graph.tensors[node.output].quant
        fn = node.attrs["fn"]
        kernel = f"arm_elementwise_{fn}_s{q_out.bits}" if fn in ("add", "mul") else "own loop (TFLite SUB)"
        context = {**{k: v for k, v in qp.items() if k != "act_range"}, "fn": fn, "kernel": kernel,
                   "offset1": -q_x.zero_point, "offset2": -q_c.zero_point, "out_offset": q_out.zero_point,
                   "act_min": qp["act_range"][0], "act_max": qp["act_range"][1],
                   "size": graph.tensors[node.output].size}
        if fn in ("sub", "rsub"):
            values = _scaled_operand(node).reshape(-1)
            row = graph.tensors[node.output].shape[-1]
            per_row = values.size % row == 0 and bool(np.all(values.reshape(-1, row) == values[:row]))
            context["period"] = row if per_row else None  # a per-channel constant: one row in flash
            scaled = CArray("operand_scaled", "int32_t", values[:row] if per_row else values,
                            f"the constant ((codes + {-q_c.zero_point}) << {qp['left_shift']}) at the common scale, per "
                            + ("channel" if per_row else "element"))
            return KernelCall(template="binary_const.c.j2", kernel=kernel, context=context, arrays=[scaled])
        operand = CArray("operand", f"int{q_c.bits}_t", node.consts["operand"].reshape(-1),
                         f"the constant's int{q_c.bits} codes (scale {q_c.scale:.6g}, zero point {q_c.zero_point}), "
                         "per element")
        return KernelCall(template="binary_const.c.j2", kernel=kernel, context=context, arrays=[operand],
                          functions=[kernel])

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        q_c = node.attrs["operand_quant"]
        x = ex.as_feature_map(node.inputs[0])
        shape = list(x.shape)
        operand = ex.const(node.consts["operand"].reshape(shape),
                           ex.fb.TensorType.INT8 if q_c.bits == 8 else ex.fb.TensorType.INT16, f"{node.output}_operand",
                           ex.me.Quantization(scales=[q_c.scale], zero_points=[q_c.zero_point]))
        y = ex.as_feature_map(node.output, output=True)
        if node.attrs["fn"] == "add":
            opts, kind, code = ex.fb.AddOptionsT(), ex.fb.BuiltinOptions.AddOptions, ex.fb.BuiltinOperator.ADD
        elif node.attrs["fn"] in ("sub", "rsub"):
            opts, kind, code = ex.fb.SubOptionsT(), ex.fb.BuiltinOptions.SubOptions, ex.fb.BuiltinOperator.SUB
            if node.attrs["fn"] == "rsub":
                x, operand = operand, x
        else:
            opts, kind, code = ex.fb.MulOptionsT(), ex.fb.BuiltinOptions.MulOptions, ex.fb.BuiltinOperator.MUL
        opts.fusedActivationFunction = ex.fused(node)
        ex.op(code, [x, operand], [y], kind, opts)


def _scaled_operand(node: Node) -> np.ndarray:
    """The constant's codes at ADD/SUB's common scale, as TFLite-Micro rescales its second operand."""
    qp, q_c = node.qparams, node.attrs["operand_quant"]
    c = node.consts["operand"].astype(np.int64) - q_c.zero_point
    return at_common_scale(c, qp, 2).astype(np.int32)
