"""`onnx2cmsis verify`: passes on a correct conversion, fails and names the layer on a corrupted one."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from onnx2cmsis.api import convert
from onnx2cmsis.cli import app
from onnx2cmsis.targets.qemu import missing_tools
from onnx2cmsis.drivers.verification import verify
from tests.needs import in_ci, oracle_runtime, qemu_tools

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vibration"
FIELDS = {"target", "samples", "bit_exact", "mismatches", "first_bad_layer", "max_abs_error_vs_float",
          "argmax_agreement", "accuracy", "flash_bytes", "weights_bytes", "ram_bytes", "arena_bytes",
          "instructions_per_inference", "stack_bytes", "oracle"}


def _data(tmp_path: Path, n: int = 40) -> tuple[Path, Path]:
    import sys

    sys.path.insert(0, str(EXAMPLE))
    from data import make_dataset

    x, y = make_dataset(n, seed=4)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", y)
    return tmp_path / "x.npy", tmp_path / "y.npy"


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.oracle
def test_verify_passes_on_the_example_and_writes_every_field(tmp_path):
    oracle_runtime()
    if in_ci():
        qemu_tools()
    x, y = _data(tmp_path)
    targets = "host" if missing_tools() else "host,m4,m55"
    r = CliRunner().invoke(app, ["verify", str(EXAMPLE / "vibration_cnn.onnx"), "-c", str(EXAMPLE / "calibration.npy"),
                                 "-d", str(x), "--labels", str(y), "-t", targets, "--json", str(tmp_path / "v.json")])
    assert r.exit_code == 0, r.output
    rows = json.loads((tmp_path / "v.json").read_text())
    assert [row["target"] for row in rows] == targets.split(",")
    for row in rows:
        assert FIELDS <= set(row)
        assert row["bit_exact"] and row["mismatches"] == 0 and row["samples"] == 40
        assert row["oracle"] == "tflite-micro" and row["accuracy"] >= 0.85
        assert abs(row["accuracy"] - row["float_accuracy"]) <= 0.1  # the float model's, beside the C's
        if row["target"] != "host":
            assert row["instructions_per_inference"] > 10_000 and row["flash_bytes"] > row["weights_bytes"]
            assert 64 < row["stack_bytes"] < 0x4000
    assert "bit-exact" in r.output and "float acc" in r.output


@pytest.mark.oracle
def test_a_corrupted_weight_fails_and_the_layer_is_named(tmp_path):
    conv = convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy")
    layer = next(layer for layer in conv.report["layers"] if layer["op"] == "conv1d")
    pattern = re.compile(rf"(static const int8_t {conv.name}_{layer['identifier']}_weights\[\d+\] = {{\n    )(-?\d+)")
    match = pattern.search(conv.source)
    assert match, "weights array not found"
    flipped = str(-int(match.group(2)) if int(match.group(2)) else 77)
    conv.source = conv.source[:match.start(2)] + flipped + conv.source[match.end(2):]
    x = np.load(EXAMPLE / "calibration.npy")[:16]
    (result,) = verify(conv, x, ["host"], workdir=tmp_path).results
    assert not result.bit_exact and result.mismatches > 0
    assert result.first_bad_layer.startswith(f"layer {layer['index']} "), result.first_bad_layer


def test_unknown_target_is_one_line_and_exit_2(tmp_path):
    """A bad option value is a usage error."""
    x, _ = _data(tmp_path, 4)
    r = CliRunner().invoke(app, ["verify", str(EXAMPLE / "vibration_cnn.onnx"), "-c", str(EXAMPLE / "calibration.npy"),
                                 "-d", str(x), "-t", "m3000"])
    assert r.exit_code == 2 and "unknown target 'm3000'" in r.output and "Traceback" not in r.output


@pytest.mark.slow
@pytest.mark.qemu
def test_instruction_counts_are_exact_and_repeatable(tmp_path):
    """The same inputs execute the same instructions; MVE needs fewer than the DSP M4, which needs
    fewer than Armv6-M (what the kernels are for)."""
    qemu_tools()
    from onnx2cmsis.targets.qemu import build_firmware, run_firmware

    conv = convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy")
    x = np.random.default_rng(0).integers(-128, 128, (3, conv.graph.tensors[conv.graph.inputs[0]].size)).astype(np.int8)
    per_target = {}
    for target in ("m0plus", "m4", "m55"):
        fw = build_firmware([conv], target, tmp_path / target)
        first, second = {}, {}
        run_firmware(fw, {conv.name: x}, instructions=first)
        run_firmware(fw, {conv.name: x}, instructions=second)
        assert np.array_equal(first[conv.name], second[conv.name]) and len(first[conv.name]) == 3
        per_target[target] = int(first[conv.name].max())
    assert per_target["m55"] < per_target["m4"] < per_target["m0plus"], per_target


@pytest.mark.slow
@pytest.mark.qemu
def test_stack_high_water_mark_sees_what_invoke_uses(tmp_path):
    """The painted-stack measurement moves with the stack the model really uses: 2 KB of extra locals
    in the function that runs the layers show up as (at least) 2 KB more."""
    qemu_tools()
    from onnx2cmsis.targets.qemu import build_firmware, run_firmware

    conv = convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy")
    signature = (f"int {conv.name}_invoke_with_arena(void *arena_buffer, const {conv.name}_input_t *input, "
                 f"{conv.name}_output_t *output)\n{{\n")
    assert conv.source.count(signature) == 1
    x = np.zeros((2, conv.graph.tensors[conv.graph.inputs[0]].size), np.int8)
    used = {}
    for extra in (0, 2048):
        if extra:
            conv.source = conv.source.replace(signature, signature + f"    volatile int8_t deep[{extra}];\n"
                                              f"    deep[0] = 1;\n    if (deep[0] != 1) {{\n        return -1;\n    }}\n")
        fw = build_firmware([conv], "m4", tmp_path / str(extra))
        stack: dict[str, np.ndarray] = {}
        run_firmware(fw, {conv.name: x}, stack=stack)
        used[extra] = int(stack[conv.name].max())
    assert 64 < used[0] < 2048 and used[2048] >= used[0] + 2048 - 64, used


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.oracle
def test_convert_tflite_has_the_c_interface_and_runs_the_same(tmp_path):
    """--tflite: the flatbuffer's input/output are exactly NAME_invoke's bytes, and tflite-micro on it
    gives the C's outputs."""
    from onnx2cmsis.oracle.tflite_export import run_tflite_micro
    from onnx2cmsis.targets.host import build_conversions

    r = CliRunner().invoke(app, ["convert", str(EXAMPLE / "vibration_cnn.onnx"), "-c", str(EXAMPLE / "calibration.npy"),
                                 "--out", str(tmp_path), "--tflite"])
    assert r.exit_code == 0, r.output
    flatbuffer = (tmp_path / "vibration_cnn.tflite").read_bytes()
    conv = convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy")
    model = build_conversions([conv], tmp_path / "build")[conv.name]
    x = np.random.default_rng(1).integers(-128, 128, (8, model.input_size)).astype(np.int8)
    assert np.array_equal(run_tflite_micro(flatbuffer, x), np.stack([model(s) for s in x]))
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_bytes(flatbuffer, arena_size=1 << 20)
    assert list(interp.get_input_details(0)["shape"]) == list(conv.graph.model_input_shapes[0])
    assert interp.get_input_details(0)["dtype"] == np.int8


@pytest.mark.slow
@pytest.mark.heavy
def test_layer_accuracy_follows_each_layer_through_the_layout_change(tmp_path):
    """The example's input is (C, W) and the IR computes in (W, C): each layer's int8 output is matched
    to its float value through the importer's index map. A wrong map would read noise (~0 dB)."""
    from onnx2cmsis.drivers.evaluate import layer_accuracy

    conv = convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy")
    x, _ = _data(tmp_path, 32)
    rows = layer_accuracy(conv, np.load(x))
    assert {r.op for r in rows} >= {"conv1d", "maxpool1d", "dense", "softmax"} and len(rows) >= 6
    assert all(r.sqnr_db > 30 and 0 < r.max_error_lsb < 64 for r in rows), rows
    r = CliRunner().invoke(app, ["verify", str(EXAMPLE / "vibration_cnn.onnx"), "-c", str(EXAMPLE / "calibration.npy"),
                                 "-d", str(x), "--layers"])
    assert r.exit_code == 0, r.output
    assert "SQNR dB" in r.output and sum(line.strip().split()[1:2] == ["conv1d"] for line in r.output.splitlines()) == 3


def test_layer_accuracy_counts_what_the_calibration_range_clips():
    """Data three times louder than the calibration samples: the first layer's outputs overflow its
    calibrated range (counted against the float values, independently of the int8 run); the
    calibration samples themselves never do."""
    from onnx2cmsis.drivers.evaluate import layer_accuracy

    conv = convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy")
    calib = np.load(EXAMPLE / "calibration.npy")[:16]
    assert all(r.saturated == 0 for r in layer_accuracy(conv, calib))
    loud = layer_accuracy(conv, 3 * calib)
    first = next(r for r in loud if r.op == "conv1d")
    assert first.saturated > 0 and first.values == 16 * 128 * 8 and 0.001 < first.saturated_share < 0.5


def test_the_examples_ship_a_labelled_test_set(tmp_path):
    """verify --labels works out of the box: 128 held-out windows per example, the classifier right on
    almost all (the float model's validation accuracy is ~0.95)."""
    x, y = EXAMPLE / "test_x.npy", EXAMPLE / "test_y.npy"
    assert np.load(x).shape == (128, 3, 128) and np.load(y).shape == (128,)
    out = tmp_path / "v.json"
    r = CliRunner().invoke(app, ["verify", str(EXAMPLE / "vibration_cnn.onnx"), "-c", str(EXAMPLE / "calibration.npy"),
                                 "-d", str(x), "--labels", str(y), "--json", str(out)])
    assert r.exit_code == 0, r.output
    keras_x = np.load(EXAMPLE.parent / "vibration_keras" / "test_x.npy")
    assert np.array_equal(keras_x, np.load(x).transpose(0, 2, 1))  # the same windows in Keras' layout
    assert np.array_equal(np.load(EXAMPLE.parent / "vibration_keras" / "test_y.npy"), np.load(y))
    host = __import__("json").loads(out.read_text())[0]
    assert host["samples"] == 128 and host["bit_exact"] and host["accuracy"] >= 0.9, host
    assert host["float_accuracy"] >= 0.9 and "float acc" in r.output  # the float model's, beside the C's


@pytest.mark.oracle
def test_verify_streaming_checks_every_push(tmp_path):
    """verify --streaming: the data's windows end to end as one stream; every push's output is
    checked against the integer reference on its window, and reported with the state bytes."""
    oracle_runtime()
    x, _ = _data(tmp_path, 8)
    r = CliRunner().invoke(app, ["verify", str(EXAMPLE / "vibration_cnn.onnx"), "-c", str(EXAMPLE / "calibration.npy"),
                                 "-d", str(x), "--streaming", "16", "-t", "host", "--json", str(tmp_path / "v.json")])
    assert r.exit_code == 0, r.output
    (row,) = json.loads((tmp_path / "v.json").read_text())
    assert row["bit_exact"] and row["stream_pushes"] >= 57 and row["stream_mismatches"] == 0
    assert row["stream_state_bytes"] > 0 and "every output == invoke on its window" in r.output


def test_a_stream_that_forgets_to_move_a_map_fails_verify(tmp_path):
    """Break one map's move in the generated push: invoke stays exact, the stream does not."""
    conv = convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy", streaming=16)
    moves = re.findall(r"\n *memmove\(st \+ \d+, st \+ \d+, \d+\); /\* a map moves by its hop \*/", conv.source)
    assert len(moves) >= 3
    conv.source = conv.source.replace(moves[1], "", 1)
    x = np.load(EXAMPLE / "calibration.npy")[:8]
    (result,) = verify(conv, x, ["host"], workdir=tmp_path).results
    assert result.mismatches == 0 and result.stream_mismatches > 0 and not result.bit_exact


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.oracle
def test_verify_streaming_on_qemu_counts_instructions_per_push(tmp_path):
    oracle_runtime()
    qemu_tools()
    x, _ = _data(tmp_path, 8)
    r = CliRunner().invoke(app, ["verify", str(EXAMPLE / "vibration_cnn.onnx"), "-c", str(EXAMPLE / "calibration.npy"),
                                 "-d", str(x), "--streaming", "16", "-t", "m4", "--json", str(tmp_path / "v.json")])
    assert r.exit_code == 0, r.output
    (row,) = json.loads((tmp_path / "v.json").read_text())
    assert row["bit_exact"] and row["stream_mismatches"] == 0 and row["stream_pushes"] >= 57
    # HOP = WINDOW / 8: a push runs the changed columns and the head, far less than an invoke
    assert 0 < row["instructions_per_push"] < 0.4 * row["instructions_per_inference"]
    assert "instructions per push" in r.output
