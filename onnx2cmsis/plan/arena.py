"""Static memory plan: the execution order, then an arena offset for every intermediate tensor and
kernel scratch buffer.

The candidate orders come from plan/schedule.py (the one with the smallest live-set bound, and the
canonical one); each is placed first fit (lowest free offset among buffers whose lifetimes overlap)
in the best of several buffer orders, and the order with the smallest arena is kept. The plan records
the live-set bound of the chosen order, so the report can show any gap, and the smallest bound of any
order (of those considered, when the graph was too large to search exhaustively).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import KernelCall
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.plan.liveness import Liveness, liveness
from onnx2cmsis.plan.schedule import candidate_orders


@dataclass(frozen=True)
class Placement:
    storage: str  # "input", "output" or "arena"
    offset: int = 0  # bytes into the arena; for the caller's buffers, which input or output (0, 1, ...)


@dataclass
class Buffer:
    """One arena allocation: a tensor (with its views) or a node's scratch, live over steps [start, end];
    `home`: the buffer whose offset it shares (an output written over its input: plan/liveness.py)."""

    key: str
    size: int
    start: int
    end: int
    offset: int = -1
    home: str = ""


@dataclass(frozen=True)
class ScheduleInfo:
    method: str  # how the chosen order was found: "exact", "greedy" or "canonical"
    exact: bool  # the smallest bound below is that of every topological order
    smallest_bound: int  # the smallest live-set bound of the orders considered
    orders_placed: int  # candidate orders placed
    states: int  # sets of executed nodes the exact search explored


@dataclass
class MemoryPlan:
    arena_bytes: int
    lower_bound: int  # the live-set bound of the chosen order
    tensors: dict[str, Placement]
    schedule: ScheduleInfo
    order: tuple[int, ...]  # the chosen order, as indices into the nodes the planner was given
    scratch: dict[int, int] = field(default_factory=dict)  # node index (in the chosen order) -> arena offset
    buffers: list[Buffer] = field(default_factory=list)
    written_in_place: frozenset[str] = frozenset()  # tensors written over their input (plan/liveness.py)


@dataclass(frozen=True)
class Step:
    """One node of the schedule and the kernel call it became."""

    node: Node
    call: KernelCall


def plan_memory(graph: Graph, registry: Registry, steps: list[Step],
                in_place: bool = True) -> tuple[MemoryPlan, list[Step]]:
    """Choose the execution order of `steps` (graph.nodes' and their calls, in graph order) and place
    every buffer: the plan, and the steps in the chosen order (node indices in the plan refer to it).
    The graph is not changed; the caller reorders its nodes if it keeps them as the schedule.
    `in_place`: nodes that can write over their input do where they may (plan/liveness.py); off for a
    stream, whose push runs them on slices of columns."""
    assert len(steps) == len(graph.nodes) and all(s.node is n for s, n in zip(steps, graph.nodes)), \
        "one step per graph node, in graph order"
    aliases = [registry.for_op(n.op).aliases_input(n) for n in graph.nodes]
    over = [registry.for_op(n.op).writes_in_place(n) for n in graph.nodes] if in_place else None
    live = liveness(graph, aliases, [s.call.scratch_bytes for s in steps], over)
    search = candidate_orders(graph, live)
    best: tuple[tuple[int, int, int], list[Buffer], int] | None = None
    for i, order in enumerate(search.orders):
        buffers = _buffers(live, order.nodes)
        arena = _place_best(buffers, order.bound)
        if best is None or (arena, order.bound, i) < best[0]:
            best = ((arena, order.bound, i), buffers, arena)
    assert best is not None
    (_, bound, chosen), buffers, arena = best
    order = search.orders[chosen]
    placements = {t: Placement(storage, index) for t, (storage, index) in live.caller.items()}
    for b in buffers:
        if not b.key.startswith("#scratch"):
            for m in live.groups[b.key]:
                placements[m] = Placement("arena", b.offset)
    scratch = {int(b.key[len("#scratch"):]): b.offset for b in buffers if b.key.startswith("#scratch")}
    info = ScheduleInfo(order.method, search.exact, min(o.bound for o in search.orders), len(search.orders),
                        search.states)
    return (MemoryPlan(arena, bound, placements, info, order.nodes, scratch, buffers, live.written_in_place),
            [steps[i] for i in order.nodes])


def _homes(buffers: list[Buffer]) -> list[list[Buffer]]:
    """The buffers grouped by the offset they share (most share none), in their given order."""
    by_home: dict[str, list[Buffer]] = {}
    for b in buffers:
        by_home.setdefault(b.home or b.key, []).append(b)
    return list(by_home.values())


def _buffers(live: Liveness, order: tuple[int, ...]) -> list[Buffer]:
    """The arena buffers with their lifetimes as steps of `order`; scratch keyed by step."""
    position = {node: step for step, node in enumerate(order)}
    buffers = []
    for b in live.buffers:
        buffers.append(Buffer(b.key, b.size, *b.span(position), home=b.home))
    for node, size in enumerate(live.scratch):
        if size:
            step = position[node]
            buffers.append(Buffer(f"#scratch{step}", size, step, step))
    return buffers


RANDOM_ORDERS = 300  # tried after the classic orders, from a fixed seed: the plan stays deterministic


def _place_best(buffers: list[Buffer], lower_bound: int) -> int:
    """First-fit placement in the order that gives the smallest arena: largest first (TFLite-Micro's
    greedy planner), then by start, by lifetime, by size x lifetime, then seeded random orders;
    stops as soon as an order reaches the live-set lower bound."""
    orders = [
        sorted(buffers, key=lambda b: (-b.size, b.start, b.key)),
        sorted(buffers, key=lambda b: (b.start, -b.size, b.key)),
        sorted(buffers, key=lambda b: (b.start - b.end, -b.size, b.key)),
        sorted(buffers, key=lambda b: (-b.size * (b.end - b.start + 1), b.key)),
    ]
    rng = random.Random(0)
    best_size, best_offsets = None, None
    for i in range(len(orders) + RANDOM_ORDERS):
        if i < len(orders):
            order = orders[i]
        else:
            order = list(orders[0])
            rng.shuffle(order)
        size = _place_first_fit(order)
        if best_size is None or size < best_size:
            best_size, best_offsets = size, {b.key: b.offset for b in buffers}
        if best_size <= lower_bound:
            break
    for b in buffers:
        b.offset = best_offsets[b.key] if best_offsets else 0
    return best_size or 0


def _place_first_fit(order: list[Buffer]) -> int:
    """Each buffer, in `order`, at the lowest offset where it clashes with nothing placed; buffers that
    share a home are placed together, at the first one's turn, at one offset."""
    placed: list[Buffer] = []
    for together in _homes(order):
        # offsets x the group may not take: x + size > p.offset and x < p.offset + p.size, for each pair
        # of its buffers and placed ones live at a common step
        forbidden = sorted((p.offset - b.size + 1, p.offset + p.size) for b in together for p in placed
                           if p.start <= b.end and b.start <= p.end)
        offset = 0
        for lo, hi in forbidden:
            if offset < lo:
                break
            offset = max(offset, hi)
        for b in together:
            b.offset = offset
        placed.extend(together)
    return max((b.offset + b.size for b in order), default=0)
