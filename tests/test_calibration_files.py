"""Calibration files: read a block at a time, any size, same values as numpy's own loader."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.data import sample_file
from onnx2cmsis.quant.calibrate import load_calibration

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vibration"


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int16, np.uint8])
@pytest.mark.parametrize("container", ["npy", "npz", "npz_compressed"])
def test_blocks_slices_and_samples_equal_numpy(tmp_path, monkeypatch, dtype, container):
    monkeypatch.setattr(sample_file, "BLOCK_BYTES", 1000)  # many blocks, a partial last one
    x = (np.random.default_rng(1).standard_normal((37, 3, 11)) * 50).astype(dtype)
    path = tmp_path / f"c.{container[:3]}"
    {"npy": lambda: np.save(path, x), "npz": lambda: np.savez(path, x),
     "npz_compressed": lambda: np.savez_compressed(path, x)}[container]()
    s = load_calibration(path, [(1, 3, 11)], ["x"])
    assert len(s) == 37 and s.shape == x.shape and s.dtype == x.dtype
    assert np.array_equal(np.stack(list(s)), x)
    assert np.array_equal(np.concatenate(list(s.blocks())), x)
    assert np.array_equal(s[5:30:4], x[5:30:4]) and np.array_equal(s[-1], x[-1])
    assert np.array_equal(np.asarray(s, np.float32), x.astype(np.float32))


def test_single_sample_and_batch_axis_are_accepted(tmp_path):
    x = np.arange(33, dtype=np.float32).reshape(3, 11)
    np.save(tmp_path / "one.npy", x)
    np.save(tmp_path / "batched.npy", np.stack([x, x + 1])[:, None])
    assert np.array_equal(np.asarray(load_calibration(tmp_path / "one.npy", [(1, 3, 11)], ["x"])), x[None])
    assert load_calibration(tmp_path / "batched.npy", [(1, 3, 11)], ["x"]).shape == (2, 3, 11)


def test_truncated_and_fortran_files_are_refused(tmp_path):
    np.save(tmp_path / "t.npy", np.zeros((10, 3, 11), np.float32))
    data = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-7])
    with pytest.raises(ConversionError, match="truncated: its header promises 10 samples"):
        load_calibration(tmp_path / "t.npy", [(1, 3, 11)], ["x"])
    np.save(tmp_path / "f.npy", np.asfortranarray(np.zeros((10, 3, 11), np.float32)))
    with pytest.raises(ConversionError, match="Fortran order"):
        load_calibration(tmp_path / "f.npy", [(1, 3, 11)], ["x"])


def _run_measured(args: list[str]) -> tuple[int, int, str]:
    """(exit status, peak resident set in KiB, stderr) of one CLI run."""
    proc = subprocess.Popen([sys.executable, "-m", "onnx2cmsis.cli", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    _, status, usage = os.wait4(proc.pid, 0)
    err = proc.stderr.read().decode()
    proc.stderr.close()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, usage.ru_maxrss, err


@pytest.mark.slow
def test_100k_sample_calibration_streams_in_bounded_memory(tmp_path):
    """10^5 samples of the example's (3, 128) input: a 154 MB file. The conversion's peak memory
    stays within a few MiB of the same conversion with 256 samples."""
    big = tmp_path / "big.npy"
    rng = np.random.default_rng(0)
    out = np.lib.format.open_memmap(big, mode="w+", dtype=np.float32, shape=(100_000, 3, 128))
    for start in range(0, 100_000, 10_000):
        out[start:start + 10_000] = rng.standard_normal((10_000, 3, 128), dtype=np.float32)
    out.flush()
    del out
    small_out, big_out = tmp_path / "small", tmp_path / "big"
    small_out.mkdir(), big_out.mkdir()
    peaks = {}
    for calib, folder in ((EXAMPLE / "calibration.npy", small_out), (big, big_out)):
        code, peak, err = _run_measured(["convert", str(EXAMPLE / "vibration_cnn.onnx"), "-c", str(calib),
                                         "--out", str(folder)])
        assert code == 0, err
        peaks[folder.name] = peak
    report = json.loads((big_out / "vibration_cnn.json").read_text())
    assert report["calibration_samples"] == 100_000
    file_kib = big.stat().st_size // 1024
    assert peaks["big"] - peaks["small"] < 32 * 1024 < file_kib, (peaks, file_kib)
