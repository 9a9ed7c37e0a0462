"""Where the time goes when converting the bundled Keras example: TensorFlow import, Keras load,
tf2onnx, and our own pipeline (ONNX load -> C text). Run it as its own process so the TensorFlow
import is cold:

    python benchmarks/conversion_time.py [--runs 3] [--json benchmarks/out/conversion_time.json]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXAMPLE = ROOT / "examples" / "vibration_keras"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "conversion_time.json")
    args = ap.parse_args()

    t0 = time.perf_counter()
    from onnx2cmsis.frontends import keras as kf

    tf, tf2onnx, keras = kf._import_keras()
    timings = {"import_tensorflow_keras_tf2onnx_s": time.perf_counter() - t0}

    import numpy as np
    import onnx

    from onnx2cmsis.api import convert

    calibration = np.load(EXAMPLE / "calibration.npy")
    rows = []
    for _ in range(args.runs):
        keras.backend.clear_session()
        t = time.perf_counter()
        model = keras.models.load_model(str(EXAMPLE / "vibration_cnn.h5"), compile=False, safe_mode=True)
        t_load = time.perf_counter() - t
        t = time.perf_counter()
        proto = kf.keras_to_onnx(EXAMPLE / "vibration_cnn.h5")  # loads again: its own load is part of it
        t_export = time.perf_counter() - t - t_load
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "vibration_cnn.onnx"
            onnx.save(proto, str(path))
            t = time.perf_counter()
            convert(path, calibration, name="vibration_cnn")
            t_ours = time.perf_counter() - t
        rows.append({"keras_load_s": t_load, "tf2onnx_s": max(t_export, 0.0), "onnx2cmsis_pipeline_s": t_ours})
        del model
    for key in rows[0]:
        timings[key] = min(r[key] for r in rows)  # best of runs: the steady-state cost
    print(f"Keras example ({EXAMPLE.name}/vibration_cnn.h5, {len(calibration)} calibration samples, best of "
          f"{args.runs}; TF import is one cold start):")
    for key, value in timings.items():
        print(f"  {key:<36}{value:8.2f} s")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"cpu_count": os.cpu_count(), **timings}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
