"""Fitted weight rounding (tuning/weight_rounding.py): int8 codes chosen for the inputs a layer sees,
kept only where they beat nearest rounding on calibration samples held out from the fit."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from onnx2cmsis.api import convert, front_end
from onnx2cmsis.errors import OptionError
from onnx2cmsis.ops.conv import fold_affine_into_weights, layer_weights
from onnx2cmsis.ops.registry import build_registry
from onnx2cmsis.quant.precision import apply_precision
from onnx2cmsis.quant.quantize import dequantized_outputs, quantize_graph
from onnx2cmsis.tuning.recipe import Recipe, fitted
from onnx2cmsis.tuning.search import apply_weights, calibrate, float_outputs
from onnx2cmsis.tuning.weight_rounding import (InputProducts, compensated_weights, error_compensated_codes,
                                               fit_weight_rounding, rounding_only_tensors)
from tests.bit_exact import bit_exact_everywhere
from tests.needs import oracle_runtime
from tests.onnx_models import gemm_model, save_one_input_model


def _output_error(w, codes, s, x) -> float:
    return float(np.sum(((w - codes * s[:, None]) @ x.T) ** 2))


def _correlated_inputs(rng: np.random.Generator, m: int, d: int) -> np.ndarray:
    """m samples of d inputs that go together (a random mixing of fewer sources, plus a little noise)."""
    return rng.standard_normal((m, d // 2)) @ rng.standard_normal((d // 2, d)) + 0.05 * rng.standard_normal((m, d))


def test_fitted_codes_leave_less_output_error_than_the_nearest_ones():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 24))
    s = np.abs(w).max(axis=1) / 127
    x = _correlated_inputs(rng, 400, 24)
    codes = error_compensated_codes(w, s, x.T @ x)
    nearest = np.clip(np.round(w / s[:, None]), -127, 127)
    assert np.array_equal(codes, np.round(codes)) and np.abs(codes).max() <= 127
    assert np.count_nonzero(codes != nearest) > 0
    assert _output_error(w, codes, s, x) < 0.5 * _output_error(w, nearest, s, x)


def test_inputs_that_never_go_together_leave_the_nearest_codes():
    """With H diagonal no column's error can be moved where another input would cancel it."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 10))
    s = np.abs(w).max(axis=1) / 127
    h = np.diag(rng.uniform(0.5, 2.0, 10))
    assert np.array_equal(error_compensated_codes(w, s, h), np.clip(np.round(w / s[:, None]), -127, 127))


def test_a_layers_fitted_scales_give_its_codes_back_and_a_rescale_drops_them():
    from onnx2cmsis.ir.graph import Node

    rng = np.random.default_rng(2)
    s = rng.uniform(0.001, 0.01, 5).astype(np.float32)
    codes = rng.integers(-127, 128, (5, 3, 4))
    node = Node("c", "conv1d", ["x"], ["y"], consts={"weight": (codes * s[:, None, None].astype(np.float64))
                                                     .astype(np.float32), "bias": np.zeros(5, np.float32)},
                attrs={"fitted_weight_scales": s})
    scales, got = layer_weights(node, axis=0)
    assert np.array_equal(scales, s) and np.array_equal(got, codes)
    assert fold_affine_into_weights(node, np.ones(5, np.float32), np.full(5, 0.1, np.float32))  # a bias shift
    assert "fitted_weight_scales" in node.attrs
    assert fold_affine_into_weights(node, np.full(5, 2.0, np.float32), np.zeros(5, np.float32))
    assert "fitted_weight_scales" not in node.attrs


def _smooth(rng: np.random.Generator, n: int, channels: int = 4, width: int = 64) -> np.ndarray:
    """Sensor-like signals: a few slow sinusoids per channel, so neighbouring taps go together."""
    t = np.arange(width)
    f = rng.uniform(0.02, 0.12, (n, channels, 1))
    phase = rng.uniform(0, 2 * np.pi, (n, channels, 1))
    amp = rng.uniform(0.5, 1.5, (n, channels, 1))
    return (amp * np.sin(2 * np.pi * f * t + phase) + 0.05 * rng.standard_normal((n, channels, width))
            ).astype(np.float32)


def _conv_model(path, rng: np.random.Generator) -> str:
    """(1, 4, 64) -> Conv(12, k5, same) -> Relu -> Conv(8, k3) -> y."""
    w1 = (rng.standard_normal((12, 4, 5)) * 0.3).astype(np.float32)
    w2 = (rng.standard_normal((8, 12, 3)) * 0.2).astype(np.float32)
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(np.zeros(12, np.float32), "b1"),
             numpy_helper.from_array(w2, "w2"), numpy_helper.from_array(np.zeros(8, np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["h"], pads=[2, 2]), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2", "b2"], ["y"])]
    return save_one_input_model(path, nodes, [1, 4, 64], inits)


def _sqnr(got: np.ndarray, want: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(want**2) / np.sum((got - want) ** 2)))


def test_fitted_rounding_at_16x8_holds_on_new_samples_and_is_chosen(tmp_path):
    """At 16x8 the int8 weights are most of the error: codes fitted to 48 calibration samples' inputs
    give a higher SQNR on 500 new samples too, the folds see it, and convert keeps them."""
    rng = np.random.default_rng(3)
    path = _conv_model(tmp_path / "conv.onnx", rng)
    calib, fresh = _smooth(rng, 48), _smooth(rng, 500)
    conv = convert(path, calib, precision="int16", calibration_method="minmax", dense_weights="per-channel",
                   bias_correction=False)
    recipe = conv.report["quantization"]["recipe"]
    assert recipe["chosen"]["weight_rounding"] == "fitted", recipe["reason"]
    fits = [layer["weight_rounding"] for layer in conv.report["layers"] if "weight_rounding" in layer]
    assert len(fits) == 2 and all(f["output_error_db"] < 0 and f["codes_changed"] > 0 for f in fits)
    model, graph, _ = front_end(Path(path), conv.registry)
    want = float_outputs(model, fresh).reshape(len(fresh), -1).astype(np.float64)
    bits = [16] * len(graph.nodes)
    got = {r: _sqnr(dequantized_outputs(fitted(model, graph, conv.registry, Recipe("minmax", "per-channel", False, r),
                                                calib, bits), conv.registry, fresh), want)
           for r in ("nearest", "fitted")}
    assert got["fitted"] > got["nearest"] + 1.0, got


def test_fitted_rounding_that_only_fits_the_calibration_samples_is_not_chosen(tmp_path):
    """A dense layer of 96 inputs calibrated on 24 samples of independent noise: H has rank 24, so the
    fit moves rounding errors into directions those samples never show. It gains on them and loses
    on 2000 new ones; the held-out folds see the loss and the nearest codes stay."""
    rng = np.random.default_rng(4)
    path = tmp_path / "dense.onnx"
    onnx.save(gemm_model((rng.standard_normal((96, 6)) * 0.2).astype(np.float32)), path)
    calib = rng.standard_normal((24, 96)).astype(np.float32)
    fresh = rng.standard_normal((2000, 96)).astype(np.float32)
    options = {"precision": "int16", "calibration_method": "minmax", "dense_weights": "per-channel",
               "bias_correction": False}
    conv = convert(path, calib, **options)
    recipe = conv.report["quantization"]["recipe"]
    scores = {c["weight_rounding"]: c for c in recipe["candidates"]}
    assert scores["fitted"]["calibration_sqnr_db"] > scores["nearest"]["calibration_sqnr_db"] + 3  # it fits them
    assert recipe["chosen"]["weight_rounding"] == "nearest", recipe["reason"]
    assert not any("weight_rounding" in layer for layer in conv.report["layers"])
    model, graph, _ = front_end(Path(path), conv.registry)
    want = float_outputs(model, fresh).reshape(len(fresh), -1).astype(np.float64)
    got = {r: _sqnr(dequantized_outputs(fitted(model, graph, conv.registry, Recipe("minmax", "per-channel", False, r),
                                                calib, [16] * len(graph.nodes)), conv.registry, fresh), want)
           for r in ("nearest", "fitted")}
    assert got["fitted"] < got["nearest"], got  # the rejected codes are indeed worse on data neither saw


def test_an_unknown_weight_rounding_is_an_option_error(tmp_path):
    rng = np.random.default_rng(5)
    path = _conv_model(tmp_path / "conv.onnx", rng)
    with pytest.raises(OptionError, match="weight_rounding"):
        convert(path, _smooth(rng, 8), weight_rounding="stochastic")


def test_layers_reading_int8_keep_their_nearest_codes(tmp_path):
    """At int8 a layer's error is its activations' rounding: no layer is fitted, asked or not, and the
    recipe choice does not try (at int8 the folds chose fitted codes that lost on test data)."""
    rng = np.random.default_rng(7)
    path = _conv_model(tmp_path / "conv.onnx", rng)
    calib = _smooth(rng, 40)
    forced = convert(path, calib, name="m", weight_rounding="fitted")
    default = convert(path, calib, name="m")
    assert not any("weight_rounding" in layer for layer in forced.report["layers"] + default.report["layers"])
    assert all(c["weight_rounding"] == "nearest" for c in default.report["quantization"]["recipe"]["candidates"])
    nearest = convert(path, calib, name="m", weight_rounding="nearest")
    assert forced.source == nearest.source


def test_auto_precision_judges_rounding_at_int16_and_fits_the_layers_reading_int16(tmp_path):
    """--precision auto chooses widths after the recipe: the challenge is measured with every layer at
    int16, and where fitted codes win, exactly the weighted layers whose input is int16 get them."""
    rng = np.random.default_rng(8)
    path = _conv_model(tmp_path / "conv.onnx", rng)
    calib = _smooth(rng, 48)
    probe = convert(path, calib, name="m", precision="auto", max_error_db=1.0)  # all int8: its figure
    budget = probe.report["quantization"]["auto_precision"]["int8"]["sqnr_db"] + 0.5  # some int16 needed
    conv = convert(path, calib, name="m", precision="auto", max_error_db=round(budget, 1))
    recipe = conv.report["quantization"]["recipe"]
    at16 = {c["weight_rounding"] for c in recipe["weight_rounding_at_int16"]}
    assert at16 == {"nearest", "fitted"} and all(c["weight_rounding"] == "nearest" for c in recipe["candidates"])
    assert recipe["chosen"]["weight_rounding"] == "fitted", recipe["reason"]
    g = conv.graph
    weighted = [(n, g.tensors[n.inputs[0]].quant.bits) for n in g.nodes if n.op == "conv1d"]
    assert {bits for _, bits in weighted} == {8, 16}, "the budget should leave a mix of widths"
    assert all(("weight_rounding" in n.attrs) == (bits == 16) for n, bits in weighted)


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.oracle
@pytest.mark.level
def test_fitted_codes_are_bit_exact_in_c_tflite_micro_and_on_qemu(tmp_path):
    oracle_runtime()
    rng = np.random.default_rng(6)
    path = _conv_model(tmp_path / "conv.onnx", rng)
    conv = convert(path, _smooth(rng, 40), name="fitted_int16", precision="int16", weight_rounding="fitted")
    assert conv.report["quantization"]["recipe"]["chosen"]["weight_rounding"] == "fitted"
    assert sum("weight_rounding" in layer for layer in conv.report["layers"]) == 2
    bit_exact_everywhere(conv, _smooth(rng, 12), tmp_path, qemu_samples=3)


def test_compensated_weights_undo_a_systematic_error_of_the_inputs():
    """Inputs that reach the integer layer 10% low: the weights that give the float layer's output
    from them are the float weights / 0.9 (damping pulls them a little back); inputs equal to the
    float model's leave the weights as they are."""
    rng = np.random.default_rng(9)
    w = rng.standard_normal((5, 16))
    xf = rng.standard_normal((500, 16))
    xq = 0.9 * xf
    got = compensated_weights(w, InputProducts(xq.T @ xq, xf.T @ xq, xf.T @ xf))
    np.testing.assert_allclose(got, w / 0.9, rtol=0.01)
    same = compensated_weights(w, InputProducts(xf.T @ xf, xf.T @ xf, xf.T @ xf))
    np.testing.assert_allclose(same, w, rtol=1e-9, atol=1e-9)


def _tflite_recipe_16x8(model, graph, registry, calib, fit_inputs: bool, narrowed: str | None = None):
    """TFLite's recipe with every layer at int16 and fitted codes, the inputs' error fitted or not;
    `narrowed`: a model value whose range is cut to a quarter, so that it clips."""
    g = copy.deepcopy(graph)
    g.quant_options = replace(g.quant_options, calibration_method="minmax", dense_weights="per-channel")
    found = calibrate(model, g, registry, calib, calib, "minmax", "per-channel", None)
    apply_weights(g, found.weights)
    apply_precision(g, [16] * len(g.nodes))
    ranges = dict(found.ranges)
    if narrowed is not None:
        ranges[narrowed] = tuple(v / 4 for v in ranges[narrowed])
    fit_weight_rounding(model, g, registry, ranges, calib, input_error_bits=(16,) if fit_inputs else ())
    quantize_graph(g, registry, ranges)
    return g


def _tanh_chain_model(path, rng: np.random.Generator) -> str:
    """(1, 4, 64) -> Conv(12, k5) -> Tanh -> Conv(12, k3) -> Tanh -> Conv(8, k3) -> y (same padding)."""
    inits, nodes, source, c_in = [], [], "x", 4
    for i, (c_out, k) in enumerate(((12, 5), (12, 3), (8, 3))):
        w = (rng.standard_normal((c_out, c_in, k)) / np.sqrt(c_in * k)).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(np.zeros(c_out, np.float32), f"b{i}")]
        out = "y" if i == 2 else f"t{i}"
        nodes.append(helper.make_node("Conv", [source, f"w{i}", f"b{i}"], [out if i == 2 else f"c{i}"],
                                      pads=[k // 2, k // 2]))
        if i < 2:
            nodes.append(helper.make_node("Tanh", [f"c{i}"], [out]))
        source, c_in = out, c_out
    return save_one_input_model(path, nodes, [1, 4, 64], inits)


def test_fitting_the_inputs_error_too_holds_on_new_samples(tmp_path):
    """Each conv's inputs carry the int8 weight rounding of the convs before it, the same for a given
    input every time: codes fitted to the float model's inputs take part of it out, and on 500 new
    samples the output is closer to the float model's than with each layer's own weight error fitted
    alone (by 3.3-4.2 dB over three seeds of this model; by 1 dB asked)."""
    rng = np.random.default_rng(10)
    path = _tanh_chain_model(tmp_path / "chain.onnx", rng)
    calib, fresh = _smooth(rng, 48), _smooth(rng, 500)
    registry = build_registry()
    model, graph, _ = front_end(Path(path), registry)
    want = float_outputs(model, fresh).reshape(len(fresh), -1).astype(np.float64)
    got = {inputs: _sqnr(dequantized_outputs(_tflite_recipe_16x8(model, graph, registry, calib, inputs), registry,
                                             fresh), want) for inputs in (False, True)}
    assert got[True] > got[False] + 1.0, got


def test_a_clipping_range_or_an_int8_tensor_upstream_leaves_a_layer_its_weights_error_alone(tmp_path):
    """A layer fits its inputs' error only where they differ from the float model's by int16 rounding
    alone: not downstream of a range that clips the calibration samples, nor of an int8 tensor."""
    rng = np.random.default_rng(11)
    path = _conv_model(tmp_path / "conv.onnx", rng)
    calib = _smooth(rng, 32)
    registry = build_registry()
    model, graph, _ = front_end(Path(path), registry)
    g = fitted(model, graph, registry, Recipe("minmax", "per-channel", False), calib, [16] * len(graph.nodes))
    first, second = (n for n in g.nodes if n.op == "conv1d")
    assert rounding_only_tensors(g, model, calib, None) >= {first.inputs[0], second.inputs[0], second.output}
    q = g.tensors[first.output].quant
    g.tensors[first.output].quant = replace(q, scale=q.scale / 4)  # clips: a quarter of its range
    fine = rounding_only_tensors(g, model, calib, None)
    assert first.inputs[0] in fine and first.output not in fine
    assert second.inputs[0] not in fine and second.output not in fine
    g8 = fitted(model, graph, registry, Recipe("minmax", "per-channel", False), calib, [8] * len(graph.nodes))
    assert rounding_only_tensors(g8, model, calib, None) == set()


def test_bias_correction_of_the_nearest_rounded_layers_leaves_the_fitted_ones_alone(tmp_path):
    """With fitted codes a recipe may correct only the layers left with nearest codes (--precision
    auto's int8 layers): with every layer fitted there is nothing to correct; asked for all, the
    fitted layers are corrected too; and convert's challenge offers both."""
    rng = np.random.default_rng(12)
    path = _conv_model(tmp_path / "conv.onnx", rng)
    calib = _smooth(rng, 40)
    registry = build_registry()
    model, graph, _ = front_end(Path(path), registry)
    bits = [16] * len(graph.nodes)
    biases = {corrected: [n.qparams["bias"] for n in fitted(model, graph, registry, recipe, calib, bits).nodes
                          if n.op == "conv1d"]
              for corrected, recipe in (("none", Recipe("minmax", "per-channel", False, "fitted")),
                                        ("nearest", Recipe("minmax", "per-channel", True, "fitted",
                                                           corrects_fitted=False)),
                                        ("all", Recipe("minmax", "per-channel", True, "fitted")))}
    assert all(np.array_equal(a, b) for a, b in zip(biases["nearest"], biases["none"]))
    assert not all(np.array_equal(a, b) for a, b in zip(biases["all"], biases["none"]))
    # the first conv at int8 keeps nearest codes and is corrected; the second, fitted, is not
    first_conv = next(n for n in graph.nodes if n.op == "conv1d")
    mixed = [8 if n is first_conv else 16 for n in graph.nodes]
    first, second = ([n.qparams["bias"] for n in fitted(model, graph, registry, recipe, calib, mixed).nodes
                      if n.op == "conv1d"]
                     for recipe in (Recipe("minmax", "per-channel", False, "fitted"),
                                    Recipe("minmax", "per-channel", True, "fitted", corrects_fitted=False)))
    assert not np.array_equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    conv = convert(path, calib, precision="int16", calibration_method="minmax", dense_weights="per-channel")
    rounding = [c for c in conv.report["quantization"]["recipe"]["candidates"] if c["weight_rounding"] == "fitted"]
    assert {c.get("bias_correction_of_fitted_layers") for c in rounding} == {True, False}


def test_downstream_of_a_clipping_range_a_layer_fits_its_weights_error_alone(tmp_path):
    """The same chain with its first conv's output range cut to a quarter: the layers after it get
    the codes of the weights' own error, with the inputs' error asked for or not; with the full
    range, asking for it changes their codes."""
    rng = np.random.default_rng(13)
    path = _tanh_chain_model(tmp_path / "chain.onnx", rng)
    calib = _smooth(rng, 40)
    registry = build_registry()
    model, graph, _ = front_end(Path(path), registry)
    convs = [i for i, n in enumerate(graph.nodes) if n.op == "conv1d"]
    first = graph.tensors[graph.nodes[convs[0]].output].calib_name  # the first tanh's input

    def codes(fit_inputs: bool, narrowed: str | None) -> list[np.ndarray]:
        g = _tflite_recipe_16x8(model, graph, registry, calib, fit_inputs, narrowed)
        return [g.nodes[i].qparams["weight"] for i in convs[1:]]
    clipped = [codes(inputs, first) for inputs in (False, True)]
    assert all(np.array_equal(a, b) for a, b in zip(*clipped))
    full = [codes(inputs, None) for inputs in (False, True)]
    assert not all(np.array_equal(a, b) for a, b in zip(*full))


def test_a_choice_s_fits_share_their_calibration_and_rounding_and_give_what_fresh_fits_give(tmp_path, monkeypatch):
    """The recipe choice's fits (tuning/recipe.Fits) calibrate each recipe's ranges on each set of
    samples once, and fit the weight rounding of those ranges at each set of widths once: every graph
    they give equals the one a fit from scratch gives, and the shared steps are not run again."""
    import pickle

    from onnx2cmsis.tuning import recipe as recipe_module

    rng = np.random.default_rng(13)
    path = _conv_model(tmp_path / "conv.onnx", rng)
    calib = _smooth(rng, 36)
    registry = build_registry()
    model, graph, _ = front_end(Path(path), registry)
    recorded = recipe_module.recorded_values(model, graph, calib)
    runs = {"calibrate": 0, "fit_weight_rounding": 0}
    for name in runs:
        real = getattr(recipe_module, name)

        def counted(*args, _real=real, _name=name, **kwargs):
            runs[_name] += 1
            return _real(*args, **kwargs)
        monkeypatch.setattr(recipe_module, name, counted)
    every, fold = np.arange(len(calib)), np.setdiff1d(np.arange(len(calib)), np.arange(0, len(calib), 3))
    int16, mixed = [16] * len(graph.nodes), [8] + [16] * (len(graph.nodes) - 1)
    fitted_all = Recipe("minmax", "per-channel", True, "fitted")
    steps = [(Recipe("minmax", "per-channel", False), every, None),
             (Recipe("minmax", "per-channel", True), every, None),
             (Recipe("minmax", "per-channel", False, "fitted"), every, int16),
             (fitted_all, every, int16), (replace(fitted_all, corrects_fitted=False), every, int16),
             (fitted_all, every, mixed), (fitted_all, fold, int16), (Recipe("mse", "per-channel", True), fold, None)]
    shared = recipe_module.Fits(model, graph, registry, calib, recorded)
    for recipe, samples, bits in steps:
        got, codes = shared.fit(recipe, samples, bits)
        want, want_codes = recipe_module.Fits(model, graph, registry, calib, recorded).fit(recipe, samples, bits)
        assert pickle.dumps(got) == pickle.dumps(want), (recipe, bits)
        assert (codes is None) == (want_codes is None) and (codes is None or np.array_equal(codes, want_codes))
    # shared: 3 calibrations (minmax on all, minmax on a fold, mse on a fold) and 3 roundings (all
    # int16, mixed, the fold); fresh, one of each per step that asks for it
    assert runs == {"calibrate": 3 + len(steps), "fit_weight_rounding": 3 + 5}, runs
