"""The wheel carries the templates: build it, install it in a clean venv, convert from there."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_and_converts_in_a_clean_venv(tmp_path):
    dist = tmp_path / "dist"
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", str(dist),
                        str(ROOT)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    wheel = next(dist.glob("onnx2cmsis-*.whl"))
    import zipfile

    names = zipfile.ZipFile(wheel).namelist()
    assert "onnx2cmsis/templates/model.c.j2" in names and "onnx2cmsis/templates/ops/conv1d.c.j2" in names
    assert "onnx2cmsis/targets/cortex_m/runner.c" in names and "onnx2cmsis/targets/cortex_m/mps3-an547.ld" in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    r = subprocess.run([str(py), "-m", "pip", "install", "--quiet", str(wheel)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    out = tmp_path / "out"
    out.mkdir()
    example = ROOT / "examples" / "vibration"
    # run from an unrelated folder so nothing of the source checkout can be imported
    r = subprocess.run([str(env_dir / "bin" / "onnx2cmsis"), "convert", str(example / "vibration_cnn.onnx"),
                        "--calibration", str(example / "calibration.npy"), "--out", str(out)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (out / "vibration_cnn.c").read_text().count("arm_convolve_s8(") == 3
    r = subprocess.run([str(py), "-c", "import onnx2cmsis, sys; print(onnx2cmsis.__file__)"], capture_output=True,
                       text=True, cwd=tmp_path)
    assert str(env_dir) in r.stdout
