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
and the choice is made again (at most CHECK_ROUNDS times; where nothing short of all-int16 is left,
all-int16 is chosen and the shortfall reported). Each check moves only the estimates of the
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

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ir.target import CmsisApi
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.quant.accuracy import accuracy
from onnx2cmsis.quant.precision import apply_precision
from onnx2cmsis.tuning.heldout import LOW_QUANTILE, HeldoutCheck, HeldoutFigures, anchors, figure
from onnx2cmsis.tuning.width_measure import Candidate, WidthMeasure, leaders

CHECK_ROUNDS = 3  # choices made again after a held-out check fell short, at most


@dataclass(frozen=True)
class PrecisionBudget:
    """What the chosen widths must keep on the search samples: an output SQNR against the float model
    (dB), or at most an accuracy drop (percentage points) from the float model's accuracy on the
    samples' classes `labels`; and/or an arena they must fit in (bytes). With an arena alone, the
    widths are the most accurate (expected output SQNR on held-out samples) that fit."""

    min_sqnr_db: float | None = None
    max_accuracy_drop: float | None = None
    labels: np.ndarray | None = None  # (N,) classes of the search samples, with max_accuracy_drop
    max_arena_bytes: int | None = None

    @property
    def has_error_budget(self) -> bool:
        return self.min_sqnr_db is not None or self.max_accuracy_drop is not None

    def describe(self, float_accuracy: float | None) -> str:
        error = None
        if self.max_accuracy_drop is not None:
            error = (f"an accuracy within {self.max_accuracy_drop:g} points of the float model's "
                     f"{100 * (float_accuracy or 0.0):.2f}%")
        elif self.min_sqnr_db is not None:
            error = f"an output SQNR of {self.min_sqnr_db:g} dB"
        arena = None if self.max_arena_bytes is None else f"an arena of at most {self.max_arena_bytes:,} B"
        return " within ".join(x for x in (error, arena) if x)


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
    assignment that fits."""
    labels = budget.labels if budget.max_accuracy_drop is not None else None
    float_accuracy = None if labels is None else accuracy(want, labels)

    n = len(graph.nodes)
    leader = leaders(graph, registry)
    measure = WidthMeasure(graph, registry, ranges, x, want, api, labels, leader, in_place, fit_rounding)
    # a layer whose handler computes int8 only (a plugin's, say) stays int8 in every candidate
    int8_only = {leader[i] for i, node in enumerate(graph.nodes) if 16 not in registry.for_op(node.op).activation_bits}
    units = sorted(set(leader) - int8_only)

    def widths(int16_units: set[int]) -> list[int]:
        return [16 if leader[i] in int16_units else 8 for i in range(n)]

    int8, int16 = measure(widths(set())), measure(widths(set(units)))
    checked: dict[tuple[int, ...], HeldoutFigures] = {}

    def check(c: Candidate) -> HeldoutFigures | None:
        if heldout is None:
            return None
        if tuple(c.bits) not in checked:
            checked[tuple(c.bits)] = heldout(c.bits)
        return checked[tuple(c.bits)]

    by_sqnr = labels is None and heldout is not None
    h8, h16 = (check(int8), check(int16)) if by_sqnr else (None, None)

    def expected_db(c: Candidate, low: bool = False) -> float:
        """Its SQNR on samples the ranges did not see (`low`: the bootstrap's lower bound): measured,
        or in-sample less the offset interpolated between those of the assignments checked so far
        (all-int8's and all-int16's at least), by in-sample SQNR."""
        if h8 is None or h16 is None:
            return c.sqnr_db
        if tuple(c.bits) in checked:
            return figure(checked[tuple(c.bits)], low)
        span = int16.sqnr_db - int8.sqnr_db
        ordered = np.isfinite(span) and span > 0  # else in-sample SQNR says nothing of width: the mean offset
        at = anchors([(measure(list(bits)).sqnr_db, figure(h, low)) for bits, h in checked.items()]) if ordered else None
        if at is not None:
            return c.sqnr_db - float(np.interp(c.sqnr_db, *at))
        t = float(np.clip((c.sqnr_db - int8.sqnr_db) / span, 0.0, 1.0)) if ordered else 0.5
        offset = (int8.sqnr_db - figure(h8, low)) * (1 - t) + (int16.sqnr_db - figure(h16, low)) * t
        return c.sqnr_db - offset if np.isfinite(offset) else -np.inf

    def meets(c: Candidate, low: bool = True) -> bool:
        """The error budget met (an arena alone sets none): an SQNR budget by the held-out lower bound
        (`low`) or expectation."""
        if labels is None:
            return budget.min_sqnr_db is None or expected_db(c, low) >= budget.min_sqnr_db
        return 100 * (float_accuracy - (c.accuracy or 0.0)) <= budget.max_accuracy_drop + 1e-9

    def short(c: Candidate) -> bool:
        """The error budget missed in-sample and as expected held out: what no choice may deliver."""
        if labels is not None:
            return not meets(c)
        return not meets(c, low=False) and (h16 is None or c.sqnr_db < (budget.min_sqnr_db or 0.0))

    limit = budget.max_arena_bytes

    def fits(c: Candidate) -> bool:
        return limit is None or c.arena_bytes <= limit

    def reached(c: Candidate, h: HeldoutFigures | None) -> str:
        if labels is not None:
            return f"{100 * (c.accuracy or 0.0):.2f}%"
        return f"{c.sqnr_db:.2f} dB" + ("" if h is None else f" ({h.sqnr_db:.2f} dB held out)")

    looser = "lower {opt:max_error_db}" if labels is None else "allow a larger {opt:max_accuracy_drop}"

    # refused only where all-int16 misses it in-sample and held out, expectation and all: short of the
    # lower bound alone, all-int16 is the most any assignment can do, chosen and reported as such
    if budget.has_error_budget and short(int16):
        raise ConversionError(f"no per-layer precision reaches {budget.describe(float_accuracy)} on the calibration "
                              f"samples: all-int16 measures {reached(int16, h16)}, all-int8 {reached(int8, h8)} "
                              f"({looser})")
    loss = {u: int16.sqnr_db - measure(widths(set(units) - {u})).sqnr_db for u in units}
    order = sorted(units, key=lambda u: (loss[u], u))  # the cheapest to drop to int8 first

    def with_width(c: Candidate, unit: int, bits: int) -> Candidate:
        return measure([bits if leader[i] == unit else b for i, b in enumerate(c.bits)])

    def refined(chosen: Candidate) -> Candidate:
        """`chosen` with any layer still at int16 dropped that the budget allows at no more cost."""
        for u in order:
            if chosen.bits[u] == 16:
                trial = with_width(chosen, u, 8)
                if meets(trial) and trial.cost <= chosen.cost:
                    chosen = trial
        return chosen

    def by_cost(c: Candidate) -> tuple:
        return c.cost, sum(b == 16 for b in c.bits)

    def within_limit() -> list[Candidate]:
        return [c for c in measure.measured.values() if fits(c) and np.isfinite(c.sqnr_db)]

    def cheapest_measured() -> Candidate | None:
        """The cheapest assignment measured so far that fits and meets the budget, refined (None: none)."""
        fitting = [c for c in within_limit() if meets(c)]
        return refined(min(fitting, key=by_cost)) if fitting else None

    def cheapest() -> Candidate | None:
        """The cheapest assignment found that meets the error budget and fits the arena (None: none):
        the walks' cheapest, refined, when it fits; else the cheapest of all measured that fit."""
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
        meeting = [c for c in tried if meets(c)]
        if not meeting:
            return None
        chosen = refined(min(meeting, key=by_cost))
        return chosen if fits(chosen) else cheapest_measured()

    def nearest_the_budget(cands: list[Candidate]) -> Candidate:
        """The best of `cands` by what the budget measures: accuracy, else expected held-out SQNR (the
        in-sample SQNR breaking ties, as where a fold could not be quantized and every estimate is
        -inf)."""
        if labels is not None:
            return max(cands, key=lambda c: (c.accuracy or 0.0, c.sqnr_db, -c.arena_bytes))
        return max(cands, key=lambda c: (expected_db(c), c.sqnr_db, -c.arena_bytes))

    def most_accurate_within() -> Candidate:
        """The assignment nearest the budget (an arena alone: the highest expected held-out SQNR) among
        those measured that fit the arena: from all-int16, of the layers live at the arena's peak the
        one whose drop to int8 leaves the highest expected SQNR (each drop measured: how much a layer
        costs depends on which others are int8 already, which its sensitivity from all-int16 does not
        see) drops, until the arena fits; then the most sensitive layers at int8 rise back wherever it
        still fits."""
        current = int16
        while not fits(current):
            wide = [u for u in units if current.bits[u] == 16]
            if not wide:
                break
            at_peak = [u for u in wide if u in current.peak_units] or wide  # the peak may be int8 layers'
            current = max((with_width(current, u, 8) for u in at_peak),
                          key=lambda c: (fits(c), expected_db(c), c.sqnr_db))
        for u in reversed(order):
            if current.bits[u] == 8:
                trial = with_width(current, u, 16)
                if fits(trial) and (expected_db(trial), trial.sqnr_db) > (expected_db(current), current.sqnr_db):
                    current = trial
        fitting = within_limit()
        if not fitting:  # nothing fits: the smallest arena measured, refused below
            return min(measure.measured.values(), key=lambda c: c.cost)
        return nearest_the_budget(fitting)

    def pick() -> Candidate:
        if not budget.has_error_budget:
            return most_accurate_within()
        found = cheapest() if meets(int16) else None
        if found is not None or fits(int16):
            return found or int16
        best = most_accurate_within()  # the walk within the limit measures more candidates that fit
        return cheapest_measured() or best

    chosen = pick()
    if not fits(chosen):
        raise ConversionError(f"no per-layer precision fits an arena of {limit:,} B: the smallest measured needs "
                              f"{chosen.arena_bytes:,} B (all-int8 {int8.arena_bytes:,} B; raise "
                              "{opt:max_arena_bytes})")
    expected = check(chosen)
    for _ in range(CHECK_ROUNDS):
        if (expected is None or not by_sqnr or budget.min_sqnr_db is None
                or figure(expected, True) >= budget.min_sqnr_db or chosen is int16):
            break
        again = pick()  # the check just made lowered the estimates near it
        if again.bits == chosen.bits:
            break
        chosen, expected = again, check(again)
    if limit is not None and not fits(int16) and budget.has_error_budget and short(chosen):
        best = nearest_the_budget(within_limit())  # the checks may have moved the estimates
        if short(best):
            raise ConversionError(f"no per-layer precision reaches {budget.describe(float_accuracy)} on the "
                                  f"calibration samples: within the arena the nearest measures "
                                  f"{reached(best, check(best))} at {best.arena_bytes:,} B, all-int16 "
                                  f"{reached(int16, h16)} at {int16.arena_bytes:,} B (raise "
                                  f"{{opt:max_arena_bytes}} or {looser})")
        chosen, expected = best, check(best)
    sensitivity = [round(loss[leader[i]], 2) if leader[i] == i and i in loss else None for i in range(n)]
    for node, db in zip(graph.nodes, sensitivity):
        if db is not None:
            node.attrs["int8_loss_db"] = db  # reported per layer (report.layer_entries)
    apply_precision(graph, chosen.bits)
    return PrecisionChoice(chosen, int8, int16, sensitivity, budget, float_accuracy, len(measure.measured),
                           expected, len(checked) - 2 if by_sqnr else len(checked), h8, h16)


def _json_db(value: float | None) -> float | None:
    """A figure for NAME.json: rounded, or null where there is none (a fold that could not be
    quantized gives -inf, which JSON cannot carry)."""
    return None if value is None or not np.isfinite(value) else round(value, 2)
