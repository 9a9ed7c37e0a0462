"""What a width assignment scores on calibration samples its ranges did not see, and how far those
few samples vouch for it: the figures `--precision auto` holds an SQNR budget to (auto_precision.py)
and the recipe's folds produce (recipe.py's widths_heldout)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnx2cmsis.quant.accuracy import accuracy
from onnx2cmsis.tuning.search import sqnr_db

LOW_QUANTILE = 0.16  # the lower bound an SQNR budget is held to: about one standard deviation below
RESAMPLES = 400  # bootstrap resamples of the held-out samples (seeded: the same choice every run)


@dataclass(frozen=True)
class HeldoutFigures:
    """A width assignment's output on samples its ranges did not see (cross-validated)."""

    sqnr_db: float
    accuracy: float | None = None  # on the budget's labels, when it has them
    samples: int = 0
    low_sqnr_db: float | None = None  # the pooled SQNR's LOW_QUANTILE over resamples of these samples


def heldout_figures(got: np.ndarray | None, want: np.ndarray, labels: np.ndarray | None) -> HeldoutFigures:
    """The held-out outputs `got` (samples, values; None: a fold could not be quantized) against the
    float model's `want`: the pooled SQNR and how low it runs on other samples like these.

    A pooled SQNR from 32-64 samples is a noisy, optimistic figure: a few samples near a decision or
    beyond the ranges decide it, and on the held-out benchmark a random set of the calibration set's
    size from the test set scored typically 2-4 dB either side of the whole test set's figure (10th
    to 90th percentile; up to 8-14 dB), with a median up to 2.8 dB above it. The bootstrap over the
    held-out samples' own errors says how far these samples vouch for it: the figure a resample falls
    below with probability LOW_QUANTILE."""
    if got is None:
        return HeldoutFigures(-np.inf, None, len(want), -np.inf)
    noise = np.sum((got - want) ** 2, axis=1)
    signal = np.sum(want**2, axis=1)
    picks = np.random.default_rng(0).integers(0, len(want), size=(RESAMPLES, len(want)))
    resampled = 10 * np.log10(np.maximum(signal[picks].sum(axis=1), 1e-30) / np.maximum(noise[picks].sum(axis=1), 1e-30))
    return HeldoutFigures(sqnr_db(got, want), None if labels is None else accuracy(got, labels), len(want),
                          float(np.quantile(resampled, LOW_QUANTILE)))


# bits per node -> its held-out figures (tuning/recipe.py's widths_heldout; None: too few samples)
HeldoutCheck = Callable[[list[int]], HeldoutFigures]


def figure(h: HeldoutFigures, low: bool) -> float:
    """Its held-out SQNR, or (`low`) the bootstrap's lower bound where measured."""
    return h.low_sqnr_db if low and h.low_sqnr_db is not None else h.sqnr_db


def anchors(points: list[tuple[float, float]]) -> tuple[np.ndarray, np.ndarray] | None:
    """(in-sample SQNR, held-out figure) of the assignments checked -> the in-sample SQNRs, ascending,
    and the offsets between the two to interpolate (the mean where two share an in-sample SQNR); None
    where fewer than two distinct finite points remain."""
    offsets: dict[float, list[float]] = {}
    for inside, held in points:
        if np.isfinite(inside) and np.isfinite(held):
            offsets.setdefault(inside, []).append(inside - held)
    if len(offsets) < 2:
        return None
    xs = sorted(offsets)
    return np.array(xs), np.array([float(np.mean(offsets[x])) for x in xs])
