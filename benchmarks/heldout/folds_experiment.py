"""Does the number of held-out folds matter? (issue 29, part 6; an experiment, not adopted)

`convert` judges two things on folds of the calibration samples (tuning/recipe.py, FOLDS = 3): the
recipe (TFLite's incumbent against the best challenger) and, with `--precision auto`, each width
assignment's held-out SQNR. A fit on two thirds of the samples sets narrower ranges than the final
fit on all of them, so its held-out samples clip more; if that were why the auto estimate falls
6-16 dB short of the test set on some models (part 5), more folds would close the gap.

Per model, from the state a real conversion reaches (its graph, chosen recipe, search samples and
recorded float values, taken by wrapping api.py's calls), for each fold count (0: leave one out):
  - all-int8 and all-int16 held out: the expectation and the lower bound (auto_precision's
    heldout_figures) against the same recipe fitted on all the samples and run on the test set;
  - the recipe choice (choose_recipe) and the chosen recipe's test-set SQNR minus TFLite's converter's
    (from run.py's JSON);
  - a tail model instead of the bootstrap (lognormal_figures): the held-out per-sample noise fitted
    with a log-normal, whose mean extrapolates beyond the worst sample the calibration set holds.

    python benchmarks/heldout/folds_experiment.py [--models a,b] [--folds 3,6,10,0]
        [--heldout-json benchmarks/out/heldout.json] [--json benchmarks/out/heldout_folds.json]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))

import catalog  # noqa: E402

import onnx2cmsis.api as api  # noqa: E402
from onnx2cmsis.quant.quantize import dequantized_outputs  # noqa: E402
from onnx2cmsis.tuning import recipe as recipes  # noqa: E402
from onnx2cmsis.tuning.heldout import heldout_figures  # noqa: E402
from onnx2cmsis.tuning.search import float_outputs, sqnr_db  # noqa: E402


def lognormal_figures(got: np.ndarray, want: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """The expected SQNR and its 16% bootstrap quantile with the noise's mean taken from a log-normal
    fitted to the nonzero per-sample noise (zero-noise samples kept as their share)."""
    noise, signal = np.sum((got - want) ** 2, axis=1), np.sum(want**2, axis=1)

    def db(rows: np.ndarray) -> float:
        e = noise[rows]
        positive = e[e > 0]
        mean = e.mean() if len(positive) < 3 else \
            len(positive) / len(e) * np.exp(np.log(positive).mean() + np.log(positive).var(ddof=1) / 2)
        return float(10 * np.log10(signal[rows].mean() / max(mean, 1e-30)))
    picks = np.random.default_rng(seed).integers(0, len(noise), size=(400, len(noise)))
    return db(np.arange(len(noise))), float(np.quantile([db(p) for p in picks], 0.16))


def captured(path: Path, calibration: np.ndarray) -> dict:
    """What a real `--precision auto` conversion hands the recipe choice and the widths' folds."""
    got: dict = {}
    real_recipe, real_widths = api.choose_recipe, api.widths_heldout

    def recipe_spy(model, graph, registry, x, candidates, recorded=None):
        got.update(candidates=candidates)
        return real_recipe(model, graph, registry, x, candidates, recorded)

    def widths_spy(model, graph, registry, recipe, x, labels, recorded=None):
        got.update(model=model, graph=copy.deepcopy(graph), registry=registry, recipe=recipe, x=x, recorded=recorded)
        return real_widths(model, graph, registry, recipe, x, labels, recorded)

    api.choose_recipe, api.widths_heldout = recipe_spy, widths_spy
    try:  # a budget any width meets: only the state matters here
        api.convert(path, calibration, name="m", default_api=None, precision="auto", max_error_db=1.0)
    finally:
        api.choose_recipe, api.widths_heldout = real_recipe, real_widths
    return got


def measure(entry, folds: list[int], tflite_int8_db: float | None) -> dict:
    s = captured(HERE / "models" / f"{entry.name}.h5", entry.calibration_set())
    model, graph, registry, x, recorded = s["model"], s["graph"], s["registry"], s["x"], s["recorded"]
    n = len(x)
    want = float_outputs(model, x, recorded).reshape(n, -1).astype(np.float64)
    x_test = np.asarray(entry.test_set()[0], dtype=np.float32)
    want_test = float_outputs(model, x_test, None).reshape(len(x_test), -1).astype(np.float64)

    def on_test(recipe, bits) -> float:
        fit = recipes.fitted(model, graph, registry, recipe, x, bits, recorded)
        return sqnr_db(dequantized_outputs(fit, registry, x_test).reshape(len(x_test), -1).astype(np.float64),
                       want_test)

    row = {"model": entry.name, "half": catalog.HALF[entry.name], "samples": n, "recipe": s["recipe"].text(),
           "widths": {}, "choice": {}}
    saved = recipes.FOLDS
    try:
        for width in (8, 16):
            bits = [width if width in registry.for_op(node.op).activation_bits else 8 for node in graph.nodes]
            cell = {"test_db": round(on_test(s["recipe"], bits), 2)}
            for k in folds:
                recipes.FOLDS = n if k == 0 else k
                t0 = time.time()
                got = recipes.Fits(model, graph, registry, x, recorded).heldout(s["recipe"], bits)
                f = heldout_figures(got, want, None)
                cell[str(k)] = {"expected_db": round(f.sqnr_db, 2), "low_db": round(f.low_sqnr_db, 2),
                                "seconds": round(time.time() - t0, 2)}
                if got is not None:
                    ln, ln_low = lognormal_figures(got, want)
                    cell[str(k)].update(lognormal_db=round(ln, 2), lognormal_low_db=round(ln_low, 2))
            row["widths"][str(width)] = cell
        tested: dict = {}
        for k in folds:
            recipes.FOLDS = n if k == 0 else k
            chosen = recipes.choose_recipe(model, graph, registry, x, s["candidates"], recorded).chosen
            if chosen not in tested:
                tested[chosen] = on_test(chosen, None)
            row["choice"][str(k)] = {"recipe": chosen.text(), "vs_tflite_db": None if tflite_int8_db is None
                                     else round(tested[chosen] - tflite_int8_db, 2)}
    finally:
        recipes.FOLDS = saved
    return row


def summary(rows: list[dict], folds: list[int]) -> str:
    """Per half and fold count: the expectation's error against the test set (median, median of its
    size, 90th percentile of its size), how often the lower bound is at or below it, the seconds per
    check, and how many recipe choices differ from the 3-fold one."""
    out = ["| half | folds | expectation - test, median dB | median abs dB | p90 abs dB | lower bound <= test | "
           "s per check, median (max) | recipe choices unlike 3 folds |", "|---|---|---|---|---|---|---|---|"]
    for half in ("dev", "heldback", "all"):
        sel = [r for r in rows if half == "all" or r["half"] == half]
        for k in folds:
            err, held, sec = [], 0, []
            for r in sel:
                for cell in r["widths"].values():
                    if cell["test_db"] > 200:  # a near-lossless output (ppg_sigmoid_bn's int16) says nothing
                        continue
                    c = cell[str(k)]
                    err.append(c["expected_db"] - cell["test_db"])
                    held += c["low_db"] <= cell["test_db"]
                    sec.append(c["seconds"])
            e = np.abs(err)
            differ = sum(r["choice"][str(k)]["recipe"] != r["choice"]["3"]["recipe"] for r in sel) if 3 in folds \
                else "-"
            label = "leave one out" if k == 0 else str(k)
            out.append(f"| {half} | {label} | {np.median(err):+.2f} | {np.median(e):.2f} | {np.quantile(e, 0.9):.2f} | "
                       f"{held}/{len(err)} | {np.median(sec):.2f} ({max(sec):.2f}) | {differ} |")
    first = str(folds[0])
    out += ["", f"| half | estimate ({first} folds) | minus test, median dB | median abs dB | "
            "more than 1 dB above test | bound <= test |", "|---|---|---|---|---|---|"]
    for half in ("dev", "heldback", "all"):
        cells = [c for r in rows if half == "all" or r["half"] == half for c in r["widths"].values()
                 if c["test_db"] <= 200 and "lognormal_db" in c[first]]
        for label, mean, low in (("pooled, bootstrap bound (convert's)", "expected_db", "low_db"),
                                 ("log-normal tail", "lognormal_db", "lognormal_low_db")):
            err = np.array([c[first][mean] - c["test_db"] for c in cells])
            held = sum(c[first][low] <= c["test_db"] for c in cells)
            out.append(f"| {half} | {label} | {np.median(err):+.2f} | {np.median(np.abs(err)):.2f} | "
                       f"{int(np.sum(err > 1))}/{len(err)} | {held}/{len(err)} |")
    changed = [r for r in rows if len({c["recipe"] for c in r["choice"].values()}) > 1]
    if changed:
        out += ["", "| model | half | " + " | ".join(f"{'leave one out' if k == 0 else k} folds: recipe, "
                                                    "ours - TFLite dB" for k in folds) + " |",
                "|---|---|" + "---|" * len(folds)]
        for r in changed:
            cells = [f"{r['choice'][str(k)]['recipe']}, {r['choice'][str(k)]['vs_tflite_db']:+.2f}" for k in folds]
            out.append(f"| {r['model']} | {r['half']} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated names (default: all 25)")
    ap.add_argument("--folds", default="3,6,10,0", help="fold counts to compare (0: leave one out)")
    ap.add_argument("--heldout-json", type=Path, default=ROOT / "benchmarks" / "out" / "heldout.json",
                    help="run.py's JSON, for TFLite's converter's int8 test-set SQNR")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "heldout_folds.json")
    ap.add_argument("--report", action="store_true", help="only print the tables of --json, measured earlier")
    args = ap.parse_args()
    folds = [int(k) for k in args.folds.split(",")]
    if args.report:
        saved = json.loads(args.json.read_text())
        print(summary(saved["rows"], saved["folds"]))
        return
    tflite = {}
    if args.heldout_json.exists():
        measured = json.loads(args.heldout_json.read_text())["rows"]
        tflite = {r["model"]: r["tflite_int8"].get("sqnr_db") for r in measured}
    rows = []
    for entry in catalog.select("all", args.models.split(",") if args.models else None):
        rows.append(measure(entry, folds, tflite.get(entry.name)))
        print(json.dumps(rows[-1]), flush=True)
    text = summary(rows, folds)
    print(text)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"folds": folds, "rows": rows, "summary": text}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
