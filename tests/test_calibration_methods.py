"""Range selection (quant/ranges.py) and the choices measured on the output (tuning/search.py)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx2cmsis.api import convert, front_end
from onnx2cmsis.ops.registry import build_registry
from onnx2cmsis.tuning.recipe import Recipe, fitted
from tests.onnx_models import gemm_model
from onnx2cmsis.quant.calibrate import run_float
from onnx2cmsis.quant.ranges import (
    HISTOGRAM_BINS,
    ValueHistogram,
    mse_range,
    percentile_range,
    quantization_mse,
)
from onnx2cmsis.arith.rules import activation_quant, dequantize_tensor, quantize_tensor


def histogram_of(values: np.ndarray) -> ValueHistogram:
    h = ValueHistogram(float(values.min()), float(values.max()), np.zeros(HISTOGRAM_BINS, np.int64))
    h.add(values)
    return h


def test_percentile_range_matches_numpy_quantiles():
    values = np.random.default_rng(0).standard_normal(200_000)
    lo, hi = percentile_range(histogram_of(values), 1e-3)
    bin_width = (values.max() - values.min()) / HISTOGRAM_BINS
    assert abs(lo - np.quantile(values, 1e-3)) <= 1.5 * bin_width
    assert abs(hi - np.quantile(values, 1 - 1e-3)) <= 1.5 * bin_width


def test_expected_error_agrees_with_quantizing_the_samples():
    values = np.random.default_rng(1).laplace(0.5, 1.0, 100_000).astype(np.float32)
    for lo, hi in ((values.min(), values.max()), (-2.0, 3.0), (-0.5, 1.0)):
        q = activation_quant(float(lo), float(hi))
        measured = np.mean((dequantize_tensor(quantize_tensor(values, q), q) - values) ** 2)
        estimate = quantization_mse(histogram_of(values), float(lo), float(hi)) / values.size
        assert estimate == pytest.approx(measured, rel=0.1)


def test_mse_range_finds_the_known_laplace_optimum():
    """For Laplace(0, b) data and 8 bits the MSE-optimal clip is about 9.89 b (Banner et al., ACIQ,
    2019): well inside the extremes of a million samples (about 14 b)."""
    values = np.random.default_rng(2).laplace(0.0, 1.0, 1_000_000)
    lo, hi = mse_range(histogram_of(values))
    assert 8.5 < hi < 11.0 and -11.0 < lo < -8.5


@pytest.mark.parametrize("kind", ["normal", "relu", "heavy_tail", "tiny_negative", "offset"])
def test_mse_range_is_the_exhaustive_searchs_choice(kind):
    """mse_range ranks the grid by prefix sums and checks the best few term by term: it must pick
    what scoring every candidate term by term picks (the first of equal errors)."""
    rng = np.random.default_rng(len(kind))
    values = {"normal": rng.standard_normal(20_000), "relu": np.maximum(rng.laplace(size=20_000), 0),
              "heavy_tail": rng.standard_t(3, 20_000) * 7 + 3, "tiny_negative": -np.abs(rng.standard_normal(20_000)) * 1e-3,
              "offset": rng.standard_normal(20_000) * 0.01 + 2e4}[kind]
    h = histogram_of(values)
    grid = np.geomspace(0.01, 1.0, 48)
    candidates = [(h.lo * a, h.hi * b) for a in grid for b in grid]
    errors = [quantization_mse(h, lo, hi) for lo, hi in candidates]
    assert mse_range(h) == candidates[int(np.argmin(errors))]


@pytest.mark.parametrize("row_gain, expect", [(100.0, "per-channel"), (1.0, "per-tensor")])
def test_auto_dense_weights_take_per_channel_only_where_it_measures_better(tmp_path, row_gain, expect):
    """One output feature with 100x larger weights: per tensor, the others get a few int8 levels;
    per channel fixes it. With all rows alike the scales are the same and per-tensor stays. (The
    search itself, as the recipe (minmax, auto, no bias correction) runs it: tuning/recipe.py.)"""
    rng = np.random.default_rng(3)
    w = np.sign(rng.standard_normal((24, 6))).astype(np.float32) * rng.uniform(0.5, 1.0, (24, 6)).astype(np.float32)
    w[:, 0] *= row_gain
    path = tmp_path / "dense.onnx"
    onnx.save(gemm_model(w), path)
    calib = rng.standard_normal((64, 24)).astype(np.float32)
    registry = build_registry(plugins=False)
    model, graph, _ = front_end(path, registry)
    g = fitted(model, graph, registry, Recipe("minmax", "auto", False), calib)
    assert [n.attrs.get("weights") or g.quant_options.weights_of(n) for n in g.nodes if n.op == "dense"] == [expect]


def _conv_model(rng: np.random.Generator) -> onnx.ModelProto:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 48])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 5)) * 0.4).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal(8) * 0.1).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((4, 8, 3)) * 0.3).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal(4) * 0.1).astype(np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[2, 2]),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["y"], pads=[1, 1])]
    model = helper.make_model(helper.make_graph(nodes, "conv", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _held_out_sqnr(conv, x: np.ndarray) -> float:
    q_in = conv.graph.tensors[conv.graph.inputs[0]].quant
    q_out = conv.graph.tensors[conv.graph.outputs[0]].quant
    got = np.stack([dequantize_tensor(conv.reference(quantize_tensor(s, q_in).reshape(-1)), q_out).reshape(-1)
                    for s in x]).astype(np.float64)
    want = np.stack([r["y"].reshape(-1) for r in run_float(conv.model, x)]).astype(np.float64)
    return float(10 * np.log10(np.sum(want**2) / np.sum((got - want) ** 2)))


def test_percentile_beats_minmax_when_calibration_holds_spikes(tmp_path):
    """Two impact spikes in the calibration data: min/max spends the input's 256 levels on them;
    percentile clipping leaves them to saturate and the (spike-free) held-out data comes out more
    accurate. (MSE keeps them: two values of 40 outweigh the rounding noise of 18k others.)"""
    method = "percentile"
    rng = np.random.default_rng(4)
    path = tmp_path / "conv.onnx"
    onnx.save(_conv_model(rng), path)
    calib = rng.standard_normal((128, 3, 48)).astype(np.float32)
    calib[3, 0, 10], calib[70, 2, 5] = 40.0, -35.0
    held_out = rng.standard_normal((64, 3, 48)).astype(np.float32)
    base = _held_out_sqnr(convert(path, calib, calibration_method="minmax"), held_out)
    better = convert(path, calib, calibration_method=method)
    assert better.report["quantization"]["calibration_method"] == method
    assert _held_out_sqnr(better, held_out) > base + 3.0


def test_output_method_carries_over_to_held_out_data(tmp_path):
    """The output search only keeps what helps both halves of the calibration samples; on held-out
    samples from the same (spiky) process it must not do worse than min/max."""
    rng = np.random.default_rng(6)
    path = tmp_path / "conv.onnx"
    onnx.save(_conv_model(rng), path)

    def spiky(n: int) -> np.ndarray:
        x = rng.standard_normal((n, 3, 48)).astype(np.float32)
        x[rng.random(x.shape) < 1e-4] = 30.0
        return x

    calib, held_out = spiky(128), spiky(256)
    base = _held_out_sqnr(convert(path, calib, calibration_method="minmax"), held_out)
    searched = convert(path, calib, calibration_method="output")
    search = searched.report["quantization"]["search"]
    assert search["final_sqnr_db"] >= search["start_sqnr_db"]
    assert _held_out_sqnr(searched, held_out) >= base - 0.1


def test_unknown_method_is_named(tmp_path):
    path = tmp_path / "conv.onnx"
    onnx.save(_conv_model(np.random.default_rng(5)), path)
    with pytest.raises(Exception, match="'kl' is not one of minmax, percentile, mse, output"):
        convert(path, np.zeros((4, 3, 48), np.float32), calibration_method="kl")


def test_bias_correction_removes_the_mean_error(tmp_path):
    """Inputs with a large mean (an accelerometer's gravity): int8 weight rounding shifts each output
    channel by sum((w_q - w) * E[x]). With the correction the held-out per-channel mean error (float
    outputs from ONNX Runtime) shrinks and the SQNR rises."""
    rng = np.random.default_rng(7)
    path = tmp_path / "conv.onnx"
    onnx.save(_conv_model(rng), path)
    calib = (rng.standard_normal((96, 3, 48)) + 3.0).astype(np.float32)
    held_out = (rng.standard_normal((64, 3, 48)) + 3.0).astype(np.float32)

    def mean_error(conv) -> np.ndarray:
        q_in = conv.graph.tensors[conv.graph.inputs[0]].quant
        q_out = conv.graph.tensors[conv.graph.outputs[0]].quant
        got = np.stack([dequantize_tensor(conv.reference(quantize_tensor(s, q_in).reshape(-1)), q_out)
                        .reshape(4, 48) for s in held_out]).astype(np.float64)
        want = np.stack([r["y"].reshape(4, 48) for r in run_float(conv.model, held_out)]).astype(np.float64)
        return (got - want).mean(axis=(0, 2))

    plain = convert(path, calib, bias_correction=False)
    corrected = convert(path, calib)  # the default
    assert plain.report["quantization"]["bias_corrected_layers"] is None
    assert corrected.report["quantization"]["bias_corrected_layers"] == 2
    assert np.abs(mean_error(corrected)).mean() < 0.5 * np.abs(mean_error(plain)).mean()
    assert _held_out_sqnr(corrected, held_out) > _held_out_sqnr(plain, held_out)


def test_each_corrected_layer_says_how_far_its_bias_moved(tmp_path):
    """Issue 29: what the recipe did, per layer. The layers bias correction moved carry the shift in
    NAME.json (channels moved, largest and mean shift in output steps) and NAME.md lists them; the
    shift is the corrected bias less the uncorrected one (both from the graphs' float constants),
    divided by the output scale."""
    rng = np.random.default_rng(7)
    path = tmp_path / "conv.onnx"
    onnx.save(_conv_model(rng), path)
    calib = (rng.standard_normal((96, 3, 48)) + 3.0).astype(np.float32)
    plain = convert(path, calib, name="plain", bias_correction=False)
    corrected = convert(path, calib, name="fixed")
    entries = [e for e in corrected.report["layers"] if "bias_correction" in e]
    assert len(entries) == corrected.report["quantization"]["bias_corrected_layers"] == 2
    assert not any("bias_correction" in e for e in plain.report["layers"])
    for entry in entries:
        a, b = plain.graph.nodes[entry["index"]], corrected.graph.nodes[entry["index"]]
        moved = np.abs(b.consts["bias"].astype(np.float64) - a.consts["bias"].astype(np.float64))
        steps = moved / corrected.graph.tensors[b.output].quant.scale
        c = entry["bias_correction"]
        assert c["of_channels"] == moved.size and c["channels"] == np.count_nonzero(moved > 1e-9)
        assert c["largest_steps"] == pytest.approx(steps.max(), abs=2e-3)
        assert c["mean_steps"] == pytest.approx(steps.mean(), abs=2e-3)
    page = corrected.pages["fixed.md"]
    assert "## Quantization per layer" in page and f"largest {entries[0]['bias_correction']['largest_steps']} steps" in page
