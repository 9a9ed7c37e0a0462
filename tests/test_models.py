"""Whole models: the bundled example and PyTorch exports (dynamo and legacy exporters).

Each: generated C == integer reference on every input, reference == tflite-micro, and int8 vs the
float model in ONNX Runtime: SQNR >= 30 dB (max error in output LSBs is printed), argmax agreement
>= 99% for the trained example.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from onnx2cmsis.api import Conversion, convert
from onnx2cmsis.drivers.evaluate import Evaluation, evaluate
from onnx2cmsis.arith.rules import dequantize_tensor
from tests.needs import module
from tests.torch_models import EXPORTS, export_torch

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vibration"
sys.path.insert(0, str(EXAMPLE))
from data import make_dataset  # noqa: E402

N_INPUTS = 500


def check_model(
    conv: Conversion, x_float: np.ndarray, workdir: Path, oracle_samples: int = 100
) -> tuple[Evaluation, np.ndarray]:
    """C == reference on every input; tflite-micro == C on the first `oracle_samples`.

    The [verify] extra is part of the test set-up: the oracle never skips silently."""
    ev, c_out = evaluate(conv, x_float, workdir, oracle_samples=oracle_samples)
    assert ev.mismatches_vs_reference == 0, f"{conv.name}: C differs from the reference on {ev.mismatches_vs_reference}"
    assert ev.mismatches_vs_tflite_micro == 0, f"{conv.name}: tflite-micro differs on {ev.mismatches_vs_tflite_micro}"
    print(f"\n{conv.name}: {ev.samples} inputs bit-exact; SQNR {ev.sqnr_db:.1f} dB, max error "
          f"{ev.max_error_lsb:.1f} LSB, argmax agreement {ev.argmax_agreement:.3f}")
    return ev, c_out


@pytest.fixture(scope="module")
def example() -> tuple[Conversion, np.ndarray, np.ndarray]:
    conv = convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy")
    x, y = make_dataset(N_INPUTS, seed=3)  # not the training (1) or calibration data
    return conv, x, y


def test_example_is_bit_exact_and_accurate(example, tmp_path):
    conv, x, y = example
    ev, c_out = check_model(conv, x, tmp_path)
    assert ev.argmax_agreement >= 0.99
    assert ev.sqnr_db >= 30.0
    q_out = conv.graph.tensors[conv.graph.outputs[0]].quant
    accuracy = np.mean(dequantize_tensor(c_out, q_out).argmax(1) == y)
    assert accuracy >= 0.9, f"int8 accuracy {accuracy:.3f} on held-out data"


# ------------------------------------------------------------------------ PyTorch exports


@pytest.mark.torch
@pytest.mark.parametrize("name", EXPORTS)
def test_pytorch_export(name, tmp_path):
    module("torch", 'pip install -e ".[test]"')
    path, shape = export_torch(name, tmp_path)
    rng = np.random.default_rng(7)
    calib = rng.standard_normal((200, *shape)).astype(np.float32)
    x = rng.standard_normal((N_INPUTS, *shape)).astype(np.float32)
    conv = convert(path, calib, name=name)
    ev, _ = check_model(conv, x, tmp_path)
    assert ev.sqnr_db >= 30.0
