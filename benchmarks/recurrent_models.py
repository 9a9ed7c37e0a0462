"""Recurrent models (issues 34 and 35): the repository's trained CNN-LSTM, CNN-GRU and CNN-RNN fixtures
(tests/lstm_models/), int8 and 16x8, converted, run on the host and QEMU Cortex-M4, checked byte for
byte against tflite-micro where TFLite has the op (on our export of the same integer graph; on the file
itself for TensorFlow's converter's .tflite; GRU and RNN against our reference, TFLite having neither),
with their accuracy against the float model on held-out signals, our weights, arena and I/O buffers
next to TFLite-Micro's arena for the same graph (the wheel's figure), and instructions per inference
on M4. Prints a table and writes JSON.

    CMSIS_NN_PATH=/path/to/CMSIS-NN-v7.0.0 python benchmarks/recurrent_models.py [--samples 200] [--json FILE]
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
from onnx2cmsis.drivers.evaluate import evaluate, float_outputs, quantize_inputs  # noqa: E402
from onnx2cmsis.drivers.verification import verify  # noqa: E402
from onnx2cmsis.oracle.tflite_export import export_tflite, tflite_micro_arena  # noqa: E402
from tests.keras_models.data import signals  # noqa: E402

HERE = ROOT / "tests" / "lstm_models"
STEPS, CHANNELS = 64, 3
# (file, precision); the .tflite carries its own quantization (None)
CASES = [("torch_cnn_lstm.onnx", "int8"), ("torch_cnn_lstm.onnx", "int16"), ("torch_lstm_stack.onnx", "int8"),
         ("torch_bilstm.onnx", "int8"), ("keras_cnn_lstm.keras", "int8"), ("keras_cnn_lstm.keras", "int16"),
         ("keras_bilstm.keras", "int8"), ("tfkeras_cnn_lstm_int8.tflite", None),
         ("torch_cnn_gru.onnx", "int8"), ("torch_cnn_gru.onnx", "int16"), ("torch_cnn_rnn.onnx", "int8"),
         ("keras_cnn_gru.keras", "int8"), ("keras_cnn_rnn.keras", "int8")]


def _inputs(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Held-out signals (the fixtures trained on seeds 1-5) in the model's layout, with their classes."""
    x, y = signals(n, STEPS, CHANNELS, seed=seed)
    return (np.ascontiguousarray(x.transpose(0, 2, 1)) if name.startswith("torch") else x), y


def measure(name: str, precision: str | None, samples: int, workdir: Path) -> dict:
    path = HERE / name
    calibration = None if precision is None else _inputs(name, 64, seed=40)[0]
    conv = convert(path, calibration, name="m", default_api=None,
                   **({} if precision is None else {"precision": precision}))
    x, labels = _inputs(name, samples, seed=41)
    results = {r.target: r for r in verify(conv, x[:16], ["host", "m4"]).results}
    assert all(r.bit_exact for r in results.values()), f"{name} {precision} is not bit-exact"
    exportable = not any(n.op == "gru" for n in conv.graph.nodes)  # TFLite has no GRU or RNN
    ev, c_out = evaluate(conv, x, workdir / f"{path.stem}_{precision}", oracle_samples=0)
    codes = quantize_inputs(conv, x[:1])[0]
    tflm = {}
    if exportable:
        graph_bytes = path.read_bytes() if precision is None else export_tflite(conv.graph, conv.registry)
        tflm = tflite_micro_arena(graph_bytes, codes)
    q = conv.graph.tensors[conv.graph.outputs[0]].quant
    accuracy = float(np.mean((c_out.astype(np.float64) - q.zero_point).argmax(axis=1) == labels))
    float_accuracy = float(np.mean(float_outputs(conv, x).argmax(axis=1) == labels))
    io_bytes = sum(conv.graph.tensors[t].nbytes for t in (*conv.graph.inputs, *conv.graph.outputs))
    lstms = [layer for layer in conv.report["layers"] if layer["op"] in ("lstm", "gru")]
    return {"model": name, "precision": precision or "file (int8)", "samples": samples,
            "oracle": results["host"].oracle, "sqnr_db": ev.sqnr_db, "argmax_agreement": ev.argmax_agreement,
            "accuracy": accuracy, "float_accuracy": float_accuracy, "weights_bytes": conv.report["weights_bytes"], "arena_bytes": conv.plan.arena_bytes,
            "io_bytes": io_bytes, "tflm_arena_bytes": tflm.get("total"), "flash_bytes_m4": results["m4"].flash_bytes,
            "instructions_m4": results["m4"].instructions_per_inference, "recurrent_layers": len(lstms),
            "recurrent_macs": sum(layer.get("macs", 0) for layer in lstms), "cmsis_nn_api": conv.cmsis.api.level}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "recurrent_models.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, precision, args.samples, Path(tmp)) for name, precision in CASES]
    print(f"CMSIS-NN API level {rows[0]['cmsis_nn_api']}; bytes; every row bit-exact on host and M4 (with tflite-micro "
          "where TFLite has the op, else with the reference); "
          f"{args.samples} held-out signals")
    head = (f"{'model':<30}{'width':>12}{'SQNR':>7}{'argmax':>7}{'acc':>6}{'float':>6}{'weights':>9}{'arena':>7}{'+I/O':>6}"
            f"{'TFLM arena':>11}{'M4 instr.':>11}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<30}{r['precision']:>12}{r['sqnr_db']:>7.1f}{r['argmax_agreement']:>7.3f}"
              f"{r['accuracy']:>6.3f}{r['float_accuracy']:>6.3f}{r['weights_bytes']:>9,}{r['arena_bytes']:>7,}{r['io_bytes']:>6,}"
              f"{(r['tflm_arena_bytes'] or 0):>11,}{r['instructions_m4']:>11,}")  # 0: TFLite has no such op
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
