"""An experiment for issue 29, not a feature: does cross-layer equalization of activation channels
help int8 on the held-out benchmark models?

Per-tensor int8 activations give every channel of a tensor the same step, so a channel whose values
span a tenth of the tensor's range is quantized ten times coarser, relative to itself, than the
widest. Between a producer (Conv1D, SeparableConv1D, DepthwiseConv1D or Dense with a ReLU or no
activation) and its one consumer (Conv1D, SeparableConv1D, DepthwiseConv1D, Dense or
BatchNormalization), through layers that commute with a positive per-channel scale (pools, Dropout,
LeakyReLU, ReLU without a maximum), channel c can be multiplied by s_c in the producer's weights and
bias and divided out of the consumer's weights: the float model is unchanged (checked to 1e-4 here),
the activation's rounding noise in channel c shrinks by s_c^2 and the consumer's weight rounding noise
for it grows by s_c^2 (per-channel weight scales are set by the largest weight, which the boosted
channels' shrunken weights no longer are). s_c balances the two, estimated on the calibration
samples at the consumer's input: s_c^4 = step^2 sum(W[:, c, :]^2) / (K E[x_c^2] sum_o (max|W[o]| / 127)^2),
kept between 1 and HEADROOM * (the widest channel's maximum / channel c's), so no channel goes past
the tensor's range on those samples, and at most CAP (larger factors grow a bias past what the int32
accumulator's headroom check allows).

The equalized Keras model is saved and both models are converted the way `convert` does (the recipe
chosen on held-out folds, tuning/recipe.py) and with TFLite's recipe forced, run by the integer
reference (bit-exact with the C) on the test set; and the recipe choice's own rule run over both
models' candidates at once (TFLite's recipe on the original model the incumbent, the equalized
model's recipes challengers beside the original's: `as_challengers`). Prints ours - TFLite's
converter (from run.py's JSON, which must exist) per model and the medians per half.

    python benchmarks/heldout/equalize_experiment.py [--models a,b] [--headroom 1.0] [--min-gain-db 0]
        [--heldout-json benchmarks/out/heldout.json] [--json benchmarks/out/heldout_equalize.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import catalog  # noqa: E402

from onnx2cmsis.api import front_end  # noqa: E402
from onnx2cmsis.ops.registry import build_registry  # noqa: E402
from onnx2cmsis.quant.quantize import dequantized_outputs  # noqa: E402
from onnx2cmsis.tuning.recipe import (MARGIN_DB, TFLITE_RECIPE, Fits, candidate_recipes, choose_recipe,  # noqa: E402
                                      fitted, output_sqnr_db, recorded_values)
from onnx2cmsis.tuning.search import float_outputs, sqnr_db  # noqa: E402


CAP = 16.0


def _layer_kinds(keras):
    L = keras.layers
    producers = (L.Conv1D, L.SeparableConv1D, L.DepthwiseConv1D, L.Dense)
    consumers = (L.Conv1D, L.SeparableConv1D, L.DepthwiseConv1D, L.Dense, L.BatchNormalization)
    homogeneous = (L.MaxPooling1D, L.AveragePooling1D, L.GlobalAveragePooling1D, L.GlobalMaxPooling1D,
                   L.Dropout, L.LeakyReLU)
    return producers, consumers, homogeneous


def _readers(model, layer) -> list:
    out = []
    for candidate in model.layers:
        for node in candidate._inbound_nodes:
            tensors = node.input_tensors if isinstance(node.input_tensors, (list, tuple)) else [node.input_tensors]
            out += [candidate for t in tensors if t._keras_history[0] is layer]
    return out


def _consumer_after(model, producer, keras):
    """The one consumer `producer`'s output reaches through scale-commuting layers (None: another
    layer, a branch, or the model's output)."""
    _, consumers, homogeneous = _layer_kinds(keras)
    current = producer
    while True:
        readers = _readers(model, current)
        if len(readers) != 1:
            return None
        reader = readers[0]
        if isinstance(reader, homogeneous) or (isinstance(reader, keras.layers.ReLU) and reader.max_value is None):
            current = reader
            continue
        return reader if isinstance(reader, consumers) else None


def _consumer_weights(consumer, keras) -> tuple[np.ndarray, bool]:
    """The consumer's weights as (taps, input channels, outputs per channel or outputs), and whether
    its outputs are per input channel (depthwise, BatchNormalization) rather than summed over them."""
    w = consumer.get_weights()
    if isinstance(consumer, keras.layers.BatchNormalization):
        gamma, _, _, var = w
        return (gamma / np.sqrt(var + consumer.epsilon)).reshape(1, -1, 1), True
    if isinstance(consumer, (keras.layers.SeparableConv1D, keras.layers.DepthwiseConv1D)):
        return w[0], True
    if isinstance(consumer, keras.layers.Dense):
        return w[0].reshape(1, *w[0].shape), False
    return w[0], False


def channel_scales(model, producer, consumer, calibration: np.ndarray, headroom: float, min_gain_db: float,
                   keras) -> np.ndarray | None:
    """s_c for the producer's output channels (see the module docstring); None: nothing to balance, or
    the noise model predicts less than `min_gain_db` at the consumer."""
    seen = np.asarray(keras.Model(model.inputs, consumer.input).predict(calibration, verbose=0))
    seen = seen.reshape(-1, seen.shape[-1]).astype(np.float64)
    widest = np.abs(seen).max(axis=0)
    if widest.max() <= 0:
        return None
    step = (seen.max() - min(seen.min(), 0.0)) / 255
    weights, per_channel = _consumer_weights(consumer, keras)
    taps = weights.shape[0]
    if per_channel:
        weight_steps = (np.abs(weights).max(axis=0) / 127) ** 2  # (channels, outputs per channel)
        weight_noise = taps * (seen**2).mean(axis=0) * weight_steps.sum(axis=1)
    else:
        weight_steps = (np.abs(weights).max(axis=(0, 1)) / 127) ** 2  # per output
        weight_noise = taps * (seen**2).mean(axis=0) * weight_steps.sum()
    activation_noise = step**2 * (weights.astype(np.float64) ** 2).sum(axis=(0, 2))
    s = (activation_noise / np.maximum(weight_noise, 1e-30)) ** 0.25
    s = np.minimum(CAP, np.clip(s, 1.0, np.maximum(1.0, headroom * widest.max() / np.maximum(widest, 1e-12))))
    before = activation_noise.sum() + weight_noise.sum()
    after = (activation_noise / s**2).sum() + (weight_noise * s**2).sum()
    gain = 10 * np.log10(max(before, 1e-30) / max(after, 1e-30))
    return s if gain >= min_gain_db else None


def _scale_producer(producer, s: np.ndarray, keras) -> None:
    w = producer.get_weights()
    if isinstance(producer, keras.layers.DepthwiseConv1D):
        w[0] = w[0] * s.reshape(1, w[0].shape[1], w[0].shape[2])
    elif isinstance(producer, keras.layers.SeparableConv1D):
        w[1] = w[1] * s  # the pointwise kernel's outputs
    else:
        w[0] = w[0] * s
    if producer.use_bias:
        w[-1] = w[-1] * s
    producer.set_weights(w)


def _unscale_consumer(consumer, s: np.ndarray, keras) -> None:
    w = consumer.get_weights()
    if isinstance(consumer, keras.layers.BatchNormalization):
        gamma, beta, mean, var = w
        w = [gamma, beta, mean * s, s * s * (var + consumer.epsilon) - consumer.epsilon]
    elif isinstance(consumer, keras.layers.Dense):
        w[0] = w[0] / s.reshape(-1, 1)
    else:
        w[0] = w[0] / s.reshape(1, -1, 1)
    consumer.set_weights(w)


def equalize(model, calibration: np.ndarray, headroom: float, min_gain_db: float, keras) -> list[dict]:
    """Equalize every producer/consumer pair in place; what was done."""
    producers, _, _ = _layer_kinds(keras)
    done = []
    for producer in model.layers:
        activation = getattr(producer, "activation", None)
        if not isinstance(producer, producers) or activation is None or activation.__name__ not in ("relu", "linear"):
            continue
        consumer = _consumer_after(model, producer, keras)
        s = None if consumer is None else channel_scales(model, producer, consumer, calibration, headroom, min_gain_db,
                                                            keras)
        if s is None:
            continue
        _scale_producer(producer, s, keras)
        _unscale_consumer(consumer, s, keras)
        done.append({"producer": producer.name, "consumer": consumer.name, "largest": round(float(s.max()), 2),
                     "median": round(float(np.median(s)), 2)})
    return done


def scores(path: Path, calibration: np.ndarray, x_test: np.ndarray, want: np.ndarray) -> dict:
    """For the model file `path` (its float outputs on the test set: `want`), by the integer reference:
    the test-set SQNR of `convert`'s recipe choice and of TFLite's recipe, and per candidate recipe
    what the choice sees (in-sample and held-out-fold SQNR on the calibration samples, as
    choose_recipe measures them) with its test-set SQNR."""
    registry = build_registry()
    model, graph, _ = front_end(path, registry)
    recorded = recorded_values(model, graph, calibration)
    seen = float_outputs(model, calibration, recorded).reshape(len(calibration), -1).astype(np.float64)
    candidates = {}
    for recipe in candidate_recipes("auto", "auto", True):
        g = fitted(model, graph, registry, recipe, calibration, recorded=recorded)
        in_sample = dequantized_outputs(g, registry, calibration).reshape(len(calibration), -1).astype(np.float64)
        test = dequantized_outputs(g, registry, x_test).reshape(len(x_test), -1).astype(np.float64)
        held = Fits(model, graph, registry, calibration, recorded).heldout(recipe)
        candidates[recipe.text()] = {"in_sample": sqnr_db(in_sample, seen), "held_out": output_sqnr_db(held, seen),
                                     "test": sqnr_db(test, want)}
    chosen = choose_recipe(model, graph, registry, calibration, candidate_recipes("auto", "auto", True),
                           recorded).chosen.text()
    return {"chosen": chosen, "choice": candidates[chosen]["test"],
            "tflite_recipe": candidates[TFLITE_RECIPE.text()]["test"], "candidates": candidates}


def as_challengers(original: dict, equalized: dict) -> tuple[str, float]:
    """tuning/recipe.py's rule over both models' candidates, TFLite's recipe on the original model the
    incumbent: the chosen candidate and its test-set SQNR."""
    scores = {("original", k): v for k, v in original.items()} | {("equalized", k): v for k, v in equalized.items()}
    incumbent = ("original", TFLITE_RECIPE.text())
    challenger = max((k for k in scores if k != incumbent), key=lambda k: scores[k]["in_sample"])
    c, i = scores[challenger], scores[incumbent]
    chosen = challenger if c["in_sample"] >= i["in_sample"] and c["held_out"] >= i["held_out"] + MARGIN_DB else incumbent
    return f"{chosen[1]} ({chosen[0]})", scores[chosen]["test"]


def main() -> None:
    import keras

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated names (default: all)")
    ap.add_argument("--headroom", type=float, default=1.0, help="keep each channel below this share of the widest")
    ap.add_argument("--min-gain-db", type=float, default=0.0,
                    help="equalize a pair only where the noise model predicts at least this gain")
    ap.add_argument("--heldout-json", type=Path, default=ROOT / "benchmarks" / "out" / "heldout.json")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "heldout_equalize.json")
    args = ap.parse_args()
    tflite = {r["model"]: r["tflite_int8"]["sqnr_db"] for r in json.loads(args.heldout_json.read_text())["rows"]}
    rows = []
    print("| model | half | pairs | ours | ours, equalized | TFLite's recipe | equalized | recipe chosen, equalized "
          "| equalized as challengers |")
    print("|---|---|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for entry in catalog.select("all", args.models.split(",") if args.models else None):
            path = HERE / "models" / f"{entry.name}.h5"
            calibration = np.asarray(entry.calibration_set(), dtype=np.float32)
            x_test = np.asarray(entry.test_set()[0], dtype=np.float32)
            model = keras.models.load_model(path, compile=False)
            before = np.asarray(model.predict(x_test, verbose=0, batch_size=256))
            done = equalize(model, calibration, args.headroom, args.min_gain_db, keras)
            after = np.asarray(model.predict(x_test, verbose=0, batch_size=256))
            drift = float(np.abs(after - before).max() / max(float(np.abs(before).max()), 1e-12))
            assert drift < 1e-4, f"{entry.name}: equalization moved the float model by {drift}"
            equalized = Path(tmp) / f"{entry.name}.h5"
            model.save(equalized)
            onnx_model, _, _ = front_end(path, build_registry())  # the float reference: ONNX Runtime's
            want = float_outputs(onnx_model, x_test).reshape(len(x_test), -1).astype(np.float64)
            row = {"model": entry.name, "half": catalog.HALF[entry.name], "pairs": done,
                   "tflite_int8_db": tflite[entry.name],
                   "original": scores(path, calibration, x_test, want),
                   "equalized": scores(equalized, calibration, x_test, want)}
            row["as_challengers"] = as_challengers(row["original"]["candidates"], row["equalized"]["candidates"])
            rows.append(row)
            t = row["tflite_int8_db"]
            o, e = row["original"], row["equalized"]
            print(f"| {entry.name} | {row['half']} | {len(done)} | {o['choice'] - t:+.2f} | {e['choice'] - t:+.2f} | "
                  f"{o['tflite_recipe'] - t:+.2f} | {e['tflite_recipe'] - t:+.2f} | {e['chosen']} | "
                  f"{row['as_challengers'][1] - t:+.2f} |", flush=True)
    for half in ("dev", "heldback", "all"):
        sel = [r for r in rows if half == "all" or r["half"] == half]
        if not sel:  # --models named none of this half
            continue
        line = []
        for key in ("original", "equalized", "as_challengers"):
            diffs = [(r[key][1] if key == "as_challengers" else r[key]["choice"]) - r["tflite_int8_db"] for r in sel]
            line.append(f"{key}: median {np.median(diffs):+.2f} dB, worst {min(diffs):+.2f}")
        print(f"- {half} ({len(sel)}), ours - TFLite's converter: " + "; ".join(line))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"headroom": args.headroom, "min_gain_db": args.min_gain_db, "rows": rows},
                                    indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
