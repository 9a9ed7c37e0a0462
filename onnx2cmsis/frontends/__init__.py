"""Model file -> a static, batch-1 onnx.ModelProto. One loader per file suffix.

Built-in loaders are listed here; other packages add suffixes through the entry-point group
`onnx2cmsis.frontends` (name = the suffix, e.g. ".tflite"; value = a `module:function` taking a
Path and returning an onnx.ModelProto). A plugin cannot replace a built-in suffix. Whatever a
plugin returns goes through the built-in loaders' normalization (opset upgrade, canonical node
order, batch fixed to 1, shape inference), so a plugin may return a dynamic-batch model.
"""

from __future__ import annotations

import functools
import sys

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import onnx

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.frontends.keras import load_keras
from onnx2cmsis.frontends.onnx_model import load_onnx, normalize

Loader = Callable[[Path], onnx.ModelProto]
LOADERS: dict[str, Loader] = {
    ".onnx": load_onnx,
    ".h5": load_keras,
    ".hdf5": load_keras,
    ".keras": load_keras,
}
ENTRY_POINT_GROUP = "onnx2cmsis.frontends"


@functools.lru_cache(maxsize=4)
def installed_plugins(search_path: tuple[str, ...]) -> tuple[EntryPoint, ...]:
    """The group's entry points, by name, as installed on this sys.path: read once per path, since
    scanning every installed distribution took a third of a small model's conversion."""
    return tuple(sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name))


def loaders() -> dict[str, Loader]:
    """Built-in loaders plus installed frontend plugins (a fresh table on every call)."""
    table = dict(LOADERS)
    for ep in installed_plugins(tuple(sys.path)):
        suffix = ep.name.lower() if ep.name.startswith(".") else f".{ep.name.lower()}"
        if suffix in table:
            continue  # built-ins win; the plugin's other suffixes still load
        try:
            table[suffix] = ep.load()
        except Exception as exc:
            raise ConversionError(f"frontend plugin '{ep.name}' ({ep.value}) cannot be loaded: {exc}") from exc
    return table


def load_model(path: Path, input_shape: tuple[int, ...] | None = None) -> onnx.ModelProto:
    """`input_shape`: the input's shape without the batch, for a model whose time axis is dynamic."""
    table = loaders()
    loader = table.get(path.suffix.lower())
    if loader is None:
        raise ConversionError(
            f"unknown model type '{path.suffix}' (supported: {', '.join(sorted(table))})", str(path)
        )
    if LOADERS.get(path.suffix.lower()) is loader:
        return loader(path, input_shape)  # the built-in loaders normalize as they load
    model = loader(path)
    if not isinstance(model, onnx.ModelProto):
        raise ConversionError(f"the frontend plugin for '{path.suffix}' returned {type(model).__name__}, "
                              "not an onnx.ModelProto", str(path))
    return normalize(model, str(path), input_shape)
