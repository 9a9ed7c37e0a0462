"""Per-layer error attribution on a held-out benchmark model (issue 29): where ours and TFLite's
converter part ways, layer by layer and sample by sample.

For each Keras layer (Dropout and Flatten aside: they move no numbers), the model is cut after it and
both tools convert the cut model with the catalog's calibration samples: ours with the recipe the
whole model got (so every cut is quantized the same way; `--recipe` forces a candidate), TFLite's
full-integer converter run in tflite-micro. On the first SAMPLES test samples, each cut's dequantized
output is compared with the float cut model: SQNR (dB), SQNR without each side's 3 worst samples,
and the share of samples on which ours is closer to float than TFLite's.

    python benchmarks/heldout/attribute.py MODEL [--samples 200] [--recipe default|tflite|measured|mse]
        [--json benchmarks/out/attribution_MODEL.json]
"""

from __future__ import annotations

import argparse
import contextlib
import io
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
sys.path.insert(0, str(ROOT / "benchmarks"))

from run import heldout, run_tflite, tflite_quantized  # noqa: E402  (run.py loads the catalog)

from onnx2cmsis.api import convert  # noqa: E402
from onnx2cmsis.arith.rules import dequantize_tensor  # noqa: E402
from onnx2cmsis.drivers.evaluate import quantize_inputs  # noqa: E402
from onnx2cmsis.tuning.recipe import OWN_RECIPES, TFLITE_RECIPE  # noqa: E402

SKIPPED = ("Dropout", "Flatten", "InputLayer")
TRIM = 3
RECIPES = {name: recipe.describe() for name, recipe in zip(("tflite", "measured", "mse"), (TFLITE_RECIPE, *OWN_RECIPES))}


def _sqnr(got: np.ndarray, want: np.ndarray, trim: int = 0) -> float:
    per = np.sum((got - want) ** 2, axis=1)
    keep = np.argsort(per)[: len(per) - trim]
    return float(10 * np.log10(np.sum(want[keep] ** 2) / max(float(np.sum(per[keep])), 1e-30)))


def _ours(path: Path, calibration: np.ndarray, x: np.ndarray, settings: dict) -> np.ndarray:
    conv = convert(path, calibration, name="cut", default_api=None, **settings)
    raw = conv.references(quantize_inputs(conv, x))
    return dequantize_tensor(raw, conv.graph.tensors[conv.graph.outputs[0]].quant).reshape(len(x), -1)


def attribute(name: str, samples: int, recipe: str) -> dict:
    import keras

    entry = heldout.MODELS[name]
    model = keras.models.load_model(HERE / "models" / f"{name}.h5", compile=False)
    calibration = entry.calibration_set()
    x = entry.test_set()[0][:samples]
    whole = convert(HERE / "models" / f"{name}.h5", calibration, name="whole", default_api=None)
    chosen = whole.report["quantization"]["recipe"]["chosen"]
    settings = RECIPES.get(recipe, chosen)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for layer in model.layers:
            if type(layer).__name__ in SKIPPED:
                continue
            cut = keras.Model(model.inputs, layer.output)
            path = Path(tmp) / f"{layer.name}.h5"
            cut.save(path)
            want = np.asarray(cut.predict(x, verbose=0, batch_size=256)).reshape(len(x), -1).astype(np.float64)
            ours = _ours(path, calibration, x, settings)
            with contextlib.redirect_stdout(io.StringIO()):
                theirs = run_tflite(tflite_quantized(cut, calibration), x)[0].reshape(len(x), -1)
            closer = np.sum((ours - want) ** 2, axis=1) < np.sum((theirs - want) ** 2, axis=1)
            ties = np.sum((ours - want) ** 2, axis=1) == np.sum((theirs - want) ** 2, axis=1)
            rows.append({"layer": layer.name, "type": type(layer).__name__,
                         "ours_db": _sqnr(ours, want), "tflite_db": _sqnr(theirs, want),
                         "ours_trim_db": _sqnr(ours, want, TRIM), "tflite_trim_db": _sqnr(theirs, want, TRIM),
                         "ours_closer": float(np.mean(closer)), "ties": float(np.mean(ties))})
            r = rows[-1]
            print(f"{r['layer']:<28} {r['type']:<22} ours {r['ours_db']:6.2f} ({r['ours_trim_db']:6.2f})  "
                  f"TFLite {r['tflite_db']:6.2f} ({r['tflite_trim_db']:6.2f})  d {r['ours_db'] - r['tflite_db']:+6.2f}"
                  f"  ours closer on {100 * r['ours_closer']:3.0f}% (ties {100 * r['ties']:3.0f}%)", flush=True)
    return {"model": name, "samples": len(x), "recipe": settings, "whole_model_recipe": chosen, "layers": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", choices=sorted(heldout.MODELS))
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--recipe", choices=("default", *RECIPES), default="default",
                    help="ours with the recipe the whole model got (default) or one of the candidates forced")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    result = attribute(args.model, args.samples, args.recipe)
    out = args.json or ROOT / "benchmarks" / "out" / f"attribution_{args.model}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
