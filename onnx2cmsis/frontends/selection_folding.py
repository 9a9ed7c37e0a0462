"""A constant selection from a Concat reads the concatenated input it selects from.

PyTorch's stacked recurrent layers return h_n as the Concat of each layer's last hidden state, and
`h_n[-1]` (the idiom for "the last layer's state") is a Gather of that Concat. The Concat stacks along
the batch axis, which no 1D layer can; the Gather only ever reads one of its inputs. Rewritten as a
Gather of that input (its index less the inputs before it), the Concat is left without readers and
dropped, and the importer sees a plain selection.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from onnx2cmsis.frontends.graph_constants import constant_values


def fold_selected_concats(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...] | None]) -> onnx.ModelProto:
    """The model with each Gather of a Concat along the same axis, at constant indices that all fall in
    one input, reading that input; Concats nobody reads any more removed. The model itself when none."""
    g = model.graph
    consts = constant_values(g)
    producer = {o: n for n in g.node for o in n.output}
    rewritten: dict[int, list[onnx.NodeProto]] = {}
    for k, node in enumerate(g.node):
        if node.op_type != "Gather" or len(node.input) < 2 or node.input[1] not in consts:
            continue
        concat = producer.get(node.input[0])
        rank = len(shapes.get(node.input[0]) or ())
        if concat is None or concat.op_type != "Concat" or not rank:
            continue
        axis = _axis(node, 0, rank)
        if _axis(concat, None, rank) != axis:
            continue
        sizes = [(shapes.get(v) or (None,) * rank)[axis] for v in concat.input]
        if any(s is None for s in sizes):
            continue
        index = consts[node.input[1]].astype(np.int64)
        index = np.where(index < 0, index + sum(sizes), index)
        starts = np.cumsum([0, *sizes])
        part = [j for j in range(len(sizes)) if np.all((index >= starts[j]) & (index < starts[j + 1]))]
        if len(part) != 1:
            continue
        j = part[0]
        index_name = f"{node.output[0]}__index"  # output names are unique; node names may be empty
        offset = helper.make_node("Constant", [], [index_name], name=index_name,
                                  value=numpy_helper.from_array((index - starts[j]).astype(np.int64)))
        rewritten[k] = [offset, helper.make_node("Gather", [concat.input[j], index_name], list(node.output),
                                                 name=node.name, axis=axis)]
    if not rewritten:
        return model
    nodes = [n for k, node in enumerate(g.node) for n in rewritten.get(k, [node])]
    read = {v for n in nodes for v in n.input} | {o.name for o in g.output}
    nodes = [n for n in nodes if n.op_type != "Concat" or any(o in read for o in n.output)]
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(nodes)
    return out


def _axis(node: onnx.NodeProto, default: int | None, rank: int) -> int | None:
    value = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), default)
    return None if value is None else int(value) % rank
