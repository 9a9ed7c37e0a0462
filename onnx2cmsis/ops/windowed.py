"""What the handlers of ops that slide a window along time (convolutions, pools) share, written once
against node.attrs["window"] (ir/window.py): streaming's geometry and slices, and absorbing a
preceding zero padding. A new windowed op subclasses WindowedOp and inherits them."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ir.window import Window
from onnx2cmsis.ops.base import OpHandler, TimeGeometry


def window_of(node: Node) -> Window:
    return node.attrs["window"]


class WindowedOp(OpHandler):
    """A handler whose nodes carry their window in node.attrs["window"]."""

    def time_geometry(self, node: Node, graph: Graph) -> TimeGeometry | None:
        w = window_of(node)
        return TimeGeometry(w.kernel, w.stride, w.dilation, w.pad_left)

    def time_slice(self, node: Node, pad_left: int, pad_right: int, out_w: int) -> Node:
        return replace(node, attrs={**node.attrs, "window": window_of(node).sliced(pad_left, pad_right)})

    def absorb_zero_pad(self, node: Node, left: int, right: int) -> None:
        node.attrs["window"] = window_of(node).padded(left, right)


def window_columns(x: np.ndarray, window: Window, out_width: int) -> np.ndarray:
    """(N, W, C) -> (N, out_width, kernel, C): the input column under every tap of every output
    column, zero where the tap falls in the padding (the caller has offset x so that zero is what a
    skipped tap adds)."""
    right = window.right_pad_for(x.shape[1], out_width)
    padded = np.pad(x, ((0, 0), (window.pad_left, right), (0, 0)))
    return padded[:, window.taps(out_width) + window.pad_left]
