"""The one window of convolutions and pools (ir/window.py): the widths, paddings and slices every
windowed handler, the stream plan and the TFLite export read from it agree with each other."""

from __future__ import annotations

import itertools

import numpy as np

from onnx2cmsis.ir.window import Window


def _windows():
    for k, s, d, pl in itertools.product((1, 2, 3, 5), (1, 2, 3), (1, 2), (0, 1, 2)):
        yield Window(k, s, d, pl)


def test_right_pad_gives_back_the_declared_width():
    """A pool keeps its model's width (ceil mode included) through the right padding it reaches."""
    for w, w_in in itertools.product(_windows(), (7, 8, 16)):
        floor = w.out_width(w_in)
        for out_w in (floor, floor + 1):  # floor and ceil mode
            if out_w < 1:
                continue
            full = Window(w.kernel, w.stride, w.dilation, w.pad_left, w.right_pad_for(w_in, out_w))
            assert full.out_width(w_in) == out_w
            assert full.taps(out_w).max() < w_in + full.pad_right


def test_a_slice_computes_exactly_its_columns():
    """What a stream region gives a slice: the paddings around the input columns its outputs read."""
    for w, w_in in itertools.product(_windows(), (9, 16)):
        w_out = w.out_width(w_in)
        for j0, j1 in ((0, 1), (0, w_out), (w_out - 1, w_out), (1, min(3, w_out))):
            if not 0 <= j0 < j1 <= w_out:
                continue
            first, end = j0 * w.stride - w.pad_left, (j1 - 1) * w.stride - w.pad_left + w.span
            r0, r1 = max(first, 0), min(end, w_in)
            if r1 <= r0:
                continue
            part = w.sliced(r0 - first, end - r1)
            assert part.out_width(r1 - r0) == j1 - j0
            np.testing.assert_array_equal(part.taps(j1 - j0) + r0, w.taps(w_out)[j0:j1])


def test_absorbing_a_pad_adds_its_columns():
    assert Window(3, 1, 2, 1, 0).padded(2, 1) == Window(3, 1, 2, 3, 1)
    assert Window().pointwise and not Window(pad_right=1).pointwise and Window(5).span == 5
