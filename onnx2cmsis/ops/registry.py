"""The op-handler table: the built-in handlers listed explicitly, plus plugins.

Nothing registers itself on import. `build_registry()` makes a fresh table each time, so a
conversion's handlers are exactly the ones this file lists plus the plugins asked for: installed
packages through the entry-point group `onnx2cmsis.ops`, and `--plugin module:Class` ad hoc. A
plugin that claims an op a built-in handles is refused unless overriding is asked for explicitly.
"""

from __future__ import annotations

import functools
import sys

from dataclasses import dataclass, field
import importlib
from importlib.metadata import EntryPoint, entry_points

from onnx2cmsis.errors import ConversionError, UnsupportedOpError
from onnx2cmsis.ops.add import AddHandler
from onnx2cmsis.ops.base import OpHandler
from onnx2cmsis.ops.binary_const import BinaryConstHandler
from onnx2cmsis.ops.concat import ConcatHandler
from onnx2cmsis.ops.conv import Conv1DHandler
from onnx2cmsis.ops.conv_transpose import ConvTranspose1DHandler
from onnx2cmsis.ops.dense import DenseHandler
from onnx2cmsis.ops.depthwise import DepthwiseConv1DHandler
from onnx2cmsis.ops.elementwise import AffineHandler, ClipHandler
from onnx2cmsis.ops.gru import GruHandler
from onnx2cmsis.ops.lstm import LstmHandler
from onnx2cmsis.ops.layout import Pad1DHandler, ReshapeHandler, TransposeHandler
from onnx2cmsis.ops.mean import Mean1DHandler
from onnx2cmsis.ops.movement import GatherHandler, MovementHandler, Slice1DHandler
from onnx2cmsis.ops.pool import AvgPool1DHandler, MaxPool1DHandler
from onnx2cmsis.ops.requantize import RequantizeHandler
from onnx2cmsis.ops.resize import Upsample1DHandler
from onnx2cmsis.ops.softmax import SoftmaxHandler
from onnx2cmsis.ops.table import LookupTableHandler

BUILTIN_HANDLERS: tuple[type[OpHandler], ...] = (
    Conv1DHandler,
    ConvTranspose1DHandler,
    DepthwiseConv1DHandler,
    MaxPool1DHandler,
    AvgPool1DHandler,
    Mean1DHandler,
    DenseHandler,
    SoftmaxHandler,
    LookupTableHandler,
    RequantizeHandler,
    ClipHandler,
    AffineHandler,
    AddHandler,
    BinaryConstHandler,
    ReshapeHandler,
    TransposeHandler,
    Pad1DHandler,
    Upsample1DHandler,
    ConcatHandler,
    MovementHandler,
    Slice1DHandler,
    GatherHandler,
    LstmHandler,
    GruHandler,
)

ENTRY_POINT_GROUP = "onnx2cmsis.ops"


@dataclass
class Registry:
    by_op: dict[str, OpHandler] = field(default_factory=dict)
    by_onnx_op: dict[str, OpHandler] = field(default_factory=dict)

    def add(self, handler: OpHandler, allow_override: bool = False) -> None:
        clash = [k for k in handler.onnx_ops if k in self.by_onnx_op] + ([handler.op] if handler.op in self.by_op else [])
        if clash and not allow_override:
            raise ConversionError(f"plugin handler {handler_name(handler)} would override {sorted(set(clash))}")
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


def handler_name(handler: OpHandler) -> str:
    cls = type(handler)
    return f"{cls.__module__}:{cls.__qualname__}"


def load_plugin(spec: str) -> OpHandler:
    """`package.module:Class` -> a handler instance; one clear line when that is not possible."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConversionError(f"{{opt:plugins}} {spec!r}: expected module:Class")
    try:
        cls = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConversionError(f"{{opt:plugins}} {spec!r}: cannot import it ({exc})") from exc
    handler = cls() if isinstance(cls, type) else cls
    if not isinstance(handler, OpHandler):
        raise ConversionError(f"{{opt:plugins}} {spec!r}: {attr} is not an onnx2cmsis.ops.base.OpHandler")
    return handler


@functools.lru_cache(maxsize=4)
def installed_plugins(search_path: tuple[str, ...]) -> tuple[EntryPoint, ...]:
    """The group's entry points, by name, as installed on this sys.path: read once per path, since
    scanning every installed distribution took a third of a small model's conversion."""
    return tuple(sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name))


def build_registry(plugins: bool = True, extra: tuple[str, ...] = (), allow_override: bool = False) -> Registry:
    """Built-ins, then installed plugins (entry points), then `extra` (module:Class specs)."""
    reg = Registry()
    for cls in BUILTIN_HANDLERS:
        reg.add(cls())
    found: list[OpHandler] = []
    if plugins:
        for ep in installed_plugins(tuple(sys.path)):
            try:
                found.append(load_plugin(ep.value))
            except ConversionError as exc:
                raise ConversionError(f"installed plugin '{ep.name}': {exc}") from exc
    found += [load_plugin(spec) for spec in extra]
    for handler in found:
        try:
            reg.add(handler, allow_override=allow_override)
        except ConversionError as exc:
            raise ConversionError(f"{exc.message}; {{opt:allow_override}} lets plugins replace built-in handlers") from exc
    return reg
