"""LSTM (ONNX LSTM: PyTorch nn.LSTM's export) -> arm_lstm_unidirectional_s8, TFLite's integer LSTM.

Quantized as TFLite-Micro's UNIDIRECTIONAL_SEQUENCE_LSTM (arith/lstm.py): int8 input, output and
per-gate weights, int16 gates and a cell state at a power-of-two scale from its calibrated range over
every step (ops/lstm_float.py computes it beside the LSTM in the calibration model). The output is the
hidden state at every step, (T, H); a model reading only the last step (Y_h, or Y's last row) reads
that row of it. The cell state and the two gate buffers are the kernel's scratch.
"""

from __future__ import annotations

import numpy as np
import onnx

from onnx2cmsis.arith.lstm import (
    GATES,
    cell_scale_power,
    effective_bias,
    lstm_multipliers,
    lstm_integer,
    quantized_cell_clip,
    recurrent_effective_bias,
)
from onnx2cmsis.arith.rules import check_s16_vector_sums
from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import (CArray, ImportContext, KernelCall, OnnxNodeView, OpHandler, Recurrence,
                                 TfliteContext)
from onnx2cmsis.ops.lstm_float import cell_state_nodes, cell_states_value
from onnx2cmsis.ops.sequence import (DIRECTIONS, default_activations, directions_of, gate_arrays, gate_biases,
                                     gate_weights, require_recurrent_kernels, run_directions, sequence_problems,
                                     sequence_quant, text)

ONNX_GATE_ROWS = {"input": 0, "output": 1, "forget": 2, "cell": 3}  # ONNX W/R/B blocks: i, o, f, c
DEFAULT_ACTIVATIONS = ["Sigmoid", "Tanh", "Tanh"]
def _file_gate_scales(ctx: ImportContext, node: OnnxNodeView, i: int, directions: int, hidden: int,
                      order: list[int]) -> np.ndarray | None:
    """(directions, 4) weight scales in GATES order where the model file quantized input i (W or R) with
    one int8 scale per gate (a .tflite's LSTM: frontends/tflite_lstm.py), else None."""
    q = ctx.const_quant(node.inputs[i])
    if q is None:
        return None
    scales = np.broadcast_to(q.scale.reshape(-1) if q.axis == 1 else q.scale.reshape(-1)[:1], (4 * hidden,))
    per_gate = scales.reshape(4, hidden)
    if (q.axis not in (None, 1) or q.bits != 8 or not q.signed or np.any(q.zero_point != 0)
            or np.any(per_gate != per_gate[:, :1])):
        raise UnsupportedOpError(f"LSTM weights '{node.inputs[i]}' quantized otherwise than one symmetric int8 scale "
                                 "per gate", node.where)
    return np.tile(per_gate[order, 0], (directions, 1)).astype(np.float32)


def _lstm_problems(node: OnnxNodeView, ctx: ImportContext) -> list[str]:
    """What in the node TFLite's LSTM cannot compute (all at once)."""
    problems = sequence_problems(node, ctx, (5, 6))
    if not default_activations(node, DEFAULT_ACTIVATIONS):
        problems.append(f"activations {[text(a) for a in node.attr('activations')]} (TFLite's LSTM computes "
                        f"{DEFAULT_ACTIVATIONS} in each direction)")
    if node.attr("clip") is not None:
        problems.append("clip (ONNX clips the gate inputs; TFLite clips the cell state)")
    if int(node.attr("input_forget", 0)):
        problems.append("input_forget=1 (coupled input and forget gates)")
    if len(node.inputs) > 7 and node.inputs[7]:
        problems.append("peephole weights P")
    if len(node.outputs) > 2 and node.outputs[2] and ctx.is_read(node.outputs[2]):
        problems.append("its last cell state Y_c read by the model")
    return problems


class LstmHandler(OpHandler):
    op = "lstm"
    onnx_ops = ("LSTM",)
    activation_bits = (8, 16)  # int8, or TFLite 16x8 (arm_lstm_unidirectional_s16)

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        problems = _lstm_problems(node, ctx)
        backwards = directions_of(node)
        if problems:
            raise UnsupportedOpError(f"LSTM with {'; '.join(problems)} is not supported", node.where)
        features = ctx.full_shape(node.inputs[0])[2]
        hidden = int(node.attr("hidden_size"))
        w = ctx.const(node.inputs[1]).reshape(len(backwards), 4, hidden, features)
        r = ctx.const(node.inputs[2]).reshape(len(backwards), 4, hidden, hidden)
        b = (ctx.const(node.inputs[3]).reshape(len(backwards), 2, 4, hidden).sum(axis=1)
             if len(node.inputs) > 3 and node.inputs[3] else np.zeros((len(backwards), 4, hidden)))
        order = [ONNX_GATE_ROWS[g] for g in GATES]
        file_scales = {key: _file_gate_scales(ctx, node, i, len(backwards), hidden, order)
                       for key, i in (("weight", 1), ("recurrent", 2))}
        cell_file = node.outputs[2] if len(node.outputs) > 2 and node.outputs[2] else None
        cells = [cell_states_value(node.outputs[0], d) for d in range(len(backwards))]

        def add_direction(d: int, backward: bool, name: str, src: str, dst: str) -> None:
            pinned = {f"file_{k}_scales": v[d] for k, v in file_scales.items() if v is not None}
            ctx.add_node(Node(name, self.op, [src], [dst], attrs={"hidden": hidden, "cell_value": cells[d],
                                                                   "cell_file_value": cell_file, **pinned},
                              consts={"weight": np.ascontiguousarray(w[d][order], np.float32),
                                      "recurrent": np.ascontiguousarray(r[d][order], np.float32),
                                      "bias": np.ascontiguousarray(b[d][order], np.float32)},
                              origin="LSTM backward" if backward else "LSTM", internal_values=(cells[d],)))

        run_directions(node, ctx, hidden, add_direction)

    def float_internals(self, node: OnnxNodeView) -> list[onnx.NodeProto]:
        backwards = DIRECTIONS.get(text(node.attr("direction", "forward")), [False])
        if not node.outputs or not node.outputs[0]:
            return []  # refused at import
        return cell_state_nodes(list(node.inputs[:4]), node.outputs[0], int(node.attr("hidden_size")),
                                int(node.attr("layout", 0)), backwards)

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [(input_shapes[0][0], node.attrs["hidden"])]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        q_in, q_out = sequence_quant(node, graph, ranges)
        p = self._cell_power(node, graph, ranges)
        clip = self._cell_clip(node, graph)
        s_w, s_r, wq, rq = gate_weights(node)
        bias = gate_biases(node.consts["bias"], q_in, s_w, node.where)
        if q_in.bits == 16:  # arm_lstm_unidirectional_s16's products: arm_nn_vec_mat_mul_result_acc_s16
            for g, gate in enumerate(GATES):
                check_s16_vector_sums(wq[g], bias[g], node.where, f"{gate} gate's input product")
                check_s16_vector_sums(rq[g], 0, node.where, f"{gate} gate's recurrent product")
        node.qparams = {
            "weight": wq, "recurrent": rq, "bias": bias, "weight_scales": s_w, "recurrent_scales": s_r,
            "effective_bias": effective_bias(bias, wq, q_in.zero_point),
            "recurrent_bias": recurrent_effective_bias(rq, q_out.zero_point),
            "multipliers": lstm_multipliers(q_in.scale, q_out.scale, s_w, s_r, p),
            "cell_power": p, "cell_clip": quantized_cell_clip(clip, p), "cell_clip_real": clip,
        }

    @staticmethod
    def _cell_clip(node: Node, graph: Graph) -> float:
        """TFLite's cell clip, real (0: none): a .tflite file's; ONNX LSTMs have none (refused)."""
        if graph.file_quant is None or not node.attrs.get("cell_file_value"):
            return 0.0
        return graph.file_quant.cell_clips.get(node.attrs["cell_file_value"], 0.0)

    @staticmethod
    def _cell_power(node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> int:
        """p of the cell's scale 2^p: the model file's (a .tflite's cell state), else from its calibrated
        range over every step."""
        pinned = graph.file_quant.activations.get(node.attrs.get("cell_file_value") or "") \
            if graph.file_quant is not None else None
        if pinned is None:
            lo, hi = ranges[node.attrs["cell_value"]]
            return cell_scale_power(max(-lo, hi))
        p = round(np.log2(pinned.scale))
        if pinned.bits != 16 or pinned.zero_point != 0 or 2.0**p != pinned.scale:
            raise UnsupportedOpError(f"the file quantizes the LSTM's cell state with scale {pinned.scale}, zero point "
                                     f"{pinned.zero_point} as int{pinned.bits}: TFLite's LSTM takes int16 at a power "
                                     "of two", node.where)
        return p

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        qp = node.qparams
        zp_h = graph.tensors[node.output].quant.zero_point
        return [lstm_integer(inputs[0], qp["weight"], qp["recurrent"], qp["effective_bias"], qp["multipliers"],
                             qp["cell_power"], qp["cell_clip"], zp_h, graph.tensors[node.output].quant.bits)]

    def recurrence(self, node: Node, graph: Graph) -> Recurrence:
        return Recurrence(state_bytes=2 * node.attrs["hidden"], reads_previous_output=True)  # int16 cell state

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        require_recurrent_kernels(node, graph, "the LSTM needs arm_lstm_unidirectional_s8/_s16")
        qp = node.qparams
        q_in, q_out = graph.tensors[node.inputs[0]].quant, graph.tensors[node.output].quant
        steps, features = graph.tensors[node.inputs[0]].shape
        hidden = node.attrs["hidden"]
        m = qp["multipliers"]
        wide = q_in.bits == 16
        arrays = gate_arrays(GATES, qp, qp["effective_bias"], features, hidden, wide, "hidden state")
        if wide:  # zero points are 0 at 16x8: the recurrent products start from 0, one array for all gates
            arrays.append(CArray("zero_bias", "int64_t", np.zeros(hidden, np.int64), "the recurrent products' start"))
        else:
            arrays += [CArray(f"{gate}_recurrent_bias", "int32_t", qp["recurrent_bias"][g],
                              "-(output zero point) x recurrent row sums") for g, gate in enumerate(GATES)]
        gates = {gate: {"input": m.input_parts[g], "recurrent": m.recurrent_parts[g],
                        "activation": "ARM_TANH" if gate == "cell" else "ARM_SIGMOID"}
                 for g, gate in enumerate(GATES)}
        kernel = "arm_lstm_unidirectional_s16" if wide else "arm_lstm_unidirectional_s8"
        stateful = bool(node.attrs.get("stateful"))
        if stateful:  # one step at a time: v7.0.0's sequence function clears the cell state on every call
            kernel = "arm_nn_lstm_step_s16" if wide else "arm_nn_lstm_step_s8"
        return KernelCall(
            template="lstm.c.j2",
            kernel=kernel,
            context={"steps": steps, "features": features, "hidden": hidden, "input_offset": -q_in.zero_point,
                     "output_offset": q_out.zero_point, "forget_cell": m.forget_cell, "input_cell": m.input_cell,
                     "hidden_mult": m.hidden, "cell_clip": qp["cell_clip"], "cell_power": qp["cell_power"],
                     "gates": gates, "kernel": kernel, "wide": wide, "stateful": stateful},
            arrays=arrays,
            functions=[kernel],
            scratch_bytes=3 * 2 * hidden,  # the cell state and two int16 gate buffers
            macs=steps * 4 * hidden * (features + hidden),
            steps=steps,
        )

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        fb, me, qp = ex.fb, ex.me, node.qparams
        q_in, q_out = ex.graph.tensors[node.inputs[0]].quant, ex.graph.tensors[node.output].quant
        steps, features = ex.graph.tensors[node.inputs[0]].shape
        hidden = node.attrs["hidden"]

        def weights(values: np.ndarray, scale: float, name: str):
            return ex.const(values, fb.TensorType.INT8, name, me.Quantization(scales=[float(scale)], zero_points=[0]))

        act = fb.TensorType.INT8 if q_in.bits == 8 else fb.TensorType.INT16
        x = me.Tensor(shape=[1, steps, features], dtype=act, quantization=ex.activation(node.inputs[0]).quantization,
                      name=f"{node.output}_in3d")
        ex.reshape(ex.activation(node.inputs[0]), x)
        y = me.Tensor(shape=[1, steps, hidden], dtype=act, quantization=ex.activation(node.output).quantization,
                      name=f"{node.output}_out3d")
        inputs = [x]
        inputs += [weights(qp["weight"][g], qp["weight_scales"][g], f"{node.output}_w{g}") for g in range(4)]
        inputs += [weights(qp["recurrent"][g], qp["recurrent_scales"][g], f"{node.output}_r{g}") for g in range(4)]
        inputs += [None, None, None]  # no peepholes
        inputs += [ex.const(qp["bias"][g], fb.TensorType.INT32 if q_in.bits == 8 else fb.TensorType.INT64,
                            f"{node.output}_b{g}",
                            me.Quantization(scales=[float(np.float32(q_in.scale) * np.float64(qp["weight_scales"][g]))],
                                            zero_points=[0])) for g in range(4)]
        inputs += [None, None]  # no projection
        hidden_state = me.Tensor(shape=[1, hidden], dtype=act,
                                 quantization=me.Quantization(scales=[q_out.scale], zero_points=[q_out.zero_point]),
                                 name=f"{node.output}_hidden_state")
        cell_state = me.Tensor(shape=[1, hidden], dtype=fb.TensorType.INT16,
                               quantization=me.Quantization(scales=[2.0 ** qp["cell_power"]], zero_points=[0]),
                               name=f"{node.output}_cell_state")
        hidden_state.is_variable = cell_state.is_variable = True
        inputs += [hidden_state, cell_state, None, None, None, None]
        opts = fb.UnidirectionalSequenceLSTMOptionsT()
        opts.fusedActivationFunction = fb.ActivationFunctionType.TANH
        opts.cellClip, opts.projClip, opts.timeMajor = float(qp["cell_clip_real"]), 0.0, False
        ex.op(fb.BuiltinOperator.UNIDIRECTIONAL_SEQUENCE_LSTM, inputs, [y],
              fb.BuiltinOptions.UnidirectionalSequenceLSTMOptions, opts)
        ex.reshape(y, ex.activation(node.output))
