"""The quantization recipe chosen on held-out folds (tuning/recipe.py): TFLite's recipe stays unless
another beats it on samples that did not fit it."""

from __future__ import annotations

import numpy as np
import onnx

from onnx2cmsis.api import convert, front_end
from onnx2cmsis.quant.quantize import dequantized_outputs
from onnx2cmsis.tuning.bias_correction import _kept_share
from onnx2cmsis.data.samples import stacked
from onnx2cmsis.quant.calibrate import record_floats
from onnx2cmsis.tuning.recipe import (
    FOLDS,
    MARGIN_DB,
    TFLITE_RECIPE,
    Recipe,
    Score,
    candidate_recipes,
    Fits,
    recorded_values,
    fitted,
    pick,
)
from onnx2cmsis.tuning.search import float_outputs
from onnx import helper, numpy_helper

from tests.onnx_models import gemm_model, save_one_input_model

OWN = Recipe("minmax", "auto", True)
MSE = Recipe("mse", "per-channel", True)


def test_a_recipe_that_wins_only_in_sample_is_not_chosen():
    scores = {TFLITE_RECIPE: Score(30.0, 28.0), OWN: Score(33.0, 27.5)}
    chosen, reason = pick([TFLITE_RECIPE, OWN], scores)
    assert chosen == TFLITE_RECIPE and "held-out" in reason


def test_a_recipe_that_wins_only_held_out_is_not_chosen():
    scores = {TFLITE_RECIPE: Score(30.0, 28.0), OWN: Score(29.9, 29.0)}
    assert pick([TFLITE_RECIPE, OWN], scores)[0] == TFLITE_RECIPE


def test_a_held_out_gain_below_the_margin_is_not_enough():
    scores = {TFLITE_RECIPE: Score(30.0, 28.0), OWN: Score(31.0, 28.0 + MARGIN_DB / 2)}
    assert pick([TFLITE_RECIPE, OWN], scores)[0] == TFLITE_RECIPE


def test_the_best_in_sample_challenger_is_the_one_checked_held_out():
    scores = {TFLITE_RECIPE: Score(30.0, 28.0), OWN: Score(32.0, 29.0), MSE: Score(30.5, None)}
    chosen, reason = pick([TFLITE_RECIPE, OWN, MSE], scores)
    assert chosen == OWN and reason.startswith("+1.00 dB")
    scores[OWN] = Score(32.0, 28.1)  # the best in-sample does not hold up: nothing else is tried
    assert pick([TFLITE_RECIPE, OWN, MSE], scores)[0] == TFLITE_RECIPE


def test_options_pin_their_part_of_every_candidate():
    assert candidate_recipes("auto", "auto", True)[0] == TFLITE_RECIPE
    assert set(candidate_recipes("auto", "auto", True)) == {TFLITE_RECIPE, OWN, MSE}
    assert candidate_recipes("minmax", "per-channel", False) == [TFLITE_RECIPE]
    assert candidate_recipes("mse", "auto", False) == [Recipe("mse", "per-channel", False), Recipe("mse", "auto", False)]
    assert all(not r.bias_correction for r in candidate_recipes("auto", "auto", False))


def _gemm(path, rng: np.random.Generator) -> None:
    onnx.save(gemm_model((rng.standard_normal((24, 4)) * 0.3).astype(np.float32)), path)


def _sqnr(got: np.ndarray, want: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(want**2) / np.sum((got - want) ** 2)))


def test_bias_correction_that_fits_the_calibration_samples_loses_on_new_ones_and_is_not_chosen(tmp_path):
    """A dense layer on zero-mean noise: its mean output error over 32 calibration samples is those
    samples' noise, not a bias. Correcting it raises the SQNR on those samples and lowers it on
    2000 new ones from the same process; the held-out folds see the same and TFLite's recipe stays."""
    rng = np.random.default_rng(2)
    path = tmp_path / "dense.onnx"
    _gemm(path, rng)
    calib = rng.standard_normal((32, 24)).astype(np.float32)
    fresh = rng.standard_normal((2000, 24)).astype(np.float32)
    conv = convert(path, calib, calibration_method="minmax", dense_weights="per-channel", weight_rounding="nearest")
    recipe = conv.report["quantization"]["recipe"]
    scores = {c["bias_correction"]: c for c in recipe["candidates"]}
    assert scores[True]["calibration_sqnr_db"] > scores[False]["calibration_sqnr_db"]  # it fits them
    assert scores[True]["heldout_sqnr_db"] < scores[False]["heldout_sqnr_db"] + MARGIN_DB
    assert recipe["chosen"] == TFLITE_RECIPE.describe()
    assert conv.report["quantization"]["bias_corrected_layers"] is None
    # and on data neither saw, the rejected recipe is indeed the worse one
    model, graph, _ = front_end(path, conv.registry)
    want = float_outputs(model, fresh).reshape(len(fresh), -1).astype(np.float64)
    got = {r: dequantized_outputs(fitted(model, graph, conv.registry, r, calib), conv.registry,
                                  fresh).reshape(len(fresh), -1)
           for r in (TFLITE_RECIPE, Recipe("minmax", "per-channel", True))}
    assert _sqnr(got[Recipe("minmax", "per-channel", True)], want) < _sqnr(got[TFLITE_RECIPE], want)


def test_too_few_samples_keep_tflites_recipe(tmp_path):
    rng = np.random.default_rng(5)
    path = tmp_path / "dense.onnx"
    _gemm(path, rng)
    conv = convert(path, rng.standard_normal((8, 24)).astype(np.float32))
    recipe = conv.report["quantization"]["recipe"]
    assert recipe["chosen"] == TFLITE_RECIPE.describe() and recipe["folds"] is None
    assert "too few" in recipe["reason"]


def test_bias_correction_keeps_a_mean_the_samples_agree_on_and_drops_one_they_do_not():
    """_kept_share: a channel off by 0.5 in every sample (spread 0.1) keeps almost all of its
    correction; a channel whose samples scatter around 0 (spread 1.0, overall mean 0.05 of 40
    samples: a standard error of about 0.16) keeps none of it."""
    rng = np.random.default_rng(9)
    per_sample = np.stack([0.5 + 0.1 * rng.standard_normal(40), rng.standard_normal(40)], axis=1)
    per_sample[:, 1] += 0.05 - per_sample[:, 1].mean()
    counts = np.full((40, 2), 100)
    share = _kept_share(per_sample.mean(axis=0), per_sample, counts)
    assert share[0] > 0.99 and share[1] == 0.0


def test_a_fold_fit_from_recorded_floats_scores_what_a_fit_from_scratch_gives(tmp_path):
    """Two of the choice's shortcuts (the float values run once for all fits; the held-out samples
    scored in bias correction's own pass, its errors measured on the fit's rows) change no number: a
    fold's outputs equal those of the same recipe fitted on that fold's samples alone and run again.
    (The third, a weight trial rerunning only the graph's tail, has its own test below.)"""
    rng = np.random.default_rng(11)
    inits = [numpy_helper.from_array((rng.standard_normal((8, 3, 5)) * 0.4).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal(8) * 0.2).astype(np.float32), "b1"),
             numpy_helper.from_array((rng.standard_normal((8, 4)) * 0.5).astype(np.float32), "w2"),
             numpy_helper.from_array(np.full(4, 0.1, np.float32), "b2")]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c"], pads=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("GlobalAveragePool", ["r"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["y"])]
    path = tmp_path / "small.onnx"
    save_one_input_model(path, nodes, [1, 3, 40], inits)
    x = (rng.standard_normal((30, 3, 40)) + 0.3).astype(np.float32)
    conv = convert(path, x[:4])
    model, graph, _ = front_end(path, conv.registry)
    recorded = recorded_values(model, graph, x)
    assert recorded is not None and record_floats(model, x, ["y"], budget=10) is None  # over budget: not kept
    test = np.arange(1, len(x), FOLDS)
    fit = np.setdiff1d(np.arange(len(x)), test)
    for recipe in (TFLITE_RECIPE, OWN, MSE):
        quick = Fits(model, graph, conv.registry, x, recorded).outputs(recipe, fit, test)
        plain = dequantized_outputs(fitted(model, graph, conv.registry, recipe, stacked([x[i] for i in fit])),
                                    conv.registry, x[test]).reshape(len(test), -1)
        assert np.array_equal(quick, plain), recipe


def test_a_weight_trial_rerun_from_its_layer_scores_what_a_whole_run_does(tmp_path):
    """The dense-weights search reruns only the graph from the layer whose granularity it tries, on
    the values of the choice it stands on (search.OutputJudge.measured): the same SQNR and the same
    values of every tensor as running the whole graph, for a dense layer in the middle of the graph."""
    from onnx2cmsis.tuning.search import OutputJudge, calibrate

    rng = np.random.default_rng(12)
    inits = [numpy_helper.from_array((rng.standard_normal((6, 2, 3)) * 0.5).astype(np.float32), "w1"),
             numpy_helper.from_array((rng.standard_normal((6 * 16, 10)) * 0.2).astype(np.float32), "w2"),
             numpy_helper.from_array((rng.standard_normal(10) * 0.1).astype(np.float32), "b2"),
             numpy_helper.from_array((rng.standard_normal((10, 3)) * 0.4).astype(np.float32), "w3"),
             numpy_helper.from_array(np.zeros(3, np.float32), "b3")]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], pads=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "w2", "b2"], ["h"]),
             helper.make_node("Tanh", ["h"], ["t"]),
             helper.make_node("Gemm", ["t", "w3", "b3"], ["y"])]
    path = tmp_path / "middle.onnx"
    save_one_input_model(path, nodes, [1, 2, 16], inits)
    x = rng.standard_normal((24, 2, 16)).astype(np.float32)
    conv = convert(path, x[:4])
    model, graph, _ = front_end(path, conv.registry)
    ranges = calibrate(model, graph, conv.registry, x, x, "minmax", "per-tensor").ranges
    judge = OutputJudge(graph, conv.registry, x, float_outputs(model, x))
    base, parts = judge.measured(ranges, {})
    dense = [i for i, n in enumerate(graph.nodes) if n.op == "dense"]
    assert len(dense) == 2 and dense[0] < len(graph.nodes) - 2  # one in the middle: a tail after it
    for index in dense:
        trial = {index: "per-channel"}
        quick, quick_parts = judge.measured(ranges, trial, index, parts)
        whole, whole_parts = judge.measured(ranges, trial)
        assert np.array_equal(quick, whole) and not np.array_equal(quick, base)
        assert all(np.array_equal(q[t], w[t]) for q, w in zip(quick_parts, whole_parts) for t in w)


def test_a_fit_that_could_not_be_quantized_beats_nothing():
    """-inf scores (every fit refused, e.g. all-int16 where a layer cannot run at int16) must not pass
    the rule by comparing -inf with -inf."""
    from onnx2cmsis.tuning.recipe import beats

    failed = Score(-np.inf, -np.inf)
    assert not beats(failed, failed)
    assert not beats(failed, Score(30.0, 28.0))
    assert not beats(Score(31.0, 29.0), Score(30.0, None))
    assert beats(Score(31.0, 29.0), Score(30.0, 28.0))


def test_a_recipe_read_back_from_name_json_is_the_recipe_and_reads_the_same():
    """NAME.md words the chosen recipe from NAME.json (codegen/report_page.recipe_text): the recipe
    read back from its description is the recipe, fitted rounding and partial correction included."""
    from dataclasses import replace

    from onnx2cmsis.codegen.report_page import recipe_text

    fitted_mse = replace(MSE, weight_rounding="fitted")
    for recipe in (TFLITE_RECIPE, OWN, MSE, fitted_mse, replace(fitted_mse, corrects_fitted=False)):
        assert Recipe.described(recipe.describe()) == recipe
    words = recipe_text({"chosen": replace(fitted_mse, corrects_fitted=False).describe(), "reason": "why"})
    assert words == ("mse ranges, per-channel dense weights, bias correction of the layers rounded to nearest, "
                     "fitted weight rounding: why")
