"""Model file -> a static, batch-1 onnx.ModelProto. One loader per file suffix."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import onnx

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.frontends.keras import load_keras
from onnx2cmsis.frontends.onnx_model import load_onnx

LOADERS: dict[str, Callable[[Path], onnx.ModelProto]] = {
    ".onnx": load_onnx,
    ".h5": load_keras,
    ".hdf5": load_keras,
    ".keras": load_keras,
}


def load_model(path: Path) -> onnx.ModelProto:
    loader = LOADERS.get(path.suffix.lower())
    if loader is None:
        raise ConversionError(
            f"unknown model type '{path.suffix}' (supported: {', '.join(sorted(LOADERS))})", str(path)
        )
    return loader(path)
