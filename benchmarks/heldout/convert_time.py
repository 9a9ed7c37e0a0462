"""Our pipeline's time on the held-out benchmark's 25 models, this checkout against another (issue
29: the recipe choice must not make conversion much slower). Each model is converted once to cache
its Keras export, then timed converting with its calibration samples and default options; each
checkout runs in its own process, one after the other.

    python benchmarks/heldout/convert_time.py --before PATH/TO/OTHER/CHECKOUT [--repeat 3] [--precision int16]
        [--json FILE]

With --repeat N the two checkouts are timed in N rounds, each round both in turn (which goes first
alternates), and each model's fastest time kept: a 0.3 s conversion varies by 10-15% between runs minutes apart on a
shared machine, and alternating spreads that drift over both sides.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]


def _time_models(root: Path, precision: str) -> dict[str, float]:
    """In this process: seconds per model for the checkout at `root` (imported first on the path)."""
    sys.path.insert(0, str(root))
    sys.path.insert(0, str(HERE))
    import catalog  # the catalog of this checkout: the models and samples are the same in both

    from onnx2cmsis.api import convert

    seconds = {}
    for name, entry in catalog.MODELS.items():
        path = HERE / "models" / f"{name}.h5"
        calibration = entry.calibration_set()
        convert(path, calibration[:4], name="m", default_api=None)  # the Keras export, cached per process
        start = time.perf_counter()
        convert(path, calibration, name="m", default_api=None, precision=precision)
        seconds[name] = time.perf_counter() - start
    return seconds


def _run(root: Path, precision: str) -> dict[str, float]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        subprocess.run([sys.executable, __file__, "--child", str(root), "--precision", precision, "--json", out.name],
                       check=True,
                       env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}, stderr=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())


def _fastest(kept: dict[str, float] | None, new: dict[str, float]) -> dict[str, float]:
    return new if kept is None else {m: min(kept[m], new[m]) for m in new}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--before", type=Path, help="the other checkout (e.g. a git worktree of the previous commit)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "heldout_convert_time.json")
    ap.add_argument("--repeat", type=int, default=1, help="rounds (each checkout once per round); the fastest is kept")
    ap.add_argument("--precision", default="int8", choices=("int8", "int16"), help="the conversions' precision")
    ap.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        args.json.write_text(json.dumps(_time_models(args.child, args.precision)))
        return
    checkouts = {"now": ROOT, **({"before": args.before} if args.before else {})}
    kept: dict[str, dict[str, float] | None] = {"now": None, "before": None}
    for round_ in range(max(args.repeat, 1)):
        for key in list(checkouts)[:: -1 if round_ % 2 else 1]:  # which checkout goes first alternates
            kept[key] = _fastest(kept[key], _run(checkouts[key], args.precision))
    after, before = kept["now"], kept["before"]
    ratios = [after[m] / before[m] for m in after] if before else []
    for m in after:
        line = f"{m:<30} now {after[m]:6.2f} s"
        print(line + (f"  before {before[m]:6.2f} s  x{after[m] / before[m]:.2f}" if before else ""))
    summary = {"precision": args.precision, "repeat": args.repeat, "median_s": float(np.median(list(after.values()))),
               "total_s": float(sum(after.values()))}
    if before:
        summary.update(before_median_s=float(np.median(list(before.values()))),
                       before_total_s=float(sum(before.values())), median_ratio=float(np.median(ratios)),
                       max_ratio=float(max(ratios)))
    print(json.dumps(summary))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"now": after, "before": before, **summary}, indent=2) + "\n")


if __name__ == "__main__":
    main()
