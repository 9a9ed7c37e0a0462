"""`.tflite` files in (issue 33): for each file of tests/tflite_models (TensorFlow's converter, int8 and
16x8) and this tool's own export of the vibration example (written by tflite-micro's model editor):
converted with no calibration, run on the host and QEMU Cortex-M4 and checked byte for byte against
tflite-micro on the file (on this tool's export where tflite-micro cannot run the file right, marked
*), with our weights, arena and the caller's input/output buffers next to TFLite-Micro's own arena
for the file (the wheel's figure: its head holds the I/O), and instructions per inference on M4.
Prints a table and writes JSON.

    CMSIS_NN_PATH=/path/to/CMSIS-NN-v7.0.0 python benchmarks/tflite_files.py [--samples 16] [--json FILE]
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
from onnx2cmsis.drivers.verification import verify  # noqa: E402
from onnx2cmsis.oracle.tflite_export import export_tflite, tflite_micro_arena  # noqa: E402
from tests.keras_models.data import signals  # noqa: E402

FILES = sorted(p for p in (ROOT / "tests" / "tflite_models").glob("*.tflite")
               if "float" not in p.stem and "kws2d" not in p.stem)  # a float file, and the refused 2-D one
FILES.append(ROOT / "tests" / "lstm_models" / "tfkeras_cnn_lstm_int8.tflite")  # two fused LSTMs (level 7)
TARGETS = ["host", "m4"]


def measure(path: Path, samples: int) -> dict:
    conv = convert(path, name="m", default_api=None)
    shape = conv.graph.model_input_shapes[0][1:]
    if path.stem == "vibration_cnn":
        x = np.load(ROOT / "examples" / "vibration" / "test_x.npy")[:samples]
    else:
        steps, channels = (96, 4) if "zoo" in path.stem else (64, 3)
        x = signals(samples, steps, channels, seed=11)[0].reshape(samples, *shape)
    results = {r.target: r for r in verify(conv, x, TARGETS).results}
    assert all(r.bit_exact for r in results.values()), f"{path.name} is not bit-exact"
    oracle = results["host"].oracle
    try:
        tflm = tflite_micro_arena(path.read_bytes(), quantize_inputs(conv, x[:1])[0])
        file_arena = oracle == "tflite-micro on the file"
    except Exception:
        tflm, file_arena = {}, False
    if not file_arena:
        tflm = tflite_micro_arena(export_tflite(conv.graph, conv.registry), quantize_inputs(conv, x[:1])[0])
    io_bytes = sum(conv.graph.tensors[t].nbytes for t in (*conv.graph.inputs, *conv.graph.outputs))
    return {"file": path.name, "bits": conv.graph.tensors[conv.graph.inputs[0]].quant.bits, "samples": samples,
            "oracle": oracle, "weights_bytes": conv.report["weights_bytes"], "arena_bytes": conv.plan.arena_bytes,
            "io_bytes": io_bytes, "tflm_arena_bytes": tflm.get("total"), "tflm_arena_of_file": file_arena,
            "flash_bytes_m4": results["m4"].flash_bytes, "instructions_m4": results["m4"].instructions_per_inference,
            "layers": len(conv.report["layers"]), "cmsis_nn_api": conv.cmsis.api.level}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=16)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "tflite_files.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        example = convert(ROOT / "examples" / "vibration" / "vibration_cnn.onnx",
                          ROOT / "examples" / "vibration" / "calibration.npy", name="vibration_cnn")
        own = Path(tmp) / "vibration_cnn.tflite"
        own.write_bytes(export_tflite(example.graph, example.registry))
        rows = [measure(path, args.samples) for path in (*FILES, own)]
    print(f"CMSIS-NN API level {rows[0]['cmsis_nn_api']}; bytes; every row bit-exact on host and M4 "
          "(* checked on this tool's export: tflite-micro cannot run the file right)")
    head = (f"{'file':<24}{'bits':>5}{'weights':>9}{'arena':>7}{'+I/O':>6}{'TFLM arena':>12}{'M4 image':>10}"
            f"{'M4 instr.':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        mark = "" if r["tflm_arena_of_file"] else "*"
        print(f"{r['file']:<24}{r['bits']:>5}{r['weights_bytes']:>9,}{r['arena_bytes']:>7,}{r['io_bytes']:>6,}"
              f"{(r['tflm_arena_bytes'] or 0):>11,}{mark:1}{r['flash_bytes_m4'] or 0:>10,}{r['instructions_m4']:>11,}")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
