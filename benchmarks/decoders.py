"""Transposed convolutions in trained decoders (issue 31): for each denoiser of tests/decoder_models
(a PyTorch autoencoder from each exporter, a Keras U-Net with skip concatenations) at int8 and int16:
the noise it removes against the float model's, SQNR against float, our arena against TFLite-Micro's
for the same graph (our --tflite export in the wheel), weights, and instructions per inference on
QEMU Cortex-M4 and M55, every target bit-exact against tflite-micro (`onnx2cmsis.verify`). Which
kernel each transposed convolution takes depends on the CMSIS-NN tree: run it with CMSIS_NN_PATH at
v7.0.0 (or main) for level 7, without for the 2024.01 snapshot. Prints a table and writes JSON.

    CMSIS_NN_PATH=/path/to/CMSIS-NN-v7.0.0 python benchmarks/decoders.py [--samples 200] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnx2cmsis.api import convert  # noqa: E402
from onnx2cmsis.drivers.evaluate import quantize_inputs  # noqa: E402
from onnx2cmsis.drivers.verification import verify  # noqa: E402
from onnx2cmsis.oracle.tflite_export import export_tflite, tflite_micro_arena  # noqa: E402
from onnx2cmsis.quant.quantize import dequantized_outputs  # noqa: E402
from onnx2cmsis.tuning.search import float_outputs  # noqa: E402
from tests.decoder_models.make_decoders import channel_major, denoising, snr_db  # noqa: E402

FIXTURES = ROOT / "tests" / "decoder_models"
MODELS = {"torch_ae_legacy": ("torch_ae_legacy.onnx", True), "torch_ae_dynamo": ("torch_ae_dynamo.onnx", True),
          "keras_unet": ("keras_unet.h5", False)}
CALIBRATION = 48
TARGETS = ["host", "m4", "m55"]


def measure(name: str, precision: str, samples: int) -> dict:
    file, channel_first = MODELS[name]
    noisy, clean = denoising(CALIBRATION + samples, seed=3)  # the calibration samples first, then held out
    if channel_first:
        noisy, clean = channel_major(noisy), channel_major(clean)
    conv = convert(FIXTURES / file, noisy[:CALIBRATION], name=f"{name}_{precision}", precision=precision,
                   default_api=None)
    x, c = noisy[CALIBRATION:], clean[CALIBRATION:]
    want = float_outputs(conv.model, x).reshape(c.shape)
    got = dequantized_outputs(conv.graph, conv.registry, x).reshape(c.shape)
    results = {r.target: r for r in verify(conv, x[:32], TARGETS).results}
    assert all(r.bit_exact for r in results.values()), f"{conv.name} is not bit-exact"
    tflm = tflite_micro_arena(export_tflite(conv.graph, conv.registry), quantize_inputs(conv, x[:1])[0])
    return {"model": name, "precision": precision, "samples": samples, "input_snr_db": snr_db(x, c),
            "float_snr_db": snr_db(want, c), "ours_snr_db": snr_db(got, c), "sqnr_db": snr_db(got, want),
            "arena_bytes": conv.plan.arena_bytes, "tflm_arena_bytes": tflm.get("total"),
            "weights_bytes": conv.report["weights_bytes"],
            "instructions_m4": results["m4"].instructions_per_inference,
            "instructions_m55": results["m55"].instructions_per_inference,
            "transposed_kernels": [layer["kernel"] for layer in conv.report["layers"] if layer["op"] == "convtr1d"],
            "cmsis_nn_api": conv.cmsis.api.level}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=200, help="held-out samples (the first 32 also on QEMU)")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "decoders.json")
    args = ap.parse_args()
    rows = [measure(name, precision, args.samples) for name in MODELS for precision in ("int8", "int16")]
    head = (f"{'model':<17}{'bits':>6}{'noisy':>7}{'float':>7}{'ours':>7}{'SQNR':>7}{'arena':>8}{'TFLM':>8}"
            f"{'weights':>8}{'M4 instr.':>11}{'M55 instr.':>11}  transposed convs")
    print(f"CMSIS-NN API level {rows[0]['cmsis_nn_api']}; dB of signal to error against the clean signal "
          "(noisy, float, ours) and ours against float (SQNR); bytes")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['model']:<17}{r['precision']:>6}{r['input_snr_db']:>7.2f}{r['float_snr_db']:>7.2f}"
              f"{r['ours_snr_db']:>7.2f}{r['sqnr_db']:>7.2f}{r['arena_bytes']:>8,}{r['tflm_arena_bytes'] or 0:>8,}"
              f"{r['weights_bytes']:>8,}{r['instructions_m4']:>11,}{r['instructions_m55']:>11,}  "
              + ", ".join(r["transposed_kernels"]))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
