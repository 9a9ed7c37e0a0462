"""Empirical bias correction: remove the mean error int8 rounding leaves in each layer's output.

Rounding weights to int8 shifts each output channel by sum((w_q - w) * E[x]), and rounding
activations upstream adds shifts of their own; the errors average out only when they are zero-mean,
which per channel they are not. For each node that can take a per-channel shift into its bias
(OpHandler.folds_affine), in graph order, the integer reference runs the calibration samples and the
mean of (int8 output, dequantized) - (float output) per channel is folded into the float bias
before the final quantization, so each layer is corrected with the upstream corrections in place.
Where the node clamps (a fused ReLU), only the positions inside the clamp's linear range count: there
the output error is the pre-activation error the bias shift acts on. Each channel's mean is shrunk by
what the samples cannot vouch for (a share 1 - se^2/mean^2 of it is kept, se its standard error over
samples): with 32-64 samples a dense layer has one position per sample, and correcting the noise of
those few means fitted them and cost up to 0.7 dB and 8 decisions in 600 on held-out data.

Whether the corrections are used at all is not judged here, on the samples they were fitted on: a
recipe with them competes with TFLite's recipe without them on held-out folds (tuning/recipe.py).
An earlier in-sample gate here (kept only when they raised the output SQNR on both halves of the
samples) also rejected corrections that held on test data: on a held-back benchmark model it threw
away +3.3 dB because one half moved by -0.07 dB; without it the benchmark's int8 median rose from
+0.48 to +0.92 dB over TFLite's converter (docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.quant.calibrate import RecordedFloats, holding
from onnx2cmsis.quant.quantize import batch_outputs, input_slices, run_node_batch
from onnx2cmsis.arith.rules import dequantize_tensor, int_range
from onnx2cmsis.tuning.search import quantized_copy

MIN_POSITIONS = 16  # per channel: fewer linear-range outputs than this, and the mean is left alone


@dataclass
class CorrectedRun:
    """What corrected_run leaves besides the corrected biases in the graph."""

    corrected: list[int]  # the indices of the nodes corrected
    codes: np.ndarray | None  # every sample's output_codes row from the corrected graph (None: no target)
    # the graph quantized with the corrections, as quantize_graph would leave it (None: no target)
    quantized: Graph | None


def correct_biases(model: onnx.ModelProto, graph: Graph, registry: Registry, ranges: dict[str, tuple[float, float]],
                   x: np.ndarray, recorded: RecordedFloats | None = None, fitted: bool = True) -> list[int]:
    """Fold each correctable node's mean output error into its bias (graph.nodes[i].consts); returns
    the indices of the nodes corrected. `recorded`: the float values of `x`, if already run;
    `fitted`: also the nodes with fitted weight codes (tuning/weight_rounding.py), else only those
    with nearest codes."""
    return corrected_run(model, graph, registry, ranges, x, recorded, fitted=fitted).corrected


def corrected_run(model: onnx.ModelProto, graph: Graph, registry: Registry, ranges: dict[str, tuple[float, float]],
                  x: np.ndarray, recorded: RecordedFloats | None = None,
                  rows: np.ndarray | None = None, fitted: bool = True) -> CorrectedRun:
    """correct_biases with the errors measured on the samples `rows` of `x` alone (None: all), with
    the output codes of every sample of `x` and the quantized copy the pass ran: the recipe choice
    scores the samples a fit did not see in the same pass, without quantizing the graph again."""
    targets = [i for i, n in enumerate(graph.nodes)
               if registry.for_op(n.op).folds_affine and "bias" in n.consts
               and graph.tensors[n.output].mirrors_model_value and (fitted or "weight_rounding" not in n.attrs)]
    if not targets:
        return CorrectedRun([], None, None)
    rows = np.arange(len(x)) if rows is None else np.asarray(rows)
    values = sorted({graph.tensors[graph.nodes[i].output].calib_name for i in targets})
    recorded = holding(model, x, values, recorded)
    floats = {v: recorded.stacked(v)[rows] for v in values}
    return _correct_in_one_pass(graph, registry, ranges, x, floats, set(targets), rows)


def _correct_in_one_pass(graph: Graph, registry: Registry, ranges: dict[str, tuple[float, float]], x,
                         floats: dict[str, np.ndarray], targets: set[int],
                         rows: np.ndarray) -> CorrectedRun:
    """The integer reference run node by node over all samples on one quantized copy: at each target
    its mean error is measured on the samples `rows` (their float values: `floats`, value name ->
    (rows, *shape)) with every upstream correction in place, folded into the float bias (of `graph`
    and of the copy), the node quantized again and run again before the nodes after it. (A node's
    quantization reads its own constants and the fixed ranges only, so this is what quantizing the
    whole graph again for each target would give.)"""
    g = quantized_copy(graph, registry, ranges, {})  # the weight choices are on the nodes already
    parts = input_slices(g, x)  # one dict of values per slice (batches keeps each slice's temporaries small)
    corrected = []
    for index, node in enumerate(g.nodes):
        for values in parts:
            run_node_batch(g, registry, node, values)
        if index not in targets:
            continue
        output = np.concatenate([values[node.output] for values in parts])
        shift = _mean_error(g, node, output[rows], floats)
        original = graph.nodes[index]
        if shift is None or not np.any(shift):
            continue
        handler = registry.for_op(original.op)
        if handler.fold_affine(original, np.ones_like(original.consts["bias"]), -shift.astype(np.float32)):
            original.attrs["bias_correction"] = _correction_summary(shift, g.tensors[node.output].quant.scale)
            node.consts = {k: v.copy() for k, v in original.consts.items()}
            handler.quantize(node, g, ranges)
            for values in parts:
                run_node_batch(g, registry, node, values)
            corrected.append(index)
    return CorrectedRun(corrected, batch_outputs(g, parts), g)


def _correction_summary(shift: np.ndarray, scale: float) -> dict:
    """What NAME.json's layer entry says of a correction: how many channels moved and by how much, in
    steps of the layer's output (its int8 or int16 scale)."""
    steps = np.abs(shift) / scale
    return {"channels": int(np.count_nonzero(shift)), "of_channels": int(shift.size),
            "largest_steps": round(float(steps.max()), 3), "mean_steps": round(float(steps.mean()), 3)}


def _mean_error(graph: Graph, node, output: np.ndarray, floats: dict[str, np.ndarray]) -> np.ndarray | None:
    """Each channel's mean error of the node's int8 output (the samples given) against float, where the
    output moves with the bias, shrunk by _kept_share (None: no such position)."""
    t = graph.tensors[node.output]
    q = t.quant
    channels = t.shape[-1]
    lo, hi = node.attrs.get("act", (None, None))
    # inside the clamp and inside the output's integer range: where the output moves with the bias
    low, high = int_range(q.bits)
    floor = max(lo if lo is not None else -np.inf, (low - q.zero_point + 1) * q.scale)
    ceiling = min(hi if hi is not None else np.inf, (high - q.zero_point - 1) * q.scale)
    n = len(output)
    # all samples at once: (samples, positions, channels)
    got = dequantize_tensor(output, q).astype(np.float64).reshape(n, -1, channels)
    want = t.in_layout(floats[t.calib_name]).reshape(n, -1, channels)
    linear = (want > floor) & (want < ceiling)
    # per sample and channel: the summed error and how many positions
    sums = np.where(linear, got - want, 0.0).sum(axis=1)
    counts = linear.sum(axis=1)
    count = counts.sum(axis=0)
    if not count.any():
        return None
    mean = sums.sum(axis=0) / np.maximum(count, 1)
    kept = _kept_share(mean, sums / np.maximum(counts, 1), counts)
    return np.where(count >= MIN_POSITIONS, mean * kept, 0.0)


def _kept_share(mean: np.ndarray, sample_means: np.ndarray, sample_counts: np.ndarray) -> np.ndarray:
    """How much of each channel's mean error to correct: 1 - se^2 / mean^2, at least 0, where se is the
    standard error of the mean over samples (positions within one sample move together, so the
    samples, not the positions, are the independent draws). A mean that the samples' spread cannot
    tell from zero is their noise, not a bias: correcting it fits those samples and adds its noise
    to every other input (benchmarks.md: the held-out benchmark)."""
    present = sample_counts > 0
    n = present.sum(axis=0)
    spread = np.where(present, sample_means - mean, 0.0)
    variance = (spread**2).sum(axis=0) / np.maximum(n - 1, 1)
    se2 = np.where(n > 1, variance / np.maximum(n, 1), np.inf)
    return np.maximum(0.0, 1.0 - se2 / np.maximum(mean**2, 1e-300))
