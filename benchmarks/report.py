"""Accuracy and memory report: the bundled examples, the PyTorch test exports and the Keras fixtures
(with the three-input Keras model and the two-input, two-output PyTorch export).

For each model: bit-exactness of the generated C against the integer reference and the tflite-micro
runtime, int8 vs float (SQNR, max error in output LSBs, argmax agreement), our arena and its lower
bound, and TFLite-Micro's arena for the same int8 graph. Prints a table and writes JSON.

    python benchmarks/report.py [--samples 500] [--json benchmarks/out/report.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "examples" / "vibration"))

from data import make_dataset  # noqa: E402

from functools import partial  # noqa: E402

from onnx2cmsis.api import convert as _convert  # noqa: E402
from onnx2cmsis.drivers.evaluate import evaluate, quantize_inputs  # noqa: E402
from onnx2cmsis.oracle.tflite_export import export_tflite, tflite_micro_arena  # noqa: E402
from onnx2cmsis.data.samples import MultiSamples  # noqa: E402


# Built with $CMSIS_NN_PATH's tree at its level, else with the snapshot (the tree this tool can fetch).
convert = partial(_convert, default_api=None)


def models(workdir: Path, samples: int):
    example = ROOT / "examples" / "vibration"
    x, _ = make_dataset(samples, seed=3)
    yield convert(example / "vibration_cnn.onnx", example / "calibration.npy"), x
    keras_example = ROOT / "examples" / "vibration_keras"
    try:
        import keras  # the [keras] extra
    except ImportError:
        pass
    else:
        from tests.keras_models.data import signals

        yield (convert(keras_example / "vibration_cnn.h5", keras_example / "calibration.npy", name="vibration_keras"),
               np.ascontiguousarray(x.transpose(0, 2, 1)))
        rng = np.random.default_rng(8)
        for name in ("autoencoder", "conv_zoo", "separable_residual", "dense_heads"):
            path = ROOT / "tests" / "keras_models" / f"{name}.h5"
            steps, channels = keras.models.load_model(path, compile=False).inputs[0].shape[1:]
            if name in ("conv_zoo", "separable_residual"):
                calib, data = signals(256, steps, channels, 1)[0], signals(samples, steps, channels, 2)[0]
            else:
                calib = rng.standard_normal((256, steps, channels)).astype(np.float32)
                data = rng.standard_normal((samples, steps, channels)).astype(np.float32)
            yield convert(path, calib, name=f"keras_{name}"), data
        from tests.keras_models.make_multi_io import PATH as FUSION, fusion_data  # three inputs

        yield convert(FUSION, fusion_data(256, seed=5)[0], name="keras_fusion"), MultiSamples(
            tuple(fusion_data(samples, seed=6)[0]))
    try:
        from tests.torch_models import EXPORTS, export_torch, export_torch_two_in_two_out
    except ImportError:
        return
    rng = np.random.default_rng(7)
    for name in EXPORTS:
        path, shape = export_torch(name, workdir)
        calib = rng.standard_normal((200, *shape)).astype(np.float32)
        yield convert(path, calib, name=name), rng.standard_normal((samples, *shape)).astype(np.float32)
    path, shapes = export_torch_two_in_two_out(workdir)  # two inputs, two outputs
    yield (convert(path, [rng.standard_normal((200, *s)).astype(np.float32) for s in shapes], name="two_in_two_out"),
           MultiSamples(tuple(rng.standard_normal((samples, *s)).astype(np.float32) for s in shapes)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=500)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "report.json")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for conv, x in models(Path(tmp), args.samples):
            ev, _ = evaluate(conv, x, Path(tmp) / conv.name, oracle_samples=None)
            g = conv.graph
            io_bytes = sum(g.tensors[t].nbytes for t in (*g.inputs, *g.outputs))
            tflm = tflite_micro_arena(export_tflite(conv.graph, conv.registry), quantize_inputs(conv, x[:1])[0])
            rows.append({**ev.as_dict(), "io_bytes": io_bytes, "tflm_arena_head": tflm.get("head"),
                         "tflm_arena_total": tflm.get("total")})
    head = (f"{'model':<14}{'samples':>8}{'C!=ref':>7}{'C!=TFLM':>8}{'SQNR dB':>8}{'max LSB':>8}{'argmax':>7}"
            f"{'arena':>7}{'bound':>7}{'+I/O':>6}{'TFLM head':>10}{'TFLM total':>11}{'weights':>8}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['name']:<14}{r['samples']:>8}{r['mismatches_vs_reference']:>7}{r['mismatches_vs_tflite_micro']:>8}"
              f"{r['sqnr_db']:>8.1f}{r['max_error_lsb']:>8.1f}{r['argmax_agreement']:>7.3f}{r['arena_bytes']:>7}"
              f"{r['arena_lower_bound_bytes']:>7}{r['io_bytes']:>6}{r['tflm_arena_head']:>10}{r['tflm_arena_total']:>11}"
              f"{r['weights_bytes']:>8}")
    print("arena/bound: our static arena and the live-set lower bound; +I/O: the caller's input and output buffers,"
          " which TFLite-Micro keeps inside its arena head.")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
