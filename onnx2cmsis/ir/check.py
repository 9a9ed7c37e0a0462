"""The graph check run between pipeline stages (as ethos-u-vela checks its graph between passes): a
stage that leaves the graph malformed is named at once, not found later as a wrong byte."""

from __future__ import annotations

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.ir.graph import Graph


def check_graph(graph: Graph, after: str, quantized: bool = False) -> None:
    """Every tensor a node uses exists; nodes are in dependency order; each tensor has one producer;
    the outputs are produced; with `quantized`, every tensor has its quantization."""
    problems: list[str] = []
    available = set(graph.inputs)
    for node in graph.nodes:
        for t in node.inputs:
            if t not in graph.tensors:
                problems.append(f"node '{node.name}' reads unknown tensor '{t}'")
            elif t not in available:
                problems.append(f"node '{node.name}' reads '{t}' before it is written")
        for t in node.outputs:
            if t not in graph.tensors:
                problems.append(f"node '{node.name}' writes unknown tensor '{t}'")
            if t in available:
                problems.append(f"tensor '{t}' is written twice (again by node '{node.name}')")
            available.add(t)
    problems += [f"the output '{t}' is never written" for t in graph.outputs if t not in available]
    if quantized:
        problems += [f"tensor '{t}' has no quantization" for t in sorted(available) if graph.tensors[t].quant is None]
    if problems:
        raise ConversionError(f"internal: the graph is malformed after {after}: {'; '.join(problems[:5])}")
