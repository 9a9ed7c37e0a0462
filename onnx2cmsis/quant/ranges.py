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

from onnx2cmsis.arith.rules import activation_quant

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
    q = activation_quant(lo, hi)
    low, high = (-128 - q.zero_point) * q.scale, (127 - q.zero_point) * q.scale
    v = h.centers
    outside = np.where(v < low, low - v, np.where(v > high, v - high, 0.0))
    inside = (v >= low) & (v <= high)
    return float(np.sum(h.counts * (outside**2 + inside * q.scale**2 / 12.0)))


def mse_range(h: ValueHistogram) -> tuple[float, float]:
    if h.hi <= h.lo:
        return h.lo, h.hi
    candidates = [(h.lo * a, h.hi * b) for a in _MSE_GRID for b in _MSE_GRID]
    errors = [quantization_mse(h, lo, hi) for lo, hi in candidates]
    return candidates[int(np.argmin(errors))]


RANGE_CHOOSERS: dict[str, Callable[[ValueHistogram], tuple[float, float]]] = {
    "percentile": percentile_range,
    "mse": mse_range,
}


def choose_ranges(histograms: dict[str, ValueHistogram], method: str) -> dict[str, tuple[float, float]]:
    choose = RANGE_CHOOSERS[method]
    return {v: choose(h) for v, h in histograms.items()}
