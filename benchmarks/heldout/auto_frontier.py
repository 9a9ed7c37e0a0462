"""How far `--precision auto` can go on the held-out benchmark (issue 29): is its goal attainable at
all, and does its walk find the cheapest assignment its own rule allows?

The goal: with a budget at the mean of all-int8's and all-int16's test-set SQNR, the chosen widths
keep the test-set SQNR >= budget - 1 dB with an arena at most the mean of the two uniform arenas.
Per model with at most --max-layers layers that can change width, every assignment of int8/int16
to those layers is measured: its arena (the memory plan `convert` makes) and its SQNR on the test
set (integer reference, bit-exact with the C). The widths are measured as the choice sees them,
before bias correction (which `convert` applies after choosing widths), so the budget here is the
mean of these all-int8 and all-int16 figures. "Attainable": how many assignments meet both halves
of the goal on the test set; "best": the highest test SQNR of an assignment within the arena.

Then the choice itself, at run.py's budget (from its JSON): `convert`'s walk (tuning/auto_precision.py:
prefix walk by sensitivity, the walk at the arena's peak, refinement, held-out check) against an
exhaustive search under the same rule: the cheapest assignment whose interpolated held-out lower
bound (interpolated between the uniform widths' only) meets the budget, each in cost order checked
on held-out folds until one's measured lower bound does (at most CHECKS; then all-int16).

The state the choice starts from (graph, ranges, search samples, held-out check) is taken from a
real conversion by wrapping `choose_precision` where api.py calls it; the measuring and layer
grouping are auto_precision's own (tuning/width_measure.py).

    python benchmarks/heldout/auto_frontier.py [--models a,b] [--max-layers 11]
        [--heldout-json benchmarks/out/heldout.json] [--json benchmarks/out/heldout_auto_frontier.json]
"""

from __future__ import annotations

import argparse
import copy
import itertools
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

import onnx2cmsis.api as api  # noqa: E402
from onnx2cmsis.tuning import width_measure  # noqa: E402

CHECKS = 6  # held-out checks of the exhaustive search's candidates, cheapest first


def starting_state(path: Path, calibration: np.ndarray, budget: float) -> dict:
    """What `choose_precision` is given in a real conversion at `budget`, and what it chose (None:
    refused)."""
    state: dict = {}
    real = api.choose_precision

    def spy(graph, registry, ranges, x, want, target, cmsis_api, heldout=None, **kw):
        state.update(graph=copy.deepcopy(graph), registry=registry, ranges=ranges, x=x, want=want,
                     api=cmsis_api, heldout=heldout, fit_rounding=kw.get("fit_rounding"))
        state["choice"] = real(graph, registry, ranges, x, want, target, cmsis_api, heldout, **kw)
        return state["choice"]

    api.choose_precision = spy
    try:
        api.convert(path, calibration, name="m", default_api=None, precision="auto", max_error_db=budget)
    except Exception as exc:  # refused: the state is there all the same
        state.setdefault("refused", str(exc).splitlines()[0][:120])
    finally:
        api.choose_precision = real
    state.setdefault("choice", None)
    return state


def measure(entry, budget: float, max_layers: int) -> dict:
    import keras

    path = HERE / "models" / f"{entry.name}.h5"
    model = keras.models.load_model(path, compile=False)
    x_test = np.asarray(entry.test_set()[0], dtype=np.float32)
    want = np.asarray(model.predict(x_test, verbose=0, batch_size=256)).reshape(len(x_test), -1).astype(np.float64)
    s = starting_state(path, entry.calibration_set(), budget)
    g, registry = s["graph"], s["registry"]
    leader = width_measure.leaders(g, registry)
    int8_only = {leader[i] for i, n in enumerate(g.nodes) if 16 not in registry.for_op(n.op).activation_bits}
    units = sorted(set(leader) - int8_only)
    row = {"model": entry.name, "half": catalog.HALF[entry.name], "layers": len(units), "budget_db": budget}
    if len(units) > max_layers:
        return {**row, "skipped": f"{len(units)} layers, 2^{len(units)} assignments"}

    def bits(int16: frozenset) -> list[int]:
        return [16 if leader[i] in int16 else 8 for i in range(len(g.nodes))]

    # each assignment with the weight codes the conversion gives it (fitted where the recipe fits them)
    on_test = width_measure.WidthMeasure(g, registry, s["ranges"], x_test, want, s["api"], None, leader,
                                         fit_rounding=s["fit_rounding"])
    on_cal = width_measure.WidthMeasure(g, registry, s["ranges"], s["x"], s["want"], s["api"], None, leader,
                                        fit_rounding=s["fit_rounding"])
    assignments = [frozenset(c) for k in range(len(units) + 1) for c in itertools.combinations(units, k)]
    cal = {a: on_cal(bits(a)) for a in assignments}
    none, every = frozenset(), frozenset(units)
    t8, t16 = on_test(bits(none)), on_test(bits(every))
    own_budget = (t8.sqnr_db + t16.sqnr_db) / 2
    mean_arena = (cal[none].arena_bytes + cal[every].arena_bytes) / 2
    within = {a: on_test(bits(a)).sqnr_db for a in assignments if cal[a].arena_bytes <= mean_arena}
    attainable = [a for a, db in within.items() if db >= own_budget - 1]

    check = s["heldout"]
    h8, h16 = check(bits(none)), check(bits(every))

    def low(c: width_measure.Candidate) -> float:
        """The lower bound interpolated between the uniform widths only, as choose_precision's first
        estimate (its two-point formula: where int16's in-sample SQNR is not above int8's, the mean
        offset); the checks below are taken in cost order instead of joining the estimate."""
        span = cal[every].sqnr_db - cal[none].sqnr_db
        t = float(np.clip((c.sqnr_db - cal[none].sqnr_db) / span, 0, 1)) if np.isfinite(span) and span > 0 else 0.5
        return c.sqnr_db - ((cal[none].sqnr_db - h8.low_sqnr_db) * (1 - t) + (cal[every].sqnr_db - h16.low_sqnr_db) * t)

    exhaustive, checked = every, 0
    for a in sorted((a for a in assignments if low(cal[a]) >= budget), key=lambda a: (cal[a].cost, len(a))):
        if checked == CHECKS:
            break
        checked += 1
        if check(bits(a)).low_sqnr_db >= budget:
            exhaustive = a
            break

    def chosen(a: frozenset) -> dict:
        return {"int16_layers": len(a), "arena_bytes": cal[a].arena_bytes, "test_sqnr_db": round(on_test(bits(a)).sqnr_db, 2)}

    walk = None
    if s["choice"] is not None:
        walk = chosen(frozenset(u for u in units if s["choice"].chosen.bits[u] == 16))
    return {**row, "own_budget_db": round(own_budget, 2), "test_int8_db": round(t8.sqnr_db, 2),
            "test_int16_db": round(t16.sqnr_db, 2), "arena_int8": cal[none].arena_bytes,
            "arena_int16": cal[every].arena_bytes, "assignments": len(assignments), "within_arena": len(within),
            "attainable": len(attainable), "best_within_arena_db": round(max(within.values()), 2),
            "walk": walk, "exhaustive": chosen(exhaustive), "exhaustive_checks": checked,
            "refused": s.get("refused")}


def table_row(r: dict) -> str:
    if "skipped" in r:
        return f"| {r['model']} | {r['half']} | {r['layers']} | {r['budget_db']:.2f} | skipped: {r['skipped']} | | | | |"
    walk = "refused" if r["walk"] is None else f"{r['walk']['arena_bytes']} B, {r['walk']['test_sqnr_db']:.2f} dB"
    ex = r["exhaustive"]
    return (f"| {r['model']} | {r['half']} | {r['layers']} | {r['budget_db']:.2f} | {r['own_budget_db']:.2f} "
            f"({r['test_int8_db']:.2f} / {r['test_int16_db']:.2f}) | {(r['arena_int8'] + r['arena_int16']) // 2} | "
            f"{r['attainable']} of {r['within_arena']} ({r['best_within_arena_db']:.2f}) | {walk} | "
            f"{ex['arena_bytes']} B, {ex['test_sqnr_db']:.2f} dB |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", help="comma-separated names (default: all)")
    p.add_argument("--max-layers", type=int, default=11)
    p.add_argument("--heldout-json", type=Path, default=ROOT / "benchmarks" / "out" / "heldout.json")
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "heldout_auto_frontier.json")
    args = p.parse_args()
    if not args.heldout_json.exists():
        sys.exit(f"{args.heldout_json}: run benchmarks/heldout/run.py --json {args.heldout_json} first (its budgets are the goal's)")
    runs = json.loads(args.heldout_json.read_text())
    budgets = {r["model"]: r["ours_auto"]["budget_db"] for r in (runs["rows"] if isinstance(runs, dict) else runs)}
    print("| model | half | layers | budget dB | before bias correction: budget dB (int8 / int16) | mean arena B | "
          "attainable of within the arena (best dB) | convert's walk | exhaustive |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for entry in catalog.select("all", args.models.split(",") if args.models else None):
        r = measure(entry, budgets[entry.name], args.max_layers)
        rows.append(r)
        print(table_row(r), flush=True)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"max_layers": args.max_layers, "checks": CHECKS, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
