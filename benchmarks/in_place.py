"""What writing elementwise layers over their input saves (plan/liveness.py): each model's arena as
`convert` plans it and as it would be planned with every buffer apart (plan_memory's in_place=False),
for the same conversion. The models: benchmarks/report.py's, the `.tflite` files of
benchmarks/tflite_files.py (arena + the caller's I/O buffers, as tflm_cortex_m.py counts it) and the
held-out benchmark's at int8 and int16. Prints the models whose arena changes; writes JSON.

    python benchmarks/in_place.py [--json benchmarks/out/in_place.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from onnx2cmsis.api import convert  # noqa: E402
from onnx2cmsis.plan.arena import Step, plan_memory  # noqa: E402


def arenas(conv, with_io: bool = False) -> dict:
    g = conv.graph
    steps = [Step(n, conv.registry.for_op(n.op).emit(n, g)) for n in g.nodes]
    apart = plan_memory(g, conv.registry, steps, in_place=False)[0].arena_bytes
    io = sum(g.tensors[t].nbytes for t in (*g.inputs, *g.outputs)) if with_io else 0
    return {"apart": apart + io, "in_place": conv.plan.arena_bytes + io, "with_io": with_io,
            "written_in_place": len(conv.plan.written_in_place)}


def measure() -> list[dict]:
    import report
    from tflite_files import FILES

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for conv, _ in report.models(Path(tmp), 1):
            rows.append({"set": "report.py", "model": conv.name, **arenas(conv)})
    for path in FILES:
        rows.append({"set": ".tflite", "model": path.stem, **arenas(convert(path, name="m", default_api=None), True)})
    for name in ("catalog", "data"):  # report.py's example imported its own `data`; the held-out one is another
        sys.modules.pop(name, None)
    sys.path.insert(0, str(ROOT / "benchmarks" / "heldout"))
    import catalog

    for entry in catalog.MODELS.values():
        path = ROOT / "benchmarks" / "heldout" / "models" / f"{entry.name}.h5"
        for precision in ("int8", "int16"):
            conv = convert(path, entry.calibration_set(), name="m", default_api=None, precision=precision)
            rows.append({"set": f"held-out {precision}", "model": entry.name, **arenas(conv)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "in_place.json")
    args = ap.parse_args()
    rows = measure()
    print("| set | model | every buffer apart B | in place B | layers in place |\n|---|---|---|---|---|")
    for r in rows:
        if r["apart"] != r["in_place"]:
            print(f"| {r['set']} | {r['model']} | {r['apart']:,} | {r['in_place']:,} | {r['written_in_place']} |")
    grew = [r["model"] for r in rows if r["in_place"] > r["apart"]]
    print(f"{sum(r['in_place'] < r['apart'] for r in rows)} of {len(rows)} smaller, {len(grew)} larger {grew}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
