"""Samples of a model with one input or several.

A one-input model's samples are one array-like of shape (N, *input shape) (an ndarray or a
SampleFile) and a sample is one array, as always. A model with several inputs has `MultiSamples`:
one array-like per input, in the graph's input order, all N long; its sample i is a tuple with one
array per input. Everything that feeds a model (ONNX Runtime, the integer reference, the C) takes a
sample through `sample_inputs`, so both forms go the same way.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from onnx2cmsis.errors import ConversionError, count
from onnx2cmsis.data.sample_file import npz_arrays, open_samples

Sample = np.ndarray | tuple[np.ndarray, ...]


@dataclass(frozen=True)
class MultiSamples:
    """N samples of a model with several inputs: `parts[k]` holds input k's N arrays."""

    parts: tuple[Any, ...]

    def __len__(self) -> int:
        return len(self.parts[0])

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            return tuple(np.asarray(p[int(index)]) for p in self.parts)
        return MultiSamples(tuple(p[index] if isinstance(index, slice) else np.asarray(p)[index]
                                  for p in self.parts))

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        return zip(*self.parts)


def sample_inputs(sample: Sample) -> tuple[np.ndarray, ...]:
    """One sample as one array per model input."""
    return tuple(sample) if isinstance(sample, tuple) else (sample,)


def input_arrays(samples: Any) -> tuple[Any, ...]:
    """N samples as one (N, ...) array per model input: MultiSamples' parts, or the one array."""
    return samples.parts if isinstance(samples, MultiSamples) else (samples,)


def stacked(samples: Sequence[Sample], dtype=np.float32) -> np.ndarray | MultiSamples:
    """A list of samples as one array (one input) or MultiSamples (several)."""
    if samples and isinstance(samples[0], tuple):
        return MultiSamples(tuple(np.stack([np.asarray(s[k], dtype) for s in samples])
                                  for k in range(len(samples[0]))))
    return np.stack([np.asarray(s, dtype) for s in samples])


def as_samples(data: Any, names: list[str], where: str) -> np.ndarray | MultiSamples:
    """Samples given in memory: an array (one input), or for several inputs a list/tuple in input order,
    a dict by input name, or MultiSamples."""
    if isinstance(data, MultiSamples):
        parts = data.parts
    elif isinstance(data, dict):
        missing = [n for n in names if n not in data]
        if missing:
            raise ConversionError(f"the samples name no input {', '.join(map(repr, missing))} (the model's inputs: "
                                  f"{', '.join(map(repr, names))})", where)
        parts = tuple(data[n] for n in names)
    elif isinstance(data, (list, tuple)):
        parts = tuple(data)
    else:
        if len(names) > 1:
            raise ConversionError(f"the model has {len(names)} inputs ({', '.join(map(repr, names))}): give one "
                                  "array per input (a list, or a dict by input name)", where)
        return np.asarray(data)
    if len(names) == 1 and len(parts) == 1:
        return np.asarray(parts[0])
    if len(parts) != len(names):
        raise ConversionError(f"{count(len(parts), 'array')} for a model with {len(names)} inputs "
                              f"({', '.join(map(repr, names))})", where)
    return MultiSamples(tuple(parts))


def wrong_shape(what: str, got: tuple[int, ...], want: tuple[int, ...], where: str) -> ConversionError:
    """The error for samples of the wrong shape; names the usual slip, (N, W, C) samples for a (C, W)
    model or the other way round."""
    hint = (": each sample is the model's input transposed; give np.swapaxes(x, 1, 2)"
            if len(want) == 2 and tuple(got[1:]) == want[::-1] and want[0] != want[1] else "")
    return ConversionError(f"{what} has shape {tuple(got)}, expected (N, {', '.join(map(str, want))}){hint}", where)


def checked_samples(data: Any, input_shapes: list[tuple[int, ...]], names: list[str],
                    where: str, what: str = "calibration data") -> np.ndarray | MultiSamples:
    """Samples (as_samples' forms) shaped (N, *input shape without batch) for each input, N > 0 and the
    same for all."""
    samples = as_samples(data, names, where)
    parts = input_arrays(samples)
    for k, part in enumerate(parts):
        want = tuple(input_shapes[k][1:])
        if np.ndim(part) < 1 or tuple(np.shape(part)[1:]) != want or len(part) == 0:
            which = "" if len(parts) == 1 else f" for input '{names[k]}'"
            raise wrong_shape(f"{what}{which}", tuple(np.shape(part)), want, where)
    if len({len(p) for p in parts}) > 1:
        counts = ", ".join(f"{n}: {len(p)}" for n, p in zip(names, parts))
        raise ConversionError(f"{what} holds different numbers of samples per input ({counts})", where)
    return samples


def npz_input_arrays(path: Path, names: list[str]) -> list[str]:
    """Which arrays of a .npz hold the model's inputs, in input order: the arrays named after the inputs,
    else arr_0, arr_1, ... (np.savez's names for unnamed arrays, in numeric order: arr_10 after arr_9)."""
    found = npz_arrays(path)
    if all(n in found for n in names):
        return list(names)
    numbered = sorted((a for a in found if a.startswith("arr_") and a[4:].isdigit()), key=lambda a: int(a[4:]))
    if len(numbered) == len(names) == len(found) and numbered == [f"arr_{k}" for k in range(len(names))]:
        return numbered
    raise ConversionError(f"a model with {len(names)} inputs takes a .npz with one array per input, named after "
                          f"them ({', '.join(map(repr, names))}) or arr_0..arr_{len(names) - 1} in input order; this "
                          f"one holds {', '.join(map(repr, found)) or 'no array'}", str(path))


def open_input_samples(path: Path, names: list[str]) -> list[Any]:
    """One SampleFile per model input, from a .npz (npz_input_arrays); a .npy holds one input only."""
    if path.suffix.lower() != ".npz":
        raise ConversionError(f"a model with {len(names)} inputs ({', '.join(map(repr, names))}) takes a .npz "
                              "with one array per input, named after them", str(path))
    return [open_samples(path, a) for a in npz_input_arrays(path, names)]
