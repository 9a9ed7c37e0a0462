"""The op-handler table: the built-in handlers listed explicitly, plus plugins from entry points.

Nothing registers itself on import. `build_registry()` makes a fresh table each time, so a
conversion's handlers are exactly the ones this file lists plus the plugins asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib.metadata import entry_points

from onnx2cmsis.errors import ConversionError, UnsupportedOpError
from onnx2cmsis.ops.add import AddHandler
from onnx2cmsis.ops.base import OpHandler
from onnx2cmsis.ops.concat import ConcatHandler
from onnx2cmsis.ops.conv import Conv1DHandler
from onnx2cmsis.ops.dense import DenseHandler
from onnx2cmsis.ops.depthwise import DepthwiseConv1DHandler
from onnx2cmsis.ops.elementwise import AffineHandler, ClipHandler
from onnx2cmsis.ops.layout import Pad1DHandler, ReshapeHandler, TransposeHandler
from onnx2cmsis.ops.movement import GatherHandler, MovementHandler, Slice1DHandler
from onnx2cmsis.ops.pool import AvgPool1DHandler, MaxPool1DHandler
from onnx2cmsis.ops.resize import Upsample1DHandler
from onnx2cmsis.ops.softmax import SoftmaxHandler
from onnx2cmsis.ops.table import LookupTableHandler

BUILTIN_HANDLERS: tuple[type[OpHandler], ...] = (
    Conv1DHandler,
    DepthwiseConv1DHandler,
    MaxPool1DHandler,
    AvgPool1DHandler,
    DenseHandler,
    SoftmaxHandler,
    LookupTableHandler,
    ClipHandler,
    AffineHandler,
    AddHandler,
    ReshapeHandler,
    TransposeHandler,
    Pad1DHandler,
    Upsample1DHandler,
    ConcatHandler,
    MovementHandler,
    Slice1DHandler,
    GatherHandler,
)

ENTRY_POINT_GROUP = "onnx2cmsis.ops"


@dataclass
class Registry:
    by_op: dict[str, OpHandler] = field(default_factory=dict)
    by_onnx_op: dict[str, OpHandler] = field(default_factory=dict)

    def add(self, handler: OpHandler, allow_override: bool = False) -> None:
        clash = [k for k in handler.onnx_ops if k in self.by_onnx_op] + ([handler.op] if handler.op in self.by_op else [])
        if clash and not allow_override:
            raise ConversionError(f"handler {type(handler).__name__} would override {sorted(set(clash))}")
        self.by_op[handler.op] = handler
        for onnx_op in handler.onnx_ops:
            self.by_onnx_op[onnx_op] = handler

    def for_op(self, op: str) -> OpHandler:
        return self.by_op[op]

    def for_onnx(self, op_type: str, where: str) -> OpHandler:
        handler = self.by_onnx_op.get(op_type)
        if handler is None:
            raise UnsupportedOpError(
                f"operator {op_type} is not supported (supported: {', '.join(sorted(self.by_onnx_op))})", where
            )
        return handler


def build_registry(plugins: bool = True) -> Registry:
    reg = Registry()
    for cls in BUILTIN_HANDLERS:
        reg.add(cls())
    if plugins:
        for ep in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            reg.add(ep.load()())
    return reg
