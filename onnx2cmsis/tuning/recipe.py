"""The quantization recipe, chosen on samples that did not set the ranges.

A recipe is how a model's int8 (or int16) parameters come from the calibration samples: how each
value's range is chosen (quant/ranges.py), the dense layers' weight granularity (one scale per layer,
per output feature, or tuning/search.py's measured choice) and empirical bias correction
(tuning/bias_correction.py). Judged on the samples that also set the ranges, corrections and
searches, a recipe fits those samples: on the held-out benchmark (benchmarks/heldout/) the choice
won on the calibration set and lost on the test set (issue 29).

So each candidate is fitted on all the search samples and scored on them (in-sample). The best of
the others in-sample is the challenger of TFLite's converter's own recipe (min/max ranges,
per-channel weights, no bias correction, quantized by this tool), the incumbent: both are then
scored by FOLDS-fold cross-validation, fitted on the other folds and scored on each fold they did not
see (held out), and the challenger is chosen only when it is at least as good in-sample and
MARGIN_DB better held out. Held-out scores of 32-64 samples are noisy (a few samples near a softmax
decision dominate them) and in-sample ones are optimistic; on the benchmark's development half a
rule on either alone chose recipes that lost on the test sets. With fewer than MIN_SAMPLES search
samples no fold is worth the name and the incumbent stays. The choice is made on at most
CHOICE_SAMPLES of the search samples (spread evenly): the size of calibration set users have, and
what keeps a conversion within about twice the time of a fixed recipe.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, replace

import numpy as np
import onnx

from onnx2cmsis.data.samples import stacked
from onnx2cmsis.errors import ConversionError
from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.quant.quantize import dequantized_outputs, quantize_graph
from onnx2cmsis.tuning.bias_correction import correct_biases
from onnx2cmsis.tuning.search import apply_weights, calibrate, energy_sqnr_db, float_outputs, search_indices

FOLDS = 3
MARGIN_DB = 0.2  # what a recipe must gain over the incumbent on held-out samples to be chosen
MIN_SAMPLES = 16  # fewer search samples: folds of fewer than 5 samples say nothing
CHOICE_SAMPLES = 64  # the choice runs up to 3 + 2 * FOLDS fits: on at most this many samples


@dataclass(frozen=True)
class Recipe:
    calibration_method: str  # quant/ranges.py
    dense_weights: str  # per-tensor, per-channel or auto (tuning/search.py chooses per layer)
    bias_correction: bool

    def describe(self) -> dict:
        return {"calibration_method": self.calibration_method, "dense_weights": self.dense_weights,
                "bias_correction": self.bias_correction}

    def text(self) -> str:
        return (f"{self.calibration_method} ranges, {self.dense_weights} dense weights, "
                + ("bias correction" if self.bias_correction else "no bias correction"))


# TFLite's converter's recipe first (the incumbent), then the tool's own.
TFLITE_RECIPE = Recipe("minmax", "per-channel", False)
OWN_RECIPES = (Recipe("minmax", "auto", True), Recipe("mse", "per-channel", True))


def candidate_recipes(calibration_method: str, dense_weights: str, bias_correction: bool) -> list[Recipe]:
    """The candidates the options leave open, the incumbent first: an option other than "auto" (or
    bias correction off) pins its part of every candidate."""
    def pinned(r: Recipe) -> Recipe:
        return Recipe(r.calibration_method if calibration_method == "auto" else calibration_method,
                      r.dense_weights if dense_weights == "auto" else dense_weights,
                      r.bias_correction and bias_correction)
    return list(dict.fromkeys(pinned(r) for r in (TFLITE_RECIPE, *OWN_RECIPES)))


@dataclass
class Score:
    calibration_sqnr_db: float  # fitted on all the search samples, scored on them
    heldout_sqnr_db: float | None  # FOLDS-fold cross-validation (None: not run; only the incumbent and the best
    # challenger in-sample are, and those only when the challenger is at least as good in-sample)


@dataclass
class RecipeChoice:
    chosen: Recipe
    reason: str
    scores: dict[Recipe, Score]
    samples: int

    def summary(self) -> dict:
        """For NAME.json: what was chosen, why, and what each candidate measured."""
        return {"chosen": self.chosen.describe(), "reason": self.reason, "samples": self.samples,
                "folds": FOLDS if self.samples >= MIN_SAMPLES else None, "margin_db": MARGIN_DB,
                "candidates": [{**r.describe(), "calibration_sqnr_db": _rounded(s.calibration_sqnr_db),
                                "heldout_sqnr_db": _rounded(s.heldout_sqnr_db)} for r, s in self.scores.items()]}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def choose_recipe(model: onnx.ModelProto, graph: Graph, registry: Registry, x, candidates: list[Recipe]) -> RecipeChoice:
    """The candidate (candidate_recipes) to quantize `graph` with, measured on the search samples `x`:
    the incumbent (the first) unless another beats it in-sample and, by MARGIN_DB, held out."""
    x = _subset(x, search_indices(len(x), CHOICE_SAMPLES))
    incumbent, n = candidates[0], len(x)
    if len(candidates) == 1:
        return RecipeChoice(incumbent, "the only recipe the options leave open", {}, n)
    if n < MIN_SAMPLES:
        return RecipeChoice(incumbent, f"{n} calibration samples are too few to hold any out "
                            f"(at least {MIN_SAMPLES}): {incumbent.text()}", {}, n)
    want = float_outputs(model, x).reshape(n, -1).astype(np.float64)
    in_sample = {r: _sqnr(*_errors(model, graph, registry, r, x, want, np.arange(n), np.arange(n))) for r in candidates}
    # the best in-sample challenger, if it is at least the incumbent's: only it can be chosen, so only
    # it and the incumbent are fitted on the folds
    challenger = max(candidates[1:], key=lambda r: in_sample[r])
    held_out = [incumbent, challenger] if in_sample[challenger] >= in_sample[incumbent] else []
    scores = {r: Score(in_sample[r], _heldout_sqnr(model, graph, registry, r, x, want) if r in held_out else None)
              for r in candidates}
    chosen, reason = pick(candidates, scores)
    return RecipeChoice(chosen, reason, scores, n)


def pick(candidates: list[Recipe], scores: dict[Recipe, Score]) -> tuple[Recipe, str]:
    """The rule: the incumbent (the first candidate) unless the best of the others on the calibration
    samples scores at least as well there and MARGIN_DB better held out. With why."""
    incumbent = candidates[0]
    base = scores[incumbent]
    challenger = max(candidates[1:], key=lambda r: scores[r].calibration_sqnr_db)
    held_out = scores[challenger].heldout_sqnr_db
    if not (scores[challenger].calibration_sqnr_db >= base.calibration_sqnr_db and held_out is not None
            and base.heldout_sqnr_db is not None and held_out >= base.heldout_sqnr_db + MARGIN_DB):
        return incumbent, (f"no other recipe beats it on the calibration samples and by {MARGIN_DB} dB on "
                           "held-out folds")
    return challenger, (f"{held_out - base.heldout_sqnr_db:+.2f} dB over {incumbent.text()} on held-out folds "
                        f"({scores[challenger].calibration_sqnr_db - base.calibration_sqnr_db:+.2f} dB in-sample)")


def fitted(model: onnx.ModelProto, graph: Graph, registry: Registry, recipe: Recipe, x) -> Graph:
    """A quantized copy of `graph`: `recipe` applied with what the samples `x` alone give."""
    g = copy.deepcopy(graph)
    g.quant_options = replace(g.quant_options, calibration_method=recipe.calibration_method,
                              dense_weights=recipe.dense_weights)
    found = calibrate(model, g, registry, x, x, recipe.calibration_method, recipe.dense_weights)
    apply_weights(g, found.weights)
    if recipe.bias_correction:
        correct_biases(model, g, registry, found.ranges, {}, x)
    quantize_graph(g, registry, found.ranges)
    return g


def _errors(model: onnx.ModelProto, graph: Graph, registry: Registry, recipe: Recipe, x, want: np.ndarray,
            fit: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per test sample: the float output's energy and the squared error of `recipe` fitted on `fit`."""
    try:
        g = fitted(model, graph, registry, recipe, _subset(x, fit))
    except ConversionError:  # e.g. a range whose requantization cannot be represented
        return np.sum(want[test] ** 2, axis=1), np.full(len(test), np.inf)
    got = dequantized_outputs(g, registry, _subset(x, test)).reshape(len(test), -1)
    return np.sum(want[test] ** 2, axis=1), np.sum((got - want[test]) ** 2, axis=1)


def _heldout_sqnr(model: onnx.ModelProto, graph: Graph, registry: Registry, recipe: Recipe, x,
                  want: np.ndarray) -> float:
    """Each fold scored by the recipe fitted on the others; the pooled SQNR over all samples."""
    n = len(x)
    parts = [_errors(model, graph, registry, recipe, x, want, np.setdiff1d(np.arange(n), test), test)
             for test in (np.arange(k, n, FOLDS) for k in range(FOLDS))]
    return _sqnr(np.concatenate([s for s, _ in parts]), np.concatenate([e for _, e in parts]))


def _subset(x, indices: np.ndarray):
    return stacked([x[int(i)] for i in indices])


def _sqnr(signal: np.ndarray, noise: np.ndarray) -> float:
    return energy_sqnr_db(float(np.sum(signal)), float(np.sum(noise)))
