"""Accuracy side by side: onnx2cmsis and TensorFlow's own TFLiteConverter on the same models.

For each trained Keras model (benchmarks/models/, the bundled Keras example, the Keras test fixtures):
both tools get the same .h5 and the same calibration samples (full int8); ours runs as generated C
on the host, TFLite's as its .tflite in the tflite-micro runtime. Both are scored on held-out data
against the float Keras model: SQNR of the dequantized output, max error, argmax agreement with
float and, for classifiers, accuracy on the labels. Each `--variant` is one more onnx2cmsis column
(convert options as NAME=VALUE, comma-separated). `--precision int16` compares ours at int16 with
TFLite's 16x8 conversion (int16 activations, int8 weights) and adds our int8 as the last column.
Prints a table and writes JSON.

    python benchmarks/accuracy.py [--test 1000] [--calibration 200] [--json benchmarks/out/accuracy.json]
        [--variant dense_weights=per-tensor,bias_correction=no] ... [--precision int16]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks" / "models"))

from catalog import CALIBRATION_SEED, MODELS, TEST_SEED  # noqa: E402

from onnx2cmsis.api import convert  # noqa: E402
from onnx2cmsis.drivers.evaluate import quantize_inputs  # noqa: E402
from onnx2cmsis.arith.rules import dequantize_tensor  # noqa: E402
from onnx2cmsis.targets.host import build_conversions  # noqa: E402


@dataclass
class Score:
    sqnr_db: float
    max_abs_error: float
    argmax_agreement: float | None
    accuracy: float | None


@dataclass
class Case:
    name: str
    path: Path
    task: str
    calibration: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray | None


def cases(n_test: int, n_calibration: int):
    for m in MODELS.values():
        x_cal, _ = m.data(n_calibration, CALIBRATION_SEED)
        x, y = m.data(n_test, TEST_SEED)
        yield Case(m.name, ROOT / "benchmarks" / "models" / f"{m.name}.h5", m.task, x_cal, x,
                   None if m.task == "regression" else y)
    spec = importlib.util.spec_from_file_location("vibration_data", ROOT / "examples" / "vibration" / "data.py")
    vibration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vibration)
    x, y = vibration.make_dataset(n_test, seed=3)
    example = ROOT / "examples" / "vibration_keras"
    yield Case("vibration_keras", example / "vibration_cnn.h5", "softmax", np.load(example / "calibration.npy"),
               np.ascontiguousarray(x.transpose(0, 2, 1)), y)
    from tests.keras_models.data import signals

    rng = np.random.default_rng(8)
    for name, task in (("conv_zoo", "softmax"), ("separable_residual", "softmax"), ("autoencoder", "regression"),
                       ("dense_heads", "regression")):
        path = ROOT / "tests" / "keras_models" / f"{name}.h5"
        steps, channels = {"conv_zoo": (96, 4), "separable_residual": (64, 6), "autoencoder": (64, 3),
                           "dense_heads": (32, 2)}[name]
        if task == "softmax":
            x_cal = signals(n_calibration, steps, channels, 1)[0]
            x, y = signals(n_test, steps, channels, 2)
        else:
            x_cal = rng.standard_normal((n_calibration, steps, channels)).astype(np.float32)
            x, y = rng.standard_normal((n_test, steps, channels)).astype(np.float32), None
        yield Case(f"fixture_{name}", path, task, x_cal, x, y)


def score(got: np.ndarray, want: np.ndarray, case: Case) -> Score:
    got = got.reshape(len(got), -1).astype(np.float64)
    want = want.reshape(len(want), -1).astype(np.float64)
    err = got - want
    sqnr = 10 * np.log10(np.sum(want**2) / max(np.sum(err**2), 1e-30))
    classifier = case.task != "regression"
    return Score(float(sqnr), float(np.max(np.abs(err))),
                 float(np.mean(got.argmax(1) == want.argmax(1))) if classifier else None,
                 float(np.mean(got.argmax(1) == case.y_test)) if case.y_test is not None else None)


def tflite_quantized(model, calibration: np.ndarray, precision: str = "int8") -> bytes:
    """TFLite's converter, full integer: int8, or 16x8 (int16 activations, int8 weights) for int16."""
    import tensorflow as tf

    # A static batch of 1, as firmware runs it (a dynamic batch leaves shape arithmetic such as
    # REDUCE_PROD in the graph, which tflite-micro cannot run).
    import keras

    x = keras.Input(batch_shape=(1, *model.inputs[0].shape[1:]))
    conv = tf.lite.TFLiteConverter.from_keras_model(keras.Model(x, model(x)))
    conv.optimizations = [tf.lite.Optimize.DEFAULT]
    conv.representative_dataset = lambda: ([s[None]] for s in calibration)
    if precision == "int16":
        conv.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int16
    else:
        conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        conv.inference_input_type = conv.inference_output_type = tf.int8
    return conv.convert()


def run_tflite(tflite: bytes, x: np.ndarray) -> tuple[np.ndarray, str]:
    """Quantize with the model's input parameters, run, dequantize the output; returns the outputs
    and the runtime used: tflite-micro, or TFLite's own interpreter where the converter wrote an op
    tflite-micro lacks (TILE for UpSampling1D)."""
    from tflite_micro.python.tflite_micro import runtime

    try:
        interp = runtime.Interpreter.from_bytes(tflite, arena_size=1 << 20)
    except RuntimeError:
        return _run_tflite_interpreter(tflite, x), "TFLite interpreter"
    qi = interp.get_input_details(0)["quantization_parameters"]
    qo = interp.get_output_details(0)["quantization_parameters"]
    shape, dtype = interp.get_input_details(0)["shape"], interp.get_input_details(0)["dtype"]
    outs = []
    for sample in x:
        interp.set_input(_quantize(sample, qi["scales"][0], qi["zero_points"][0], dtype).reshape(shape), 0)
        interp.invoke()
        outs.append(_dequantize(np.array(interp.get_output(0)), qo["scales"][0], qo["zero_points"][0]))
    return np.stack(outs), "tflite-micro"


def _run_tflite_interpreter(tflite: bytes, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    interp = tf.lite.Interpreter(model_content=tflite)
    interp.allocate_tensors()
    din, dout = interp.get_input_details()[0], interp.get_output_details()[0]
    outs = []
    for sample in x:
        interp.set_tensor(din["index"], _quantize(sample, *din["quantization"], din["dtype"]).reshape(din["shape"]))
        interp.invoke()
        outs.append(_dequantize(interp.get_tensor(dout["index"]), *dout["quantization"]))
    return np.stack(outs)


def _quantize(x: np.ndarray, scale: float, zero_point: int, dtype=np.int8) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / float(scale)) + int(zero_point), info.min, info.max).astype(dtype)


def _dequantize(q: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return (q.astype(np.float64).reshape(-1) - int(zero_point)) * float(scale)


def parse_variant(text: str) -> dict[str, str | bool]:
    """"a=b,c=d" as convert() keyword arguments (yes/no/true/false/1/0 as booleans)."""
    booleans = {"yes": True, "true": True, "1": True, "no": False, "false": False, "0": False}
    pairs = (item.split("=", 1) for item in text.split(",") if item)
    return {key: booleans.get(value.lower(), value) for key, value in pairs}


def run(args) -> list[dict]:
    import keras

    variants = args.variant or [""]
    if args.precision == "int16":  # ours at int16 first (compared with TFLite 16x8), our int8 last
        variants = [",".join(filter(None, ["precision=int16", v])) for v in variants] + ["precision=int8"]
    rows = []
    for case in cases(args.test, args.calibration):
        if args.only and case.name not in args.only:
            continue
        model = keras.models.load_model(case.path, compile=False)
        want = np.asarray(model.predict(case.x_test, verbose=0, batch_size=256))
        row = {"model": case.name, "task": case.task, "parameters": int(model.count_params()),
               "float_accuracy": (float(np.mean(want.reshape(len(want), -1).argmax(1) == case.y_test))
                                  if case.y_test is not None else None)}
        convs = [convert(case.path, case.calibration, name=f"m{i}", default_api=None, **parse_variant(v))
                 for i, v in enumerate(variants)]
        with tempfile.TemporaryDirectory() as tmp:
            built = build_conversions(convs, Path(tmp))
            for v, conv in zip(variants, convs):
                xq = quantize_inputs(conv, case.x_test)
                out = np.stack([built[conv.name](s) for s in xq])
                got = dequantize_tensor(out, conv.graph.tensors[conv.graph.outputs[0]].quant)
                row[f"ours[{v or 'default'}]"] = asdict(score(got, want, case))
        try:
            got, runtime = run_tflite(tflite_quantized(model, case.calibration, args.precision), case.x_test)
            row["tflite"], row["tflite_runtime"] = asdict(score(got, want, case)), runtime
        except RuntimeError as exc:  # e.g. TILE (UpSampling1D) has no int16 kernel in any TFLite runtime
            row["tflite"], row["tflite_runtime"] = None, f"fails: {str(exc).splitlines()[0][:80]}"
        rows.append(row)
        print_row(row)
    return rows


def print_row(row: dict) -> None:
    cols = [k for k in row if k.startswith("ours[") or k == "tflite"]
    def fmt(s):
        if s is None:
            return row["tflite_runtime"]
        acc = "" if s["accuracy"] is None else f" acc {s['accuracy']:.3f}"
        return f"{s['sqnr_db']:6.2f} dB{acc}"
    fa = "" if row["float_accuracy"] is None else f"float acc {row['float_accuracy']:.3f}  "
    print(f"{row['model']:24s} {fa}" + "  ".join(f"{c}: {fmt(row[c])}" for c in cols), flush=True)


def markdown(rows: list[dict]) -> str:
    """The table for docs/benchmarks.md: SQNR (and accuracy) per column, ours minus TFLite's."""
    cols = [k for k in rows[0] if k.startswith("ours[")]
    head = ["model", "float acc", *(c[5:-1] for c in cols), "TFLite converter", "default - TFLite"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]

    def cell(s: dict) -> str:
        return f"{s['sqnr_db']:.2f} dB" + ("" if s["accuracy"] is None else f" / {s['accuracy']:.3f}")

    for r in rows:
        fa = "" if r["float_accuracy"] is None else f"{r['float_accuracy']:.3f}"
        if r["tflite"] is None:
            tfl, diff = r["tflite_runtime"], "-"
        else:
            diff = f"{r[cols[0]]['sqnr_db'] - r['tflite']['sqnr_db']:+.2f} dB"
            tfl = cell(r["tflite"]) + ("" if r["tflite_runtime"] == "tflite-micro" else " *")
        lines.append("| " + " | ".join([r["model"], fa, *(cell(r[c]) for c in cols), tfl, diff]) + " |")
    diffs = sorted(r[cols[0]]["sqnr_db"] - r["tflite"]["sqnr_db"] for r in rows if r["tflite"] is not None)
    lines.append(f"\nmedian default - TFLite: {float(np.median(diffs)):+.2f} dB; worst {diffs[0]:+.2f} dB")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--test", type=int, default=1000)
    ap.add_argument("--calibration", type=int, default=200)
    ap.add_argument("--variant", action="append", help="onnx2cmsis convert options NAME=VALUE,...")
    ap.add_argument("--only", nargs="*", help="model names")
    ap.add_argument("--precision", choices=("int8", "int16"), default="int8",
                    help="int16: ours at int16 vs TFLite's 16x8 conversion, plus our int8 for the gain")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "accuracy.json")
    args = ap.parse_args()
    rows = run(args)
    print(markdown(rows))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"test_samples": args.test, "calibration_samples": args.calibration,
                                     "precision": args.precision,
                                     "rows": rows}, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
