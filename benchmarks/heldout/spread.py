"""What a calibration set's size can promise (issue 29): how far the SQNR of a set of 32-64 samples is
from the test set's.

Per held-out benchmark model: int8 with TFLite's recipe (min/max ranges, per-channel weights, no bias
correction) fitted on the catalog's calibration samples, run by the integer reference (bit-exact with
the C) on the test set. Printed: the test set's pooled SQNR against the float model; the pooled SQNR
of SUBSETS random subsets of the test samples, each of the calibration set's size (10th, 50th and
90th percentile); and the calibration samples' own SQNR (in-sample: they also set the ranges).

    python benchmarks/heldout/spread.py [--models a,b] [--json benchmarks/out/heldout_spread.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
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
from onnx2cmsis.tuning.recipe import TFLITE_RECIPE, fitted  # noqa: E402
from onnx2cmsis.tuning.search import float_outputs  # noqa: E402

SUBSETS = 2000


def per_sample(model, graph, registry, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each sample's output signal energy (float model) and error energy (the quantized graph)."""
    want = float_outputs(model, x).reshape(len(x), -1).astype(np.float64)
    got = dequantized_outputs(graph, registry, x).reshape(len(x), -1).astype(np.float64)
    return np.sum(want**2, axis=1), np.sum((got - want) ** 2, axis=1)


def pooled_db(signal: np.ndarray, noise: np.ndarray) -> float:
    return float(10 * np.log10(max(signal.sum(), 1e-30) / max(noise.sum(), 1e-30)))


def measure(entry) -> dict:
    registry = build_registry()
    model, graph, _ = front_end(HERE / "models" / f"{entry.name}.h5", registry)
    calibration = np.asarray(entry.calibration_set(), dtype=np.float32)
    x_test = np.asarray(entry.test_set()[0], dtype=np.float32)
    quantized = fitted(model, graph, registry, TFLITE_RECIPE, calibration)
    signal, noise = per_sample(model, quantized, registry, x_test)
    rng = np.random.default_rng(29)
    n = len(calibration)
    subsets = [pooled_db(signal[i], noise[i])
               for i in (rng.choice(len(x_test), n, replace=False) for _ in range(SUBSETS))]
    cal_signal, cal_noise = per_sample(model, quantized, registry, calibration)
    p10, p50, p90 = (float(v) for v in np.percentile(subsets, [10, 50, 90]))
    return {"model": entry.name, "half": catalog.HALF[entry.name], "calibration_samples": n,
            "test_db": pooled_db(signal, noise), "subset_p10_db": p10, "subset_p50_db": p50, "subset_p90_db": p90,
            "calibration_in_sample_db": pooled_db(cal_signal, cal_noise)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated names (default: all)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "heldout_spread.json")
    args = ap.parse_args()
    rows = []
    print("| model | cal | test set | subsets p10 / p50 / p90 | calibration, in-sample |")
    print("|---|---|---|---|---|")
    for entry in catalog.select("all", args.models.split(",") if args.models else None):
        r = measure(entry)
        rows.append(r)
        print(f"| {r['model']} | {r['calibration_samples']} | {r['test_db']:.2f} | {r['subset_p10_db']:.1f} / "
              f"{r['subset_p50_db']:.1f} / {r['subset_p90_db']:.1f} | {r['calibration_in_sample_db']:.2f} |", flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"subsets": SUBSETS, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
