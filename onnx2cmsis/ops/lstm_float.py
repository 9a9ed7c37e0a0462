"""An ONNX LSTM's cell state at every step, as float ONNX nodes beside it, for calibration.

TFLite quantizes the cell state at a power-of-two scale from its range over every step of every
calibration sample, but an ONNX LSTM gives only the last step's cell (Y_c). These nodes recompute the
recurrence with a Scan over time from the same inputs and weights (outer-scope values) and stack the
cell after every step into one value, which calibration then ranges like any other. They are added
to the float model calibration runs only (importer.onnx_nodes.with_internal_values), never imported.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def cell_states_value(lstm_output: str, direction: int = 0) -> str:
    """The name of the value holding one direction's cell state after every step, (T, 1, H)."""
    return f"{lstm_output}__cell_states" + (f"_{direction}" if direction else "")


def cell_state_nodes(inputs: list[str], output: str, hidden: int, layout: int,
                     backwards: list[bool]) -> list[onnx.NodeProto]:
    """Nodes computing cell_states_value(output, d) for each direction d of an LSTM node from its X, W,
    R and optional B (ONNX gate order i, o, f, c, default activations, zero initial state)."""
    return [n for d, backward in enumerate(backwards)
            for n in _direction_nodes(inputs, output, hidden, layout, d, backward)]


def _direction_nodes(inputs: list[str], output: str, hidden: int, layout: int, direction: int,
                     backward: bool) -> list[onnx.NodeProto]:
    prefix = f"{output}__cal{direction}"
    x, w, r = inputs[:3]
    b = inputs[3] if len(inputs) > 3 and inputs[3] else ""
    h4 = 4 * hidden

    def const(name: str, value: np.ndarray) -> onnx.NodeProto:
        return helper.make_node("Constant", [], [f"{prefix}_{name}"], name=f"{prefix}_{name}",
                                value=numpy_helper.from_array(value, f"{prefix}_{name}"))

    def gate_slice(k: int) -> list[onnx.NodeProto]:
        return [const(f"s{k}", np.array([k * hidden], np.int64)), const(f"e{k}", np.array([(k + 1) * hidden], np.int64))]

    def this_direction(value: str, name: str) -> onnx.NodeProto:  # W[d], R[d] or B[d]
        return helper.make_node("Gather", [value, f"{prefix}_d"], [f"{prefix}_{name}"], name=f"{prefix}_{name}", axis=0)

    outer = [
        const("d", np.array(direction, np.int64)),
        this_direction(w, "w"),
        this_direction(r, "r"),
        const("axis1", np.array([1], np.int64)),
        const("zeros", np.zeros((1, hidden), np.float32)),
        *[n for k in range(8) for n in gate_slice(k)],
    ]
    if b:
        outer += [
            this_direction(b, "b1"),
            const("b_shape", np.array([1, 2 * h4], np.int64)),
            helper.make_node("Reshape", [f"{prefix}_b1", f"{prefix}_b_shape"], [f"{prefix}_b2"], name=f"{prefix}_b2"),
            const("b_lo", np.array([0], np.int64)), const("b_mid", np.array([h4], np.int64)),
            const("b_hi", np.array([2 * h4], np.int64)),
            helper.make_node("Slice", [f"{prefix}_b2", f"{prefix}_b_lo", f"{prefix}_b_mid", f"{prefix}_axis1"],
                             [f"{prefix}_wb"], name=f"{prefix}_wb"),
            helper.make_node("Slice", [f"{prefix}_b2", f"{prefix}_b_mid", f"{prefix}_b_hi", f"{prefix}_axis1"],
                             [f"{prefix}_rb"], name=f"{prefix}_rb"),
            helper.make_node("Add", [f"{prefix}_wb", f"{prefix}_rb"], [f"{prefix}_bias"], name=f"{prefix}_bias"),
        ]
    else:
        outer.append(const("bias", np.zeros((1, h4), np.float32)))

    def body_node(op: str, ins: list[str], out: str, **attrs) -> onnx.NodeProto:
        return helper.make_node(op, ins, [f"{prefix}_{out}"], name=f"{prefix}_{out}", **attrs)

    p = prefix
    body_nodes = [
        body_node("Gemm", [f"{p}_x", f"{p}_w"], "gx", transB=1),
        body_node("Gemm", [f"{p}_h", f"{p}_r"], "gh", transB=1),
        body_node("Add", [f"{p}_gx", f"{p}_gh"], "g0"),
        body_node("Add", [f"{p}_g0", f"{p}_bias"], "g"),
    ]
    for k, gate in enumerate("iofc"):
        body_nodes.append(body_node("Slice", [f"{p}_g", f"{p}_s{k}", f"{p}_e{k}", f"{p}_axis1"], f"pre_{gate}"))
        body_nodes.append(body_node("Tanh" if gate == "c" else "Sigmoid", [f"{p}_pre_{gate}"], f"gate_{gate}"))
    body_nodes += [
        body_node("Mul", [f"{p}_gate_f", f"{p}_c"], "fc"),
        body_node("Mul", [f"{p}_gate_i", f"{p}_gate_c"], "ic"),
        body_node("Add", [f"{p}_fc", f"{p}_ic"], "c_next"),
        body_node("Tanh", [f"{p}_c_next"], "tanh_c"),
        body_node("Mul", [f"{p}_gate_o", f"{p}_tanh_c"], "h_next"),
        body_node("Identity", [f"{p}_c_next"], "c_step"),
    ]
    value = lambda name, dims: helper.make_tensor_value_info(f"{p}_{name}", TensorProto.FLOAT, dims)  # noqa: E731
    body = helper.make_graph(body_nodes, f"{p}_step",
                             [value("h", [1, hidden]), value("c", [1, hidden]), value("x", [1, None])],
                             [value("h_next", [1, hidden]), value("c_next", [1, hidden]), value("c_step", [1, hidden])])
    scan = helper.make_node("Scan", [f"{p}_zeros", f"{p}_zeros", x],
                            [f"{p}_h_last", f"{p}_c_last", cell_states_value(output, direction)], name=f"{p}_scan",
                            body=body, num_scan_inputs=1, scan_input_axes=[0 if layout == 0 else 1],
                            scan_input_directions=[1 if backward else 0])
    return [*outer, scan]
