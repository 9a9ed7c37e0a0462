"""Range floors (tuning/search.py floor_ranges, OpHandler.input_floor): a softmax's input range starts
ten below the lowest row maximum the calibration samples give, not at their lowest value.

The model: a dense layer whose logits for two of four classes run far below the others on some
samples (a wide low tail no softmax output depends on) -> Softmax. Expected values come from numpy on
the model's own weights, not from the tool."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx2cmsis.api import convert
from onnx2cmsis.arith.rules import dequantize_tensor
from onnx2cmsis.drivers.evaluate import evaluate, quantize_inputs
from onnx2cmsis.ops.softmax import SOFTMAX_SPAN, SoftmaxHandler
from tests.onnx_models import make_model

FEATURES, CLASSES = 8, 4
RECIPE = {"calibration_method": "minmax", "dense_weights": "per-channel", "bias_correction": False,
          "weight_rounding": "nearest"}  # TFLite's: only the floor differs between the conversions compared


def _weights() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(29)
    w = rng.standard_normal((FEATURES, CLASSES)).astype(np.float32)
    w[0, 2:] = 12.0  # feature 0 spreads classes 2 and 3 over -32..-8: far below the others, always
    b = np.array([1.0, 0.5, -20.0, -22.0], np.float32)
    return w, b


def _model(path, bias: np.ndarray | None = None, outputs: tuple[str, ...] = ("y",)) -> None:
    """x -> Gemm (_weights, or `bias` instead of theirs) -> logits -> Softmax -> y; `outputs`: the
    values the model gives out."""
    w, b = _weights()
    b = b if bias is None else bias
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, FEATURES])
    given = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["logits"]), helper.make_node("Softmax", ["logits"], ["y"])]
    onnx.save(make_model(nodes, [x], given, [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]), path)


def _samples(seed: int, n: int) -> np.ndarray:
    """Bounded inputs: held-out logits stay inside the calibrated top, so what differs is the low end."""
    return np.random.default_rng(seed).uniform(-1.0, 1.0, (n, FEATURES)).astype(np.float32)


def _float(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """numpy's logits and softmax of the model."""
    w, b = _weights()
    logits = x.reshape(len(x), FEATURES).astype(np.float64) @ w + b
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return logits, e / e.sum(axis=1, keepdims=True)


def _logit_range(conv) -> tuple[float, float]:
    dense = next(n for n in conv.graph.nodes if n.op == "dense")
    q = conv.graph.tensors[dense.output].quant
    return (-128 - q.zero_point) * q.scale, (127 - q.zero_point) * q.scale


def _output_sqnr_db(conv, x: np.ndarray) -> float:
    got = dequantize_tensor(conv.references(quantize_inputs(conv, x)), conv.graph.tensors[conv.graph.outputs[0]].quant)
    want = _float(x)[1]
    return float(10 * np.log10(np.sum(want**2) / np.sum((got.reshape(want.shape) - want) ** 2)))


def test_the_softmax_floor_is_its_lowest_row_maximum_less_the_span():
    rows = np.array([[[1.0, 2.0, -50.0], [5.0, 0.0, -3.0]]])  # (samples, positions, classes)
    assert SoftmaxHandler().input_floor(None, rows) == pytest.approx(2.0 - SOFTMAX_SPAN)


def test_a_softmax_input_range_starts_ten_below_its_lowest_row_maximum(tmp_path):
    path = tmp_path / "classifier.onnx"
    _model(path)
    x = _samples(1, 48)
    logits, _ = _float(x)
    floor = logits.max(axis=1).min() - SOFTMAX_SPAN
    assert logits.min() < floor - 10  # the tail the floor cuts off is real

    floored = convert(path, x, name="floored", default_api=None, **RECIPE)
    plain = convert(path, x, name="plain", default_api=None, range_floors=False, **RECIPE)
    low, high = _logit_range(floored)
    step = (high - low) / 255
    assert abs(low - floor) <= step and high == pytest.approx(logits.max(), abs=step)
    plain_low, _ = _logit_range(plain)
    assert abs(plain_low - logits.min()) <= (high - plain_low) / 255  # min/max, as TFLite's converter
    entry = next(e for e in floored.report["layers"] if e["op"] == "dense")
    assert entry["range_floor"]["floor"] == pytest.approx(floor, abs=1e-3)
    assert entry["range_floor"]["lowest_seen"] == pytest.approx(logits.min(), abs=1e-3)
    assert "range_floor" not in next(e for e in plain.report["layers"] if e["op"] == "dense")

    # on samples calibration did not see, the codes the floor frees make the probabilities closer
    held_out = _samples(2, 400)
    assert _output_sqnr_db(floored, held_out) > _output_sqnr_db(plain, held_out) + 3.0

    # and the floored C is still bit-exact with the reference and with tflite-micro
    ev, _ = evaluate(floored, held_out[:64], tmp_path / "host")
    assert ev.mismatches_vs_reference == 0 and ev.mismatches_vs_tflite_micro == 0, ev


def test_no_floor_where_the_softmax_is_not_the_values_only_reader(tmp_path):
    """The logits are also a model output: their range serves that output too, and stays min/max."""
    path = tmp_path / "both.onnx"
    _model(path, outputs=("logits", "y"))
    samples = _samples(1, 48)
    conv = convert(path, samples, name="both", default_api=None, **RECIPE)
    assert not any("range_floor" in e for e in conv.report["layers"])
    logits, _ = _float(samples)
    low, high = _logit_range(conv)
    assert abs(low - logits.min()) <= (high - low) / 255


def test_the_command_line_turns_floors_off(tmp_path):
    from typer.testing import CliRunner

    from onnx2cmsis.cli import app

    path = tmp_path / "classifier.onnx"
    _model(path)
    np.save(tmp_path / "cal.npy", _samples(1, 48))
    runs = {}
    for flag in ("--range-floors", "--no-range-floors"):
        out = tmp_path / flag.strip("-")
        result = CliRunner().invoke(app, ["convert", str(path), "--calibration", str(tmp_path / "cal.npy"),
                                          "--out", str(out), "--calibration-method", "minmax", "--dense-weights",
                                          "per-channel", "--no-bias-correction", flag])
        assert result.exit_code == 0, result.output
        runs[flag] = json.loads((out / "classifier.json").read_text()), (out / "classifier.md").read_text()
    (floored, floored_page), (plain, plain_page) = runs.values()
    dense = [next(e for e in r["layers"] if e["op"] == "dense") for r in (floored, plain)]
    assert "range_floor" in dense[0] and "range_floor" not in dense[1]
    floor = dense[0]["range_floor"]
    assert f"{floor['floor']:.4g} (lowest seen {floor['lowest_seen']:.4g})" in floored_page  # NAME.md says it too
    assert "lowest seen" not in plain_page


def test_the_span_grows_with_the_classes_so_an_int8_row_total_moves_under_half_a_step():
    """N classes raised to the floor add up to N * exp(-span) to an int8 softmax's row total."""
    handler = SoftmaxHandler()
    for classes in (4, 43, 100, 1000):
        rows = np.zeros((1, 1, classes))
        rows[..., 0] = 3.0
        span = 3.0 - handler.input_floor(None, rows)
        assert span >= SOFTMAX_SPAN and classes * np.exp(-span) <= 1 / 512 + 1e-12


def _conv_softmax_model(path, pool: bool) -> tuple[np.ndarray, np.ndarray]:
    """x (1, 3, 32) -> Conv(6 channels, k3) -> [GlobalMaxPool ->] Softmax over the channels, each time
    step its own row: channels 4 and 5 run 30 below the others."""
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 3, 3)).astype(np.float32)
    b = np.array([1.0, 0.0, 0.5, -0.5, -30.0, -32.0], np.float32)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["maps"], kernel_shape=[3])]
    if pool:
        nodes += [helper.make_node("GlobalMaxPool", ["maps"], ["pooled"]),
                  helper.make_node("Flatten", ["pooled"], ["flat"]), helper.make_node("Softmax", ["flat"], ["y"])]
    else:
        nodes += [helper.make_node("Softmax", ["maps"], ["y"], axis=1)]
    onnx.save(make_model(nodes, [x], [y], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]), path)
    return w, b


def test_a_softmax_over_channels_at_every_time_step_floors_from_its_lowest_row(tmp_path):
    """The model value is (1, channels, steps) and the IR computes (steps, channels): the rows are the
    time steps. Expected from numpy's convolution of the samples."""
    path = tmp_path / "per_step.onnx"
    w, b = _conv_softmax_model(path, pool=False)
    x = np.random.default_rng(6).uniform(-1.0, 1.0, (40, 3, 32)).astype(np.float32)
    windows = np.lib.stride_tricks.sliding_window_view(x.astype(np.float64), 3, axis=2)  # (n, in, steps, k)
    maps = np.einsum("ncwk,ock->now", windows, w) + b[None, :, None]  # (n, channels, steps)
    floor = maps.max(axis=1).min() - SOFTMAX_SPAN  # over channels, at every step of every sample
    assert maps.min() < floor - 10
    conv = convert(path, x, name="per_step", default_api=None, **RECIPE)
    layer = next(n for n in conv.graph.nodes if n.op == "conv1d")
    q = conv.graph.tensors[layer.output].quant
    low, high = (-128 - q.zero_point) * q.scale, (127 - q.zero_point) * q.scale
    assert abs(low - floor) <= (high - low) / 255
    assert layer.attrs["range_floor"]["floor"] == pytest.approx(floor, abs=1e-3)


def test_no_floor_where_the_producer_keeps_its_inputs_quantization(tmp_path):
    """A global max pool writes in its input's quantization: a floor on its output would move nothing,
    so none is applied or reported (and the convolution before it is not the softmax's reader)."""
    path = tmp_path / "pooled.onnx"
    _conv_softmax_model(path, pool=True)
    x = np.random.default_rng(6).uniform(-1.0, 1.0, (40, 3, 32)).astype(np.float32)
    floored = convert(path, x, name="pooled", default_api=None, **RECIPE)
    plain = convert(path, x, name="pooled_plain", default_api=None, range_floors=False, **RECIPE)
    assert not any("range_floor" in e for e in floored.report["layers"])
    assert [floored.graph.tensors[t].quant for t in floored.graph.tensors if floored.graph.tensors[t].quant] == \
        [plain.graph.tensors[t].quant for t in plain.graph.tensors if plain.graph.tensors[t].quant]


def test_at_int16_the_symmetric_range_and_verify_layers_follow_the_floor(tmp_path):
    """int16 ranges are symmetric: the floor shrinks the logits' range to +-(their top) where the low
    tail was the larger end; verify --layers compares from the floor up, so the layer shows no loss
    below it (without that the tail reads as a saturated, low-SQNR layer)."""
    from onnx2cmsis.drivers.evaluate import layer_accuracy

    w, _ = _weights()
    b = np.array([8.0, 0.5, -20.0, -22.0], np.float32)
    path = tmp_path / "wide_top.onnx"
    _model(path, bias=b)
    samples = _samples(1, 48)
    logits = samples.astype(np.float64) @ w + b
    floor = logits.max(axis=1).min() - SOFTMAX_SPAN
    assert -floor < logits.max() < -logits.min()  # the top decides the symmetric range once floored
    conv = convert(path, samples, name="wide_top", default_api=None, precision="int16", **RECIPE)
    dense = next(n for n in conv.graph.nodes if n.op == "dense")
    q = conv.graph.tensors[dense.output].quant
    assert q.scale * 32767 == pytest.approx(logits.max(), rel=1e-3)  # +-top, not +-(the low tail)
    rows = {r.op: r for r in layer_accuracy(conv, samples)}
    assert rows["dense"].saturated == 0 and rows["dense"].sqnr_db > 40, rows["dense"]  # ~3 dB compared unfloored
