"""What `--streaming HOP` saves, measured: instructions per push against per full-window invoke on
QEMU Cortex-M4, next to the MACs the conversion predicts, with the stream state and the arena.

Each model (the trained benchmark models, the bundled examples, the Keras fixtures, and a wake-word
model written with 2-D layers over (T, 1, C)) is converted at
HOP = WINDOW / 8 rounded down to a multiple of its time strides (WINDOW / 4 too with --hops 4,8), its
held-out windows are laid end to end as one stream, and every push's output is checked against invoke
on the same window (byte for byte) before any figure is kept. "predicted" scales the measured invoke by MACs per push / MACs per invoke; the
push's other work (moving the stored maps, the head) is what the measured/predicted ratio shows.
Built with $CMSIS_NN_PATH's tree at its level, else the fetched snapshot. Prints a table, writes JSON.

    python benchmarks/streaming.py [--hops 8] [--pushes 40] [--only NAME ...] [--json benchmarks/out/streaming.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.accuracy import cases  # noqa: E402
from onnx2cmsis.api import convert, front_end  # noqa: E402
from onnx2cmsis.drivers.evaluate import quantize_inputs  # noqa: E402
from onnx2cmsis.ops.registry import build_registry  # noqa: E402
from onnx2cmsis.plan.stream import hop_multiple  # noqa: E402
from onnx2cmsis.drivers.stream_check import stream_run  # noqa: E402
from onnx2cmsis.targets.host import build_conversions  # noqa: E402
from onnx2cmsis.targets.qemu import build_firmware, run_firmware, stream_unit  # noqa: E402

TARGET = "m4"


def measure(conv, x: np.ndarray, pushes: int, workdir: Path) -> dict:
    """Push a stream made of the windows `x` end to end; check each output, count instructions."""
    s = conv.report["stream"]
    hop, window = s["hop"], s["window"]
    stream = stream_run(conv, quantize_inputs(conv, x), min_outputs=pushes)
    ready, inputs = stream.ready, stream.windows
    unit = stream_unit(conv)
    fw = build_firmware([conv, unit], TARGET, workdir / TARGET)
    counts: dict[str, np.ndarray] = {}
    out = run_firmware(fw, {unit.name: stream.pushes(), conv.name: inputs}, timeout=600, instructions=counts)
    host = build_conversions([conv], workdir / "host")[conv.name]
    want = np.stack([host(w) for w in inputs])
    assert np.array_equal(stream.want, want), f"{conv.name}: the host's invoke differs from the reference"
    assert np.array_equal(out[conv.name], want), f"{conv.name}: invoke on QEMU differs from the host"
    assert np.array_equal(out[unit.name][ready, 1:], want), f"{conv.name}: a push differs from invoke"
    steady = counts[unit.name][ready[1:]]  # after the first whole window
    invoke = int(np.median(counts[conv.name]))
    predicted = invoke * s["macs_per_push"] / s["macs_per_invoke"]
    return {"model": conv.name, "hop": hop, "window": window, "recomputes": s["recomputes"], "head": s["head"],
            "macs_per_push": s["macs_per_push"], "macs_per_invoke": s["macs_per_invoke"],
            "instructions_per_push": int(np.median(steady)), "instructions_per_push_max": int(steady.max()),
            "instructions_per_invoke": invoke, "predicted_per_push": int(predicted),
            "measured_over_predicted": float(np.median(steady) / predicted), "state_bytes": s["state_bytes"],
            "arena_bytes": conv.plan.arena_bytes, "pushes_checked": len(ready)}


@dataclass
class StreamCase:
    name: str
    path: Path
    calibration: np.ndarray
    x_test: np.ndarray  # in the model's own input layout
    window: int
    channels: int


def stream_cases() -> list[StreamCase]:
    """benchmarks/accuracy.py's models, then issue 30's wake-word model written with 2-D layers over
    (T, 1, C) (tests/two_d_models, trained on four tones in noise)."""
    out = [StreamCase(c.name, c.path, c.calibration, c.x_test, c.x_test.shape[1], c.x_test.shape[2])
           for c in cases(64, 200)]
    from tests.two_d_models import make_two_d

    x = make_two_d.keras_data("kws_t1c", 264, seed=4)[0]
    steps, channels = make_two_d.KWS
    out.append(StreamCase("kws_t1c_2d", ROOT / "tests" / "two_d_models" / "kws_t1c.h5", x[:64], x[64:], steps, channels))
    return out


def run(hops: list[int], pushes: int, only: list[str] | None = None) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for case in [c for c in stream_cases() if not only or c.name in only]:
            window = case.window
            registry = build_registry()
            _, graph, _ = front_end(case.path, registry)
            multiple, _ = hop_multiple(graph, registry, window, case.channels)
            for parts in hops:
                hop = max(multiple, window // parts // multiple * multiple)  # a multiple of the time strides
                conv = convert(case.path, case.calibration, name=f"{case.name}_w{parts}", default_api=None,
                               streaming=hop)
                row = measure(conv, case.x_test, pushes, Path(tmp) / conv.name)
                rows.append(row)
                print(f"{row['model']:34s} hop {row['hop']:3d}/{row['window']:3d}  MACs {row['macs_per_push']:>8,} / "
                      f"{row['macs_per_invoke']:>8,}  M4 instr. push {row['instructions_per_push']:>9,} invoke "
                      f"{row['instructions_per_invoke']:>9,} (x{row['instructions_per_push'] / row['instructions_per_invoke']:.2f}; "
                      f"{row['measured_over_predicted']:.2f} of predicted)  state {row['state_bytes']:>6,} B  "
                      f"arena {row['arena_bytes']:>5,} B", flush=True)
    return rows


def markdown(rows: list[dict]) -> str:
    head = ["model", "hop / window", "MACs push / invoke", "M4 instr. push / invoke", "push / invoke",
            "measured / predicted", "state B", "arena B", "the head"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['hop']} / {r['window']} | {r['macs_per_push']:,} / {r['macs_per_invoke']:,} | "
                     f"{r['instructions_per_push']:,} / {r['instructions_per_invoke']:,} | "
                     f"{r['instructions_per_push'] / r['instructions_per_invoke']:.2f} | "
                     f"{r['measured_over_predicted']:.2f} | {r['state_bytes']:,} | {r['arena_bytes']:,} | "
                     f"{r['head']} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hops", default="8", help="WINDOW / HOP values, comma-separated (default 8)")
    parser.add_argument("--pushes", type=int, default=40)
    parser.add_argument("--only", nargs="*", help="model names (default: all)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "streaming.json")
    args = parser.parse_args()
    rows = run([int(h) for h in args.hops.split(",")], args.pushes, args.only)
    print()
    print(markdown(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
