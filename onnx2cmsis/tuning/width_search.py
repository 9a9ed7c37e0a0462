"""The search `--precision auto` makes (its rules and why: auto_precision.py): which width assignments
it measures, how it judges them against the budget and the arena limit, and which it takes.

WidthSearch holds what every rule reads (the measurements, the held-out checks made so far, each
layer's sensitivity); its methods are the rules, each small enough to read on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.tuning.heldout import HeldoutCheck, HeldoutFigures, anchors, figure
from onnx2cmsis.tuning.width_measure import Candidate, WidthMeasure

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

    @property
    def judged_by_accuracy(self) -> bool:
        return self.max_accuracy_drop is not None and self.labels is not None

    def describe(self, float_accuracy: float | None) -> str:
        """In words; `float_accuracy` None: not measured yet (the progress line)."""
        error = None
        if self.max_accuracy_drop is not None:
            error = (f"at most {self.max_accuracy_drop:g} points of accuracy lost" if float_accuracy is None else
                     f"an accuracy within {self.max_accuracy_drop:g} points of the float model's "
                     f"{100 * float_accuracy:.2f}%")
        elif self.min_sqnr_db is not None:
            error = f"an output SQNR of {self.min_sqnr_db:g} dB"
        arena = None if self.max_arena_bytes is None else f"an arena of at most {self.max_arena_bytes:,} B"
        return " within ".join(x for x in (error, arena) if x)


@dataclass
class WidthSearch:
    """One search over the width assignments of the layers `units` (leaders; `leader`: each node's).
    Built, it has measured all-int8 and all-int16 (held out too, for an SQNR budget) and each layer's
    sensitivity, or refused a budget all-int16 cannot reach; `choose` then makes the choice."""

    measure: WidthMeasure
    leader: list[int]
    units: list[int]  # the layers that can be int16
    budget: PrecisionBudget
    heldout: HeldoutCheck | None  # an assignment's figures on samples the ranges did not see
    float_accuracy: float | None  # on the budget's labels (an accuracy budget)
    checked: dict[tuple[int, ...], HeldoutFigures] = field(default_factory=dict, init=False)  # held out so far

    def __post_init__(self) -> None:
        self.by_sqnr = not self.budget.judged_by_accuracy and self.heldout is not None
        self.int8 = self.measure(self.widths(set()))
        self.int16 = self.measure(self.widths(set(self.units)))
        self.h8, self.h16 = (self.check(self.int8), self.check(self.int16)) if self.by_sqnr else (None, None)
        # refused only where all-int16 misses it in-sample and held out, expectation and all: short of the
        # lower bound alone, all-int16 is the most any assignment can do, chosen and reported as such
        if self.budget.has_error_budget and self.short(self.int16):
            raise ConversionError(f"no per-layer precision reaches {self.describe()} on the calibration samples: "
                                  f"all-int16 measures {self.reached(self.int16, self.h16)}, all-int8 "
                                  f"{self.reached(self.int8, self.h8)} ({self.looser})")
        # each layer's SQNR lost with it alone at int8: the cheapest to drop first
        self.loss = {u: self.int16.sqnr_db - self.measure(self.widths(set(self.units) - {u})).sqnr_db
                     for u in self.units}
        self.order = sorted(self.units, key=lambda u: (self.loss[u], u))

    # -- assignments --------------------------------------------------------------------------------

    def widths(self, int16_units: set[int]) -> list[int]:
        return [16 if lead in int16_units else 8 for lead in self.leader]

    def with_width(self, c: Candidate, unit: int, bits: int) -> Candidate:
        return self.measure([bits if lead == unit else b for lead, b in zip(self.leader, c.bits)])

    def sensitivity(self) -> list[float | None]:
        """Per node: the SQNR (dB) lost with its layer alone at int8 (None: not a layer's leader)."""
        return [round(self.loss[lead], 2) if lead == i and i in self.loss else None
                for i, lead in enumerate(self.leader)]

    @property
    def checks(self) -> int:
        """Assignments checked held out besides the uniform ones."""
        return len(self.checked) - 2 if self.by_sqnr else len(self.checked)

    # -- judging one assignment ---------------------------------------------------------------------

    def check(self, c: Candidate) -> HeldoutFigures | None:
        if self.heldout is None:
            return None
        if tuple(c.bits) not in self.checked:
            self.checked[tuple(c.bits)] = self.heldout(c.bits)
        return self.checked[tuple(c.bits)]

    def expected_db(self, c: Candidate, low: bool = False) -> float:
        """Its SQNR on samples the ranges did not see (`low`: the bootstrap's lower bound): measured,
        or in-sample less the offset interpolated between those of the assignments checked so far
        (all-int8's and all-int16's at least), by in-sample SQNR."""
        if self.h8 is None or self.h16 is None:
            return c.sqnr_db
        if tuple(c.bits) in self.checked:
            return figure(self.checked[tuple(c.bits)], low)
        int8, int16 = self.int8, self.int16
        span = int16.sqnr_db - int8.sqnr_db
        ordered = np.isfinite(span) and span > 0  # else in-sample SQNR says nothing of width: the mean offset
        at = anchors([(self.measure(list(bits)).sqnr_db, figure(h, low)) for bits, h in self.checked.items()]) \
            if ordered else None
        if at is not None:
            return c.sqnr_db - float(np.interp(c.sqnr_db, *at))
        t = float(np.clip((c.sqnr_db - int8.sqnr_db) / span, 0.0, 1.0)) if ordered else 0.5
        offset = (int8.sqnr_db - figure(self.h8, low)) * (1 - t) + (int16.sqnr_db - figure(self.h16, low)) * t
        return c.sqnr_db - offset if np.isfinite(offset) else -np.inf

    def meets(self, c: Candidate, low: bool = True) -> bool:
        """The error budget met (an arena alone sets none): an SQNR budget by the held-out lower bound
        (`low`) or expectation."""
        if self.budget.judged_by_accuracy:
            return 100 * (self.float_accuracy - (c.accuracy or 0.0)) <= self.budget.max_accuracy_drop + 1e-9
        return self.budget.min_sqnr_db is None or self.expected_db(c, low) >= self.budget.min_sqnr_db

    def short(self, c: Candidate) -> bool:
        """The error budget missed in-sample and as expected held out: what no choice may deliver."""
        if self.budget.judged_by_accuracy:
            return not self.meets(c)
        return not self.meets(c, low=False) and (self.h16 is None or c.sqnr_db < (self.budget.min_sqnr_db or 0.0))

    def fits(self, c: Candidate) -> bool:
        return self.budget.max_arena_bytes is None or c.arena_bytes <= self.budget.max_arena_bytes

    @staticmethod
    def by_cost(c: Candidate) -> tuple:
        return c.cost, sum(b == 16 for b in c.bits)

    # -- the choice ---------------------------------------------------------------------------------

    def choose(self) -> tuple[Candidate, HeldoutFigures | None]:
        """The assignment the budget and the limit ask for, and its held-out figures (None: not
        checked): picked, checked held out and picked again while the check falls short of an SQNR
        budget (CHECK_ROUNDS); refused where nothing measured fits the limit, or nothing within it
        reaches the error budget."""
        chosen = self.pick()
        if not self.fits(chosen):
            raise ConversionError(f"no per-layer precision fits an arena of {self.budget.max_arena_bytes:,} B: the "
                                  f"smallest measured needs {chosen.arena_bytes:,} B (all-int8 "
                                  f"{self.int8.arena_bytes:,} B; raise {{opt:max_arena_bytes}})")
        expected = self.check(chosen)
        for _ in range(CHECK_ROUNDS):
            if (expected is None or not self.by_sqnr or self.budget.min_sqnr_db is None
                    or figure(expected, True) >= self.budget.min_sqnr_db or chosen is self.int16):
                break
            again = self.pick()  # the check just made lowered the estimates near it
            if again.bits == chosen.bits:
                break
            chosen, expected = again, self.check(again)
        if self.budget.max_arena_bytes is not None and not self.fits(self.int16) and self.budget.has_error_budget \
                and self.short(chosen):
            best = self.nearest_the_budget(self.within_limit())  # the checks may have moved the estimates
            if self.short(best):
                raise ConversionError(f"no per-layer precision reaches {self.describe()} on the calibration "
                                      f"samples: within the arena the nearest measures "
                                      f"{self.reached(best, self.check(best))} at {best.arena_bytes:,} B, all-int16 "
                                      f"{self.reached(self.int16, self.h16)} at {self.int16.arena_bytes:,} B (raise "
                                      f"{{opt:max_arena_bytes}} or {self.looser})")
            chosen, expected = best, self.check(best)
        return chosen, expected

    def pick(self) -> Candidate:
        if not self.budget.has_error_budget:
            return self.most_accurate_within()
        found = self.cheapest() if self.meets(self.int16) else None
        if found is not None or self.fits(self.int16):
            return found or self.int16
        best = self.most_accurate_within()  # the walk within the limit measures more candidates that fit
        return self.cheapest_measured() or best

    def refined(self, chosen: Candidate) -> Candidate:
        """`chosen` with any layer still at int16 dropped that the budget allows at no more cost."""
        for u in self.order:
            if chosen.bits[u] == 16:
                trial = self.with_width(chosen, u, 8)
                if self.meets(trial) and trial.cost <= chosen.cost:
                    chosen = trial
        return chosen

    def within_limit(self) -> list[Candidate]:
        return [c for c in self.measure.measured.values() if self.fits(c) and np.isfinite(c.sqnr_db)]

    def cheapest_measured(self) -> Candidate | None:
        """The cheapest assignment measured so far that fits and meets the budget, refined (None: none)."""
        fitting = [c for c in self.within_limit() if self.meets(c)]
        return self.refined(min(fitting, key=self.by_cost)) if fitting else None

    def cheapest(self) -> Candidate | None:
        """The cheapest assignment found that meets the error budget and fits the arena (None: none):
        the walks' cheapest, refined, when it fits; else the cheapest of all measured that fit."""
        order, units = self.order, self.units
        tried = [self.int16] + [self.measure(self.widths(set(order[k:]))) for k in range(1, len(order))] + [self.int8]
        current = self.int16  # then straight at the arena: drop the layers live at the peak, while the budget holds
        for _ in units:
            drop = {u for u in current.peak_units if current.bits[u] == 16}
            if not drop:
                break
            trial = self.measure([8 if lead in drop else b for lead, b in zip(self.leader, current.bits)])
            if not self.meets(trial):
                break
            tried.append(trial)
            current = trial
        meeting = [c for c in tried if self.meets(c)]
        if not meeting:
            return None
        chosen = self.refined(min(meeting, key=self.by_cost))
        return chosen if self.fits(chosen) else self.cheapest_measured()

    def nearest_the_budget(self, cands: list[Candidate]) -> Candidate:
        """The best of `cands` by what the budget measures: accuracy, else expected held-out SQNR (the
        in-sample SQNR breaking ties, as where a fold could not be quantized and every estimate is
        -inf)."""
        if self.budget.judged_by_accuracy:
            return max(cands, key=lambda c: (c.accuracy or 0.0, c.sqnr_db, -c.arena_bytes))
        return max(cands, key=lambda c: (self.expected_db(c), c.sqnr_db, -c.arena_bytes))

    def most_accurate_within(self) -> Candidate:
        """The assignment nearest the budget (an arena alone: the highest expected held-out SQNR) among
        those measured that fit the arena: from all-int16, of the layers live at the arena's peak the
        one whose drop to int8 leaves the highest expected SQNR (each drop measured: how much a layer
        costs depends on which others are int8 already, which its sensitivity from all-int16 does not
        see) drops, until the arena fits; then the most sensitive layers at int8 rise back wherever it
        still fits."""
        current = self.int16
        while not self.fits(current):
            wide = [u for u in self.units if current.bits[u] == 16]
            if not wide:
                break
            at_peak = [u for u in wide if u in current.peak_units] or wide  # the peak may be int8 layers'
            current = max((self.with_width(current, u, 8) for u in at_peak),
                          key=lambda c: (self.fits(c), self.expected_db(c), c.sqnr_db))
        for u in reversed(self.order):
            if current.bits[u] == 8:
                trial = self.with_width(current, u, 16)
                if self.fits(trial) and (self.expected_db(trial), trial.sqnr_db) > (self.expected_db(current),
                                                                                   current.sqnr_db):
                    current = trial
        fitting = self.within_limit()
        if not fitting:  # nothing fits: the smallest arena measured, refused by choose
            return min(self.measure.measured.values(), key=lambda c: c.cost)
        return self.nearest_the_budget(fitting)

    # -- what refusals say --------------------------------------------------------------------------

    def describe(self) -> str:
        return self.budget.describe(self.float_accuracy)

    def reached(self, c: Candidate, h: HeldoutFigures | None) -> str:
        if self.budget.judged_by_accuracy:
            return f"{100 * (c.accuracy or 0.0):.2f}%"
        return f"{c.sqnr_db:.2f} dB" + ("" if h is None else f" ({h.sqnr_db:.2f} dB held out)")

    @property
    def looser(self) -> str:
        if self.budget.judged_by_accuracy:
            return "allow a larger {opt:max_accuracy_drop}"
        return "lower {opt:max_error_db}"
