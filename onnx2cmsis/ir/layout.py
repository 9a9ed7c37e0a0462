"""Where each element of a model value lives in the bytes of an IR tensor.

Exporters wrap 1D layers in data movement: tf2onnx brackets every Conv1D with Unsqueeze/Transpose/
Squeeze, spells UpSampling1D as Unsqueeze/Tile/Transpose/Reshape (or Split + Concat), Flatten as
Transpose + Reshape. Rather than pattern-match each spelling, the importer runs every movement op on
an *index array* (numpy applies the same op to element positions that ONNX applies to data): a
model value is then bound to an IR tensor plus, for each of its elements, the byte that holds it.

When a compute op needs a value in a layout of its choosing (e.g. time-major (W, C) for a conv),
`gather_map` says which source byte feeds each destination byte and `classify` turns that map into
the cheapest exact IR op: the tensor itself, a view, a transpose, a nearest upsampling, a crop
along time, or (for anything else) a general gather through an index table.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from itertools import permutations

import numpy as np


@dataclass(frozen=True)
class Binding:
    tensor: str  # the IR tensor that holds the value's elements
    index: np.ndarray  # same shape as the model value (batch included): byte offset in `tensor`


def arrangement(full_shape: tuple[int, ...], axes: tuple[int, ...]) -> tuple[tuple[int, ...], np.ndarray]:
    """Physical shape and index array of a value stored with its axes in `axes` order (outer first).

    `axes` indexes the full shape (batch included) and must list every axis longer than 1; unit axes
    it omits are dropped from the physical shape."""
    missing = [a for a, n in enumerate(full_shape) if n > 1 and a not in axes]
    if missing or len(set(axes)) != len(axes):
        raise ValueError(f"axes {axes} do not cover the non-unit axes of {full_shape}")
    order = list(axes) + [a for a in range(len(full_shape)) if a not in axes]
    physical = tuple(full_shape[a] for a in axes) or (1,)
    stored = np.arange(int(np.prod(full_shape, dtype=np.int64)), dtype=np.int64)
    index = stored.reshape([full_shape[a] for a in order]).transpose(np.argsort(order))
    return physical, index


def gather_map(binding: Binding, axes: tuple[int, ...]) -> tuple[tuple[int, ...], np.ndarray]:
    """Destination physical shape for `axes`, and the source byte of every destination byte."""
    shape = binding.index.shape
    physical, _ = arrangement(shape, axes)
    order = list(axes) + [a for a in range(len(shape)) if a not in axes]
    return physical, binding.index.transpose(order).reshape(-1)


def layout_of(binding: Binding, src_shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The axes order (batch excluded) in which the binding is stored, when it is a plain
    arrangement of its tensor; one that reproduces the tensor's own shape is preferred."""
    shape = binding.index.shape
    if binding.index.size != int(np.prod(src_shape)):
        return None
    non_unit = [a for a, n in enumerate(shape) if n > 1]
    candidates = [p for p in permutations(range(1, len(shape)), len(src_shape)) if set(non_unit) <= set(p)]
    for perm in candidates + list(permutations(non_unit)):
        physical, index = arrangement(shape, perm)
        if np.array_equal(index, binding.index) and (physical == src_shape or perm in permutations(non_unit)):
            return perm
    return None


class MovementKind(Enum):
    """What producing a destination layout from a source tensor takes, cheapest first (the importer
    picks the IR op for each)."""

    SAME = "the tensor itself"
    VIEW = "the same bytes under another shape"
    TRANSPOSE = "a 2-D transpose"
    UPSAMPLE = "each time step repeated `factor` times"
    CROP = "`width` consecutive time steps from `start`"
    GATHER = "any other byte map: an index table"


@dataclass(frozen=True)
class Movement:
    kind: MovementKind
    attrs: dict


def classify(src_shape: tuple[int, ...], dst_shape: tuple[int, ...], src_of: np.ndarray) -> Movement:
    n_src, n_dst = int(np.prod(src_shape)), int(np.prod(dst_shape))
    ident = np.arange(n_src, dtype=np.int64)
    if n_src == n_dst and np.array_equal(src_of, ident):
        return Movement(MovementKind.SAME if src_shape == dst_shape else MovementKind.VIEW, {})
    if len(src_shape) == 2 and n_src == n_dst:
        if np.array_equal(src_of, ident.reshape(src_shape).T.reshape(-1)):
            return Movement(MovementKind.TRANSPOSE, {})
    if len(src_shape) == 2 and len(dst_shape) == 2 and src_shape[1] == dst_shape[1]:
        w, c = src_shape
        w2 = dst_shape[0]
        steps = np.arange(w2)
        if w2 % w == 0 and np.array_equal(src_of, ((steps // (w2 // w))[:, None] * c + np.arange(c)).reshape(-1)):
            return Movement(MovementKind.UPSAMPLE, {"factor": w2 // w})
        start = int(src_of[0]) // c if src_of.size else 0
        if w2 < w and np.array_equal(src_of, ((start + steps)[:, None] * c + np.arange(c)).reshape(-1)):
            return Movement(MovementKind.CROP, {"start": start, "width": w2})
    if len(src_shape) == 2 and len(dst_shape) == 1 and n_dst % src_shape[1] == 0 and n_dst < n_src:
        c = src_shape[1]  # whole time steps read as a vector (an LSTM's last step): a crop, then a view
        start = int(src_of[0]) // c
        if int(src_of[0]) % c == 0 and np.array_equal(src_of, start * c + np.arange(n_dst)):
            return Movement(MovementKind.CROP, {"start": start, "width": n_dst // c})
    return Movement(MovementKind.GATHER, {})
