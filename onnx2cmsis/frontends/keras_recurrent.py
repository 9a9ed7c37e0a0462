"""Keras LSTM, GRU and SimpleRNN layers (and Bidirectional of them) as ONNX LSTM, GRU and RNN nodes,
built from the layers' own weights.

tf2onnx exports a Keras 3 recurrent layer as a Loop over a while-loop body, which no 1D kernel maps to. Before
the export, each recurrent layer's `call` is replaced on the (private, loaded) model by a stand-in of
the same output shape (a matrix product, under the layer's marked name scope); after it, the nodes
under that scope are cut out and an ONNX LSTM with the layer's weights put in their place, between
the same input and output values:

    x (1, T, C) -> Transpose -> LSTM (forward, reverse for go_backwards, bidirectional) -> Y or Y_h
      -> Transpose/Reshape (-> time reversal for go_backwards' sequences) -> (1, T, H) or (1, H)

Keras' LSTM gate order i, f, c, o becomes ONNX's i, o, f, c (GRU: z, r, h in both; Keras'
`reset_after` is ONNX's linear_before_reset); a Bidirectional layer's backward half runs
over the reversed sequence, so its output at each step is ONNX's backward direction at that step
(Keras reverses it back), merged by concatenation or sum.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.frontends.keras_names import MARKER, MARKER_RE

CELLS = {"LSTM": ("LSTM", 4), "GRU": ("GRU", 3), "SimpleRNN": ("RNN", 1)}  # Keras layer: ONNX op, gates
RECURRENT_LAYERS = {*CELLS, "Bidirectional"}
# which Keras gate block each ONNX block is (LSTM: ONNX i, o, f, c from Keras i, f, c, o)
KERAS_TO_ONNX_GATES = {"LSTM": [0, 3, 1, 2], "GRU": [0, 1, 2], "SimpleRNN": [0]}
MERGE_MODES = ("concat", "sum")


def recurrent_problems(layers: list[dict[str, Any]]) -> list[str]:
    """What in the file's recurrent layers does not convert, each naming its layer (from the config,
    before anything is deserialized)."""
    problems = []
    for layer in layers:
        cls, cfg = layer.get("class_name"), layer.get("config", {})
        name = cfg.get("name", "?")
        if cls == "Bidirectional":
            inner = cfg.get("layer", {})
            kind = inner.get("class_name")
            if kind not in CELLS:
                problems.append(f"layer '{name}' (Bidirectional) wraps a {kind}: only {', '.join(CELLS)} convert")
                continue
            if cfg.get("merge_mode", "concat") not in MERGE_MODES:
                problems.append(f"layer '{name}' (Bidirectional) merges with '{cfg.get('merge_mode')}' (supported: "
                                f"{', '.join(MERGE_MODES)})")
            problems += _cell_problems(name, inner.get("config", {}), f"Bidirectional({kind})", kind)
            back = cfg.get("backward_layer") or {}  # Keras 3 writes the mirror it made; another is refused
            mirror = back.get("config", {})
            if back and (back.get("class_name") != kind or not mirror.get("go_backwards") or any(
                    mirror.get(k) != inner.get("config", {}).get(k) for k in ("units", "return_sequences", "use_bias"))):
                problems.append(f"layer '{name}' (Bidirectional) has a backward layer that is not its {kind}'s mirror")
            else:
                problems += _cell_problems(name, mirror, f"Bidirectional({kind})", kind)
        elif cls in CELLS:
            problems += _cell_problems(name, cfg, cls, cls)
    return problems


def _activation(value: Any) -> Any:
    return value.get("config", {}).get("name", value.get("class_name")) if isinstance(value, dict) else value


def _cell_problems(name: str, cfg: dict[str, Any], cls: str, kind: str) -> list[str]:
    found = []
    if _activation(cfg.get("activation", "tanh")) != "tanh":
        found.append(f"activation '{_activation(cfg.get('activation'))}'")
    if kind != "SimpleRNN" and _activation(cfg.get("recurrent_activation", "sigmoid")) != "sigmoid":
        found.append(f"recurrent_activation '{_activation(cfg.get('recurrent_activation'))}' (the gates are sigmoid; "
                     "Keras 2.0-2.2 defaulted to hard_sigmoid)")
    for key, what in (("stateful", "stateful=True (state kept across calls)"), ("return_state", "return_state=True"),
                      ("time_major", "time_major=True")):
        if cfg.get(key):
            found.append(what)
    return [f"layer '{name}' ({cls}) has {', '.join(found)}"] if found else []


@dataclass(frozen=True)
class StandIn:
    """One recurrent layer replaced for the export: where it sits and what to put back."""

    marker: str  # the layer's marked name: its nodes' scope in the exported graph
    kind: str  # the Keras cell: LSTM, GRU or SimpleRNN
    steps: int | None  # None: a free time axis, read from the export (its signature fixes it)
    features: int
    hidden: int
    sequences: bool  # return_sequences
    directions: tuple[tuple[np.ndarray, np.ndarray, np.ndarray], ...]  # per direction: kernel, recurrent, bias
    backward_only: bool  # go_backwards on a unidirectional layer
    merge: str  # "concat" or "sum" (bidirectional)
    reset_after: bool  # a GRU's (ONNX linear_before_reset)


def stand_in_recurrent_layers(model: Any) -> list[StandIn]:
    """Replace the call of each recurrent layer (LSTM, GRU, SimpleRNN, a Bidirectional of one) on the
    loaded (private, marked) model by a matrix product of the output's shape; what to put back in its
    place after the export."""
    import keras

    found = []
    for layer in _all_layers(model):
        kind = type(layer).__name__
        if kind not in RECURRENT_LAYERS:
            continue
        cell = layer.forward_layer if kind == "Bidirectional" else layer
        steps, features = (None if d is None else int(d) for d in layer.input.shape[1:])
        hidden = int(cell.units)
        halves = [layer.forward_layer, layer.backward_layer] if kind == "Bidirectional" else [layer]
        weights = tuple(tuple(np.asarray(w, np.float32) for w in _cell_weights(half, hidden)) for half in halves)
        merge = getattr(layer, "merge_mode", "concat") or "concat"
        width = hidden * (2 if kind == "Bidirectional" and merge == "concat" else 1)
        found.append(StandIn(layer.name, type(cell).__name__, steps, features, hidden, bool(cell.return_sequences),
                             weights, kind != "Bidirectional" and bool(layer.go_backwards), merge,
                             bool(getattr(cell.cell, "reset_after", False))))
        stand_in = np.ones((features, width), np.float32)

        def call(inputs, *args, _w=stand_in, _seq=bool(cell.return_sequences), **kwargs):
            x = inputs if _seq else inputs[:, -1, :]
            return keras.ops.matmul(x, _w)

        layer.call = call
    return found


def _all_layers(container: Any) -> list[Any]:
    out = []
    for layer in container.layers:
        out.append(layer)
        if hasattr(layer, "layers") and type(layer).__name__ not in RECURRENT_LAYERS:
            out += _all_layers(layer)
    return out


def _cell_weights(layer: Any, hidden: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kernel (C, G*H), recurrent kernel (H, G*H) and the bias as ONNX's (2, G*H): input and recurrent
    biases (Keras' GRU with reset_after keeps both; the other cells one, the recurrent part zero)."""
    gates = CELLS[type(layer).__name__][1]
    kernel, recurrent = (np.asarray(w) for w in (layer.cell.kernel, layer.cell.recurrent_kernel))
    bias = np.asarray(layer.cell.bias) if layer.cell.use_bias else np.zeros(gates * hidden, np.float32)
    bias = bias.reshape(-1, gates * hidden)
    if len(bias) == 1:
        bias = np.concatenate([bias, np.zeros_like(bias)])
    return kernel, recurrent, bias


def _onnx_gates(block: np.ndarray, hidden: int, kind: str) -> np.ndarray:
    """Keras (..., G*H) columns -> ONNX (G*H, ...) rows in ONNX's gate order."""
    order = KERAS_TO_ONNX_GATES[kind]
    rows = block.T.reshape(len(order), hidden, -1)
    return rows[order].reshape(len(order) * hidden, -1)


def insert_recurrent_layers(proto: onnx.ModelProto, stand_ins: list[StandIn], where: str) -> None:
    """Cut each stand-in's nodes out of the exported graph and put an ONNX recurrent node in their place."""
    if not stand_ins:
        return
    inferred = onnx.shape_inference.infer_shapes(proto)
    shapes = {v.name: tuple(d.dim_value for d in v.type.tensor_type.shape.dim)
              for v in (*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output)}
    for stand_in in stand_ins:
        _replace(proto.graph, stand_in, where, shapes)


def _marker_of(name: str) -> str | None:
    m = MARKER_RE.search(name)
    return MARKER.format(m.group(1)) if m else None


def _replace(graph: onnx.GraphProto, s: StandIn, where: str, shapes: dict[str, tuple[int, ...]]) -> None:
    inside = [n for n in graph.node if _marker_of(n.name) == s.marker]
    made = {o for n in inside for o in n.output}
    constants = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    entries = sorted({v for n in inside for v in n.input if v and v not in made and v not in constants})
    read_outside = {v for n in graph.node if n not in inside for v in n.input} | {o.name for o in graph.output}
    exits = sorted(v for v in made if v in read_outside)
    if len(entries) != 1 or len(exits) != 1:
        raise UnsupportedOpError(f"cannot find the recurrent layer's input and output in the export (found "
                                 f"{entries} -> {exits})", where)
    op = CELLS[s.kind][0]
    p = f"{s.marker}/{op.lower()}"
    d = len(s.directions)
    w = np.stack([_onnx_gates(k, s.hidden, s.kind) for k, _, _ in s.directions])
    r = np.stack([_onnx_gates(rk, s.hidden, s.kind) for _, rk, _ in s.directions])
    b = np.stack([np.concatenate([_onnx_gates(part[None, :], s.hidden, s.kind).reshape(-1) for part in bias])
                  for _, _, bias in s.directions]).astype(np.float32)
    graph.initializer.extend(numpy_helper.from_array(a.astype(np.float32), f"{p}_{k}") for k, a in
                             (("W", w), ("R", r), ("B", b)))
    direction = "bidirectional" if d == 2 else ("reverse" if s.backward_only else "forward")

    made_shapes: set[str] = set()

    def shape(name: str, dims: list[int]) -> str:
        if name not in made_shapes:
            made_shapes.add(name)
            graph.initializer.append(numpy_helper.from_array(np.array(dims, np.int64), f"{p}_{name}"))
        return f"{p}_{name}"

    # tf2onnx's optimizer may hand the layer its input channel-first (a convolution's transposes pushed
    # into the layer's scope): take time first from whichever layout the value has
    entry = shapes.get(entries[0], ())
    channel_first = any(n.op_type == "Transpose" and entries[0] in n.input and
                        list(helper.get_attribute_value(n.attribute[0])) == [0, 2, 1] for n in inside)
    if s.steps is None and len(entry) == 3:  # a free time axis: the export's signature fixed it
        steps = entry[2] if channel_first or entry[2] != s.features else entry[1]
        s = replace(s, steps=steps)
    if entry[1:] == (s.steps, s.features) and not (s.steps == s.features and channel_first):
        perm = [1, 0, 2]
    elif entry[1:] == (s.features, s.steps):
        perm = [2, 0, 1]
    else:
        raise UnsupportedOpError(f"the recurrent layer's input came out of the export as {list(entry)}, not "
                                 f"(1, {s.steps}, {s.features})", where)
    nodes = [helper.make_node("Transpose", entries, [f"{p}_x"], name=f"{p}_time_first", perm=perm),
             helper.make_node(op, [f"{p}_x", f"{p}_W", f"{p}_R", f"{p}_B"], [f"{p}_Y", f"{p}_Y_h"], name=p,
                              hidden_size=s.hidden, direction=direction,
                              **({"linear_before_reset": int(s.reset_after)} if op == "GRU" else {}))]
    out = exits[0]
    if s.sequences:  # Y (T, D, 1, H) -> (1, T, D, H)
        nodes.append(helper.make_node("Transpose", [f"{p}_Y"], [f"{p}_Y_b"], name=f"{p}_batch_first", perm=[2, 0, 1, 3]))
        if d == 2 and s.merge == "sum":
            nodes += _sum_of_directions(p, f"{p}_Y_b", 2, [1, s.steps, s.hidden], shape, out)
        elif s.backward_only:  # Keras returns go_backwards' outputs in the order it computed them
            nodes.append(helper.make_node("Reshape", [f"{p}_Y_b", shape("seq", [1, s.steps, s.hidden])], [f"{p}_Y_s"],
                                          name=f"{p}_sequence"))
            nodes.append(helper.make_node("Slice", [f"{p}_Y_s", shape("rs", [-1]), shape("re", [-(s.steps + 1)]),
                                                    shape("ra", [1]), shape("rstep", [-1])], [out],
                                          name=f"{p}_reversed"))
        else:
            nodes.append(helper.make_node("Reshape", [f"{p}_Y_b", shape("seq", [1, s.steps, d * s.hidden])], [out],
                                          name=f"{p}_sequence"))
    else:  # Y_h (D, 1, H) -> (1, D, H)
        nodes.append(helper.make_node("Transpose", [f"{p}_Y_h"], [f"{p}_h_b"], name=f"{p}_batch_first", perm=[1, 0, 2]))
        if d == 2 and s.merge == "sum":
            nodes += _sum_of_directions(p, f"{p}_h_b", 1, [1, s.hidden], shape, out)
        else:
            nodes.append(helper.make_node("Reshape", [f"{p}_h_b", shape("last", [1, d * s.hidden])], [out],
                                          name=f"{p}_last"))
    kept = [n for n in graph.node if n not in inside]
    at = min(i for i, n in enumerate(graph.node) if n in inside)
    before = [n for n in graph.node[:at] if n not in inside]
    del graph.node[:]
    graph.node.extend(before + nodes + [n for n in kept if n not in before])


def _sum_of_directions(p: str, value: str, axis: int, out_dims: list[int], shape, out: str) -> list[onnx.NodeProto]:
    """The two directions (along `axis` of value) added: each sliced out and reshaped to out_dims (a
    1D map or a vector, which the Add takes), then the Add."""
    nodes = []
    for k in (0, 1):
        nodes.append(helper.make_node("Slice", [value, shape(f"s{k}", [k]), shape(f"e{k}", [k + 1]),
                                                shape("dir_axis", [axis])], [f"{p}_dir{k}"], name=f"{p}_direction{k}"))
        nodes.append(helper.make_node("Reshape", [f"{p}_dir{k}", shape("merged", out_dims)], [f"{p}_dir{k}_merged"],
                                      name=f"{p}_direction{k}_merged"))
    nodes.append(helper.make_node("Add", [f"{p}_dir0_merged", f"{p}_dir1_merged"], [out], name=f"{p}_sum"))
    return nodes
