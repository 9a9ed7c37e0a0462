"""`--precision auto`: int8 where it is enough, int16 where it matters, chosen per layer.

Each layer's sensitivity is measured, not guessed: the output SQNR (integer reference vs the float
model, on the search samples) lost when that layer alone drops to int8 in an otherwise int16 model.
(The other way round, one layer at int16 among int8 ones, measures nothing: the other layers' int8
error hides it.) Layers then drop to int8 least sensitive first; of the assignments dropping the first
0, 1, ..., all of them, those that meet the budget are compared by arena bytes (the memory plan each
one gets), then estimated instructions, then weight bytes, and the cheapest is refined by dropping
any further layer that keeps the budget. Views (reshapes) keep their producer's width, so a width
changes only where a real layer starts; every change is an exact requantize (quant/precision.py).

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
from onnx2cmsis.plan.arena import plan_memory
from onnx2cmsis.quant.precision import apply_precision
from onnx2cmsis.quant.quantize import quantize_graph, run_reference
from onnx2cmsis.quant.rules import dequantize_tensor, quantize_tensor
from onnx2cmsis.quant.search import sqnr_db

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

    @property
    def cost(self) -> tuple[int, int, int]:
        return self.arena_bytes, self.instructions, self.weights_bytes


@dataclass
class PrecisionChoice:
    chosen: Candidate
    int8: Candidate
    int16: Candidate
    sensitivity_db: list[float | None]  # per node: SQNR lost with it alone at int8 (None: a view)
    min_sqnr_db: float
    candidates: int

    def summary(self) -> dict:
        """For NAME.json: the budget and what each uniform precision and the choice measured (each
        layer's sensitivity is on its node: attrs["int8_loss_db"])."""
        def figures(c: Candidate) -> dict:
            return {"sqnr_db": round(c.sqnr_db, 2), "arena_bytes": c.arena_bytes,
                    "estimated_instructions": c.instructions, "weights_bytes": c.weights_bytes}
        return {"min_sqnr_db": self.min_sqnr_db, "chosen": figures(self.chosen), "int8": figures(self.int8),
                "int16": figures(self.int16), "candidates_measured": self.candidates}


class _Measure:
    def __init__(self, graph: Graph, registry: Registry, ranges: dict[str, tuple[float, float]], x: np.ndarray,
                 want: np.ndarray, api: CmsisApi):
        self.graph, self.registry, self.ranges, self.x, self.api = graph, registry, ranges, x, api
        self.want = want.reshape(len(want), -1).astype(np.float64)
        self.count = 0

    def __call__(self, bits: list[int]) -> Candidate:
        self.count += 1
        g = copy.deepcopy(self.graph)
        steps = apply_precision(g, bits)
        try:
            quantize_graph(g, self.registry, self.ranges)
        except ConversionError:  # e.g. an s16 accumulator that could overflow: not a candidate
            return Candidate(bits, -np.inf, 1 << 62, 1 << 62, 1 << 62)
        q_in, q_out = g.tensors[g.inputs[0]].quant, g.tensors[g.outputs[0]].quant
        got = np.stack([dequantize_tensor(run_reference(g, self.registry, quantize_tensor(s, q_in))[g.outputs[0]],
                                          q_out).reshape(-1) for s in self.x]).astype(np.float64)
        sqnr = sqnr_db(got, self.want)
        g.cmsis_api = self.api
        calls = [self.registry.for_op(n.op).emit(n, g) for n in g.nodes]
        instructions = sum((c.macs * COST_PER_MAC[b] + COST_PER_VALUE[b] * g.tensors[n.output].size)
                           for n, c in zip(g.nodes, calls) if not self.registry.for_op(n.op).aliases_input(n)
                           for b in [g.tensors[n.output].quant.bits])
        instructions += sum(COST_PER_CONVERTED_VALUE * g.tensors[n.output].size for n in steps)
        weights = sum(a.values.nbytes for c in calls for a in c.arrays if a.weights and a.guard is None)
        arena = plan_memory(g, self.registry, [c.scratch_bytes for c in calls]).arena_bytes
        return Candidate(bits, sqnr, arena, int(instructions), weights)


def choose_precision(graph: Graph, registry: Registry, ranges: dict[str, tuple[float, float]], x: np.ndarray,
                     want: np.ndarray, min_sqnr_db: float, api: CmsisApi) -> PrecisionChoice:
    """The cheapest per-layer assignment whose output SQNR on `x` (vs the float outputs `want`) is at
    least `min_sqnr_db`; applies it to `graph` (quant/precision.py). Refuses, with the best SQNR
    reachable, a budget not even all-int16 meets."""
    measure = _Measure(graph, registry, ranges, x, want, api)
    n = len(graph.nodes)
    leader = _leaders(graph, registry)
    units = sorted(set(leader))

    def widths(int16_units: set[int]) -> list[int]:
        return [16 if leader[i] in int16_units else 8 for i in range(n)]

    int8, int16 = measure(widths(set())), measure(widths(set(units)))
    if int16.sqnr_db < min_sqnr_db:
        raise ConversionError(f"no per-layer precision reaches an output SQNR of {min_sqnr_db:g} dB on the "
                              f"calibration samples: all-int16 measures {int16.sqnr_db:.2f} dB, all-int8 "
                              f"{int8.sqnr_db:.2f} dB (lower {{opt:max_error_db}})")
    loss = {u: int16.sqnr_db - measure(widths(set(units) - {u})).sqnr_db for u in units}
    order = sorted(units, key=lambda u: (loss[u], u))  # the cheapest to drop to int8 first
    tried = [int16] + [measure(widths(set(order[k:]))) for k in range(1, len(order))] + [int8]
    chosen = min((c for c in tried if c.sqnr_db >= min_sqnr_db),
                 key=lambda c: (c.cost, sum(b == 16 for b in c.bits)))
    for u in order:  # refine: drop any layer still at int16 that the budget allows
        if chosen.bits[u] == 16:
            trial = measure([8 if leader[i] == u else b for i, b in enumerate(chosen.bits)])
            if trial.sqnr_db >= min_sqnr_db and trial.cost <= chosen.cost:
                chosen = trial
    sensitivity = [round(loss[leader[i]], 2) if leader[i] == i else None for i in range(n)]
    for node, db in zip(graph.nodes, sensitivity):
        if db is not None:
            node.attrs["int8_loss_db"] = db  # reported per layer (report.layer_entries)
    apply_precision(graph, chosen.bits)
    return PrecisionChoice(chosen, int8, int16, sensitivity, min_sqnr_db, measure.count)


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
