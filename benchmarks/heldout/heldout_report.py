"""Tables and summary lines for run.py's rows (one dict per model, as written to its JSON)."""

from __future__ import annotations

import numpy as np

from onnx2cmsis.tuning.recipe import OWN_RECIPES, TFLITE_RECIPE

LOSS_MARGIN_DB = 0.2  # "ours worse than TFLite" below this many dB, as issue 29 counts it
AUTO_SLACK_DB = 1.0  # --precision auto: the test-set SQNR may fall this far below its budget (issue 29)
PAIRS = (("int8", "ours_int8", "tflite_int8"), ("int16", "ours_int16", "tflite_int16"))
INTERVAL = (5, 95)  # percentiles of the paired resamples (run.py's paired_resamples): a 90% interval


def _ok(cell: dict | None) -> bool:
    return cell is not None and "sqnr_db" in cell


def _diff(row: dict, ours: str, theirs: str) -> float | None:
    return row[ours]["sqnr_db"] - row[theirs]["sqnr_db"] if _ok(row[ours]) and _ok(row[theirs]) else None


def _task_score(cell: dict) -> str:
    return f"{cell['accuracy']:.3f}" if "accuracy" in cell else f"{cell['mse']:.4f}"


def _sqnr(cell: dict) -> str:
    if not _ok(cell):
        return "fails"
    star = " *" if cell.get("runtime", "tflite-micro") != "tflite-micro" else ""
    return f"{cell['sqnr_db']:.2f} ({cell['sqnr_db_trim']:.2f}){star}"


def _errors_diff(row: dict, ours: str, theirs: str) -> str:
    if "errors" not in row["float"] or not (_ok(row[ours]) and _ok(row[theirs])):
        return "-"
    return f"{row[ours]['errors'] - row[theirs]['errors']:+d}"


RECIPES = {(r.calibration_method, r.dense_weights, r.bias_correction): name
           for name, r in zip(("TFLite's", "measured", "mse"), (TFLITE_RECIPE, *OWN_RECIPES))}


def _recipe(cell: dict) -> str:
    """The quantization recipe our conversion chose (tuning/recipe.py), by its short name."""
    chosen = (cell.get("recipe") or {}).get("chosen")
    if not chosen:
        return "-"
    key = (chosen["calibration_method"], chosen["dense_weights"], chosen["bias_correction"])
    return RECIPES.get(key, "/".join(str(k) for k in key))


def print_row(row: dict) -> None:
    d8, d16 = _diff(row, "ours_int8", "tflite_int8"), _diff(row, "ours_int16", "tflite_int16")
    fmt = lambda d: "  n/a " if d is None else f"{d:+6.2f}"  # noqa: E731
    print(f"{row['model']:30s} {row['half']:8s} float {_task_score(row['float'])}  "
          f"int8 ours {_sqnr(row['ours_int8'])} tfl {_sqnr(row['tflite_int8'])} d {fmt(d8)}  "
          f"int16 ours {_sqnr(row['ours_int16'])} tfl {_sqnr(row['tflite_int16'])} d {fmt(d16)}  "
          f"recipe {_sqnr(row['ours_tflite_recipe'])}  ({row['seconds']} s)", flush=True)


def markdown(rows: list[dict]) -> str:
    """One row per model: SQNR vs float in dB (in brackets: without each side's 3 worst test
    samples), ours minus TFLite, accuracy or MSE on the labels/targets, and errors ours - TFLite."""
    head = ["model", "half", "task", "cal", "float acc/MSE", "ours int8", "TFLite int8", "int8 ours-TFLite",
            "ours int16", "TFLite 16x8", "int16 ours-TFLite", "ours, TFLite recipe", "recipe int8 / int16",
            "acc/MSE ours8 / TFL8 / ours16 / TFL16", "errors ours8-TFL8", "errors ours16-TFL16"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        scores = " / ".join(_task_score(r[c]) if _ok(r[c]) else "-"
                            for c in ("ours_int8", "tflite_int8", "ours_int16", "tflite_int16"))
        diffs = [_diff(r, o, t) for _, o, t in PAIRS]
        d = ["-" if x is None else f"{x:+.2f}" for x in diffs]
        lines.append("| " + " | ".join([
            r["model"], r["half"], r["task"], str(r["calibration_samples"]), _task_score(r["float"]),
            _sqnr(r["ours_int8"]), _sqnr(r["tflite_int8"]), d[0],
            _sqnr(r["ours_int16"]), _sqnr(r["tflite_int16"]), d[1], _sqnr(r["ours_tflite_recipe"]),
            f"{_recipe(r['ours_int8'])} / {_recipe(r['ours_int16'])}",
            scores, _errors_diff(r, "ours_int8", "tflite_int8"), _errors_diff(r, "ours_int16", "tflite_int16"),
        ]) + " |")
    return "\n".join(lines)


def _errors_summary(rows: list[dict]) -> str:
    """Issue 29's error goal at int8: ours <= TFLite's + max(1, 0.5% of the test samples) on every
    classifier, and the median difference <= 0; beside it, the test samples whose class differs
    from the float model's, ours - TFLite's."""
    classifiers = [r for r in rows if "errors" in r["float"] and _ok(r["ours_int8"]) and _ok(r["tflite_int8"])]
    d = [(r["ours_int8"]["errors"] - r["tflite_int8"]["errors"], max(1, int(0.005 * r["test_samples"])))
         for r in classifiers]
    if not d:
        return "errors: no classifiers"
    over = sum(1 for x, allowed in d if x > allowed)
    # against the labels, quantization noise can turn a float error right as easily as wrong (a model
    # that errs on 30% of its test set): how often each side leaves the float model's class says
    # which one follows the float model, apart from that luck
    flips = [_disagreements(r, "ours_int8") - _disagreements(r, "tflite_int8") for r in classifiers]
    return (f"int8 errors ours-TFLite: median {np.median([x for x, _ in d]):+.1f}, worst {max(x for x, _ in d):+d}, "
            f"over the allowance on {over}/{len(d)} (class changes from the float model's, ours-TFLite: median "
            f"{np.median(flips):+.1f}, worst {max(flips):+d})")


def _disagreements(row: dict, col: str) -> int:
    """Test samples whose class (argmax) differs from the float model's."""
    return int(round((1 - row[col]["argmax_agreement"]) * row["test_samples"]))


def auto_cells(row: dict) -> tuple[str, str, str, str]:
    """--precision auto's budget, test-set SQNR, arena and the two uniform arenas' mean."""
    cell = row.get("ours_auto")
    if not cell:
        return "-", "-", "-", "-"
    mean_arena = (row["ours_int8"]["arena_bytes"] + row["ours_int16"]["arena_bytes"]) / 2
    if "fails" in cell:
        return f"{cell['budget_db']:.2f}", "fails", "-", f"{mean_arena:.0f}"
    chosen = (cell.get("auto_precision") or {}).get("chosen", {})
    expected, low = chosen.get("heldout_sqnr_db"), chosen.get("heldout_low_sqnr_db")
    sqnr = f"{cell['sqnr_db']:.2f}" + ("" if expected is None else f" (expected {expected:.2f}"
                                       + ("" if low is None else f", lower bound {low:.2f}") + ")")
    return f"{cell['budget_db']:.2f}", sqnr, str(cell["arena_bytes"]), f"{mean_arena:.0f}"


def _auto_summary(rows: list[dict]) -> str:
    """Issue 29's auto goal: test SQNR >= budget - AUTO_SLACK_DB and arena <= the mean of all-int8's
    and all-int16's, on every model."""
    cells = [(r, r["ours_auto"]) for r in rows if r.get("ours_auto")]
    if not cells:
        return "auto: not run"
    ran = [(r, c) for r, c in cells if "fails" not in c]
    short = [c["sqnr_db"] - c["budget_db"] for _, c in ran]
    sqnr_ok = sum(1 for d in short if d >= -AUTO_SLACK_DB)
    arena_ok = sum(1 for r, c in ran
                   if c["arena_bytes"] <= (r["ours_int8"]["arena_bytes"] + r["ours_int16"]["arena_bytes"]) / 2)
    return (f"auto: test SQNR >= budget - {AUTO_SLACK_DB:g} dB on {sqnr_ok}/{len(cells)} (worst "
            f"{min(short, default=float('nan')):+.2f} dB, {len(cells) - len(ran)} refused), "
            f"arena <= the uniform mean on {arena_ok}/{len(cells)}")


def _limited(cell: dict) -> str:
    """A --max-arena conversion's test SQNR and arena, or that it was refused."""
    if not cell:
        return "-"
    if "fails" in cell:
        return "refused"
    return f"{cell['sqnr_db']:.2f} dB, {cell['arena_bytes']} B"


def auto_limit_markdown(rows: list[dict]) -> str:
    """One row per model: the goal's arena as --max-arena, with the budget and alone."""
    lines = ["| model | half | budget dB | arena limit B | budget and limit: test SQNR, arena | limit alone: test SQNR, "
             "arena | limit alone - budget dB |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        auto = r.get("ours_auto") or {}
        within, alone = auto.get("within_arena") or {}, auto.get("arena_only") or {}
        if not within and not alone:
            continue
        gap = f"{alone['sqnr_db'] - alone['budget_db']:+.2f}" if "sqnr_db" in alone else "-"
        lines.append(f"| {r['model']} | {r['half']} | {auto['budget_db']:.2f} | "
                     f"{(within or alone).get('max_arena_bytes', '-')} | {_limited(within)} | {_limited(alone)} | {gap} |")
    return "\n".join(lines)


def _auto_limit_summary(rows: list[dict]) -> str:
    """The goal's two halves with the arena given as --max-arena."""
    within = [r["ours_auto"]["within_arena"] for r in rows if (r.get("ours_auto") or {}).get("within_arena")]
    alone = [r["ours_auto"]["arena_only"] for r in rows if (r.get("ours_auto") or {}).get("arena_only")]
    if not within and not alone:
        return "auto with --max-arena: not run"
    both = sum(1 for c in within if "sqnr_db" in c and c["sqnr_db"] >= c["budget_db"] - AUTO_SLACK_DB)
    refused = sum(1 for c in within if "fails" in c)
    near = sum(1 for c in alone if "sqnr_db" in c and c["sqnr_db"] >= c["budget_db"] - AUTO_SLACK_DB)
    return (f"auto with the arena as --max-arena: with the budget both halves met on {both}/{len(within)} "
            f"({refused} refused), the limit alone within {AUTO_SLACK_DB:g} dB of the budget on {near}/{len(alone)}")


def auto_markdown(rows: list[dict]) -> str:
    """One row per model: --precision auto against its budget and the uniform arenas."""
    lines = ["| model | half | budget dB | auto test SQNR dB | auto arena B | mean of int8/int16 arenas B |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append("| " + " | ".join([r["model"], r["half"], *auto_cells(r)]) + " |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> str:
    """Per half and overall: median and worst of ours - TFLite (dB), and how many models lose by
    more than LOSS_MARGIN_DB, for int8 and int16 (models where TFLite fails are left out)."""
    out = []
    for half in ("dev", "heldback", "all"):
        sel = [r for r in rows if half == "all" or r["half"] == half]
        if not sel:
            continue
        parts = []
        for label, ours, theirs in PAIRS + (("recipe-vs-TFLite int8", "ours_tflite_recipe", "tflite_int8"),):
            d = np.array([x for x in (_diff(r, ours, theirs) for r in sel) if x is not None])
            if len(d) == 0:
                parts.append(f"{label}: no comparable models")
                continue
            losses = int(np.sum(d < -LOSS_MARGIN_DB))
            key = {"int8": "int8_sqnr_db", "int16": "int16_sqnr_db"}.get(label)
            spread = median_interval(sel, key) if key else None
            within = "" if spread is None else \
                f" (90% interval over test-set resamples {spread[0]:+.2f} to {spread[1]:+.2f})"
            parts.append(f"{label}: median {np.median(d):+.2f} dB{within}, worst {d.min():+.2f} dB, "
                         f"ours < TFLite - {LOSS_MARGIN_DB} dB on {losses}/{len(d)}")
        parts.append(_errors_summary(sel))
        parts.append(_auto_summary(sel))
        parts.append(_auto_limit_summary(sel))
        out.append(f"- {half} ({len(sel)} models): " + "; ".join(parts))
    return "\n".join(out)


def _interval(values) -> tuple[float, float]:
    lo, hi = np.percentile(np.asarray(values, dtype=np.float64), INTERVAL)
    return float(lo), float(hi)


def intervals_markdown(rows: list[dict]) -> str:
    """Per model: ours - TFLite with its 90% interval over paired resamples of the test set (how far
    the 600 test samples, not the tools, decide the difference), int8 and int16 SQNR and int8 errors;
    and --precision auto's test SQNR against its budget (which the same samples set)."""
    lines = ["| model | half | int8 ours-TFLite dB | int16 ours-TFLite dB | int8 errors ours-TFLite | "
             "auto test SQNR - budget dB |", "|---|---|---|---|---|---|"]
    for r in rows:
        res = r.get("resampled") or {}
        auto = r.get("ours_auto") or {}
        cells = []
        for key, diff, fmt in (
                ("int8_sqnr_db", _diff(r, "ours_int8", "tflite_int8"), "{:+.2f}"),
                ("int16_sqnr_db", _diff(r, "ours_int16", "tflite_int16"), "{:+.2f}"),
                ("int8_errors", r["ours_int8"].get("errors", 0) - r["tflite_int8"].get("errors", 0)
                 if _ok(r["ours_int8"]) and _ok(r["tflite_int8"]) else None, "{:+.0f}"),
                ("auto_vs_budget_db", auto["sqnr_db"] - auto["budget_db"] if "sqnr_db" in auto else None, "{:+.2f}")):
            if key not in res or diff is None:
                cells.append("-")
                continue
            lo, hi = _interval(res[key])
            cells.append(f"{fmt.format(diff)} ({fmt.format(lo)} to {fmt.format(hi)})")
        lines.append("| " + " | ".join([r["model"], r["half"], *cells]) + " |")
    return "\n".join(lines)


def median_interval(rows: list[dict], key: str = "int8_sqnr_db") -> tuple[float, float] | None:
    """The 90% interval of the median over models of ours - TFLite, each model's test set resampled
    independently (resample k of every model taken together)."""
    got = [r["resampled"][key] for r in rows if key in (r.get("resampled") or {})]
    if not got:
        return None
    return _interval(np.median(np.asarray(got, dtype=np.float64), axis=0))
