"""Sample arrays (.npy, .npz) read from disk a block at a time.

A calibration set can be far larger than what a conversion should hold in memory: ordinary reads
of one block at a time keep the process's memory flat, where a memory map would fault the whole
file into the resident set as it is walked. A .npz member is decompressed once into an anonymous
temporary file and then read the same way.
"""

from __future__ import annotations

import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np

from onnx2cmsis.errors import ConversionError

BLOCK_BYTES = 4 << 20  # one read: 4 MiB of samples (at least one sample)


class SampleFile:
    """N samples of one shape, in a C-ordered .npy payload at `offset` in `stream`.

    Behaves like a read-only (N, *sample_shape) array for len(), slicing by sample, iteration (one
    sample at a time) and np.asarray (which does read everything)."""

    def __init__(self, stream: IO[bytes], offset: int, count: int, sample_shape: tuple[int, ...],
                 dtype: np.dtype, where: str) -> None:
        self._stream, self._offset = stream, offset
        self.shape = (count, *sample_shape)
        self.dtype = dtype
        self.where = where
        self._sample_bytes = int(np.prod(sample_shape, dtype=np.int64)) * dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def _read(self, start: int, stop: int) -> np.ndarray:
        n = max(0, stop - start)
        self._stream.seek(self._offset + start * self._sample_bytes)
        raw = self._stream.read(n * self._sample_bytes)
        if len(raw) != n * self._sample_bytes:
            raise ConversionError(f"the file ends inside sample {start + len(raw) // max(1, self._sample_bytes)}",
                                  self.where)
        return np.frombuffer(raw, self.dtype).reshape(n, *self.shape[1:])

    def __getitem__(self, index):
        if isinstance(index, slice):
            start, stop, step = index.indices(len(self))
            block = self._read(start, stop)
            return block if step == 1 else block[::step]
        if isinstance(index, (int, np.integer)):
            i = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(index)
            return self._read(i, i + 1)[0]
        return np.asarray(self)[index]

    def reshaped(self, sample_shape: tuple[int, ...]) -> SampleFile:
        """The same bytes as (N', *sample_shape); the caller has checked the element counts agree."""
        total = len(self) * self._sample_bytes // self.dtype.itemsize
        n = total // max(1, int(np.prod(sample_shape, dtype=np.int64)))
        return SampleFile(self._stream, self._offset, n, sample_shape, self.dtype, self.where)

    def blocks(self) -> Iterator[np.ndarray]:
        per_block = max(1, BLOCK_BYTES // max(1, self._sample_bytes))
        for start in range(0, len(self), per_block):
            yield self._read(start, min(len(self), start + per_block))

    def __iter__(self) -> Iterator[np.ndarray]:
        for block in self.blocks():
            yield from block

    def __array__(self, dtype=None, copy=None) -> np.ndarray:
        data = self._read(0, len(self))
        return data if dtype is None else data.astype(dtype)


def npz_arrays(path: Path) -> list[str]:
    """The names of the arrays in a .npz, in the order they were saved ("arr_0", ... for unnamed ones)."""
    try:
        with zipfile.ZipFile(path) as zf:
            return [n.removesuffix(".npy") for n in zf.namelist() if n.endswith(".npy")]
    except (OSError, zipfile.BadZipFile) as exc:
        raise ConversionError(f"not a readable .npz ({str(exc).splitlines()[0][:120]})", str(path)) from exc


def open_samples(path: Path, array: str | None = None) -> SampleFile:
    """An array of a .npy/.npz (the .npz's first, or the one named `array`), as a SampleFile of shape
    (N, ...) (N = its first axis)."""
    where = str(path) if array is None else f"{path}[{array}]"
    try:
        if path.suffix.lower() == ".npz":
            stream = _npz_member(path, where, array)
        else:
            stream = open(path, "rb")  # noqa: SIM115 - owned by the SampleFile for its lifetime
        version = np.lib.format.read_magic(stream)
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            raise ConversionError(f"not a readable .npy/.npz array (format version {version[0]}.{version[1]}; "
                                  "1.0 and 2.0 are read)", where)
        shape, fortran_order, dtype = read_header(stream)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"not a readable .npy/.npz array ({str(exc).splitlines()[0][:120]})", where) from exc
    if dtype.hasobject or dtype.kind not in "fiu":
        raise ConversionError(f"calibration data has dtype {dtype}, expected a numeric array", where)
    if not shape:
        raise ConversionError("the array is a scalar, expected samples", where)
    if fortran_order and len(shape) > 1:
        raise ConversionError("the array is stored in Fortran order; save it with np.save(np.ascontiguousarray(x))",
                              where)
    samples = SampleFile(stream, stream.tell(), int(shape[0]), tuple(int(d) for d in shape[1:]), dtype, where)
    stream.seek(0, 2)
    if stream.tell() < samples._offset + len(samples) * samples._sample_bytes:
        raise ConversionError(f"the file is truncated: its header promises {len(samples)} samples", where)
    return samples


def _npz_member(path: Path, where: str, array: str | None) -> IO[bytes]:
    with zipfile.ZipFile(path) as zf:
        members = [n for n in zf.namelist() if n.endswith(".npy")]
        if not members:
            raise ConversionError("the .npz holds no array", where)
        member = members[0] if array is None else f"{array}.npy"
        if member not in members:
            raise ConversionError("the .npz holds no such array", where)
        spooled = tempfile.TemporaryFile()  # anonymous: gone when closed or when the process ends
        with zf.open(member) as src:
            shutil.copyfileobj(src, spooled, 1 << 20)
    spooled.seek(0)
    return spooled
