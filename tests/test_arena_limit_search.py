"""The width search under an arena limit, on synthetic measurements (fast): each assignment's SQNR,
arena and accuracy come from a table drawn by hypothesis, not from a model, so that the search's
rules are checked on many more shapes of the trade-off than a model gives. The real measuring is
tests/test_arena_limit.py's and tests/test_mixed_precision.py's.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.tuning import auto_precision
from onnx2cmsis.tuning.auto_precision import choose_precision
from onnx2cmsis.tuning.width_search import PrecisionBudget
from onnx2cmsis.tuning.width_measure import Candidate


@dataclass
class _Node:
    op: str = "conv1d"
    attrs: dict = field(default_factory=dict)


class _Handler:
    activation_bits = (8, 16)


class _Registry:
    def for_op(self, op: str) -> _Handler:
        return _Handler()


@dataclass
class _Graph:
    nodes: list


@dataclass(frozen=True)
class Table:
    """Per layer: what int16 adds to the SQNR (dB) and to the arena (bytes) and how far it lowers the
    layer's share of misclassified samples; what the plan's peak holds (the int16 layer adding the
    most arena, else layer 0)."""

    gain_db: tuple[float, ...]
    extra_bytes: tuple[int, ...]
    flips: tuple[int, ...]

    def measure(self, bits: tuple[int, ...]) -> Candidate:
        wide = [b == 16 for b in bits]
        sqnr = 30.0 + sum(g for g, w in zip(self.gain_db, wide) if w)
        arena = 1000 + sum(e for e, w in zip(self.extra_bytes, wide) if w)
        wrong = sum(f for f, w in zip(self.flips, wide) if not w)
        peak = max((i for i, w in enumerate(wide) if w), key=lambda i: self.extra_bytes[i], default=0)
        return Candidate(list(bits), sqnr, arena, sum(bits), 0, 1.0 - wrong / 100, frozenset({peak}))


class _TableMeasure:
    def __init__(self, table: Table):
        self.table, self.measured = table, {}

    def __call__(self, bits: list[int]) -> Candidate:
        key = tuple(bits)
        if key not in self.measured:
            self.measured[key] = self.table.measure(key)
        return self.measured[key]


def _choose(monkeypatch, table: Table, budget: PrecisionBudget) -> tuple[object, _TableMeasure]:
    """choose_precision on the table's figures; and the measurements it made."""
    n = len(table.gain_db)
    measure = _TableMeasure(table)
    monkeypatch.setattr(auto_precision, "WidthMeasure", lambda *args, **kw: measure)
    monkeypatch.setattr(auto_precision, "leaders", lambda graph, registry: list(range(n)))
    monkeypatch.setattr(auto_precision, "apply_precision", lambda graph, bits: None)
    want = np.eye(2)[np.zeros(100, int)]  # the float model's classes: all 0, accuracy 1.0
    choice = choose_precision(_Graph([_Node() for _ in range(n)]), _Registry(), {}, np.zeros((100, 1)), want,
                              budget, api=None)
    return choice, measure


tables = st.integers(2, 5).flatmap(lambda n: st.builds(
    Table, st.tuples(*[st.floats(0.5, 15.0)] * n), st.tuples(*[st.integers(0, 800)] * n),
    st.tuples(*[st.integers(0, 6)] * n)))
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(table=tables, budget_share=st.floats(0.0, 1.0), slack=st.integers(0, 400))
def test_a_limit_the_budgets_choice_fits_changes_nothing(monkeypatch, table, budget_share, slack):
    """Whatever the budget chooses without a limit, a limit it fits leaves the choice as it was."""
    top = 30.0 + sum(table.gain_db)
    budget = 30.0 + budget_share * (top - 30.0)
    free, _ = _choose(monkeypatch, table, PrecisionBudget(min_sqnr_db=budget))
    limited, _ = _choose(monkeypatch, table, PrecisionBudget(min_sqnr_db=budget,
                                                             max_arena_bytes=free.chosen.arena_bytes + slack))
    assert limited.chosen.bits == free.chosen.bits


@FAST
@given(table=tables, limit_share=st.floats(0.0, 1.0), drop=st.integers(0, 10))
def test_under_a_limit_the_choice_fits_and_refuses_only_what_nothing_measured_meets(monkeypatch, table, limit_share,
                                                                                     drop):
    """An accuracy budget under a limit: the choice fits the limit and meets the budget; a refusal
    comes only where no assignment the search measured within the limit meets it."""
    limit = 1000 + int(limit_share * sum(table.extra_bytes))
    budget = PrecisionBudget(max_accuracy_drop=float(drop), labels=np.zeros(100, int), max_arena_bytes=limit)
    try:
        choice, _ = _choose(monkeypatch, table, budget)
    except ConversionError as exc:
        measured = auto_precision.WidthMeasure().measured  # the stand-in the refused search used
        fitting = [c for c in measured.values() if c.arena_bytes <= limit]
        assert fitting, "refused although all-int8 was measured"  # all-int8 fits: limit >= 1000
        assert all(100 * (1.0 - c.accuracy) > drop for c in fitting), str(exc)
        return
    assert choice.chosen.arena_bytes <= limit
    assert 100 * (1.0 - choice.chosen.accuracy) <= drop + 1e-9


@FAST
@given(table=tables, limit_share=st.floats(0.0, 1.0))
def test_a_limit_alone_gives_the_most_accurate_it_measured_within_it(monkeypatch, table, limit_share):
    """The limit alone: the choice fits, and no assignment the search measured within the limit scores
    higher (no held-out folds here: in-sample SQNR is the estimate)."""
    limit = 1000 + int(limit_share * sum(table.extra_bytes))
    choice, measure = _choose(monkeypatch, table, PrecisionBudget(max_arena_bytes=limit))
    assert choice.chosen.arena_bytes <= limit
    assert choice.chosen.sqnr_db == max(c.sqnr_db for c in measure.measured.values() if c.arena_bytes <= limit)


def test_a_limit_nothing_fits_is_refused_naming_all_int8s_arena(monkeypatch):
    table = Table((5.0, 5.0), (100, 100), (0, 0))
    with pytest.raises(ConversionError, match=r"no per-layer precision fits an arena of 999 B: .*\(all-int8 1,000 B"):
        _choose(monkeypatch, table, PrecisionBudget(max_arena_bytes=999))
