"""Choices made by measuring the model's output: ranges (`--calibration-method output`) and per-layer
weight granularity (`--dense-weights auto`).

Each candidate is judged by what the user gets: the integer reference run on (up to SEARCH_SAMPLES
of) the calibration samples, dequantized, against the float model's outputs. The search is greedy in
graph order: for each calibrated value it tries the ranges the histogram suggests (min/max, clipped
percentiles, the MSE-optimal range) and keeps one only when the output SQNR rises on both halves of
the samples (even and odd: a change that helps only one half is fitting those samples, and it did
not carry over to held-out data in benchmarks/accuracy.py); then, for each node whose handler offers
several weight granularities, it keeps the better one by the same rule. It starts from min/max (with
range floors: range_floors.py) and the default granularity (per-tensor; per-channel at int16), so on
the calibration set it can only do better than them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import onnx

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.quant.calibrate import RecordedFloats, collect_histograms, collect_ranges, float_values
from onnx2cmsis.data.samples import stacked
from onnx2cmsis.quant.quantize import (batch_outputs, batch_values, calibration_values, dequantized_outputs,
                                      output_floats, quantize_graph, quantize_samples, rerun_from)
from onnx2cmsis.quant.ranges import ValueHistogram, choose_ranges, mse_range, percentile_range
from onnx2cmsis.tuning.range_floors import floor_ranges

SEARCH_SAMPLES = 256
CANDIDATE_TAILS = (1e-5, 1e-4, 1e-3, 1e-2)
_MIN_GAIN_DB = 0.02  # smaller gains are noise, not a reason to move


@dataclass
class SearchResult:
    ranges: dict[str, tuple[float, float]]
    weights: dict[int, str] = field(default_factory=dict)  # node index -> granularity chosen
    # on the search samples (mean of the two halves): min/max (floored), the default weights
    start_sqnr_db: float | None = None
    final_sqnr_db: float | None = None  # and with the choices made (None: no search ran)
    samples: int = 0
    floors: dict[str, tuple[float, float]] = field(default_factory=dict)  # value -> (lowest seen, floor)

    def summary(self) -> dict | None:
        """For NAME.json: what the search measured (None when none ran)."""
        if self.final_sqnr_db is None:
            return None
        return {"samples": self.samples, "start_sqnr_db": round(self.start_sqnr_db, 2),
                "final_sqnr_db": round(self.final_sqnr_db, 2)}


def apply_weights(graph: Graph, weights: dict[int, str]) -> None:
    """Record the chosen weight granularity on each node (node index -> choice; QuantOptions.weights_of)."""
    for index, choice in weights.items():
        graph.nodes[index].attrs["weights"] = choice


def quantized_copy(graph: Graph, registry: Registry, ranges: dict[str, tuple[float, float]],
                   weights: dict[int, str]) -> Graph:
    """The graph quantized with these choices, leaving `graph` as it is (a candidate to measure)."""
    g = copy.deepcopy(graph)
    apply_weights(g, weights)
    quantize_graph(g, registry, ranges)
    return g


def float_outputs(model: onnx.ModelProto, x, recorded: RecordedFloats | None = None) -> np.ndarray:
    """The float model's outputs for each sample, flattened and side by side in output order (as
    quantize.dequantized_outputs gives them): what the measured choices are judged against.
    `recorded`: the values of `x`, if already run."""
    names = [o.name for o in model.graph.output]
    return np.stack([joined_outputs(model, r) for r in float_values(model, x, names, recorded)])


def joined_outputs(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> np.ndarray:
    """One sample's float outputs (from run_float), flattened and side by side in output order."""
    return np.concatenate([values[o.name].reshape(-1) for o in model.graph.output])


def search_indices(count: int, limit: int = SEARCH_SAMPLES) -> np.ndarray:
    """Which of `count` calibration samples the measured choices use: at most `limit`, spread evenly."""
    return np.unique(np.linspace(0, count - 1, min(limit, count)).astype(int))


def search_samples(samples, limit: int = SEARCH_SAMPLES):
    """At most `limit` samples spread evenly over the calibration set (search_indices): an array, or
    MultiSamples for a model with several inputs."""
    return stacked([samples[int(i)] for i in search_indices(len(samples), limit)])


def range_candidates(h: ValueHistogram) -> list[tuple[float, float]]:
    found = [(h.lo, h.hi), mse_range(h), *(percentile_range(h, t) for t in CANDIDATE_TAILS)]
    return list(dict.fromkeys((float(lo), float(hi)) for lo, hi in found))


class OutputJudge:
    """Output SQNR of one set of choices on the two halves of the search samples (even and odd)."""

    def __init__(self, graph: Graph, registry: Registry, x: np.ndarray, want: np.ndarray):
        self.graph, self.registry, self.x = graph, registry, x
        self.want = want.reshape(len(want), -1).astype(np.float64)

    def measured(self, ranges: dict[str, tuple[float, float]], weights: dict[int, str], start: int = 0,
                 parts: list[dict[str, np.ndarray]] | None = None) -> tuple[np.ndarray, list | None]:
        """The SQNR on both halves and every tensor's values (quantize.batch_values; None where they
        are too large to keep). With `parts`, the values of choices that differ from these only in
        the nodes from index `start` on: the nodes before it are not run again (a dense layer's
        weight granularity changes that layer alone, and it is mostly at the end)."""
        try:
            g = quantized_copy(self.graph, self.registry, ranges, weights)
        except ConversionError:
            return np.full(2, -np.inf), None  # e.g. a range whose requantization cannot be represented
        if parts is not None:
            parts = rerun_from(g, self.registry, parts, start)
        elif _kept_bytes(g, len(self.x)) <= KEPT_VALUES_BYTES:
            parts = batch_values(g, self.registry, quantize_samples(g, self.x))
        if parts is None:
            got = dequantized_outputs(g, self.registry, self.x)
        else:
            got = output_floats(g, batch_outputs(g, parts)).astype(np.float64)
        halves = (slice(0, None, 2), slice(1, None, 2))
        return np.array([sqnr_db(got[h], self.want[h]) for h in halves]), parts


KEPT_VALUES_BYTES = 64 << 20  # the judge keeps every tensor's values below this, to rerun only a graph's tail


def _kept_bytes(graph: Graph, samples: int) -> int:
    return samples * sum(t.size * (8 if t.quant is None else t.quant.bits // 8) for t in graph.tensors.values())


def sqnr_db(got: np.ndarray, want: np.ndarray) -> float:
    """10 log10(signal / noise) of `got` against `want`, in dB."""
    noise = max(float(np.sum((got - want) ** 2)), 1e-30)
    return float(10 * np.log10(max(float(np.sum(want**2)), 1e-30) / noise))


def search(graph: Graph, registry: Registry, x: np.ndarray, want: np.ndarray,
           extremes: dict[str, tuple[float, float]], histograms: dict[str, ValueHistogram] | None,
           choose_weights: bool) -> SearchResult:
    """Greedy choices (see the module docstring). `histograms` None: ranges stay min/max."""
    judge = OutputJudge(graph, registry, x, want)
    ranges, weights = dict(extremes), {}
    best, parts = judge.measured(ranges, weights)
    start = best
    if histograms is not None:
        for value in _graph_order(graph, histograms):
            for candidate in range_candidates(histograms[value])[1:]:
                trial = {**ranges, value: candidate}
                score, trial_parts = judge.measured(trial, weights)
                if improves(score, best):
                    ranges, best, parts = trial, score, trial_parts
    if choose_weights:
        for index, node in enumerate(graph.nodes):
            start_with = graph.quant_options.weights_of(node)
            for choice in [g for g in registry.for_op(node.op).weight_granularities if g != start_with]:
                trial_w = {**weights, index: choice}
                score, trial_parts = judge.measured(ranges, trial_w, index, parts)
                if improves(score, best):
                    weights, best, parts = trial_w, score, trial_parts
    return SearchResult(ranges, weights, float(np.mean(start)), float(np.mean(best)), len(x))


def improves(score: np.ndarray, best: np.ndarray) -> bool:
    """Higher SQNR on both halves of the samples by at least _MIN_GAIN_DB: a choice that helps only
    the samples it was measured on is fitting them, not the data, and does not carry over."""
    return bool(np.all(score >= best + _MIN_GAIN_DB))


def _graph_order(graph: Graph, histograms: dict[str, ValueHistogram]) -> list[str]:
    """Calibrated values from the input towards the output (upstream choices settle first)."""
    order = [graph.tensors[t].calib_name or t for t in graph.inputs]
    for node in graph.nodes:
        order += [graph.tensors[t].calib_name for t in node.outputs if graph.tensors[t].calib_name]
    return [v for v in dict.fromkeys(order) if v in histograms]


def calibrate(model: onnx.ModelProto, graph: Graph, registry: Registry, samples, x: np.ndarray, method: str,
              dense_weights: str, recorded: RecordedFloats | None = None) -> SearchResult:
    """The ranges (and per-node weight choices) to quantize `graph` with, for a calibration method
    (minmax, percentile, mse, output) and the dense-weights option (auto searches per layer); `x`:
    search_samples(samples), what the choices are measured on. `recorded`: the float values of
    `samples` when they are `x` (the recipe choice's fits), else None."""
    values = calibration_values(graph)
    extremes = collect_ranges(model, samples, values, recorded)
    # a floored value's histogram starts at its floor: what lies below, its reader does not tell
    # apart, and a clipping method should not pay for it (range_floors.py)
    floors = floor_ranges(model, graph, registry, samples, extremes, recorded) if graph.quant_options.range_floors \
        else {}
    extremes = {**extremes, **{v: (floor, extremes[v][1]) for v, (_, floor) in floors.items()}}
    histograms = collect_histograms(model, samples, extremes, recorded) if method != "minmax" else None
    if method not in ("minmax", "output"):
        extremes = choose_ranges(histograms, method)
    choices = dense_weights == "auto" and any(len(registry.for_op(n.op).weight_granularities) > 1
                                              for n in graph.nodes)
    if method != "output" and not choices:
        return SearchResult(extremes, floors=floors)
    want = float_outputs(model, x, recorded)
    found = search(graph, registry, x, want, extremes, histograms if method == "output" else None,
                   choose_weights=choices)
    found.floors = floors
    return found
