"""GRU and RNN (ONNX GRU, RNN: PyTorch nn.GRU/nn.RNN, Keras GRU/SimpleRNN) -> an own exact step loop
over CMSIS-NN's LSTM building blocks.

TFLite-Micro and CMSIS-NN have no GRU kernel: the step is built from the functions their LSTM uses
(`arm_nn_vec_mat_mul_result_acc_s8_s16` / `_s16`, `arm_nn_activation_s16`, `arm_elementwise_mul_s16`)
and a loop for the state update, with the LSTM's quantization rules (arith/gru.py). No independent
oracle exists for it: the numpy reference is the oracle, and accuracy is held to the float model's.
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.arith.gru import STATE_SCALE, gru_integer, recurrent_multipliers, rnn_integer
from onnx2cmsis.arith.lstm import effective_bias
from onnx2cmsis.arith.rules import check_s16_vector_sums, round_half_away
from onnx2cmsis.errors import NotExportable, UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import (CArray, ImportContext, KernelCall, OnnxNodeView, OpHandler, Recurrence,
                                 TfliteContext)
from onnx2cmsis.ops.sequence import (default_activations, directions_of, gate_arrays, gate_biases, gate_weights,
                                     require_recurrent_kernels, run_directions, sequence_problems, sequence_quant, text)

DEFAULT_ACTIVATIONS = {"GRU": ["Sigmoid", "Tanh"], "RNN": ["Tanh"]}
GATES = {"GRU": ("update", "reset", "candidate"), "RNN": ("state",)}  # ONNX's order: z, r, h


class GruHandler(OpHandler):
    op = "gru"
    onnx_ops = ("GRU", "RNN")
    activation_bits = (8, 16)  # int8, or 16x8 (int16 input and output, int64 biases)

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        problems = sequence_problems(node, ctx, (5,))
        backwards = directions_of(node)
        if not default_activations(node, DEFAULT_ACTIVATIONS[node.op_type]):
            problems.append(f"activations {[text(a) for a in node.attr('activations')]} "
                            f"({DEFAULT_ACTIVATIONS[node.op_type]} in each direction only)")
        if node.attr("clip") is not None:
            problems.append("clip")
        if problems:
            raise UnsupportedOpError(f"{node.op_type} with {'; '.join(problems)} is not supported", node.where)
        gates = len(GATES[node.op_type])
        hidden = int(node.attr("hidden_size"))
        features = ctx.full_shape(node.inputs[0])[2]
        w = ctx.const(node.inputs[1]).reshape(len(backwards), gates, hidden, features)
        r = ctx.const(node.inputs[2]).reshape(len(backwards), gates, hidden, hidden)
        b = (ctx.const(node.inputs[3]).reshape(len(backwards), 2, gates, hidden)
             if len(node.inputs) > 3 and node.inputs[3] else np.zeros((len(backwards), 2, gates, hidden)))
        before_reset = bool(int(node.attr("linear_before_reset", 0))) and node.op_type == "GRU"

        def add_direction(d: int, backward: bool, name: str, src: str, dst: str) -> None:
            ctx.add_node(Node(name, self.op, [src], [dst],
                              attrs={"hidden": hidden, "kind": node.op_type, "linear_before_reset": before_reset},
                              consts={"weight": np.ascontiguousarray(w[d], np.float32),
                                      "recurrent": np.ascontiguousarray(r[d], np.float32),
                                      "bias": np.ascontiguousarray(b[d][0], np.float32),
                                      "recurrent_bias": np.ascontiguousarray(b[d][1], np.float32)},
                              origin=f"{node.op_type} backward" if backward else node.op_type))

        run_directions(node, ctx, hidden, add_direction)

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [(input_shapes[0][0], node.attrs["hidden"])]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        q_in, q_out = sequence_quant(node, graph, ranges)
        s_w, s_r, wq, rq = gate_weights(node)
        b, rb = node.consts["bias"].astype(np.float64), node.consts["recurrent_bias"].astype(np.float64)
        # the recurrent biases join the input parts' (the same Q3.12 sum), except the GRU candidate's
        # with linear_before_reset: it is inside the reset gate's product
        apart = node.attrs["linear_before_reset"]
        bias = gate_biases(b + rb if not apart else np.concatenate([b[:2] + rb[:2], b[2:]]), q_in, s_w, node.where)
        candidate_bias = (round_half_away(rb[2] / (STATE_SCALE * np.float64(s_r[2]))).astype(np.int64) if apart
                          else np.zeros(node.attrs["hidden"], np.int64))
        for g in range(len(wq)):  # the products arm_nn_vec_mat_mul_result_acc_s16 computes
            check_s16_vector_sums(rq[g], candidate_bias if g == 2 else 0, node.where, f"gate {g}'s state product")
            if q_in.bits == 16:
                check_s16_vector_sums(wq[g], bias[g], node.where, f"gate {g}'s input product")
        node.qparams = {"weight": wq, "recurrent": rq, "weight_scales": s_w, "recurrent_scales": s_r,
                        "bias": effective_bias(bias, wq, q_in.zero_point), "candidate_bias": candidate_bias,
                        "multipliers": recurrent_multipliers(q_in.scale, q_out.scale, s_w, s_r)}

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        qp = node.qparams
        q = graph.tensors[node.output].quant
        if node.attrs["kind"] == "RNN":
            return [rnn_integer(inputs[0], qp["weight"], qp["recurrent"], qp["bias"], qp["multipliers"], q.zero_point,
                                q.bits)]
        return [gru_integer(inputs[0], qp["weight"], qp["recurrent"], qp["bias"], qp["candidate_bias"],
                            qp["multipliers"], q.zero_point, node.attrs["linear_before_reset"], q.bits)]

    def recurrence(self, node: Node, graph: Graph) -> Recurrence:
        return Recurrence(state_bytes=2 * node.attrs["hidden"], reads_previous_output=False)  # Q0.15 state

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        require_recurrent_kernels(node, graph, f"the {node.attrs['kind']} is built from CMSIS-NN's LSTM functions")
        qp = node.qparams
        steps, features = graph.tensors[node.inputs[0]].shape
        hidden, kind = node.attrs["hidden"], node.attrs["kind"]
        m = qp["multipliers"]
        names = GATES[kind]
        wide = graph.tensors[node.inputs[0]].quant.bits == 16
        arrays = gate_arrays(names, qp, qp["bias"], features, hidden, wide, "state")
        arrays.append(CArray("zero_bias", "int64_t", np.zeros(hidden, np.int64), "the state products' start"))
        if node.attrs["linear_before_reset"]:
            arrays.append(CArray("candidate_recurrent_bias", "int64_t", qp["candidate_bias"],
                                 "the candidate's recurrent bias, at 2^-15 x its weights' scale"))
        q_out = graph.tensors[node.output].quant
        gates = {gate: {"input": m.input_parts[g], "recurrent": m.recurrent_parts[g]} for g, gate in enumerate(names)}
        buffers = 5 if kind == "GRU" else 2  # state, update, reset, candidate, recurrent part / state, sum
        return KernelCall(
            template="gru.c.j2",
            kernel=f"own {kind} step loop (CMSIS-NN LSTM functions)",
            context={"kind": kind, "steps": steps, "features": features, "hidden": hidden, "gates": gates,
                     "reset": m.reset, "output": m.output, "output_offset": q_out.zero_point,
                     "before_reset": node.attrs["linear_before_reset"], "wide": wide,
                     "stateful": bool(node.attrs.get("stateful")),
                     "out_min": -(1 << (q_out.bits - 1)), "out_max": (1 << (q_out.bits - 1)) - 1},
            arrays=arrays,
            functions=[*([] if wide else ["arm_nn_vec_mat_mul_result_acc_s8_s16"]), "arm_nn_vec_mat_mul_result_acc_s16",
                       "arm_nn_activation_s16", *(["arm_elementwise_mul_s16"] if kind == "GRU" else [])],
            scratch_bytes=2 * buffers * hidden,
            macs=steps * len(names) * hidden * (features + hidden),
            steps=steps,
        )

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        raise NotExportable(f"TFLite has no {node.attrs['kind']} operator (our reference is the oracle)", node.name)
