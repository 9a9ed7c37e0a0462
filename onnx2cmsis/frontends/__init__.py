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

from dataclasses import dataclass

from collections.abc import Callable
from importlib.metadata import EntryPoint, entry_points
from pathlib import Path

import onnx

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.frontends.keras import load_keras
from onnx2cmsis.frontends.onnx_model import load_onnx, normalize, read_onnx
from onnx2cmsis.frontends.tflite_lstm import cell_clips
from onnx2cmsis.frontends.qdq import split_qdq
from onnx2cmsis.frontends.tflite import load_tflite
from onnx2cmsis.ir.tensor import FileQuantization

Loader = Callable[[Path], onnx.ModelProto]
LOADERS: dict[str, Loader] = {
    ".onnx": load_onnx,
    ".h5": load_keras,
    ".hdf5": load_keras,
    ".keras": load_keras,
    ".tflite": load_tflite,
}
# the built-in formats a quantized model comes in, and what the report calls their quantization: read
# as they are, split (frontends/qdq.py), then normalized
RAW_READERS: dict[str, tuple[Loader, str]] = {".onnx": (read_onnx, "QDQ"), ".tflite": (load_tflite, "TFLite")}
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


@dataclass
class LoadedModel:
    """A model file as the importer takes it."""

    model: onnx.ModelProto  # static, batch 1, float (a quantized file's float graph between its pairs)
    file_quant: FileQuantization | None = None  # a quantized (QDQ) file's own quantization (frontends/qdq.py)
    file_model: onnx.ModelProto | None = None  # that file as read: what ONNX Runtime runs to check against


def load_model(path: Path, input_shape: tuple[int, ...] | None = None) -> onnx.ModelProto:
    """The static, batch-1, float ONNX of a model file (read_model's `model`)."""
    return read_model(path, input_shape).model


def read_model(path: Path, input_shape: tuple[int, ...] | None = None) -> LoadedModel:
    """`input_shape`: the input's shape without the batch, for a model whose time axis is dynamic. A
    quantized (QDQ) ONNX model, or a plugin's, is split into its float graph and its quantization
    before normalization (shape inference cannot see through ONNX Runtime's com.microsoft pairs)."""
    table = loaders()
    loader = table.get(path.suffix.lower())
    if loader is None:
        raise ConversionError(
            f"unknown model type '{path.suffix}' (supported: {', '.join(sorted(table))})", str(path)
        )
    if path.suffix.lower() in RAW_READERS and LOADERS.get(path.suffix.lower()) is loader:
        reader, source = RAW_READERS[path.suffix.lower()]
        return _split(reader(path), str(path), input_shape, source)
    if LOADERS.get(path.suffix.lower()) is loader:
        return LoadedModel(loader(path, input_shape))  # the built-in loaders normalize as they load
    model = loader(path)
    if not isinstance(model, onnx.ModelProto):
        raise ConversionError(f"the frontend plugin for '{path.suffix}' returned {type(model).__name__}, "
                              "not an onnx.ModelProto", str(path))
    return _split(model, str(path), input_shape)


def _split(model: onnx.ModelProto, where: str, input_shape: tuple[int, ...] | None,
           source: str = "QDQ") -> LoadedModel:
    if not model.graph.node:
        raise ConversionError("not an ONNX model (the graph has no nodes)", where)
    float_model, file_quant = split_qdq(model, where)
    if file_quant is not None:
        file_quant.source = source
        file_quant.cell_clips = cell_clips(model)
    return LoadedModel(normalize(float_model, where, input_shape), file_quant,
                       None if file_quant is None else model)
