"""The PyTorch-converted 1D cases that ship with the onnx wheel (opset 6, batch 2-4: upgraded to
opset 13 and batch 1 by the loader): int8 C output vs the expected float output within
quantization error, calibrated on the case's own inputs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from onnx2cmsis.api import convert
from onnx2cmsis.arith.rules import dequantize_tensor, quantize_tensor
from onnx2cmsis.targets.host import build_conversions

CASES = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "pytorch-converted"
SUPPORTED = ["Conv1d", "Conv1d_dilated", "Conv1d_pad1", "Conv1d_pad1size1", "Conv1d_pad2", "Conv1d_pad2size1",
             "Conv1d_stride", "LeakyReLU", "LeakyReLU_with_negval", "Linear", "MaxPool1d", "MaxPool1d_stride",
             "Softmax", "MaxPool1d_stride_padding_dilation", "AvgPool1d", "AvgPool1d_stride", "Linear_no_bias",
             "BatchNorm1d_3d_input_eval", "Conv1d_groups"]
def _case(name: str) -> tuple[Path, np.ndarray, np.ndarray]:
    d = CASES / f"test_{name}"
    x = numpy_helper.to_array(onnx.load_tensor(str(d / "test_data_set_0" / "input_0.pb")))
    y = numpy_helper.to_array(onnx.load_tensor(str(d / "test_data_set_0" / "output_0.pb")))
    return d / "model.onnx", x.astype(np.float32), y.astype(np.float32)


def test_supported_cases_match_expected_outputs(tmp_path):
    conversions, data = [], {}
    for i, name in enumerate(SUPPORTED):
        model, x, y = _case(name)
        conversions.append(convert(model, x, name=f"case{i}"))
        data[f"case{i}"] = (name, x, y)
    models = build_conversions(conversions, tmp_path)
    for conv in conversions:
        name, x, y = data[conv.name]
        q_in = conv.graph.tensors[conv.graph.inputs[0]].quant
        q_out = conv.graph.tensors[conv.graph.outputs[0]].quant
        got = []
        for sample in x:
            xq = quantize_tensor(sample, q_in).reshape(-1)
            out = models[conv.name](xq)
            assert np.array_equal(out, conv.reference(xq)), name
            got.append(dequantize_tensor(out, q_out))
        got = np.stack(got).reshape(y.shape)
        sqnr = 10 * np.log10(np.sum(y.astype(np.float64) ** 2) / np.sum((got - y).astype(np.float64) ** 2))
        print(f"{name}: {len(x)} samples bit-exact vs reference, SQNR {sqnr:.1f} dB vs expected")
        assert sqnr >= 30.0, f"{name}: SQNR {sqnr:.1f} dB"


def test_every_1d_case_in_the_suite_is_covered():
    # PReLU (a learned negative slope per channel) is not in the op set yet.
    one_d = {p.name[len("test_"):] for p in CASES.iterdir() if "1d" in p.name.lower() and "PReLU" not in p.name}
    assert len(one_d) >= 12
    assert one_d <= set(SUPPORTED), sorted(one_d - set(SUPPORTED))
