"""What `--streaming HOP --stateful` saves on a recurrent model, measured on QEMU Cortex-M4: instructions
per stateful push (its HOP new steps through every layer, the recurrences on from their state) against
a full-window invoke and against a window stream's push (`--streaming HOP` alone, which recomputes the
recurrence over the window every push), side by side in one firmware.

Models: the causal CNN-LSTM and CNN-GRU, the 'valid' CNN-LSTM and the LSTM-first model of tests/lstm_models (Keras, trained
briefly on the four-tone signals; make_lstm.py), int8 and 16x8. Held-out signals laid end to end are
pushed; every stateful push is checked byte for byte against the reference run once over the whole
stream since the reset, every window push against invoke on its window, before any figure is kept.
Built with $CMSIS_NN_PATH's tree (level 7: the LSTM kernels). Prints a table, writes JSON.

    python benchmarks/stateful_streams.py [--pushes 48] [--json benchmarks/out/stateful_streams.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx2cmsis.api import convert  # noqa: E402
from onnx2cmsis.drivers.evaluate import quantize_inputs  # noqa: E402
from onnx2cmsis.drivers.stream_check import stream_run  # noqa: E402
from onnx2cmsis.targets.qemu import build_firmware, run_firmware, stream_unit  # noqa: E402
from tests.keras_models.data import signals  # noqa: E402

TARGET = "m4"
STEPS, CHANNELS = 64, 3
CASES = [("keras_causal_cnn_lstm", "int8", 8), ("keras_causal_cnn_lstm", "int8", 4),
         ("keras_causal_cnn_lstm", "int16", 8), ("keras_causal_cnn_gru", "int8", 8),
         ("keras_causal_cnn_gru", "int16", 8), ("keras_valid_cnn_lstm", "int8", 8), ("keras_lstm_first", "int8", 8),
         ("keras_lstm_first", "int8", 1)]


def measure(stem: str, precision: str, hop: int, pushes: int, workdir: Path) -> dict:
    path = ROOT / "tests" / "lstm_models" / f"{stem}.keras"
    calibration = signals(64, STEPS, CHANNELS, seed=50)[0]
    x = signals(-(-pushes * hop // STEPS) + 2, STEPS, CHANNELS, seed=51)[0]  # held out
    name = f"{stem}_{precision}_h{hop}"
    stateful = convert(path, calibration, name=f"{name}_st", precision=precision, streaming=hop, stateful=True)
    window = convert(path, calibration, name=f"{name}_win", precision=precision, streaming=hop)
    runs = {c.name: stream_run(c, quantize_inputs(c, x), min_outputs=pushes) for c in (stateful, window)}
    units = [stream_unit(c) for c in (stateful, window)]
    fw = build_firmware([stateful, window, *units], TARGET, workdir / TARGET)
    counts: dict[str, np.ndarray] = {}
    invoke_inputs = runs[window.name].windows
    out = run_firmware(fw, {**{u.name: runs[c.name].pushes() for c, u in zip((stateful, window), units)},
                            stateful.name: invoke_inputs}, timeout=900, instructions=counts)
    for c, u in zip((stateful, window), units):
        ready = runs[c.name].ready
        assert np.array_equal(out[u.name][ready, 1:], runs[c.name].want), f"{c.name}: a push differs"
    assert np.array_equal(out[stateful.name], runs[window.name].want), f"{name}: invoke differs from the window's"
    s, w = stateful.report["stream"], window.report["stream"]
    push = int(np.median(counts[units[0].name][runs[stateful.name].ready[1:]]))
    window_push = int(np.median(counts[units[1].name][runs[window.name].ready[1:]]))
    invoke = int(np.median(counts[stateful.name]))
    return {"model": stem, "precision": precision, "hop": hop, "window": STEPS,
            "instructions_per_stateful_push": push, "instructions_per_window_push": window_push,
            "instructions_per_invoke": invoke, "stateful_push_over_invoke": push / invoke,
            "stateful_push_over_window_push": push / window_push,
            "macs_per_stateful_push": s["macs_per_push"], "macs_per_window_push": w["macs_per_push"],
            "macs_per_invoke": s["macs_per_invoke"], "stateful_state_bytes": s["state_bytes"],
            "window_state_bytes": w["state_bytes"], "arena_bytes": stateful.plan.arena_bytes,
            "stateful_pushes_checked": len(runs[stateful.name].ready),
            "window_pushes_checked": len(runs[window.name].ready)}


def markdown(rows: list[dict]) -> str:
    head = ["model", "width", "hop / window", "M4 instr. stateful push", "window push", "invoke",
            "stateful / invoke", "stateful / window push", "state B stateful / window", "arena B"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['model']} | {r['precision']} | {r['hop']} / {r['window']} | "
                     f"{r['instructions_per_stateful_push']:,} | {r['instructions_per_window_push']:,} | "
                     f"{r['instructions_per_invoke']:,} | {r['stateful_push_over_invoke']:.3f} | "
                     f"{r['stateful_push_over_window_push']:.3f} | {r['stateful_state_bytes']:,} / "
                     f"{r['window_state_bytes']:,} | {r['arena_bytes']:,} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pushes", type=int, default=48)
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "stateful_streams.json")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for stem, precision, hop in CASES:
            rows.append(measure(stem, precision, hop, args.pushes, Path(tmp) / f"{stem}_{precision}_{hop}"))
            r = rows[-1]
            print(f"{stem:24s} {precision:5s} hop {hop:2d}: stateful push {r['instructions_per_stateful_push']:>9,}  "
                  f"window push {r['instructions_per_window_push']:>9,}  invoke {r['instructions_per_invoke']:>9,}",
                  flush=True)
    print()
    print(markdown(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
