"""What int16 costs next to int8, and what --precision auto saves, measured: SQNR against float,
arena, weights, and instructions per inference on QEMU Cortex-M4 (DSP) and M55 (MVE), each model
converted every way in one run.

The models are the trained benchmark models (benchmarks/models/) and the two bundled examples; the
samples are their held-out data. Every figure comes from `onnx2cmsis.verify` (bit-exact against
tflite-micro on each target, instructions counted exactly by QEMU's plugin). With `--auto F`, each
model is also converted with `--precision auto` at a budget F of the way from its int8 to its int16
SQNR on the calibration samples (0.5: halfway). Built with $CMSIS_NN_PATH's tree at its level, else
with the fetched snapshot. Prints tables and writes JSON.

    python benchmarks/precision_cost.py [--samples 32] [--auto 0.5 --auto 0.8] [--json benchmarks/out/precision_cost.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import cases  # noqa: E402
from onnx2cmsis.api import convert  # noqa: E402
from onnx2cmsis.drivers.evaluate import float_outputs  # noqa: E402
from onnx2cmsis.arith.rules import dequantize_tensor  # noqa: E402
from onnx2cmsis.drivers.verification import verify  # noqa: E402

TARGETS = ["host", "m4", "m55"]


def sqnr_db(conv, x: np.ndarray) -> float:
    from onnx2cmsis.drivers.evaluate import quantize_inputs

    want = float_outputs(conv, x).astype(np.float64)
    got = np.stack([dequantize_tensor(conv.reference(s), conv.graph.tensors[conv.graph.outputs[0]].quant)
                    for s in quantize_inputs(conv, x)]).astype(np.float64)
    return float(10 * np.log10(np.sum(want ** 2) / max(np.sum((got - want) ** 2), 1e-30)))


def measure(conv, case) -> dict:
    results = {r.target: r for r in verify(conv, case.x_test, TARGETS).results}
    assert all(r.bit_exact for r in results.values()), f"{conv.name} is not bit-exact"
    return {"sqnr_db": sqnr_db(conv, case.x_test), "arena_bytes": conv.plan.arena_bytes,
            "weights_bytes": conv.report["weights_bytes"], "flash_bytes_m4": results["m4"].flash_bytes,
            "instructions_m4": results["m4"].instructions_per_inference,
            "instructions_m55": results["m55"].instructions_per_inference,
            "int16_layers": sum(1 for layer in conv.report["layers"] if layer["bits"] == 16),
            "layers": len(conv.report["layers"]), "cmsis_nn_api": conv.cmsis.api.level}


def run(samples: int, fractions: list[float]) -> list[dict]:
    rows = []
    for case in cases(samples, 200):
        row = {"model": case.name}
        for precision in ("int8", "int16"):
            conv = convert(case.path, case.calibration, name=f"{case.name}_{precision}", default_api=None,
                           precision=precision)
            row[precision] = measure(conv, case)
        if fractions:
            probe = convert(case.path, case.calibration, name="probe", default_api=None, precision="auto",
                            max_error_db=-1000.0)
            figures = probe.report["quantization"]["auto_precision"]
            low, high = figures["int8"]["sqnr_db"], figures["int16"]["sqnr_db"]
            for f in fractions:
                budget = round(low + f * (high - low), 1)
                conv = convert(case.path, case.calibration, name=f"{case.name}_auto", default_api=None,
                               precision="auto", max_error_db=budget)
                chosen = conv.report["quantization"]["auto_precision"]["chosen"]
                row[f"auto@{f:g}"] = {**measure(conv, case), "budget_db": budget,
                                       "calibration_sqnr_db": {"int8": low, "int16": high,
                                                               "auto": chosen["sqnr_db"]}}
        rows.append(row)
        print_row(row)
    return rows


def print_row(row: dict) -> None:
    a, b = row["int8"], row["int16"]
    print(f"{row['model']:24s} SQNR {a['sqnr_db']:6.2f} -> {b['sqnr_db']:6.2f} dB  arena {a['arena_bytes']:6d} -> "
          f"{b['arena_bytes']:6d}  M4 {a['instructions_m4']:>9,} -> {b['instructions_m4']:>9,}  "
          f"M55 {a['instructions_m55']:>9,} -> {b['instructions_m55']:>9,}", flush=True)


def markdown(rows: list[dict]) -> str:
    head = ["model", "SQNR int8 / int16", "arena int8 / int16 (B)", "weights int8 / int16 (B)",
            "M4 instr. int8 / int16", "M55 instr. int8 / int16"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ratios = {"arena": [], "m4": [], "m55": [], "gain": []}
    for r in rows:
        a, b = r["int8"], r["int16"]
        lines.append(f"| {r['model']} | {a['sqnr_db']:.2f} / {b['sqnr_db']:.2f} dB | {a['arena_bytes']:,} / "
                     f"{b['arena_bytes']:,} | {a['weights_bytes']:,} / {b['weights_bytes']:,} | "
                     f"{a['instructions_m4']:,} / {b['instructions_m4']:,} | "
                     f"{a['instructions_m55']:,} / {b['instructions_m55']:,} |")
        ratios["arena"].append(b["arena_bytes"] / a["arena_bytes"])
        ratios["m4"].append(b["instructions_m4"] / a["instructions_m4"])
        ratios["m55"].append(b["instructions_m55"] / a["instructions_m55"])
        ratios["gain"].append(b["sqnr_db"] - a["sqnr_db"])
    lines.append(f"\nint16 / int8: arena x{min(ratios['arena']):.2f}-{max(ratios['arena']):.2f}, M4 instructions "
                 f"x{min(ratios['m4']):.2f}-{max(ratios['m4']):.2f}, M55 x{min(ratios['m55']):.2f}-"
                 f"{max(ratios['m55']):.2f}; SQNR +{min(ratios['gain']):.1f} to +{max(ratios['gain']):.1f} dB "
                 f"(median +{float(np.median(ratios['gain'])):.1f})")
    return "\n".join(lines)


def auto_markdown(rows: list[dict]) -> str:
    """Budget, then SQNR (calibration samples / held-out) / arena / M4 instructions for int8, int16, auto."""
    keys = sorted({k for r in rows for k in r if k.startswith("auto@")})
    head = ["model", "budget (calib. SQNR)", "int8", "int16", "auto", "auto int16 layers", "auto vs int16"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    wins = 0
    for r in rows:
        for k in keys:
            a, c = r[k], r[k]["calibration_sqnr_db"]

            def cell(m: dict, calib: float) -> str:
                return (f"{calib:.1f} / {m['sqnr_db']:.1f} dB, {m['arena_bytes']:,} B, "
                        f"{m['instructions_m4']:,}")
            both = a["arena_bytes"] < r["int16"]["arena_bytes"] and a["instructions_m4"] < r["int16"]["instructions_m4"]
            wins += both
            verdict = (f"arena x{a['arena_bytes'] / r['int16']['arena_bytes']:.2f}, M4 "
                       f"x{a['instructions_m4'] / r['int16']['instructions_m4']:.2f}")
            lines.append(f"| {r['model']} | {a['budget_db']:.1f} dB ({k[5:]}) | {cell(r['int8'], c['int8'])} | "
                         f"{cell(r['int16'], c['int16'])} | {cell(a, c['auto'])} | {a['int16_layers']} of "
                         f"{a['layers']} | {verdict} |")
    lines.append(f"\nauto below all-int16 in both arena and M4 instructions: {wins} of {len(rows) * len(keys)}")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=32, help="held-out samples per model (SQNR and the runs)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "precision_cost.json")
    ap.add_argument("--auto", type=float, action="append", default=[],
                    help="also --precision auto at this fraction of the way from int8's to int16's SQNR")
    args = ap.parse_args()
    rows = run(args.samples, args.auto)
    print(markdown(rows))
    if args.auto:
        print(auto_markdown(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"samples": args.samples, "auto": args.auto, "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
