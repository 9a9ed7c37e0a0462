"""What fitted weight rounding (tuning/weight_rounding.py) does at each width on the held-out
benchmark's models: TFLite's recipe (min/max ranges, per-channel weights, no bias correction) with
nearest rounding against the same recipe with every conv/dense layer's codes fitted, all layers int8
and all int16: fitted to the weights' and the inputs' rounding error (at int8 too, which convert
does not take), and (a column of its own) to the weights' error alone, as part 7 did. Per model:
the output SQNR on the calibration samples (in-sample) and on the test set, and, per fitted layer,
that layer's output SQNR against the float model on the test set (how much the fit moves the layer
itself). The integer reference is bit-exact with the C.

This is the measurement behind fitting only layers that read int16 (run it to see the int8 rows) and
behind fitting the inputs' error too (issue 29 part 8).

    python benchmarks/heldout/rounding_experiment.py [--half dev|heldback|all] [--models a,b]
        [--json benchmarks/out/heldout_rounding.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import catalog  # noqa: E402

from onnx2cmsis.api import front_end  # noqa: E402
from onnx2cmsis.arith.rules import dequantize_tensor  # noqa: E402
from onnx2cmsis.ops.registry import build_registry  # noqa: E402
from onnx2cmsis.quant.calibrate import record_floats  # noqa: E402
from onnx2cmsis.quant.precision import apply_precision  # noqa: E402
from onnx2cmsis.quant.quantize import (dequantized_outputs, quantize_graph, quantize_samples,  # noqa: E402
                                      run_reference_batch)
from onnx2cmsis.tuning.recipe import TFLITE_RECIPE, recorded_values  # noqa: E402
from onnx2cmsis.tuning.search import apply_weights, calibrate, float_outputs, sqnr_db  # noqa: E402
from onnx2cmsis.tuning.weight_rounding import fit_weight_rounding  # noqa: E402


def quantized(model, graph, registry, calibration, recorded, bits: int, rounding: str):
    """TFLite's recipe at one width for every layer, weights rounded to nearest or fitted (at any width:
    to the weights' and inputs' error as convert fits them, or, "weights", to the weights' alone)."""
    g = copy.deepcopy(graph)
    g.quant_options = replace(g.quant_options, calibration_method=TFLITE_RECIPE.calibration_method,
                              dense_weights=TFLITE_RECIPE.dense_weights)
    found = calibrate(model, g, registry, calibration, calibration, TFLITE_RECIPE.calibration_method,
                      TFLITE_RECIPE.dense_weights, recorded)
    apply_weights(g, found.weights)
    apply_precision(g, [bits] * len(g.nodes))
    if rounding != "nearest":  # "fitted": the weights' and inputs' error, the inputs' at any width (convert
        # takes int16 tensors' alone); "weights": the weights' own error alone
        fit_weight_rounding(model, g, registry, found.ranges, calibration, recorded, input_bits=(8, 16),
                            input_error_bits=(8, 16) if rounding == "fitted" else ())
    quantize_graph(g, registry, found.ranges)
    return g


def layer_sqnrs(model, g, registry, x: np.ndarray, indices: list[int]) -> dict[int, float]:
    """The output SQNR of nodes `indices` against the float model's values on the samples `x`."""
    names = sorted({g.tensors[g.nodes[i].output].calib_name for i in indices} - {None})
    floats = record_floats(model, x, names, budget=float("inf"))
    values = run_reference_batch(g, registry, quantize_samples(g, x), keep_all=True)
    out = {}
    for i in indices:
        t = g.tensors[g.nodes[i].output]
        if not t.mirrors_model_value:
            continue
        want = t.in_layout(floats.stacked(t.calib_name)).reshape(len(x), -1)
        got = dequantize_tensor(values[g.nodes[i].output], t.quant).reshape(len(x), -1)
        out[i] = sqnr_db(got.astype(np.float64), want)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--half", default="all", choices=("dev", "heldback", "all"))
    ap.add_argument("--models", help="comma-separated names (default: the half's)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "heldout_rounding.json")
    args = ap.parse_args()
    rows = []
    print("| model | half | width | in-sample nearest / fitted dB | test nearest / fitted dB | test gain dB "
          "| weights' error alone: test gain dB | fitted layers' own test SQNR gain, mean dB |")
    print("|---|---|---|---|---|---|---|---|")
    for entry in catalog.select(args.half, args.models.split(",") if args.models else None):
        registry = build_registry()
        model, graph, _ = front_end(HERE / "models" / f"{entry.name}.h5", registry)
        calibration = np.asarray(entry.calibration_set(), np.float32)
        x_test = np.asarray(entry.test_set()[0], np.float32)
        recorded = recorded_values(model, graph, calibration)
        seen = float_outputs(model, calibration, recorded).reshape(len(calibration), -1).astype(np.float64)
        want = float_outputs(model, x_test).reshape(len(x_test), -1).astype(np.float64)
        for bits in (8, 16):
            got = {r: quantized(model, graph, registry, calibration, recorded, bits, r)
                   for r in ("nearest", "weights", "fitted")}
            row = {"model": entry.name, "half": catalog.HALF[entry.name], "bits": bits}
            for r, g in got.items():
                row[f"{r}_in_sample_db"] = sqnr_db(dequantized_outputs(g, registry, calibration), seen)
                row[f"{r}_test_db"] = sqnr_db(dequantized_outputs(g, registry, x_test), want)
            # the same graph either way (uniform widths insert no node): node i is the same layer in both
            indices = [i for i, n in enumerate(got["fitted"].nodes) if "weight_rounding" in n.attrs]
            fitted_layers = layer_sqnrs(model, got["fitted"], registry, x_test, indices)
            nearest_layers = layer_sqnrs(model, got["nearest"], registry, x_test, indices)
            row["layer_gain_db"] = {got["fitted"].nodes[i].name + f"#{i}": fitted_layers[i] - nearest_layers[i]
                                    for i in fitted_layers}
            row["test_gain_db"] = row["fitted_test_db"] - row["nearest_test_db"]
            row["weights_alone_gain_db"] = row["weights_test_db"] - row["nearest_test_db"]
            rows.append(row)
            mean_layer = np.mean(list(row["layer_gain_db"].values())) if row["layer_gain_db"] else float("nan")
            print(f"| {entry.name} | {row['half']} | int{bits} | {row['nearest_in_sample_db']:.2f} / "
                  f"{row['fitted_in_sample_db']:.2f} | {row['nearest_test_db']:.2f} / {row['fitted_test_db']:.2f} | "
                  f"{row['test_gain_db']:+.2f} | {row['weights_alone_gain_db']:+.2f} | {mean_layer:+.2f} |", flush=True)
    print()
    for half in ("dev", "heldback", "all"):
        for bits in (8, 16):
            sel = [r for r in rows if (half == "all" or r["half"] == half) and r["bits"] == bits]
            if not sel:
                continue
            gains = [r["test_gain_db"] for r in sel]
            alone = [r["weights_alone_gain_db"] for r in sel]
            layers = [g for r in sel for g in r["layer_gain_db"].values()]
            print(f"- {half}, int{bits} ({len(sel)} models): test gain median {np.median(gains):+.2f} dB, worst "
                  f"{min(gains):+.2f}, best {max(gains):+.2f} (the weights' error alone: median "
                  f"{np.median(alone):+.2f}, worst {min(alone):+.2f}); fitted layers' own SQNR gain median "
                  f"{np.median(layers):+.2f} dB over {len(layers)} layers")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
