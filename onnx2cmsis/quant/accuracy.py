"""Class accuracy of a model's outputs against labels: what `--precision auto` with labels budgets
and what `verify --labels` reports, decided one way for both."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnx2cmsis.errors import ConversionError


def predicted_classes(outputs: np.ndarray) -> np.ndarray:
    """(N, F) outputs -> (N,) classes: the largest output; a single output is a probability of class 1
    (a sigmoid head), so class 1 from 0.5 up."""
    outputs = np.asarray(outputs).reshape(len(outputs), -1)
    if outputs.shape[1] == 1:
        return (outputs[:, 0] >= 0.5).astype(np.int64)
    return outputs.argmax(axis=1)


def class_labels(labels: np.ndarray, samples: int, where: str | None = None) -> np.ndarray:
    """One class per sample, as (N,) integers: accepts (N,), (N, 1) and one-hot (N, F)."""
    labels = np.asarray(labels)
    if len(labels) != samples:
        raise ConversionError(f"{len(labels)} labels for {samples} samples", where)
    if labels.ndim == 2 and labels.shape[1] > 1:
        return labels.argmax(axis=1)
    flat = labels.reshape(samples)
    if not np.all(np.isfinite(flat)) or not np.array_equal(flat, np.round(flat)):
        raise ConversionError("labels must be class numbers (integers), one per sample", where)
    return flat.astype(np.int64)


def accuracy(outputs: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(predicted_classes(outputs) == labels))


def load_labels(labels: np.ndarray | str | Path, samples: int, what: str = "labels") -> np.ndarray:
    """class_labels of an array, or of a .npy file (a missing or unreadable one named as `what`)."""
    if not isinstance(labels, (str, Path)):
        return class_labels(np.asarray(labels), samples, what)
    path = Path(labels)
    if not path.is_file():
        raise ConversionError(f"{what} file not found", str(path))
    try:
        values = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ConversionError(f"not a .npy of labels ({' '.join(str(exc).split())})", str(path)) from None
    return class_labels(values, samples, str(path))
