"""Which arena buffers a graph needs and who writes and reads each: the memory model that scheduling
(plan/schedule.py) and placement (plan/arena.py) share.

A tensor and the views of it (reshapes: handlers whose `aliases_input` is true) share one buffer; a
buffer lives from its producer to its last reader. The model's input and output live in the caller's
buffers, not the arena. A node's kernel scratch is live while the node runs.

A node that can write its output over its input (`writes_in_place`: an activation, a requantize
between widths) does so where it is the only reader of that input and neither side is the caller's:
its output's buffer then starts at its input's offset (`home`: one place for the chain), each keeps
its own size and lifetime, and at the node's own step the two count once, as the larger
(`overlap`). So a width change or an activation at the arena's peak costs no second buffer, and
nowhere does the chain hold more than the wider of its values.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.ir.graph import Graph

ALIGN = 4  # CMSIS-NN scratch buffers are read as int16/int32


def align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class BufferUse:
    """One arena buffer: the tensor that owns it (its views share it), its aligned size, the node
    that writes it and the nodes that read it or one of its views (indices into graph.nodes); `home`:
    the buffer whose offset it takes (itself, or the start of its chain of in-place writes)."""

    key: str
    size: int
    producer: int
    readers: frozenset[int]
    home: str = ""

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
    # per node: bytes its input and output share when it writes in place (counted once at its step)
    overlap: list[int] = field(default_factory=list)

    @property
    def written_in_place(self) -> frozenset[str]:
        """The outputs written over their input's buffer."""
        return frozenset(b.key for b in self.buffers if b.home != b.key)


def liveness(graph: Graph, aliases: list[bool], scratch_sizes: list[int],
             in_place: list[bool] | None = None) -> Liveness:
    """`aliases[i]`: node i's output is a view of its first input; `in_place[i]`: node i may write its
    output over an input (None: no node does)."""
    root: dict[str, str] = {t: t for t in graph.inputs}
    producer: dict[str, int] = {}
    readers: dict[str, set[int]] = {}
    for i, node in enumerate(graph.nodes):
        for t in node.inputs:
            readers.setdefault(t, set()).add(i)
    groups: dict[str, list[str]] = {t: [t] for t in graph.inputs}
    home: dict[str, str] = {}  # an output written in place -> the buffer its chain starts in
    over: dict[str, str] = {}  # an output written in place -> the buffer it is written over
    for i, node in enumerate(graph.nodes):
        for out in node.outputs:
            root[out] = root[node.inputs[0]] if aliases[i] else out
            groups.setdefault(root[out], []).append(out)
            producer.setdefault(out, i)
            if aliases[i] or in_place is None or not in_place[i] or len(node.outputs) != 1:
                continue
            # over the first input it may overwrite (an add: whichever of its two nothing else reads)
            src = next((root[t] for t in node.inputs if _may_overwrite(graph, groups[root[t]], out, i, readers)), None)
            if src is not None:
                home[out], over[out] = home.get(src, src), src
    buffers, caller = [], {}
    sizes: dict[str, int] = {}  # the arena buffers so far (a chain's earlier buffers come first)
    overlap = [0] * len(graph.nodes)
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
        used_by = frozenset(i for m in members for i in readers.get(m, ()))
        size = sizes[r] = align(graph.tensors[r].nbytes)
        # written over an arena buffer (an output whose view turned out to be the model's output went
        # to the caller's above, and nothing is written over it: its view reads it)
        chained = over.get(r) in sizes
        if chained:
            overlap[producer[r]] = min(sizes[over[r]], size)
        buffers.append(BufferUse(r, size, producer[r], used_by, home[r] if chained else r))
    return Liveness(buffers, [align(s) if s else 0 for s in scratch_sizes], groups, caller, overlap)


def _may_overwrite(graph: Graph, members: list[str], out: str, node: int, readers: dict[str, set[int]]) -> bool:
    """Whether node `node` may write `out` over the buffer holding `members` (its input and the input's
    views): it reads them and nothing else does (their values are not needed after it), and neither
    side is in the caller's buffers (the caller's input is its own; its output buffer is sized for
    the output alone)."""
    if any(m in graph.inputs or m in graph.outputs for m in members) or out in graph.outputs:
        return False
    return all(readers.get(m, set()) <= {node} for m in members)


def live_per_step(order: list[int], live: Liveness) -> list[int]:
    """Bytes live at each step of `order` (node indices in execution order)."""
    position = {node: step for step, node in enumerate(order)}
    total = [0] * len(order)
    for b in live.buffers:
        start, end = b.span(position)
        for step in range(start, end + 1):
            total[step] += b.size
    for node, step in position.items():
        total[step] += live.scratch[node] - (live.overlap[node] if live.overlap else 0)
    return total


def live_bound(order: list[int], live: Liveness) -> int:
    """The largest sum of simultaneously live buffers of `order`: no placement can use less."""
    return max(live_per_step(order, live), default=0)
