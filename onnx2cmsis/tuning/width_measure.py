"""Width assignments measured: each one's output SQNR (integer reference against the float model),
arena (the memory plan convert makes), estimated instructions and weight bytes, for
`--precision auto`'s search (auto_precision.py) and the benchmarks that retrace it."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ir.target import CmsisApi
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.plan.arena import MemoryPlan, Step, plan_memory
from onnx2cmsis.quant.accuracy import accuracy
from onnx2cmsis.quant.precision import apply_precision
from onnx2cmsis.quant.quantize import dequantized_outputs, quantize_graph
from onnx2cmsis.tuning.search import sqnr_db

# Relative instructions, roughly as QEMU counts them on Cortex-M4 (benchmarks/precision_cost.py): the
# s16 kernels multiply-accumulate nearly as fast as the s8 ones (the same SMLAD); a requantize step
# between widths is an own loop of about a dozen instructions per value.
COST_PER_MAC = {8: 1.0, 16: 1.05}
COST_PER_VALUE = {8: 4.0, 16: 5.0}  # per output value of a layer: requantize, clamp, store
COST_PER_CONVERTED_VALUE = 12.0


@dataclass
class Candidate:
    bits: list[int]  # per node of the graph before any requantize is inserted
    sqnr_db: float
    arena_bytes: int
    instructions: int  # estimated (COST_PER_MAC, COST_PER_VALUE)
    weights_bytes: int
    accuracy: float | None = None  # on the budget's labels, when it has them
    peak_units: frozenset[int] = frozenset()  # the layers whose outputs are live where the arena peaks

    @property
    def cost(self) -> tuple[int, int, int]:
        return self.arena_bytes, self.instructions, self.weights_bytes


class WidthMeasure:
    """Each width assignment measured once (the search revisits some): SQNR, accuracy, arena, cost."""

    def __init__(self, graph: Graph, registry: Registry, ranges: dict[str, tuple[float, float]], x: np.ndarray,
                 want: np.ndarray, api: CmsisApi, labels: np.ndarray | None, leader: list[int],
                 in_place: bool = True, fit_rounding: Callable[[Graph], object] | None = None):
        self.graph, self.registry, self.ranges, self.x, self.api = graph, registry, ranges, x, api
        self.in_place, self.fit_rounding = in_place, fit_rounding
        self.leader = leader
        self.producer = {out: i for i, n in enumerate(graph.nodes) for out in n.outputs}
        self.want = want.reshape(len(want), -1).astype(np.float64)
        self.labels = labels
        self.measured: dict[tuple[int, ...], Candidate] = {}

    def __call__(self, bits: list[int]) -> Candidate:
        key = tuple(bits)
        if key not in self.measured:
            self.measured[key] = self._measure(bits)
        return self.measured[key]

    def _measure(self, bits: list[int]) -> Candidate:
        g = copy.deepcopy(self.graph)
        steps = apply_precision(g, bits)
        try:
            if self.fit_rounding is not None:  # the codes the conversion will have at these widths
                self.fit_rounding(g)
            quantize_graph(g, self.registry, self.ranges)
        except ConversionError:  # e.g. an s16 accumulator that could overflow: not a candidate
            return Candidate(bits, -np.inf, 1 << 62, 1 << 62, 1 << 62, None if self.labels is None else -1.0)
        got = dequantized_outputs(g, self.registry, self.x)
        g.cmsis_api = self.api
        calls = [self.registry.for_op(n.op).emit(n, g) for n in g.nodes]
        instructions = sum((c.macs * COST_PER_MAC[b] + COST_PER_VALUE[b] * g.tensors[n.output].size)
                           for n, c in zip(g.nodes, calls) if not self.registry.for_op(n.op).aliases_input(n)
                           for b in [g.tensors[n.output].quant.bits])
        instructions += sum(COST_PER_CONVERTED_VALUE * g.tensors[n.output].size for n in steps)
        weights = sum(a.values.nbytes for c in calls for a in c.arrays if a.weights and a.guard is None)
        plan, _ = plan_memory(g, self.registry, [Step(n, c) for n, c in zip(g.nodes, calls)], self.in_place)
        return Candidate(bits, sqnr_db(got, self.want), plan.arena_bytes, int(instructions), weights,
                         None if self.labels is None else accuracy(got, self.labels), self._peak_units(g, plan))

    def _peak_units(self, g: Graph, plan: MemoryPlan) -> frozenset[int]:
        """The layers (units of `leader`) whose outputs are live at the step with the most live bytes; a
        requantize step's output counts for the layer whose output it converts."""
        steps = max((b.end for b in plan.buffers), default=-1) + 1
        live = [sum(b.size for b in plan.buffers if b.start <= t <= b.end) for t in range(steps)]
        if not live:
            return frozenset()
        peak = live.index(max(live))
        units = set()
        for b in plan.buffers:
            tensor = b.key
            if not b.start <= peak <= b.end or tensor not in g.tensors:
                continue  # another step's buffer, or kernel scratch
            while tensor not in self.producer and g.producer(tensor) is not None:
                tensor = g.producer(tensor).inputs[0]  # an inserted requantize: the value it converts
            if tensor in self.producer:
                units.add(self.leader[self.producer[tensor]])
        return frozenset(units)


def leaders(graph: Graph, registry: Registry) -> list[int]:
    """For each node, the node whose width it takes: itself, or for a view its input's producer's."""
    leader: list[int] = []
    produced_by: dict[str, int] = {}
    for i, node in enumerate(graph.nodes):
        src = node.inputs[0] if node.inputs else None
        if registry.for_op(node.op).aliases_input(node) and src in produced_by:
            leader.append(leader[produced_by[src]])
        else:
            leader.append(i)
        for out in node.outputs:
            produced_by[out] = i
    return leader
