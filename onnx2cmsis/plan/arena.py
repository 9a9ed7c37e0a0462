"""Static memory plan: every intermediate tensor and kernel scratch buffer gets an arena offset.

The model's input and output live in the caller's buffers; views (reshapes) share their source's
storage. Placement is first fit (lowest free offset among buffers whose lifetimes overlap) in the
best of several orders, and the plan records the live-set lower bound so the report can show any gap.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ops.registry import Registry

ALIGN = 4  # CMSIS-NN scratch buffers are read as int16/int32


def _align(n: int) -> int:
    return (n + ALIGN - 1) // ALIGN * ALIGN


@dataclass(frozen=True)
class Placement:
    storage: str  # "input", "output" or "arena"
    offset: int = 0


@dataclass
class Buffer:
    """One arena allocation: a tensor (with its views) or a node's scratch, live over [start, end]."""

    key: str
    size: int
    start: int
    end: int
    offset: int = -1


@dataclass
class MemoryPlan:
    arena_bytes: int
    lower_bound: int
    tensors: dict[str, Placement]
    scratch: dict[int, int] = field(default_factory=dict)  # node index -> arena offset
    buffers: list[Buffer] = field(default_factory=list)


def _storage_roots(graph: Graph, registry: Registry) -> dict[str, str]:
    root: dict[str, str] = {}
    for t in graph.inputs:
        root[t] = t
    for node in graph.nodes:
        aliased = registry.for_op(node.op).aliases_input(node)
        for out in node.outputs:
            root[out] = root[node.inputs[0]] if aliased else out
    return root


def plan_memory(graph: Graph, registry: Registry, scratch_sizes: list[int]) -> MemoryPlan:
    root = _storage_roots(graph, registry)
    groups: dict[str, list[str]] = {}
    for t, r in root.items():
        groups.setdefault(r, []).append(t)

    placements: dict[str, Placement] = {}
    buffers: list[Buffer] = []
    producer_index = {out: i for i, n in enumerate(graph.nodes) for out in n.outputs}
    for r, members in groups.items():
        in_input = r in graph.inputs
        in_output = any(m in graph.outputs for m in members)
        if in_input and in_output:
            raise UnsupportedOpError("the model's output is a reshape of its input: nothing to compute")
        if in_input or in_output:
            storage = "input" if in_input else "output"
            for m in members:
                placements[m] = Placement(storage)
            continue
        last_use = max((i for i, n in enumerate(graph.nodes) if any(m in n.inputs for m in members)), default=-1)
        start = producer_index[r]
        buffers.append(Buffer(r, _align(graph.tensors[r].size), start, max(start, last_use)))
    for i, size in enumerate(scratch_sizes):
        if size:
            buffers.append(Buffer(f"#scratch{i}", _align(size), i, i))

    steps = range(len(graph.nodes))
    lower = max((sum(b.size for b in buffers if b.start <= i <= b.end) for i in steps), default=0)
    arena = _place_best(buffers, lower)
    for b in buffers:
        if not b.key.startswith("#scratch"):
            for m in groups[b.key]:
                placements[m] = Placement("arena", b.offset)
    scratch = {int(b.key[len("#scratch"):]): b.offset for b in buffers if b.key.startswith("#scratch")}
    return MemoryPlan(arena, lower, placements, scratch, buffers)


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
    placed: list[Buffer] = []
    for b in order:
        clashes = sorted((p for p in placed if p.start <= b.end and b.start <= p.end), key=lambda p: p.offset)
        offset = 0
        for p in clashes:
            if offset + b.size <= p.offset:
                break
            offset = max(offset, p.offset + p.size)
        b.offset = offset
        placed.append(b)
    return max((b.offset + b.size for b in order), default=0)
