"""Which arena buffers a graph needs and who writes and reads each: the memory model that scheduling
(plan/schedule.py) and placement (plan/arena.py) share.

A tensor and the views of it (reshapes: handlers whose `aliases_input` is true) share one buffer; a
buffer lives from its producer to its last reader. The model's input and output live in the caller's
buffers, not the arena. A node's kernel scratch is live while the node runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.ir.graph import Graph

ALIGN = 4  # CMSIS-NN scratch buffers are read as int16/int32


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class BufferUse:
    """One arena buffer: the tensor that owns it (its views share it), its aligned size, the node
    that writes it and the nodes that read it or one of its views (indices into graph.nodes)."""

    key: str
    size: int
    producer: int
    readers: frozenset[int]

    def span(self, position: dict[int, int]) -> tuple[int, int]:
        """The first and last step it is live, given each node's step in an order."""
        start = position[self.producer]
        return start, max([position[r] for r in self.readers] + [start])


@dataclass(frozen=True)
class Liveness:
    buffers: list[BufferUse]
    scratch: list[int]  # aligned scratch bytes per node
    groups: dict[str, list[str]]  # buffer key -> the tensors stored in it
    # tensor -> ("input" or "output", which one) for those in the caller's buffers
    caller: dict[str, tuple[str, int]]


def liveness(graph: Graph, aliases: list[bool], scratch_sizes: list[int]) -> Liveness:
    """`aliases[i]`: node i's output is a view of its first input."""
    root: dict[str, str] = {t: t for t in graph.inputs}
    producer: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        for out in node.outputs:
            root[out] = root[node.inputs[0]] if aliases[i] else out
            producer.setdefault(out, i)
    groups: dict[str, list[str]] = {}
    for t, r in root.items():
        groups.setdefault(r, []).append(t)
    buffers, caller = [], {}
    for r, members in groups.items():
        in_input = r in graph.inputs
        outputs = [graph.outputs.index(m) for m in members if m in graph.outputs]
        if in_input and outputs:
            raise UnsupportedOpError("the model's output is a reshape of its input: nothing to compute")
        if len(outputs) > 1:
            raise UnsupportedOpError(f"the model's outputs {' and '.join(repr(graph.output_names[k]) for k in outputs)} "
                                     "are views of one value (drop all but one of them from the model's outputs)")
        if in_input or outputs:
            where = ("input", graph.inputs.index(r)) if in_input else ("output", outputs[0])
            caller.update({m: where for m in members})
            continue
        readers = frozenset(i for i, n in enumerate(graph.nodes) if any(m in n.inputs for m in members))
        buffers.append(BufferUse(r, align(graph.tensors[r].nbytes), producer[r], readers))
    return Liveness(buffers, [align(s) if s else 0 for s in scratch_sizes], groups, caller)


def live_per_step(order: list[int], live: Liveness) -> list[int]:
    """Bytes live at each step of `order` (node indices in execution order)."""
    position = {node: step for step, node in enumerate(order)}
    total = [0] * len(order)
    for b in live.buffers:
        start, end = b.span(position)
        for step in range(start, end + 1):
            total[step] += b.size
    for node, step in position.items():
        total[step] += live.scratch[node]
    return total


def live_bound(order: list[int], live: Liveness) -> int:
    """The largest sum of simultaneously live buffers of `order`: no placement can use less."""
    return max(live_per_step(order, live), default=0)
