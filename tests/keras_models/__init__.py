"""The Keras fixtures (made by make_models.py) and what tests need to know of them without Keras."""

from __future__ import annotations

import json
from pathlib import Path

FOLDER = Path(__file__).resolve().parent
FIXTURES = ("autoencoder", "conv_zoo", "dense_heads", "separable_residual")


def keras_fixtures() -> list[Path]:
    """The four Keras 3 fixture files, sorted; fails rather than let a loop over them pass empty."""
    paths = sorted(FOLDER.glob("*.h5"))
    assert [p.stem for p in paths] == list(FIXTURES), f"the Keras fixtures changed: {[p.name for p in paths]}"
    return paths


def model_config(path: Path) -> dict:
    """The .h5 file's model_config, read with h5py (neither Keras nor the code under test)."""
    import h5py

    with h5py.File(path, "r") as f:
        return json.loads(f.attrs["model_config"])


def input_window(path: Path) -> tuple[int, int]:
    """(steps, channels) of a one-input .h5 model, read from its config (no TensorFlow import)."""
    config = model_config(path)
    first = next(layer["config"] for layer in config["config"]["layers"] if layer["class_name"] == "InputLayer")
    steps, channels = (first.get("batch_shape") or first.get("batch_input_shape"))[1:]
    return int(steps), int(channels)
