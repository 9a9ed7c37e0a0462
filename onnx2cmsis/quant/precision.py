"""Mixed precision: each layer int8 or int16, with an exact requantize wherever the width changes.

A node's precision is the width of its outputs (`Tensor.bits`). Every node reads its inputs in its
own width: where a producer (or the model's input) has the other one, a requantize node is put in
between (TFLite's QUANTIZE between int8 and int16, which tflite-micro runs), one per tensor and
width however many layers read it. The model's input takes the width of its first reader, so the C
input type follows the first segment and the output type the last.
"""

from __future__ import annotations

from onnx2cmsis.ir.graph import Graph, Node, Tensor
from onnx2cmsis.ops.requantize import requantize_node


def apply_precision(graph: Graph, bits: list[int]) -> list[Node]:
    """Give node i (graph.nodes order) bits[i]; returns the requantize nodes inserted."""
    if len(bits) != len(graph.nodes):
        raise ValueError(f"{len(bits)} widths for {len(graph.nodes)} nodes")
    width: dict[str, int] = {}
    for name in graph.inputs:
        readers = [b for node, b in zip(graph.nodes, bits) if name in node.inputs]
        width[name] = readers[0] if readers else 8
        graph.tensors[name].bits = width[name]
    converted: dict[tuple[str, int], str] = {}
    nodes: list[Node] = []
    inserted: list[Node] = []
    for node, b in zip(graph.nodes, bits):
        for k, src in enumerate(node.inputs):
            if width[src] == b:
                continue
            if (src, b) not in converted:
                converted[(src, b)] = _requantize(graph, nodes, node, src, width[src], b)
                width[converted[(src, b)]] = b
                inserted.append(nodes[-1])
            node.inputs[k] = converted[(src, b)]
        for out in node.outputs:
            width[out] = b
            graph.tensors[out].bits = b
        nodes.append(node)
    graph.nodes = nodes
    return inserted


def _range_of(graph: Graph, nodes: list[Node], tensor: str) -> str:
    """The calibrated model value a tensor's range is: its own, or for a copy that keeps its input's
    quantization (a transpose, a pad), its input's, up to the model's input."""
    while not graph.tensors[tensor].calib_name and tensor not in graph.inputs:
        tensor = next(n for n in nodes if tensor in n.outputs).inputs[0]
    return graph.tensors[tensor].calib_name or tensor


def _requantize(graph: Graph, nodes: list[Node], reader: Node, src: str, from_bits: int, to_bits: int) -> str:
    t = graph.tensors[src]
    name = f"{src}_int{to_bits}"
    while name in graph.tensors:
        name += "_"
    graph.tensors[name] = Tensor(name, t.shape, calib_name=_range_of(graph, nodes, src), calib_index=t.calib_index,
                                 bits=to_bits)
    # named after the value it converts (once per tensor and width), not after the first reader
    nodes.append(requantize_node(name, src, name, origin=f"requantize int{from_bits} -> int{to_bits}"))
    return name
