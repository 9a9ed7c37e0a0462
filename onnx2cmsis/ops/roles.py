"""What a node is to the graph passes, whatever op it is: the roles `OpHandler.role` may declare.

A pass rewrites a node by what it does, never by its op's name: a clamp a producer can take as its
fused activation, a per-channel affine a producer can fold into its constants, a zero padding a
convolution can take as its own, a requantize a free producer can write directly, a 2-D byte
transpose that may cancel, become a view or fold into a dense layer's weight order. A plugin op
declaring a role takes part in the same rewrites as the built-in op that declares it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Clamp:
    """y = min(max(x, lo), hi) in real values (None: unbounded on that side)."""

    lo: float | None
    hi: float | None


@dataclass(frozen=True, eq=False)
class ChannelAffine:
    """y = x * scale[c] + shift[c] along the last (channel) axis."""

    scale: np.ndarray
    shift: np.ndarray


@dataclass(frozen=True)
class ZeroPad:
    """Zero padding along time: `left` and `right` columns of real 0.0."""

    left: int
    right: int


@dataclass(frozen=True)
class Requantize:
    """The input's real values in the output tensor's own quantization."""


@dataclass(frozen=True)
class Transpose:
    """The 2-D byte transpose (a, b) -> (b, a)."""


Role = Clamp | ChannelAffine | ZeroPad | Requantize | Transpose
