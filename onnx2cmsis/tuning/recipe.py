"""The quantization recipe, chosen on samples that did not set the ranges.

A recipe is how a model's int8 (or int16) parameters come from the calibration samples: how each
value's range is chosen (quant/ranges.py), the dense layers' weight granularity (one scale per layer,
per output feature, or tuning/search.py's measured choice) and empirical bias correction
(tuning/bias_correction.py). Judged on the samples that also set the ranges, corrections and
searches, a recipe fits those samples: on the held-out benchmark (benchmarks/heldout/) the choice
won on the calibration set and lost on the test set (issue 29).

So each candidate is fitted on all the search samples and scored on them (in-sample). The best of
the others in-sample is the challenger of TFLite's converter's own recipe (min/max ranges,
per-channel weights, no bias correction, quantized by this tool; with range floors, as every
recipe, unless they are off: tuning/range_floors.py), the incumbent: both are then scored by
FOLDS-fold cross-validation, fitted on the other folds and scored on each fold they did not
see (held out), and the challenger is chosen only when it is at least as good in-sample and
MARGIN_DB better held out. Held-out scores of 32-64 samples are noisy (a few samples near a softmax
decision dominate them) and in-sample ones are optimistic; on the benchmark's development half a
rule on either alone chose recipes that lost on the test sets. With fewer than MIN_SAMPLES search
samples no fold is worth the name and the incumbent stays. The choice is made on at most
CHOICE_SAMPLES of the search samples (spread evenly): the size of calibration set users have, and
what keeps a conversion within about twice the time of a fixed recipe (on the held-out models, against
the code before the choice: median 1.8x at int8, 2.0x at int16 with the weight rounding challenge
below; docs/benchmarks.md part 11).

Weight rounding comes last: the recipe so chosen (TFLite's or another) is the incumbent against
itself with fitted weight rounding (tuning/weight_rounding.py), by the same rule. It is not one more
candidate beside the others: fitted to the samples' inputs, it would top every in-sample ranking,
and the one challenger the folds judge would always be a fitted one, whether or not the other
choices it came with hold.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from onnx2cmsis.data.samples import stacked
from onnx2cmsis.errors import ConversionError
from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.quant.calibrate import RecordedFloats, record_floats
from onnx2cmsis.quant.precision import apply_precision
from onnx2cmsis.quant.quantize import calibration_values, dequantized_outputs, output_floats, quantize_graph
from onnx2cmsis.tuning.heldout import HeldoutCheck, HeldoutFigures, heldout_figures
from onnx2cmsis.tuning.bias_correction import corrected_run
from onnx2cmsis.tuning.weight_rounding import fit_weight_rounding
from onnx2cmsis.tuning.search import apply_weights, calibrate, float_outputs, search_indices, sqnr_db

FOLDS = 3
MARGIN_DB = 0.2  # what a recipe must gain over the incumbent on held-out samples to be chosen
MIN_SAMPLES = 16  # fewer search samples: folds of fewer than 5 samples say nothing
CHOICE_SAMPLES = 64  # the choice runs up to 3 + 2 * FOLDS fits (5 + 3 * FOLDS with the weight rounding
# challenge, 6 + 4 * FOLDS under --precision auto, which judges it at other widths): on at most this many samples


@dataclass(frozen=True)
class Recipe:
    calibration_method: str  # quant/ranges.py
    dense_weights: str  # per-tensor, per-channel or auto (tuning/search.py chooses per layer)
    bias_correction: bool
    weight_rounding: str = "nearest"  # or "fitted" (tuning/weight_rounding.py)
    # with fitted rounding and bias correction: whether the correction also takes the layers with
    # fitted codes (else only those left with nearest codes)
    corrects_fitted: bool = True

    @property
    def corrects_nearest_only(self) -> bool:
        return self.bias_correction and self.weight_rounding == "fitted" and not self.corrects_fitted

    def describe(self) -> dict:
        return {"calibration_method": self.calibration_method, "dense_weights": self.dense_weights,
                "bias_correction": self.bias_correction, "weight_rounding": self.weight_rounding,
                **({"bias_correction_of_fitted_layers": self.corrects_fitted}
                   if self.bias_correction and self.weight_rounding == "fitted" else {})}

    @classmethod
    def described(cls, d: dict) -> Recipe:
        """The recipe `describe` gave `d` for (NAME.json's quantization.recipe.chosen)."""
        return cls(d["calibration_method"], d["dense_weights"], d["bias_correction"],
                   d.get("weight_rounding", "nearest"), d.get("bias_correction_of_fitted_layers", True))

    def text(self) -> str:
        return (f"{self.calibration_method} ranges, {self.dense_weights} dense weights, "
                + ("bias correction" if self.bias_correction else "no bias correction")
                + (" of the layers rounded to nearest" if self.corrects_nearest_only else "")
                + (", fitted weight rounding" if self.weight_rounding == "fitted" else ""))


# TFLite's converter's recipe first (the incumbent), then the tool's own.
TFLITE_RECIPE = Recipe("minmax", "per-channel", False)
OWN_RECIPES = (Recipe("minmax", "auto", True), Recipe("mse", "per-channel", True))


def candidate_recipes(calibration_method: str, dense_weights: str, bias_correction: bool,
                      weight_rounding: str = "nearest") -> list[Recipe]:
    """The candidates the options leave open, the incumbent first: an option other than "auto" (or
    bias correction off) pins its part of every candidate. Weight rounding "auto" is not among them:
    choose_recipe challenges the chosen recipe with fitted rounding after the others are settled."""
    def pinned(r: Recipe) -> Recipe:
        return Recipe(r.calibration_method if calibration_method == "auto" else calibration_method,
                      r.dense_weights if dense_weights == "auto" else dense_weights,
                      r.bias_correction and bias_correction,
                      "fitted" if weight_rounding == "fitted" else "nearest")
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
    # --precision auto: weight rounding judged with every layer at int16 (the widths are chosen after
    # the recipe), apart from the other candidates' scores (at the conversion's default width)
    rounding_scores: dict[Recipe, Score] = field(default_factory=dict)

    def summary(self) -> dict:
        """For NAME.json: what was chosen, why, and what each candidate measured."""
        return {"chosen": self.chosen.describe(), "reason": self.reason, "samples": self.samples,
                "folds": FOLDS if self.samples >= MIN_SAMPLES else None, "margin_db": MARGIN_DB,
                "candidates": _listed(self.scores),
                **({"weight_rounding_at_int16": _listed(self.rounding_scores)} if self.rounding_scores else {})}


def _listed(scores: dict[Recipe, Score]) -> list[dict]:
    return [{**r.describe(), "calibration_sqnr_db": _rounded(s.calibration_sqnr_db),
             "heldout_sqnr_db": _rounded(s.heldout_sqnr_db)} for r, s in scores.items()]


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def choose_recipe(model: onnx.ModelProto, graph: Graph, registry: Registry, x, candidates: list[Recipe],
                  recorded: RecordedFloats | None = None, fit_rounding: bool = False,
                  rounding_bits: list[int] | None = None) -> RecipeChoice:
    """The candidate (candidate_recipes) to quantize `graph` with, measured on the search samples `x`:
    the incumbent (the first) unless another beats it in-sample and, by MARGIN_DB, held out. With
    `fit_rounding`, the recipe so chosen is then challenged by itself with fitted weight rounding
    (tuning/weight_rounding.py), by the same rule, with each node at the width `rounding_bits` gives
    it (None: as the others). `recorded`: the float values of `x` (recorded_values), if already run."""
    chosen = search_indices(len(x), CHOICE_SAMPLES)
    recorded = None if recorded is None else recorded.subset(chosen)
    x = _subset(x, chosen)
    incumbent, n = candidates[0], len(x)
    if len(candidates) == 1 and not fit_rounding:
        return RecipeChoice(incumbent, "the only recipe the options leave open", {}, n)
    if n < MIN_SAMPLES:
        return RecipeChoice(incumbent, f"{n} calibration samples are too few to hold any out "
                            f"(at least {MIN_SAMPLES}): {incumbent.text()}", {}, n)
    recorded = recorded_values(model, graph, x) if recorded is None else recorded
    want = float_outputs(model, x, recorded).reshape(n, -1).astype(np.float64)
    every = np.arange(n)

    fits = Fits(model, graph, registry, x, recorded)

    def in_sample(r: Recipe, bits: list[int] | None = None) -> float:
        return output_sqnr_db(fits.outputs(r, every, every, bits), want)

    def held_out(r: Recipe, bits: list[int] | None = None) -> float:
        return output_sqnr_db(fits.heldout(r, bits), want)

    scores = {r: Score(in_sample(r), None) for r in candidates}
    if len(candidates) == 1:
        winner, reason = incumbent, "the only recipe the options leave open"
    else:
        challenger = max(candidates[1:], key=lambda r: scores[r].calibration_sqnr_db)
        _cross_validate(scores, incumbent, challenger, held_out, None)
        winner, reason = pick(candidates, scores)
    table = scores if rounding_bits is None else {}
    if fit_rounding:
        winner, reason = _challenge_rounding(winner, reason, table, rounding_bits, in_sample, held_out)
    return RecipeChoice(winner, reason, scores, n, {} if table is scores else table)


def _challenge_rounding(winner: Recipe, reason: str, table: dict[Recipe, Score], bits: list[int] | None,
                        in_sample, held_out) -> tuple[Recipe, str]:
    """The recipe chosen, or itself with fitted weight rounding where that beats it (`beats`), and
    why; the scores measured (at widths `bits`) go into `table`."""
    # fitted codes already take much of each layer's mean error from its own weights, and a
    # correction measured on top of them can cost more than it mends (on the benchmark's development
    # half, 7 dB in-sample): with bias correction, the challenger is also tried with the correction
    # kept to the layers left with nearest codes (--precision auto's int8 layers among them, whose
    # correction a raw-ADC model of the same half needed on its test set)
    challenger = replace(winner, weight_rounding="fitted")
    variants = list(dict.fromkeys((challenger, replace(challenger, corrects_fitted=False)
                                   if winner.bias_correction else challenger)))
    for r in ([winner] if winner not in table else []) + variants:
        table[r] = Score(in_sample(r, bits), None)
    rounded = max(variants, key=lambda r: table[r].calibration_sqnr_db)
    _cross_validate(table, winner, rounded, held_out, bits)
    at = "" if bits is None else " with every layer at int16 where it can be"
    if not beats(table[rounded], table[winner]):
        return winner, (reason + f"; weights rounded to nearest: fitted rounding does not gain {MARGIN_DB} dB on "
                        f"held-out folds{at}")
    gain = table[rounded].heldout_sqnr_db - table[winner].heldout_sqnr_db
    return rounded, (reason + "; fitted weight rounding"
                     + (", bias correction of the layers rounded to nearest only"
                        if rounded.corrects_nearest_only else "")
                     + f": {gain:+.2f} dB on held-out folds{at} "
                     + f"({table[rounded].calibration_sqnr_db - table[winner].calibration_sqnr_db:+.2f} dB in-sample)")


def _cross_validate(table: dict[Recipe, Score], incumbent: Recipe, challenger: Recipe, held_out,
                    bits: list[int] | None) -> None:
    """Fit the incumbent and the best in-sample challenger on the folds (those not fitted yet), if the
    challenger is at least the incumbent in-sample: only then can it be chosen, so only then are the
    folds worth their fits."""
    if table[challenger].calibration_sqnr_db >= table[incumbent].calibration_sqnr_db:
        for r in (incumbent, challenger):
            if table[r].heldout_sqnr_db is None:
                table[r] = Score(table[r].calibration_sqnr_db, held_out(r, bits))


def beats(challenger: Score, incumbent: Score) -> bool:
    """The rule: at least as good on the calibration samples and MARGIN_DB better held out (a fit that
    could not be quantized, -inf, beats nothing)."""
    figures = (challenger.calibration_sqnr_db, incumbent.calibration_sqnr_db, challenger.heldout_sqnr_db,
               incumbent.heldout_sqnr_db)
    return (all(f is not None and np.isfinite(f) for f in figures)
            and challenger.calibration_sqnr_db >= incumbent.calibration_sqnr_db
            and challenger.heldout_sqnr_db >= incumbent.heldout_sqnr_db + MARGIN_DB)


def pick(candidates: list[Recipe], scores: dict[Recipe, Score]) -> tuple[Recipe, str]:
    """The rule: the incumbent (the first candidate) unless the best of the others on the calibration
    samples beats it (`beats`). With why."""
    incumbent = candidates[0]
    base = scores[incumbent]
    challenger = max(candidates[1:], key=lambda r: scores[r].calibration_sqnr_db)
    if not beats(scores[challenger], base):
        return incumbent, (f"no other recipe beats it on the calibration samples and by {MARGIN_DB} dB on "
                           "held-out folds")
    held_out = scores[challenger].heldout_sqnr_db
    return challenger, (f"{held_out - base.heldout_sqnr_db:+.2f} dB over {incumbent.text()} on held-out folds "
                        f"({scores[challenger].calibration_sqnr_db - base.calibration_sqnr_db:+.2f} dB in-sample)")


def fitted(model: onnx.ModelProto, graph: Graph, registry: Registry, recipe: Recipe, x,
           bits: list[int] | None = None, recorded: RecordedFloats | None = None) -> Graph:
    """A quantized copy of `graph`: `recipe` applied with what the samples `x` alone give, each node
    at the width `bits` gives it (quant/precision.py; None: the options' precision). `recorded`: the
    float values of `x`, if already run."""
    return Fits(model, graph, registry, x, recorded).fit(recipe, np.arange(len(x)), bits)[0]


@dataclass
class Fits:
    """Recipes fitted on some of the samples `x` and run on others: what the recipe choice and
    --precision auto's held-out check are made of. `graph`: before any range; `recorded`: the float
    values of `x`, if already run.

    The fits of one choice repeat their first steps: a recipe's ranges and dense weights fitted on the
    same samples are the same whatever its bias correction and weight rounding, and fitted rounding
    of those ranges at the same widths gives the same codes whether bias correction follows or not.
    The calibrations are kept for the Fits' life, and the last fitted rounding (the weight rounding
    challenge fits its two variants, which differ only in the correction after it, one after the
    other): the same graphs as fitting from scratch, in 0.85x the time at int16 (median over the
    held-out models, docs/benchmarks.md part 11). `graph` and `x` must not change while it lives."""

    model: onnx.ModelProto
    graph: Graph
    registry: Registry
    x: Any
    recorded: RecordedFloats | None = None
    _calibrated: dict[tuple, tuple[Graph, dict]] = field(default_factory=dict, init=False, repr=False)
    _rounded: tuple[tuple, Graph] | None = field(default=None, init=False, repr=False)  # the last rounding

    def fit(self, recipe: Recipe, fit: np.ndarray, bits: list[int] | None) -> tuple[Graph, np.ndarray | None]:
        """`recipe` fitted on the samples `fit` of `x`, and the output_codes rows of every sample of `x`
        where bias correction's pass made them (None: run them)."""
        g, ranges = self._prepared(recipe, fit, bits)
        if recipe.bias_correction:
            run = corrected_run(self.model, g, self.registry, ranges, self.x, self.recorded, fit,
                                fitted=recipe.corrects_fitted)
            if run.quantized is not None:
                return run.quantized, run.codes
        quantize_graph(g, self.registry, ranges)
        return g, None

    def _prepared(self, recipe: Recipe, fit: np.ndarray, bits: list[int] | None) -> tuple[Graph, dict]:
        """A copy of the graph with the recipe's ranges (returned), weight choices, the widths `bits`
        and its weight rounding, fitted on the samples `fit`: before bias correction."""
        calibrated = (recipe.calibration_method, recipe.dense_weights, tuple(int(i) for i in fit))
        fit_x, fit_recorded = _subset(self.x, fit), None if self.recorded is None else self.recorded.subset(fit)
        if calibrated not in self._calibrated:
            g = copy.deepcopy(self.graph)
            g.quant_options = replace(g.quant_options, calibration_method=recipe.calibration_method,
                                      dense_weights=recipe.dense_weights)
            found = calibrate(self.model, g, self.registry, fit_x, fit_x, recipe.calibration_method,
                              recipe.dense_weights, fit_recorded)
            apply_weights(g, found.weights)
            self._calibrated[calibrated] = (g, found.ranges)
        base, ranges = self._calibrated[calibrated]
        rounded = (*calibrated, None if bits is None else tuple(bits))
        if recipe.weight_rounding == "fitted" and self._rounded is not None and self._rounded[0] == rounded:
            return copy.deepcopy(self._rounded[1]), ranges
        g = copy.deepcopy(base)
        if bits is not None:
            apply_precision(g, bits)
        if recipe.weight_rounding == "fitted":
            fit_weight_rounding(self.model, g, self.registry, ranges, fit_x, fit_recorded)
            self._rounded = (rounded, copy.deepcopy(g))
        return g, ranges

    def outputs(self, recipe: Recipe, fit: np.ndarray, test: np.ndarray,
                bits: list[int] | None = None) -> np.ndarray | None:
        """The outputs on the samples `test` of `recipe` fitted on the samples `fit` (None: it cannot be
        quantized, e.g. a range whose requantization cannot be represented)."""
        try:
            g, codes = self.fit(recipe, fit, bits)
        except ConversionError:
            return None
        if codes is not None:
            return output_floats(g, codes[test]).astype(np.float64)
        return dequantized_outputs(g, self.registry, _subset(self.x, test)).reshape(len(test), -1).astype(np.float64)

    def heldout(self, recipe: Recipe, bits: list[int] | None = None) -> np.ndarray | None:
        """Each sample's dequantized output (flattened) from `recipe` (at widths `bits`) fitted on the
        FOLDS - 1 folds that do not hold it: what samples the fit did not see get. None: a fold's fit
        cannot be quantized."""
        n = len(self.x)
        got = None
        for test in (np.arange(k, n, FOLDS) for k in range(FOLDS)):
            part = self.outputs(recipe, np.setdiff1d(np.arange(n), test), test, bits)
            if part is None:
                return None
            got = np.empty((n, part.shape[1])) if got is None else got
            got[test] = part
        return got


def widths_heldout(model: onnx.ModelProto, graph: Graph, registry: Registry, recipe: Recipe, x,
                   labels: np.ndarray | None, recorded: RecordedFloats | None = None) -> HeldoutCheck | None:
    """--precision auto's held-out check (tuning/auto_precision.py): a width assignment's SQNR (and
    accuracy on `labels`, the classes of the search samples `x`) on the search samples, each from the
    recipe fitted without its own fold (all of them, not CHOICE_SAMPLES: folds fitted on fewer samples
    than the final ranges see clip more, and would ask for more int16 than the model needs).
    `graph`: as calibrate found it, before any width; `recorded`: the float values of `x`, if already
    run. None: too few samples. The checks share one Fits: each fold is calibrated once."""
    if len(x) < MIN_SAMPLES:
        return None
    recorded = recorded_values(model, graph, x) if recorded is None else recorded
    want = float_outputs(model, x, recorded).reshape(len(x), -1).astype(np.float64)
    fits = Fits(model, graph, registry, x, recorded)

    def check(bits: list[int]) -> HeldoutFigures:
        return heldout_figures(fits.heldout(recipe, bits), want, labels)
    return check


def recorded_values(model: onnx.ModelProto, graph: Graph, x) -> RecordedFloats | None:
    """Every value the fits (and a conversion's own calibration) read from the float model, on the
    samples `x`, run once (None: more than calibrate.RECORD_BYTES)."""
    return record_floats(model, x, calibration_values(graph) + [o.name for o in model.graph.output])


def output_sqnr_db(got: np.ndarray | None, want: np.ndarray) -> float:
    """The pooled output SQNR over all samples (-inf where the fit failed)."""
    return -np.inf if got is None else sqnr_db(got, want)


def _subset(x, indices: np.ndarray):
    return stacked([x[int(i)] for i in indices])
