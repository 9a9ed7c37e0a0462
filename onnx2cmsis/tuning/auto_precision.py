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

Met on the samples that set the ranges, a budget is not met on others: on a held-back model, 38 dB on
the calibration samples gave 34.5 dB on the test set (issue 29); on others a test sample beyond the
calibration samples' ranges clips at any width. So an SQNR budget is judged on samples the ranges did
not see (`heldout`: the recipe, bias correction included, fitted at given widths on the other folds of
the calibration samples; tuning/recipe.py). All-int8 and all-int16 are measured that way; between
them, a candidate's expected held-out SQNR is its in-sample one less an offset interpolated between
those of the assignments measured held out (by where its in-sample SQNR lies between theirs). What
the budget is held to is not that expectation but its lower bound (heldout_figures: the LOW_QUANTILE
of the pooled SQNR over bootstrap resamples of the held-out samples' own errors, interpolated the
same way): an expectation from 32-64 samples is typically 2-4 dB off what other data gives, more
often above it than below, and held to the expectation the choice missed the budget by more than
1 dB on the test sets of 8 of 25 held-out benchmark models (and refused 2); held to the lower bound,
on 4 (the same 2 refused; docs/benchmarks.md). The cheapest candidate whose lower bound meets the
budget is checked the same way. Short of the budget, its measured figure joins the interpolation
and the choice is made again (at most width_search.CHECK_ROUNDS times; where nothing short of
all-int16 is left, all-int16 is chosen and the shortfall reported). Each check moves only the estimates of the
assignments near it (where all-int16's in-sample SQNR is not above all-int8's, in-sample SQNR orders
nothing: the offset is their mean, and a check rules out only its own assignment): an earlier rule
raised the in-sample target by the shortfall for every candidate, which on the held-out benchmark
chose arenas up to twice what a second check allowed
(`ppg_hr_regressor` 12,384 B where 8,320 B met the budget). The budget is refused only when all-int16
misses it both in-sample and held out (or, under an arena limit all-int16 exceeds, when everything
measured within the limit does).
An accuracy budget is kept in-sample and its held-out figure reported, not tightened: on the 32-64
samples users calibrate with, one held-out sample is 1.5-3 points.

An arena limit (PrecisionBudget.max_arena_bytes: the RAM a firmware has for it) bounds every choice.
With an error budget too, the cheapest assignment that meets it within the limit is chosen; with the
limit alone, the most accurate that fits: from all-int16, of the layers live at the arena's peak the
one whose drop leaves the highest expected SQNR (each drop measured) drops to int8, until the plan
fits; then the most sensitive int8 layers rise back where it still fits, and of every assignment
measured within the limit the one with the highest expected held-out SQNR is kept (the estimate
above: its expectation, there being no budget to hold a bound to). Where nothing fits, the choice is
refused naming all-int8's arena. With an error budget, the limit takes all-int16's place as the most
that can be done: where no assignment measured within it meets the budget's lower bound, the one
nearest the budget is chosen and reported short of it, or refused (with that nearest figure and what
all-int16 needs) where it misses the budget in-sample and as expected held out.

Instructions are estimated by a cost model (COST_PER_*): a tie-break after RAM, not a promise;
`benchmarks/precision_cost.py` measures the real counts on QEMU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ir.target import CmsisApi
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.quant.accuracy import accuracy
from onnx2cmsis.quant.precision import apply_precision
from onnx2cmsis.tuning.heldout import LOW_QUANTILE, HeldoutCheck, HeldoutFigures
from onnx2cmsis.tuning.width_measure import Candidate, WidthMeasure, leaders
from onnx2cmsis.tuning.width_search import PrecisionBudget, WidthSearch


@dataclass
class PrecisionChoice:
    chosen: Candidate
    int8: Candidate
    int16: Candidate
    sensitivity_db: list[float | None]  # per node: SQNR lost with it alone at int8 (None: a view)
    budget: PrecisionBudget
    float_accuracy: float | None
    candidates: int
    heldout: HeldoutFigures | None = None  # the chosen widths' expected figures (None: not checked)
    checks: int = 0  # assignments checked held out besides the uniform ones
    int8_heldout: HeldoutFigures | None = None  # all-int8's and all-int16's (None: an accuracy budget, or too
    int16_heldout: HeldoutFigures | None = None  # few samples)

    def summary(self) -> dict:
        """For NAME.json: the budget and what each uniform precision and the choice measured (each
        layer's sensitivity is on its node: attrs["int8_loss_db"])."""
        def figures(c: Candidate) -> dict:
            return {"sqnr_db": round(c.sqnr_db, 2), "accuracy": None if c.accuracy is None else round(c.accuracy, 4),
                    "arena_bytes": c.arena_bytes, "estimated_instructions": c.instructions,
                    "weights_bytes": c.weights_bytes}
        def with_heldout(c: Candidate, h: HeldoutFigures | None) -> dict:
            f = figures(c)
            if h is not None:
                f.update(heldout_sqnr_db=_json_db(h.sqnr_db), heldout_samples=h.samples,
                         heldout_low_sqnr_db=_json_db(h.low_sqnr_db),
                         heldout_accuracy=None if h.accuracy is None else round(h.accuracy, 4))
            return f
        return {"min_sqnr_db": self.budget.min_sqnr_db, "max_accuracy_drop": self.budget.max_accuracy_drop,
                "max_arena_bytes": self.budget.max_arena_bytes,
                "float_accuracy": None if self.float_accuracy is None else round(self.float_accuracy, 4),
                "chosen": with_heldout(self.chosen, self.heldout), "int8": with_heldout(self.int8, self.int8_heldout),
                "int16": with_heldout(self.int16, self.int16_heldout),
                "candidates_measured": self.candidates, "heldout_checks": self.checks,
                "raised_by_db": 0.0,  # kept for readers of earlier NAME.json: the target no longer rises
                "heldout_low_quantile": LOW_QUANTILE}


def choose_precision(graph: Graph, registry: Registry, ranges: dict[str, tuple[float, float]], x: np.ndarray,
                     want: np.ndarray, budget: PrecisionBudget, api: CmsisApi,
                     heldout: HeldoutCheck | None = None, in_place: bool = True,
                     fit_rounding: Callable[[Graph], object] | None = None) -> PrecisionChoice:
    """The cheapest per-layer assignment that meets `budget` on `x` (the float model's outputs on it:
    `want`), an SQNR budget as expected on samples the ranges did not see (`heldout`; see the module
    docstring); applies it to `graph` (quant/precision.py). Refuses, with what all-int16 and all-int8
    reach, a budget all-int16 meets neither on `x` nor held out. `in_place`: the arenas as plan_memory
    makes them with it (off for a stream); `fit_rounding`: fits a graph's weight codes in place
    (tuning/weight_rounding.py, as the recipe will), so that each assignment is measured with the
    codes it will have. With budget.max_arena_bytes, every choice fits that arena (refused where none
    measured does, or none that does reaches the error budget); alone, it asks for the most accurate
    assignment that fits. The search itself: tuning/width_search.py."""
    labels = budget.labels if budget.judged_by_accuracy else None
    float_accuracy = None if labels is None else accuracy(want, labels)
    leader = leaders(graph, registry)
    measure = WidthMeasure(graph, registry, ranges, x, want, api, labels, leader, in_place, fit_rounding)
    # a layer whose handler computes int8 only (a plugin's, say) stays int8 in every candidate
    int8_only = {leader[i] for i, node in enumerate(graph.nodes) if 16 not in registry.for_op(node.op).activation_bits}
    search = WidthSearch(measure, leader, sorted(set(leader) - int8_only), budget, heldout, float_accuracy)
    chosen, expected = search.choose()
    sensitivity = search.sensitivity()
    for node, db in zip(graph.nodes, sensitivity):
        if db is not None:
            node.attrs["int8_loss_db"] = db  # reported per layer (report.layer_entries)
    apply_precision(graph, chosen.bits)
    return PrecisionChoice(chosen, search.int8, search.int16, sensitivity, budget, float_accuracy,
                           len(measure.measured), expected, search.checks, search.h8, search.h16)


def _json_db(value: float | None) -> float | None:
    """A figure for NAME.json: rounded, or null where there is none (a fold that could not be
    quantized gives -inf, which JSON cannot carry)."""
    return None if value is None or not np.isfinite(value) else round(value, 2)
