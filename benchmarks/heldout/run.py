"""The held-out benchmark (issue 29): onnx2cmsis against TensorFlow's TFLite converter on models the
repository was never tuned on (catalog.py; trained by make_models.py).

Per model, with the catalog's calibration samples and test set, six quantized versions are scored
against the float Keras model: ours int8 (defaults), TFLite full int8 (run in tflite-micro), ours
int16, TFLite 16x8 (where it converts and runs), and ours int8 with TFLite's recipe forced
(min/max calibration, per-channel dense weights, no bias correction), and ours with `--precision
auto` and a budget halfway between ours int8's and int16's test-set SQNR (run_auto). Ours runs as
generated C built for the host. Each ours - TFLite difference comes with its 90% interval over paired
bootstrap resamples of the test set (paired_resamples): how much of it the test samples decide.
Prints a table; writes JSON and, with --markdown, the tables for the docs.

    python benchmarks/heldout/run.py [--half dev|heldback|all] [--models a,b]
        [--json benchmarks/out/heldout.json] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import ModuleType

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# accuracy.py imports benchmarks/models' own `catalog` and `data`; it is imported first, and ours
# (same module names) loaded beside it by _load_heldout without replacing them.
from accuracy import Case, run_tflite, score, tflite_quantized  # noqa: E402

from onnx2cmsis.api import convert  # noqa: E402
from onnx2cmsis.arith.rules import dequantize_tensor  # noqa: E402
from onnx2cmsis.drivers.evaluate import quantize_inputs  # noqa: E402
from onnx2cmsis.targets.host import build_conversions  # noqa: E402

# Our three conversions per model: column name -> convert() settings.
OURS = {
    "ours_int8": {},
    "ours_int16": {"precision": "int16"},
    "ours_tflite_recipe": {"calibration_method": "minmax", "dense_weights": "per-channel", "bias_correction": False,
                           "weight_rounding": "nearest", "range_floors": False},
}
TRIM = 3  # samples dropped, per side, for the "without the worst samples" SQNR
RESAMPLES = 1000  # paired bootstrap resamples of the test set (seeded), for how far its 600 samples decide


def _load_heldout() -> ModuleType:
    saved = {k: sys.modules.pop(k) for k in ("catalog", "data") if k in sys.modules}
    sys.path.insert(0, str(HERE))
    try:
        return importlib.import_module("catalog")
    finally:
        sys.path.remove(str(HERE))
        sys.modules.pop("catalog", None)
        sys.modules.pop("data", None)
        sys.modules.update(saved)


heldout = _load_heldout()


def measure(got: np.ndarray, want: np.ndarray, case: Case, targets: np.ndarray) -> dict:
    """accuracy.score plus what issue 29 asks for: SQNR without this side's TRIM worst samples (by
    per-sample squared error against float), test errors (classification) or MSE (regression)."""
    s = score(got, want, case)
    g = got.reshape(len(got), -1).astype(np.float64)
    w = want.reshape(len(want), -1).astype(np.float64)
    per_sample = np.sum((g - w) ** 2, axis=1)
    keep = np.argsort(per_sample)[: len(per_sample) - TRIM]
    trimmed = 10 * np.log10(np.sum(w[keep] ** 2) / max(float(np.sum(per_sample[keep])), 1e-30))
    out = {"sqnr_db": s.sqnr_db, "sqnr_db_trim": float(trimmed), "max_abs_error": s.max_abs_error,
           # per sample: squared error and the float output's power, for paired_resamples (not written out)
           "_noise": per_sample, "_signal": np.sum(w**2, axis=1)}
    if case.task == "regression":
        out["mse"] = float(np.mean((g - targets.reshape(len(targets), -1)) ** 2))
    else:
        out["accuracy"] = s.accuracy
        out["errors"] = int(np.sum(g.argmax(1) != targets))
        out["argmax_agreement"] = s.argmax_agreement
        out["_wrong"] = g.argmax(1) != targets
    return out


def paired_resamples(row: dict) -> dict:
    """How much of ours - TFLite the test set's own sampling decides: the difference recomputed on
    RESAMPLES bootstrap resamples of the test samples, the same resample for both sides (the float
    output's power cancels in a difference of SQNRs), int8 and int16 SQNR in dB and int8 test errors.
    And --precision auto's test SQNR minus its budget (the budget is set from the same test samples).
    Drops the per-sample arrays from the row's cells."""
    cells = [c for c in row.values() if isinstance(c, dict)]
    cells += [c for c in (row.get("ours_auto") or {}).values() if isinstance(c, dict)]  # its --max-arena runs
    out = {}
    noise = {col: row[col].get("_noise") for col in ("ours_int8", "tflite_int8", "ours_int16", "tflite_int16")
             if isinstance(row.get(col), dict)}
    n = next(len(v) for v in noise.values() if v is not None)
    picks = np.random.default_rng(29).integers(0, n, size=(RESAMPLES, n))
    for label, ours, theirs in (("int8", "ours_int8", "tflite_int8"), ("int16", "ours_int16", "tflite_int16")):
        if noise.get(ours) is not None and noise.get(theirs) is not None:
            ratio = np.maximum(noise[theirs][picks].sum(1), 1e-30) / np.maximum(noise[ours][picks].sum(1), 1e-30)
            out[f"{label}_sqnr_db"] = np.round(10 * np.log10(ratio), 3).tolist()
    auto = row.get("ours_auto") or {}
    if auto.get("_noise") is not None and noise.get("ours_int8") is not None and noise.get("ours_int16") is not None:
        signal = row["ours_int8"]["_signal"][picks].sum(1)

        def db(e: np.ndarray) -> np.ndarray:
            return 10 * np.log10(signal / np.maximum(e[picks].sum(1), 1e-30))
        # the budget is set from the same test samples: resampled with them
        out["auto_vs_budget_db"] = np.round(db(auto["_noise"]) - (db(noise["ours_int8"]) + db(noise["ours_int16"])) / 2,
                                            3).tolist()
    wrong = [row.get(c, {}).get("_wrong") for c in ("ours_int8", "tflite_int8")]
    if all(w is not None for w in wrong):
        out["int8_errors"] = (wrong[0][picks].sum(1) - wrong[1][picks].sum(1)).astype(int).tolist()
    for c in cells:
        for private in ("_noise", "_signal", "_wrong"):
            c.pop(private, None)
    return out


def run_ours(entry, path: Path, case: Case, want: np.ndarray, y: np.ndarray) -> dict:
    convs = {col: convert(path, case.calibration, name=f"m{k}", default_api=None, **settings)
             for k, (col, settings) in enumerate(OURS.items())}
    out = _scored(convs, case, want, y)
    out["ours_auto"] = run_auto(path, case, want, y, out)
    return out


def run_auto(path: Path, case: Case, want: np.ndarray, y: np.ndarray, out: dict) -> dict:
    """Issue 29's `--precision auto` goal: the budget is the mean of all-int8's and all-int16's SQNR
    on the test set (set after measuring them, so unknown to the conversion, which sees only the
    calibration samples); the test-set SQNR should stay within AUTO_SLACK_DB of it and the arena at
    most the mean of the two uniform arenas."""
    budget = round((out["ours_int8"]["sqnr_db"] + out["ours_int16"]["sqnr_db"]) / 2, 2)
    limit = (out["ours_int8"]["arena_bytes"] + out["ours_int16"]["arena_bytes"]) // 2
    # the goal's arena half as --max-arena: with the budget (both halves asked of the choice), and
    # alone (the most accurate widths within it)
    limited = {"within_arena": {"max_error_db": budget, "max_arena_bytes": limit},
               "arena_only": {"max_arena_bytes": limit}}
    cells: dict = {}
    for key, settings in {"budget_only": {"max_error_db": budget}, **limited}.items():
        try:
            conv = convert(path, case.calibration, name="mauto", default_api=None, precision="auto", **settings)
        except Exception as exc:  # e.g. no per-layer precision reaches the budget on the calibration samples
            cells[key] = {"budget_db": budget, "fails": str(exc).splitlines()[0][:160]}
            continue
        cell = _scored({"ours_auto": conv}, case, want, y)["ours_auto"]
        cells[key] = {**cell, "budget_db": budget, "auto_precision": conv.report["quantization"]["auto_precision"]}
    return {**cells["budget_only"], **{key: {**cells[key], "max_arena_bytes": limit} for key in limited}}


def _scored(convs: dict, case: Case, want: np.ndarray, y: np.ndarray) -> dict:
    """Each conversion built for the host, run on the test set and measured, with its arena."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        built = build_conversions(list(convs.values()), Path(tmp))
        for col, conv in convs.items():
            xq = quantize_inputs(conv, case.x_test)
            raw = np.stack([built[conv.name](s) for s in xq])
            got = dequantize_tensor(raw, conv.graph.tensors[conv.graph.outputs[0]].quant)
            out[col] = {**measure(got, want, case, y), "recipe": conv.report["quantization"]["recipe"],
                        "arena_bytes": conv.plan.arena_bytes}
    return out


def run_theirs(model, case: Case, want: np.ndarray, y: np.ndarray) -> dict:
    out = {}
    for col, precision in (("tflite_int8", "int8"), ("tflite_int16", "int16")):
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # the converter's SavedModel chatter
                flat = tflite_quantized(model, case.calibration, precision)
            got, runtime = run_tflite(flat, case.x_test)
            out[col] = {**measure(got, want, case, y), "runtime": runtime}
        except Exception as exc:  # the converter or both runtimes refuse the model: recorded, not fatal
            out[col] = {"fails": str(exc).splitlines()[0][:100] if str(exc) else type(exc).__name__}
    return out


def run_model(entry) -> dict:
    import keras

    path = HERE / "models" / f"{entry.name}.h5"
    model = keras.models.load_model(path, compile=False)
    x_test, y = entry.test_set()
    case = Case(entry.name, path, entry.task, entry.calibration_set(), x_test,
                None if entry.task == "regression" else y)
    want = np.asarray(model.predict(x_test, verbose=0, batch_size=256))
    row = {"model": entry.name, "half": heldout.HALF[entry.name], "task": entry.task, "data": entry.data,
           "parameters": int(model.count_params()), "calibration_samples": entry.calibration,
           "test_samples": entry.test,
           "float": measure(want, want, case, y)}
    t0 = time.time()
    row.update(run_ours(entry, path, case, want, y))
    row.update(run_theirs(model, case, want, y))
    row["seconds"] = round(time.time() - t0, 1)
    row["resampled"] = paired_resamples(row)
    return row


def main() -> None:
    sys.path.insert(0, str(HERE))
    from heldout_report import auto_limit_markdown, auto_markdown, intervals_markdown, markdown, print_row, summary

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--half", choices=("dev", "heldback", "all"), default="all")
    ap.add_argument("--models", help="comma-separated names (overrides --half)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "heldout.json")
    ap.add_argument("--markdown", type=Path, help="also write the markdown table and summary here")
    args = ap.parse_args()
    start = time.time()
    rows = []
    for entry in heldout.select(args.half, args.models.split(",") if args.models else None):
        rows.append(run_model(entry))
        print_row(rows[-1])
    text = "\n\n".join([markdown(rows), intervals_markdown(rows), auto_markdown(rows), auto_limit_markdown(rows),
                         summary(rows)])
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"half": args.half, "rows": rows}, indent=2) + "\n")
    if args.markdown:
        args.markdown.write_text(text + "\n")
    print(f"wrote {args.json}; {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
