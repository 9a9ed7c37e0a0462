"""examples/firmware: the bundled Keras example built as firmware from the generated NAME.mk and
NAME.cmake (exactly the CMSIS-NN files they list, nothing else) and run on QEMU's Cortex-M4 board."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.needs import build_tool, cross_compiler, level_7_tree, module, qemu_tools

ROOT = Path(__file__).resolve().parents[1]
FIRMWARE = ROOT / "examples" / "firmware"
KERAS_EXAMPLE = ROOT / "examples" / "vibration_keras"
EXPECT = "class 2 (misalignment), expected 2"  # sample.h's window, as the float model classifies it

pytestmark = [pytest.mark.slow, pytest.mark.qemu]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """README's first command, into a temporary folder: no tree given, so level 7 and the source list
    shipped for it (the suite's own CMSIS_NN_PATH is not the user's)."""
    module("keras", 'pip install -e ".[keras]"')
    out = tmp_path_factory.mktemp("out")
    r = subprocess.run([sys.executable, "-m", "onnx2cmsis.cli", "convert", str(KERAS_EXAMPLE / "vibration_cnn.h5"),
                        "--calibration", str(KERAS_EXAMPLE / "calibration.npy"), "--out", str(out)],
                       capture_output=True, text=True, env={**_env(), "CMSIS_NN_PATH": ""})
    assert r.returncode == 0, r.stderr
    return out


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_make_builds_and_runs_it(model_dir, tmp_path):
    make = build_tool("make")
    cross_compiler(), qemu_tools()
    args = [make, "-C", str(FIRMWARE), f"MODEL_DIR={model_dir}", f"BUILD={tmp_path}", f"PYTHON={sys.executable}",
            f"CMSIS_NN_PATH={level_7_tree()}"]
    r = subprocess.run([*args, "run"], capture_output=True, text=True, env=_env())
    assert r.returncode == 0 and EXPECT in r.stderr, r.stdout + r.stderr  # QEMU's semihosting console
    r = subprocess.run([*args, "count"], capture_output=True, text=True, env=_env())
    found = re.search(r"instructions: (\d+)", r.stdout)
    assert r.returncode == 0 and found, r.stdout + r.stderr
    assert 50_000 < int(found.group(1)) < 2_000_000  # verify measures the same model at ~0.23 M on M4


def test_cmake_builds_and_runs_it(model_dir, tmp_path):
    cmake = build_tool("cmake")
    cross_compiler(), qemu_tools()
    build = tmp_path / "build"
    configure = subprocess.run(
        [cmake, "-S", str(FIRMWARE), "-B", str(build), "-DCMAKE_TOOLCHAIN_FILE=arm-none-eabi.cmake",
         f"-DCMSIS_NN_PATH={level_7_tree()}", f"-DMODEL_DIR={model_dir}", "-DCMAKE_BUILD_TYPE=Release"],
        capture_output=True, text=True, env=_env())
    assert configure.returncode == 0, configure.stdout + configure.stderr
    r = subprocess.run([cmake, "--build", str(build), "--target", "run"], capture_output=True, text=True, env=_env())
    assert r.returncode == 0 and EXPECT in r.stdout + r.stderr, r.stdout + r.stderr


def test_build_files_without_cmsis_nn_path_say_what_to_set(model_dir, tmp_path):
    make = build_tool("make")
    r = subprocess.run([make, "-C", str(FIRMWARE), f"MODEL_DIR={model_dir}", f"BUILD={tmp_path}"],
                       capture_output=True, text=True, env={k: v for k, v in _env().items() if k != "CMSIS_NN_PATH"})
    assert r.returncode != 0 and "set CMSIS_NN_PATH to a CMSIS-NN tree of API level 7" in r.stderr


def test_the_onnx_example_in_its_place_stops_with_the_command_that_fixes_it(tmp_path):
    """Both examples are named vibration_cnn: the PyTorch one converted into the firmware's model folder
    (README's snippet once wrote it over the Keras one in out/) must stop the build with a message
    that says what to run, not only what is wrong."""
    make = build_tool("make")
    cross_compiler()
    out = tmp_path / "out"
    onnx_example = ROOT / "examples" / "vibration"
    r = subprocess.run([sys.executable, "-m", "onnx2cmsis.cli", "convert", str(onnx_example / "vibration_cnn.onnx"),
                        "--calibration", str(onnx_example / "calibration.npy"), "--out", str(out), "-q"],
                       capture_output=True, text=True, env={**_env(), "CMSIS_NN_PATH": ""})
    assert r.returncode == 0, r.stderr
    r = subprocess.run([make, "-C", str(FIRMWARE), f"MODEL_DIR={out}", f"BUILD={tmp_path / 'build'}",
                        f"PYTHON={sys.executable}", f"CMSIS_NN_PATH={level_7_tree()}"],
                       capture_output=True, text=True, env=_env())
    assert r.returncode != 0, r.stdout
    assert ("run onnx2cmsis convert examples/vibration_keras/vibration_cnn.h5 --calibration "
            "examples/vibration_keras/calibration.npy --out out") in r.stderr, r.stderr[-2000:]
