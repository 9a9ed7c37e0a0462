"""`--precision auto`: int8 where it is enough, int16 where it matters, chosen per layer.

Each layer's sensitivity is measured, not guessed: the output SQNR (integer reference vs the float
model, on the search samples) lost when that layer alone drops to int8 in an otherwise int16 model.
(The other way round, one layer at int16 among int8 ones, measures nothing: the other layers' int8
error hides it.) Layers then drop to int8 least sensitive first; of the assignments dropping the first
0, 1, ..., all of them, those that meet the budget are compared by arena bytes (the memory plan each
one gets), then estimated instructions, then weight bytes, and the cheapest is refined by dropping
any further layer that keeps the budget. Views (reshapes) keep their producer's width, so a width
changes only where a real layer starts; every change is an exact requantize (quant/precision.py).
Besides that prefix walk, a second walk aims at the arena itself: from all-int16, drop the layers
whose outputs are live where the arena peaks, plan again, and repeat while the budget holds.

The budget is the output SQNR against the float model or, given the calibration samples' classes,
the accuracy drop from the float model's accuracy on them (PrecisionBudget); sensitivities are SQNR
either way (an accuracy moves in steps of one sample, too coarse to rank layers by).

Instructions are estimated by a cost model (COST_PER_*): a tie-break after RAM, not a promise;
`benchmarks/precision_cost.py` measures the real counts on QEMU.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ir.target import CmsisApi
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.plan.arena import MemoryPlan, Step, plan_memory
from onnx2cmsis.quant.precision import apply_precision
from onnx2cmsis.quant.accuracy import accuracy
from onnx2cmsis.quant.quantize import dequantized_outputs, quantize_graph
from onnx2cmsis.tuning.search import sqnr_db

# Relative instructions, roughly as QEMU counts them on Cortex-M4 (benchmarks/precision_cost.py): the
# s16 kernels multiply-accumulate nearly as fast as the s8 ones (the same SMLAD); a requantize step
# between widths is an own loop of about a dozen instructions per value.
COST_PER_MAC = {8: 1.0, 16: 1.05}
COST_PER_VALUE = {8: 4.0, 16: 5.0}  # per output value of a layer: requantize, clamp, store
COST_PER_CONVERTED_VALUE = 12.0


@dataclass(frozen=True)
class PrecisionBudget:
    """What the chosen widths must keep on the search samples: an output SQNR against the float model
    (dB), or at most an accuracy drop (percentage points) from the float model's accuracy on the
    samples' classes `labels`."""

    min_sqnr_db: float | None = None
    max_accuracy_drop: float | None = None
    labels: np.ndarray | None = None  # (N,) classes of the search samples, with max_accuracy_drop

    def describe(self, float_accuracy: float | None) -> str:
        if self.max_accuracy_drop is None:
            return f"an output SQNR of {self.min_sqnr_db:g} dB"
        return (f"an accuracy within {self.max_accuracy_drop:g} points of the float model's "
                f"{100 * (float_accuracy or 0.0):.2f}%")


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


@dataclass
class PrecisionChoice:
    chosen: Candidate
    int8: Candidate
    int16: Candidate
    sensitivity_db: list[float | None]  # per node: SQNR lost with it alone at int8 (None: a view)
    budget: PrecisionBudget
    float_accuracy: float | None
    candidates: int

    def summary(self) -> dict:
        """For NAME.json: the budget and what each uniform precision and the choice measured (each
        layer's sensitivity is on its node: attrs["int8_loss_db"])."""
        def figures(c: Candidate) -> dict:
            return {"sqnr_db": round(c.sqnr_db, 2), "accuracy": None if c.accuracy is None else round(c.accuracy, 4),
                    "arena_bytes": c.arena_bytes, "estimated_instructions": c.instructions,
                    "weights_bytes": c.weights_bytes}
        return {"min_sqnr_db": self.budget.min_sqnr_db, "max_accuracy_drop": self.budget.max_accuracy_drop,
                "float_accuracy": None if self.float_accuracy is None else round(self.float_accuracy, 4),
                "chosen": figures(self.chosen), "int8": figures(self.int8), "int16": figures(self.int16),
                "candidates_measured": self.candidates}


class _Measure:
    """Each width assignment measured once (the search revisits some): SQNR, accuracy, arena, cost."""

    def __init__(self, graph: Graph, registry: Registry, ranges: dict[str, tuple[float, float]], x: np.ndarray,
                 want: np.ndarray, api: CmsisApi, labels: np.ndarray | None, leader: list[int]):
        self.graph, self.registry, self.ranges, self.x, self.api = graph, registry, ranges, x, api
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
        plan, _ = plan_memory(g, self.registry, [Step(n, c) for n, c in zip(g.nodes, calls)])
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


def choose_precision(graph: Graph, registry: Registry, ranges: dict[str, tuple[float, float]], x: np.ndarray,
                     want: np.ndarray, budget: PrecisionBudget, api: CmsisApi) -> PrecisionChoice:
    """The cheapest per-layer assignment that meets `budget` on `x` (the float model's outputs on it:
    `want`); applies it to `graph` (quant/precision.py). Refuses, with what all-int16 and all-int8
    reach, a budget not even all-int16 meets."""
    labels = budget.labels if budget.max_accuracy_drop is not None else None
    float_accuracy = None if labels is None else accuracy(want, labels)

    def meets(c: Candidate) -> bool:
        if labels is None:
            return c.sqnr_db >= (budget.min_sqnr_db or 0.0)
        return 100 * (float_accuracy - (c.accuracy or 0.0)) <= budget.max_accuracy_drop + 1e-9

    n = len(graph.nodes)
    leader = _leaders(graph, registry)
    measure = _Measure(graph, registry, ranges, x, want, api, labels, leader)
    units = sorted(set(leader))

    def widths(int16_units: set[int]) -> list[int]:
        return [16 if leader[i] in int16_units else 8 for i in range(n)]

    int8, int16 = measure(widths(set())), measure(widths(set(units)))
    if not meets(int16):
        def reached(c: Candidate) -> str:
            return f"{c.sqnr_db:.2f} dB" if labels is None else f"{100 * (c.accuracy or 0.0):.2f}%"
        hint = "lower {opt:max_error_db}" if labels is None else "allow a larger {opt:max_accuracy_drop}"
        raise ConversionError(f"no per-layer precision reaches {budget.describe(float_accuracy)} on the calibration "
                              f"samples: all-int16 measures {reached(int16)}, all-int8 {reached(int8)} ({hint})")
    loss = {u: int16.sqnr_db - measure(widths(set(units) - {u})).sqnr_db for u in units}
    order = sorted(units, key=lambda u: (loss[u], u))  # the cheapest to drop to int8 first
    tried = [int16] + [measure(widths(set(order[k:]))) for k in range(1, len(order))] + [int8]
    current = int16  # then straight at the arena: drop the layers live at the peak, while the budget holds
    for _ in units:
        drop = {u for u in current.peak_units if current.bits[u] == 16}
        if not drop:
            break
        trial = measure([8 if leader[i] in drop else b for i, b in enumerate(current.bits)])
        if not meets(trial):
            break
        tried.append(trial)
        current = trial
    chosen = min((c for c in tried if meets(c)), key=lambda c: (c.cost, sum(b == 16 for b in c.bits)))
    for u in order:  # refine: drop any layer still at int16 that the budget allows
        if chosen.bits[u] == 16:
            trial = measure([8 if leader[i] == u else b for i, b in enumerate(chosen.bits)])
            if meets(trial) and trial.cost <= chosen.cost:
                chosen = trial
    sensitivity = [round(loss[leader[i]], 2) if leader[i] == i else None for i in range(n)]
    for node, db in zip(graph.nodes, sensitivity):
        if db is not None:
            node.attrs["int8_loss_db"] = db  # reported per layer (report.layer_entries)
    apply_precision(graph, chosen.bits)
    return PrecisionChoice(chosen, int8, int16, sensitivity, budget, float_accuracy, len(measure.measured))


def _leaders(graph: Graph, registry: Registry) -> list[int]:
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
