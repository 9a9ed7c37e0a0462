"""The window of an op that slides along time (a convolution, a depthwise convolution, a pool).

One type for all of them, held on the node as node.attrs["window"], so the shape rule, the references,
the kernel arguments, streaming and the TFLite export read the same numbers and a new windowed op
(a transposed or 2-D-written convolution) needs no copy of the arithmetic.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Window:
    """Output column j reads input columns j * stride - pad_left + k * dilation for k < kernel.

    pad_left/pad_right are the columns outside the input the windows reach: taps a kernel skips (a
    convolution's zeros, a pool's ignored taps). pad_right is what the last output column needs, so
    a pool whose model declares a ceil-mode width keeps that width (`out_width`)."""

    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    pad_left: int = 0
    pad_right: int = 0

    @property
    def span(self) -> int:
        """Input columns one output column's taps cover, first to last."""
        return (self.kernel - 1) * self.dilation + 1

    @property
    def pad(self) -> tuple[int, int]:
        return self.pad_left, self.pad_right

    @property
    def pointwise(self) -> bool:
        """One tap per column, no stride, no padding: output column j is input column j."""
        return self.kernel == 1 and self.stride == 1 and self.dilation == 1 and self.pad == (0, 0)

    def out_width(self, in_width: int) -> int:
        return (in_width + self.pad_left + self.pad_right - self.span) // self.stride + 1

    def right_pad_for(self, in_width: int, out_width: int) -> int:
        """The right padding `out_width` columns over `in_width` input columns reach (0 when the last
        window ends inside the input)."""
        return max(0, (out_width - 1) * self.stride + self.span - self.pad_left - in_width)

    def taps(self, out_width: int) -> np.ndarray:
        """(out_width, kernel) input column of every tap of every output column; negative or past the
        input's end where it falls in the padding."""
        starts = np.arange(out_width) * self.stride - self.pad_left
        return starts[:, None] + np.arange(self.kernel)[None, :] * self.dilation

    def sliced(self, pad_left: int, pad_right: int) -> Window:
        """The same window over another input with these paddings around it: a slice of a stream's
        columns, or an input a Pad has already padded (then (0, 0))."""
        return replace(self, pad_left=pad_left, pad_right=pad_right)

    def padded(self, left: int, right: int) -> Window:
        """The window over the input before `left`/`right` more zero columns were added to it."""
        return replace(self, pad_left=self.pad_left + left, pad_right=self.pad_right + right)
