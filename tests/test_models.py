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
from onnx2cmsis.quant.calibrate import run_float
from onnx2cmsis.quant.rules import dequantize_tensor, quantize_tensor
from onnx2cmsis.targets.host import build_conversions

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vibration"
sys.path.insert(0, str(EXAMPLE))
from data import make_dataset  # noqa: E402

N_INPUTS = 500


def accuracy_figures(conv: Conversion, x_float: np.ndarray, outputs_int8: np.ndarray) -> dict:
    """int8 outputs vs the float model: SQNR, max error in LSBs, argmax agreement."""
    q_in = conv.graph.tensors[conv.graph.inputs[0]].quant
    q_out = conv.graph.tensors[conv.graph.outputs[0]].quant
    out_name = conv.model.graph.output[0].name
    ref = np.stack([r[out_name].reshape(-1) for r in run_float(conv.model, x_float)])
    got = dequantize_tensor(outputs_int8, q_out)
    err = got - ref
    sqnr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(np.sum(err.astype(np.float64) ** 2), 1e-30))
    return {
        "sqnr_db": float(sqnr),
        "max_err_lsb": float(np.max(np.abs(err)) / q_out.scale),
        "argmax_agreement": float(np.mean(got.argmax(1) == ref.argmax(1))),
        "quantized_inputs": np.stack([quantize_tensor(x, q_in).reshape(-1) for x in x_float]),
    }


def check_model(conv: Conversion, x_float: np.ndarray, workdir: Path) -> dict:
    model = build_conversions([conv], workdir)[conv.name]
    q_in = conv.graph.tensors[conv.graph.inputs[0]].quant
    xq = np.stack([quantize_tensor(x, q_in).reshape(-1) for x in x_float])
    c_out = np.stack([model(x) for x in xq])
    ref_out = np.stack([conv.reference(x) for x in xq])
    mismatches = int(np.sum(np.any(c_out != ref_out, axis=1)))
    assert mismatches == 0, f"{conv.name}: C differs from the reference on {mismatches}/{len(xq)} inputs"
    figures = accuracy_figures(conv, x_float, c_out)
    print(f"\n{conv.name}: {len(xq)} inputs bit-exact; SQNR {figures['sqnr_db']:.1f} dB, max error "
          f"{figures['max_err_lsb']:.1f} LSB, argmax agreement {figures['argmax_agreement']:.3f}")
    return {"c_out": c_out, "xq": xq, **figures}


def check_oracle(conv: Conversion, xq: np.ndarray, c_out: np.ndarray) -> None:
    pytest.importorskip("tflite_micro.python.tflite_micro.runtime")
    from onnx2cmsis.oracle.tflite_export import export_tflite, run_tflite_micro

    tflm = run_tflite_micro(export_tflite(conv.graph), xq)
    bad = int(np.sum(np.any(tflm != c_out, axis=1)))
    assert bad == 0, f"{conv.name}: tflite-micro differs on {bad}/{len(xq)} inputs"


@pytest.fixture(scope="module")
def example() -> tuple[Conversion, np.ndarray, np.ndarray]:
    conv = convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy")
    x, y = make_dataset(N_INPUTS, seed=3)  # not the training (1) or calibration data
    return conv, x, y


def test_example_is_bit_exact_and_accurate(example, tmp_path):
    conv, x, y = example
    r = check_model(conv, x, tmp_path)
    assert r["argmax_agreement"] >= 0.99
    assert r["sqnr_db"] >= 30.0
    q_out = conv.graph.tensors[conv.graph.outputs[0]].quant
    accuracy = np.mean(dequantize_tensor(r["c_out"], q_out).argmax(1) == y)
    assert accuracy >= 0.9, f"int8 accuracy {accuracy:.3f} on held-out data"


@pytest.mark.oracle
def test_example_matches_tflite_micro(example, tmp_path):
    conv, x, _ = example
    r = check_model(conv, x[:100], tmp_path)
    check_oracle(conv, r["xq"], r["c_out"])


# ------------------------------------------------------------------------ PyTorch exports


def _torch_models():
    torch = pytest.importorskip("torch")
    nn = torch.nn

    def regressor():  # ReLU6, padded strided max pool, strided dilated conv, linear output
        return nn.Sequential(
            nn.Conv1d(4, 8, 3, padding=1), nn.ReLU6(), nn.MaxPool1d(3, stride=2, padding=1),
            nn.Conv1d(8, 12, 5, stride=2, dilation=2, padding=3), nn.ReLU(), nn.Flatten(), nn.Linear(12 * 15, 6),
        ), (4, 64)

    def classifier():  # single channel, 'same' padding, softmax head
        return nn.Sequential(
            nn.Conv1d(1, 8, 7, padding=3), nn.ReLU(), nn.MaxPool1d(2), nn.Conv1d(8, 8, 5, padding="same"),
            nn.ReLU(), nn.Flatten(), nn.Linear(8 * 50, 10), nn.Softmax(dim=1),
        ), (1, 100)

    def strided():  # no bias, pointwise conv, ceil-mode pool
        return nn.Sequential(
            nn.Conv1d(6, 16, 5, stride=3, bias=False), nn.ReLU(), nn.Conv1d(16, 8, 1), nn.ReLU(),
            nn.MaxPool1d(2, ceil_mode=True), nn.Flatten(), nn.Linear(8 * 15, 3),
        ), (6, 90)

    def dense_output():  # a (N, C, W) output: the C returns it channel-major, like the model
        return nn.Sequential(nn.Conv1d(2, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 3, 1)), (2, 50)

    return {"regressor": (regressor, "dynamo"), "classifier": (classifier, "legacy13"),
            "strided": (strided, "legacy11"), "dense_output": (dense_output, "dynamo")}


EXPORTS = ["regressor", "classifier", "strided", "dense_output"]


def export_torch(name: str, folder: Path) -> tuple[Path, tuple[int, int]]:
    torch = pytest.importorskip("torch")
    factory, exporter = _torch_models()[name]
    torch.manual_seed(EXPORTS.index(name))
    model, shape = factory()
    model.eval()
    path = folder / f"{name}.onnx"
    example_input = (torch.randn(1, *shape),)
    if exporter == "dynamo":
        pytest.importorskip("onnxscript")
        torch.onnx.export(model, example_input, str(path), dynamo=True, external_data=False)
    else:
        opset = int(exporter[len("legacy"):])
        torch.onnx.export(model, example_input, str(path), dynamo=False, opset_version=opset)
    return path, shape


@pytest.mark.torch
@pytest.mark.parametrize("name", EXPORTS)
def test_pytorch_export(name, tmp_path):
    path, shape = export_torch(name, tmp_path)
    rng = np.random.default_rng(7)
    calib = rng.standard_normal((200, *shape)).astype(np.float32)
    x = rng.standard_normal((N_INPUTS, *shape)).astype(np.float32)
    conv = convert(path, calib, name=name)
    r = check_model(conv, x, tmp_path)
    assert r["sqnr_db"] >= 30.0
    check_oracle(conv, r["xq"][:100], r["c_out"][:100])
