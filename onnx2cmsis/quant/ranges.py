"""Range selection: which float interval each calibrated value is quantized over.

`minmax` takes the extremes seen on the calibration set (TFLite's converter does the same). The
extremes of sensor data are often a few spikes, and a range stretched to hold them spends the 256
levels on values that almost never occur. The other methods read a histogram of each value (a second
pass over the calibration samples, so memory stays one histogram per value) and clip:

- `percentile`: the range that holds all but 1e-4 of the values at each end;
- `mse`: the range that minimises the expected squared quantization error of the value (rounding
  noise of step^2/12 inside, the distance to the edge outside), searched over both ends.

Exactness is unaffected (the C, the reference and the oracle all run the chosen scales); what
changes is how close the int8 model stays to the float one, which benchmarks/accuracy.py measures.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from onnx2cmsis.arith.rules import round_half_away

CALIBRATION_METHODS = ("minmax", "percentile", "mse", "output")  # output: tuning/search.py
HISTOGRAM_BINS = 2048
PERCENTILE_TAIL = 1e-4
_MSE_GRID = np.geomspace(0.01, 1.0, 48)  # each end tried at these fractions of its extreme


@dataclass
class ValueHistogram:
    """Counts of one value's samples in HISTOGRAM_BINS equal bins over [lo, hi]."""

    lo: float
    hi: float
    counts: np.ndarray

    @property
    def centers(self) -> np.ndarray:
        edges = np.linspace(self.lo, self.hi, len(self.counts) + 1)
        return (edges[:-1] + edges[1:]) / 2

    def add(self, values: np.ndarray) -> None:
        if self.hi > self.lo:
            counts, _ = np.histogram(values, bins=len(self.counts), range=(self.lo, self.hi))
            self.counts += counts
        else:
            self.counts[0] += values.size


def new_histograms(ranges: dict[str, tuple[float, float]]) -> dict[str, ValueHistogram]:
    return {v: ValueHistogram(lo, hi, np.zeros(HISTOGRAM_BINS, np.int64)) for v, (lo, hi) in ranges.items()}


def percentile_range(h: ValueHistogram, tail: float = PERCENTILE_TAIL) -> tuple[float, float]:
    cumulative = np.cumsum(h.counts) / max(int(h.counts.sum()), 1)
    edges = np.linspace(h.lo, h.hi, len(h.counts) + 1)
    lo = edges[int(np.searchsorted(cumulative, tail, side="right"))]
    hi = edges[min(int(np.searchsorted(cumulative, 1.0 - tail, side="left")) + 1, len(h.counts))]
    return float(min(lo, h.hi)), float(max(hi, lo))


def quantization_mse(h: ValueHistogram, lo: float, hi: float) -> float:
    """Expected squared error of quantizing the histogram's values over [lo, hi] (after the widening to
    contain 0 that activation_quant applies)."""
    return float(_quantization_mses(h.counts, h.centers, np.array([lo]), np.array([hi]))[0])


def _grid_quant(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """activation_quant's scale, and the float edges of its int8 range, for many ranges at once (the
    same float64 steps, its f32 scale included, so the numbers are the same)."""
    lo, hi = np.minimum(lo, 0.0), np.maximum(hi, 0.0)
    hi = np.where(hi - lo < 1e-6, lo + 1.0, hi)
    scale = ((hi - lo) / 255.0).astype(np.float32).astype(np.float64)
    zero_point = np.clip(round_half_away(-128 - lo / scale), -128, 127)
    return scale, (-128 - zero_point) * scale, (127 - zero_point) * scale


def _quantization_mses(counts: np.ndarray, centers: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """quantization_mse for several ranges, term by term as it is defined."""
    scale, low, high = _grid_quant(lo, hi)
    low, high, v = low[:, None], high[:, None], centers[None, :]
    outside = np.where(v < low, low - v, np.where(v > high, v - high, 0.0))
    inside = (v >= low) & (v <= high)
    return np.sum(counts * (outside**2 + inside * (scale**2 / 12.0)[:, None]), axis=1)


def _approximate_mses(h: ValueHistogram, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """quantization_mse for many ranges from prefix sums of the histogram's moments (a few operations
    per range instead of one per bin; equal up to rounding, in units of the histogram's width)."""
    centers = h.centers
    mid, width = (h.lo + h.hi) / 2, h.hi - h.lo
    u = (centers - mid) / width
    c = h.counts.astype(np.float64)
    count, first, second = (np.concatenate([[0.0], np.cumsum(t)]) for t in (c, c * u, c * u * u))
    scale, low, high = _grid_quant(lo, hi)
    i = np.searchsorted(centers, low, side="left")  # bins [0, i) lie below the range
    j = np.searchsorted(centers, high, side="right")  # bins [j, n) above it
    ul, uh = (low - mid) / width, (high - mid) / width
    below = ul**2 * count[i] - 2 * ul * first[i] + second[i]
    above = (second[-1] - second[j]) - 2 * uh * (first[-1] - first[j]) + uh**2 * (count[-1] - count[j])
    return width**2 * np.maximum(below + above, 0.0) + scale**2 / 12.0 * (count[j] - count[i])


_EXACT_CHECKS = 8  # the best candidates by the prefix sums, compared term by term


def mse_range(h: ValueHistogram) -> tuple[float, float]:
    if h.hi <= h.lo:
        return h.lo, h.hi
    lo = np.repeat(h.lo * _MSE_GRID, len(_MSE_GRID))
    hi = np.tile(h.hi * _MSE_GRID, len(_MSE_GRID))
    # 2304 candidates by prefix sums, then the few best exactly: the range an exhaustive term-by-term
    # search picks (the first of equal errors), at a fraction of its time
    top = np.argsort(_approximate_mses(h, lo, hi), kind="stable")[:_EXACT_CHECKS]
    exact = _quantization_mses(h.counts, h.centers, lo[top], hi[top])
    best = min(range(len(top)), key=lambda k: (exact[k], top[k]))
    return float(lo[top[best]]), float(hi[top[best]])


RANGE_CHOOSERS: dict[str, Callable[[ValueHistogram], tuple[float, float]]] = {
    "percentile": percentile_range,
    "mse": mse_range,
}


def choose_ranges(histograms: dict[str, ValueHistogram], method: str) -> dict[str, tuple[float, float]]:
    choose = RANGE_CHOOSERS[method]
    return {v: choose(h) for v, h in histograms.items()}
