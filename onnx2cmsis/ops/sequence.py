"""What the recurrent handlers (ops/lstm.py, ops/gru.py) share: reading an ONNX recurrent node's
directions, and laying its sequence output out.

ONNX's LSTM, GRU and RNN write Y as (T, directions, 1, H) (layout 0) or (1, T, directions, H)
(layout 1) and Y_h as each direction's last step. Here a backward direction is the forward
computation over the time-reversed sequence, its outputs reversed back (TFLite's REVERSE_V2, an IR
gather), and two directions sit side by side at each step (a concat along channels).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnx2cmsis.arith.rules import quantize_bias, quantize_weights, symmetric_weight_scales
from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ir.tensor import QuantParams
from onnx2cmsis.ops.base import CArray, ImportContext, OnnxNodeView, calibrated_quant

DIRECTIONS = {"forward": [False], "reverse": [True], "bidirectional": [False, True]}  # backward, per direction


def text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def directions_of(node: OnnxNodeView) -> list[bool]:
    """Per direction, whether it runs backward (refused by name when the attribute is unknown)."""
    direction = text(node.attr("direction", "forward"))
    if direction not in DIRECTIONS:
        raise UnsupportedOpError(f"{node.op_type} with direction '{direction}' is not supported", node.where)
    return DIRECTIONS[direction]


def default_activations(node: OnnxNodeView, defaults: list[str]) -> bool:
    """The node's activations are the defaults, given once or for each direction."""
    given = [text(a) for a in node.attr("activations", defaults)]
    return given in (defaults, defaults * len(DIRECTIONS.get(text(node.attr("direction", "forward")), [False])))


def sequence_problems(node: OnnxNodeView, ctx: ImportContext, initial_inputs: tuple[int, ...]) -> list[str]:
    """What every recurrent node must be: one sequence (batch 1), its output Y given, sequence_lens all
    of it, zero initial states (inputs `initial_inputs`), constant weights and bias, its hidden size."""
    problems = []
    if node.attr("hidden_size") is None:
        problems.append("no hidden_size attribute")
    for i, what in ((1, "weights"), (2, "weights"), (3, "bias")):
        if len(node.inputs) > i and node.inputs[i] and ctx.const(node.inputs[i]) is None:
            problems.append(f"computed {what} '{node.inputs[i]}'")
    layout = int(node.attr("layout", 0))
    full = ctx.full_shape(node.inputs[0])
    if len(full) != 3 or full[1 - layout] != 1:
        problems.append(f"input of shape {list(full)} (one sequence at a time: batch 1)")
    if not node.outputs or not node.outputs[0]:
        problems.append("no sequence output Y")
    for i in initial_inputs:
        if len(node.inputs) > i and node.inputs[i]:
            state = ctx.const(node.inputs[i])
            if state is None or np.any(state != 0):
                problems.append("a non-zero initial state (states start at zero)")
    if len(node.inputs) > 4 and node.inputs[4] and len(full) == 3:
        lens = ctx.const(node.inputs[4])
        if lens is None or np.any(lens != full[layout]):
            problems.append("sequence_lens shorter than the sequence")
    return problems


def time_reversed(ctx: ImportContext, tensor: str, name: str, calib_name: str) -> str:
    """A copy of a (T, C) tensor with its steps in reverse order (TFLite's REVERSE_V2 along time)."""
    steps, channels = ctx.physical_shape(tensor)
    index = (np.arange(steps)[::-1, None] * channels + np.arange(channels)[None, :]).reshape(-1)
    out = ctx.new_tensor((steps, channels), f"{tensor}_reversed", calib_name=calib_name)
    ctx.add_node(Node(name, "gather", [tensor], [out], attrs={"index": index, "shape": (steps, channels)},
                      origin="time reversal"))
    return out


def run_directions(node: OnnxNodeView, ctx: ImportContext, hidden: int,
                   add_direction: Callable[[int, bool, str, str, str], None]) -> None:
    """Import a recurrent node: for each direction d, `add_direction(d, backward, name, src, dst)` adds
    the IR node computing (T, H) `dst` from the (T, C) `src` forward in time; this lays the input and
    the outputs (Y, and Y_h when read) out around them."""
    layout = int(node.attr("layout", 0))
    full = ctx.full_shape(node.inputs[0])
    steps = full[layout]
    backwards = directions_of(node)
    y_value = node.outputs[0]
    x = ctx.tensor(node.inputs[0], (0, 2) if layout == 0 else (1, 2), batched=False)
    outputs = []
    for d, backward in enumerate(backwards):
        name = f"{node.name}_backward" if backward and len(backwards) > 1 else node.name
        src = time_reversed(ctx, x, f"{name}_reverse_input", node.inputs[0]) if backward else x
        y = ctx.new_tensor((steps, hidden), f"{y_value}_{'backward' if backward else 'forward'}", calib_name=y_value)
        add_direction(d, backward, name, src, y)
        outputs.append(time_reversed(ctx, y, f"{name}_reverse_output", y_value) if backward else y)
    if len(outputs) == 1:
        y_all = outputs[0]
    else:  # Y holds both directions side by side at each step: a concat along channels
        y_all = ctx.new_tensor((steps, 2 * hidden), y_value, calib_name=y_value)
        ctx.add_node(Node(f"{node.name}_directions", "concat", outputs, [y_all], attrs={"kind": "channel"},
                          origin=f"{node.op_type} directions"))
    ctx.bind(y_value, y_all, (0, 1, 3) if layout == 0 else (1, 2, 3))
    if len(node.outputs) > 1 and node.outputs[1] and ctx.is_read(node.outputs[1]):
        # Y_h: each direction's last step (a backward one ends at the first), rows of Y
        ends = [0 if backward else -1 for backward in backwards]
        if layout == 0:
            last = lambda a: [np.stack([a[0][t, d] for d, t in enumerate(ends)])]  # noqa: E731
        else:
            last = lambda a: [np.stack([a[0][:, t, d] for d, t in enumerate(ends)], axis=1)]  # noqa: E731
        ctx.move([node.outputs[1]], [y_value], last)


def sequence_quant(node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> tuple[QuantParams, QuantParams]:
    """The recurrent node's input quantization and its output's (the hidden state's), calibrated."""
    out = graph.tensors[node.output]
    if out.quant is None:
        out.quant = calibrated_quant(graph, node.output, ranges)
    return graph.tensors[node.inputs[0]].quant, out.quant


def gate_weights(node: Node) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(s_w, s_r, weights, recurrent): each gate's input and recurrent matrices as int8 with one
    symmetric scale per gate and matrix, the model file's scales where it gave them (a .tflite's)."""
    found = []
    for key in ("weight", "recurrent"):
        m = node.consts[key]
        scales = node.attrs.get(f"file_{key}_scales")
        if scales is None:
            scales = np.array([symmetric_weight_scales(m[g], None)[0] for g in range(len(m))], np.float32)
        found.append((scales, np.stack([quantize_weights(m[g], scales[g:g + 1], None) for g in range(len(m))])))
    (s_w, wq), (s_r, rq) = found
    return s_w, s_r, wq, rq


def gate_biases(bias: np.ndarray, q_in: QuantParams, s_w: np.ndarray, where: str) -> np.ndarray:
    """Each gate's bias at s_in * s_w[g]: int32 (int8 activations) or int64 (16x8)."""
    return np.stack([quantize_bias(bias[g], q_in.scale, s_w[g:g + 1], where, bits=32 if q_in.bits == 8 else 64)
                     for g in range(len(bias))])


def require_recurrent_kernels(node: Node, graph: Graph, what: str) -> None:
    """Refuse, naming the level, an API level without CMSIS-NN's LSTM functions (the 2024.01 snapshot)."""
    if not graph.cmsis_api.lstm_s8:
        raise UnsupportedOpError(f"{what}, which CMSIS-NN API level {graph.cmsis_api.level} "
                                 f"({graph.cmsis_api.versions}) lacks: convert for level 7 (CMSIS-NN v7.0.0 or later)",
                                 node.where)


def gate_arrays(gates: tuple[str, ...], qp: dict, bias: np.ndarray, features: int, hidden: int, wide: bool,
                noun: str) -> list[CArray]:
    """Each gate's input weights, recurrent weights and bias (int32 less the input zero point times the
    row sums, or int64 at 16x8) as the C's constant arrays; `noun` says what the recurrent weights read."""
    arrays = []
    for g, gate in enumerate(gates):
        arrays += [
            CArray(f"{gate}_weights", "int8_t", qp["weight"][g], f"[{hidden}][{features}] input to {gate}"),
            CArray(f"{gate}_recurrent", "int8_t", qp["recurrent"][g], f"[{hidden}][{hidden}] {noun} to {gate}"),
            CArray(f"{gate}_bias", "int64_t" if wide else "int32_t", bias[g],
                   f"{gate} bias" + ("" if wide else " less input zero point x row sums")),
        ]
    return arrays
