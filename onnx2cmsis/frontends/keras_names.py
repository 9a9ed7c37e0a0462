"""The names of a Keras model's ONNX export: each node traced back to its Keras layer, tf2onnx's own
names made the same on every export, the inputs named as the C and .npz files see them.

Keras names a layer's ops after the layer's name scope, which TensorFlow makes unique by adding _1,
_2, ... (the ops of layer `conv1d` come out as `functional_1/conv1d_1/convolution`, the name of the
next layer): a name in the ONNX graph cannot be traced back to its layer. Each layer is therefore
traced under a marker holding its index (`mark_layers`), which `unmark` turns back into the Keras name.

tf2onnx names the ops and constants it inserts `<scope>__<n>` (`__<n>__<m>` for a folded one) from a
process-wide counter, and its constant folding draws those numbers in a varying order and keeps
either of two equal constants, so the same model exported twice in one process got other names,
which reach the C's comments and NAME.json. `renumber_internal_names` names those constants by
content and numbers the other names per scope along the canonical node order (itself taken with the
counters left out): the same graph always gets the same names. It runs before `unmark`, so no
user-chosen name is touched.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable
from typing import Any

import onnx
from onnx import numpy_helper

from onnx2cmsis.frontends.onnx_model import LAYER_OF_NODE, canonical_node_order

MARKER = "onnx2cmsisL{}Z"
MARKER_RE = re.compile(r"onnx2cmsisL(\d+)Z(?:_\d+)?")
INTERNAL_RE = re.compile(r"__\d+")
OUTPUT_INDEX_RE = re.compile(r":\d+$")


def _rename(graph: onnx.GraphProto, value: Callable[[str], str], node_name: Callable[[str], str]) -> None:
    """Every value name through `value` (wherever it is used or declared), every node name through
    `node_name`."""
    for node in graph.node:
        node.name = node_name(node.name)
        node.input[:] = [value(v) for v in node.input]
        node.output[:] = [value(v) for v in node.output]
    for declared in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        declared.name = value(declared.name)


def renumber_internal_names(proto: onnx.ModelProto) -> None:
    graph = proto.graph
    if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute):
        return  # a subgraph's names refer to the outer graph's: left as exported
    constants = _constants_by_content(graph)
    canonical_node_order(proto, name_key=lambda name: constants.get(name) or INTERNAL_RE.sub("", name))
    new: dict[str, str] = {}
    per_scope: dict[str, int] = {}
    for text in [t for n in graph.node for t in (*n.input, *n.output, n.name)] + [v.name for v in graph.output]:
        token = OUTPUT_INDEX_RE.sub("", text)
        if text not in constants and token not in new and INTERNAL_RE.search(token):
            scope = INTERNAL_RE.sub("", token)
            per_scope[scope] = per_scope.get(scope, 0) + 1
            new[token] = f"{scope}__{per_scope[scope]}"

    def renamed(text: str) -> str:
        if text in constants:
            return constants[text]
        token = OUTPUT_INDEX_RE.sub("", text)
        return new[token] + text[len(token):] if token in new else text

    _rename(graph, renamed, renamed)
    kept: dict[str, onnx.TensorProto] = {}
    for init in graph.initializer:  # equal constants now share a name: one of them stays
        kept.setdefault(init.name, init)
    del graph.initializer[:]
    graph.initializer.extend(kept[name] for name in sorted(kept))


def _constants_by_content(graph: onnx.GraphProto) -> dict[str, str]:
    """Each initializer tf2onnx named (`__<n>`) -> `const_<digest of its type, shape and bytes>`: which
    of two equal constants survives its folding, and so the name (axes_const__7 or const_fold_opt__9),
    varies; named by content, equal constants become one."""
    named = {}
    for init in graph.initializer:
        if INTERNAL_RE.search(init.name):
            digest = hashlib.sha256(f"{init.data_type}:{list(init.dims)}:".encode()
                                    + numpy_helper.to_array(init).tobytes()).hexdigest()[:12]
            named[init.name] = f"const_{digest}"
    return named


def mark_layers(model: Any) -> list[str]:
    """Give every layer (nested models' too, not the inputs) the marker of its index; the original
    names, by index. The model is a private copy (load_keras_model), never used afterwards."""
    names: list[str] = []

    def walk(container: Any) -> None:
        for layer in container.layers:
            if type(layer).__name__ == "InputLayer":
                continue
            names.append(layer.name)
            layer.name = MARKER.format(len(names) - 1)
            if hasattr(layer, "layers"):
                walk(layer)

    walk(model)
    return names


def unmark(proto: onnx.ModelProto, names: list[str]) -> None:
    """Markers back to Keras layer names in every node and value name (kept unique), and the layer
    each node belongs to (its innermost marker) recorded as LAYER_OF_NODE for the importer."""
    def plain(text: str) -> str:
        return MARKER_RE.sub(lambda m: names[int(m.group(1))], text)

    graph = proto.graph
    values = sorted({v for n in graph.node for v in (*n.input, *n.output) if v}
                    | {v.name for v in (*graph.output, *graph.value_info, *graph.initializer)})
    taken = {v for v in values if not MARKER_RE.search(v)}
    renamed = {v: _unique(plain(v), taken) for v in values if MARKER_RE.search(v)}
    layer_of: dict[str, str] = {}
    node_names = {n.name for n in graph.node if not MARKER_RE.search(n.name)}

    def node_name(name: str) -> str:
        marks = MARKER_RE.findall(name)
        if not marks:
            return name
        plain_name = _unique(plain(name), node_names)
        layer_of[plain_name] = names[int(marks[-1])]
        return plain_name

    _rename(graph, lambda v: renamed.get(v, v), node_name)
    proto.metadata_props.add(key=LAYER_OF_NODE, value=json.dumps(layer_of, sort_keys=True))


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 1
    while out in taken:
        out, k = f"{name}_{k}", k + 1
    taken.add(out)
    return out


def onnx_input_names(keras_names: list[str]) -> list[str]:
    """The ONNX input names: "input" for a one-input model (as it always was), else each Keras input's
    name reduced to [A-Za-z0-9_] and made unique ("input_K" where nothing is left), in Keras' order."""
    if len(keras_names) == 1:
        return ["input"]
    names: list[str] = []
    for k, raw in enumerate(keras_names):
        base = re.sub(r"[^A-Za-z0-9_]", "_", str(raw or "")).strip("_") or f"input_{k}"
        names.append(_unique(base, set(names)))
    return names
