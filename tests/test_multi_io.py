"""Models with several inputs and outputs: the pointer-array form of docs/c-interface.md.

A hand-built ONNX model (two channel-major inputs, two outputs, one of which a later layer also reads)
checks the C interface itself; an 11-input one the .npz calibration rule (by name, else arr_0, arr_1,
... in numeric order); the three-input Keras sensor-fusion model and the two-input/two-output PyTorch
export are each checked bit-exact against the reference and tflite-micro on the host and on QEMU
M4/M55."""

from __future__ import annotations

import ctypes
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from onnx2cmsis.api import convert
from onnx2cmsis.cli import app
from onnx2cmsis.errors import ConversionError
from onnx2cmsis.drivers.evaluate import evaluate, float_outputs, quantize_inputs
from onnx2cmsis.data.samples import MultiSamples
from onnx2cmsis.quant.quantize import output_floats
from onnx2cmsis.arith.rules import quantize_tensor
from onnx2cmsis.targets.host import build_conversions, build_shared_library
from tests.bit_exact import bit_exact_everywhere
from tests.needs import module, oracle_runtime

FUSION = Path(__file__).resolve().parent / "keras_models" / "multi_io" / "sensor_fusion.h5"


def _fan_model(inputs: int, channels: int = 2, steps: int = 16, seed: int = 0) -> onnx.ModelProto:
    """x0..x{n-1}, each (1, C, W) -> Concat on channels -> Conv k3 + Relu = y0 -> Conv k1 = y1: two
    outputs, the first also read by the layer that makes the second."""
    rng = np.random.default_rng(seed)
    names = [f"x{k}" for k in range(inputs)]
    w1 = rng.standard_normal((6, channels * inputs, 3)).astype(np.float32) * 0.3
    w2 = rng.standard_normal((3, 6, 1)).astype(np.float32) * 0.3
    inits = [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(rng.standard_normal(6).astype(np.float32), "b1"),
             numpy_helper.from_array(w2, "w2")]
    nodes = [helper.make_node("Concat", names, ["cat"], axis=1),
             helper.make_node("Conv", ["cat", "w1", "b1"], ["conv"], pads=[1, 1]),
             helper.make_node("Relu", ["conv"], ["y0"]),
             helper.make_node("Conv", ["y0", "w2"], ["y1"])]
    graph = helper.make_graph(
        nodes, "fan", [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, channels, steps]) for n in names],
        [helper.make_tensor_value_info("y0", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("y1", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _samples(inputs: int, n: int, seed: int, channels: int = 2, steps: int = 16) -> list[np.ndarray]:
    """Input k's samples at 1.5^k times unit scale: each input gets its own range, growing with k."""
    rng = np.random.default_rng(seed)
    return [(1.5 ** k * rng.standard_normal((n, channels, steps))).astype(np.float32) for k in range(inputs)]


@pytest.fixture(scope="module")
def fan(tmp_path_factory):
    folder = tmp_path_factory.mktemp("fan")
    path = folder / "fan.onnx"
    onnx.save(_fan_model(2), str(path))
    conv = convert(path, _samples(2, 64, seed=1), name="fan")
    return path, conv, build_conversions([conv], folder / "host")["fan"]


def test_the_header_has_a_macro_set_per_input_and_output_and_a_pointer_array_invoke(fan):
    _, conv, _ = fan
    h = conv.header
    for line in ("#define FAN_INPUT_COUNT 2", "#define FAN_OUTPUT_COUNT 2", "typedef int8_t fan_input1_t;",
                 "#define FAN_INPUT1_SIZE 32", "#define FAN_INPUT1_STEPS 16", "#define FAN_INPUT1_CHANNELS 2",
                 "#define FAN_INPUT1_TIME_MAJOR 0", "#define FAN_OUTPUT0_SIZE 96", "#define FAN_OUTPUT1_SIZE 48",
                 "int fan_invoke(const void *const inputs[FAN_INPUT_COUNT], void *const outputs[FAN_OUTPUT_COUNT]);",
                 "void fan_quantize_input1(const float *input, fan_input1_t *quantized);",
                 "void fan_dequantize_output1(const fan_output1_t *quantized, float *output);"):
        assert line in h, line
    assert "#define FAN_INPUT_SIZE" not in h and "fan_input_t" not in h  # the one-input form is not mixed in
    assert " * Input 1: 'x1' [1, 2, 16] int8" in h and " * Output 1: 'y1' [1, 3, 16] int8" in h
    report = conv.report
    assert "input" not in report and "output" not in report
    assert [(io["name"], io["shape"]) for io in report["inputs"]] == [("x0", [1, 2, 16]), ("x1", [1, 2, 16])]
    assert [(io["name"], io["shape"]) for io in report["outputs"]] == [("y0", [1, 6, 16]), ("y1", [1, 3, 16])]
    for io, k in zip(report["inputs"], range(2)):
        assert f"#define FAN_INPUT{k}_ZERO_POINT {io['zero_point']}\n" in h


def test_the_c_runs_each_input_and_output_in_its_place(fan):
    """The C == the integer reference on every output, with each input quantized by its own C helper
    exactly as TFLite would, and each output dequantized with its own parameters."""
    _, conv, model = fan
    x = _samples(2, 12, seed=7)
    for i in range(12):
        codes = tuple(model.quantize_input(x[k][i], k) for k in range(2))
        for k in range(2):
            io = conv.report["inputs"][k]
            want = np.clip(np.sign(x[k][i] / io["scale"]) * np.floor(np.abs(x[k][i] / io["scale"]) + 0.5)
                           + io["zero_point"], -128, 127).reshape(-1)
            assert np.array_equal(codes[k], want), (i, k)
        out = model(codes)
        assert np.array_equal(out, conv.reference(codes)), i
        y0, y1 = out[:96], out[96:]
        for k, part in enumerate((y0, y1)):
            io = conv.report["outputs"][k]
            assert np.allclose(model.dequantize_output(part, k), (part.astype(np.float32) - io["zero_point"])
                               * np.float32(io["scale"]), rtol=0, atol=0), k
    # the two inputs are not interchangeable: swapping them changes the outputs
    codes = tuple(model.quantize_input(x[k][0], k) for k in range(2))
    assert not np.array_equal(model(codes), model(codes[::-1]))


def test_null_arrays_and_pointers_are_refused(fan):
    _, _, model = fan
    assert model._invoke(None, None) == -1
    buffers = [np.zeros(32, np.int8), np.zeros(32, np.int8), np.zeros(96, np.int8), np.zeros(48, np.int8)]
    ins = (ctypes.c_void_p * 2)(buffers[0].ctypes.data, None)
    outs = (ctypes.c_void_p * 2)(buffers[2].ctypes.data, buffers[3].ctypes.data)
    assert model._invoke(ctypes.addressof(ins), ctypes.addressof(outs)) == -1
    ins[1] = buffers[1].ctypes.data
    assert model._invoke(ctypes.addressof(ins), ctypes.addressof(outs)) == 0
    with_arena = model._fn("invoke_with_arena", ctypes.c_int, [ctypes.c_void_p] * 3)
    arena = np.zeros(256, np.int32)
    assert with_arena(None, ctypes.addressof(ins), ctypes.addressof(outs)) == -1
    assert with_arena(arena.ctypes.data + 1, ctypes.addressof(ins), ctypes.addressof(outs)) == -1  # misaligned
    assert with_arena(arena.ctypes.data, None, ctypes.addressof(outs)) == -1
    assert with_arena(arena.ctypes.data, ctypes.addressof(ins), ctypes.addressof(outs)) == 0


def test_the_documented_usage_compiles_strictly_and_runs(fan, tmp_path):
    """docs/c-interface.md's example for a two-input, two-output model, compiled with the strict flags
    and called: its dequantized outputs are the reference's."""
    _, conv, _ = fan
    text = (Path(__file__).resolve().parents[1] / "docs" / "c-interface.md").read_text()
    block = text.split("<!-- compiled by tests/test_multi_io.py -->\n```c\n", 1)[1].split("```", 1)[0]
    for file, content in (("fan.c", conv.source), ("fan.h", conv.header), ("usage.c", block)):
        (tmp_path / file).write_text(content)
    lib = ctypes.CDLL(str(build_shared_library([tmp_path / "fan.c", tmp_path / "usage.c"], [tmp_path], conv.cmsis,
                                               tmp_path / "libusage.so")))
    x = _samples(2, 3, seed=11)
    for i in range(3):
        left, right = (np.ascontiguousarray(x[k][i]) for k in range(2))
        scores, feature_map = np.zeros(96, np.float32), np.zeros(48, np.float32)
        status = lib.classify(*(ctypes.c_void_p(a.ctypes.data) for a in (left, right, scores, feature_map)))
        assert status == 0
        codes = conv.reference(tuple(quantize_tensor(part, conv.graph.tensors[t].quant)
                                     for part, t in zip((left, right), conv.graph.inputs)))
        assert np.array_equal(np.concatenate([scores, feature_map]), output_floats(conv.graph, codes)), i


@pytest.mark.oracle
def test_tflite_micro_gives_the_same_outputs(fan):
    oracle_runtime()
    from onnx2cmsis.oracle.tflite_export import export_tflite, run_tflite_micro

    _, conv, model = fan
    xq = quantize_inputs(conv, MultiSamples(tuple(_samples(2, 16, seed=3))))
    want = run_tflite_micro(export_tflite(conv.graph, conv.registry), xq)
    assert want.shape == (16, 96 + 48)
    assert np.array_equal(np.stack([model(x) for x in xq]), want)


def test_npz_arrays_are_taken_by_name_whatever_their_order(fan, tmp_path):
    path, conv, _ = fan
    x = _samples(2, 64, seed=1)
    np.savez(tmp_path / "named.npz", x1=x[1], x0=x[0])
    assert convert(path, tmp_path / "named.npz", name="fan").source == conv.source


def test_unnamed_npz_arrays_are_inputs_in_numeric_order(tmp_path):
    """arr_10 is input 10, not input 2 (as a string sort would have it): input k's range grows with k."""
    path = tmp_path / "fan11.onnx"
    onnx.save(_fan_model(11, channels=1, steps=8), str(path))
    x = _samples(11, 32, seed=2, channels=1, steps=8)
    np.savez(tmp_path / "unnamed.npz", *x)
    conv = convert(path, tmp_path / "unnamed.npz", name="fan11")
    scales = [io["scale"] for io in conv.report["inputs"]]
    assert scales == sorted(scales) and len(set(scales)) == 11, scales
    assert convert(path, x, name="fan11").source == conv.source


@pytest.mark.oracle
def test_one_input_and_two_outputs_take_the_pointer_array_form(tmp_path):
    oracle_runtime()
    path = tmp_path / "fan1.onnx"
    onnx.save(_fan_model(1), str(path))
    conv = convert(path, _samples(1, 32, seed=2)[0], name="fan1")
    assert "#define FAN1_INPUT_COUNT 1" in conv.header and "#define FAN1_OUTPUT_COUNT 2" in conv.header
    ev, out = evaluate(conv, _samples(1, 12, seed=3)[0], tmp_path / "host")
    assert ev.mismatches_vs_reference == 0 and ev.mismatches_vs_tflite_micro == 0 and out.shape == (12, 96 + 48)


def test_an_input_no_layer_reads_keeps_its_place(tmp_path):
    """An exporter's leftover input: still input 1 of the invoke, the C compiles with the strict flags
    (no unused variable) and gives the reference's bytes."""
    a, b = (helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 2, 8]) for n in ("x", "unused"))
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "g", [a, b],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "leftover.onnx"))
    rng = np.random.default_rng(3)
    conv = convert(tmp_path / "leftover.onnx", [rng.standard_normal((16, 2, 8)).astype(np.float32)] * 2,
                   name="leftover")
    assert "#define LEFTOVER_INPUT_COUNT 2" in conv.header and "input1 =" not in conv.source
    built = build_conversions([conv], tmp_path / "host")["leftover"]
    for _ in range(4):
        x = tuple(rng.integers(-128, 128, 16).astype(np.int8) for _ in range(2))
        assert np.array_equal(built(x), conv.reference(x))


def test_samples_in_memory_must_match_the_inputs(fan):
    path, _, _ = fan
    x = _samples(2, 8, seed=1)
    with pytest.raises(ConversionError, match=r"1 array for a model with 2 inputs \('x0', 'x1'\)"):
        convert(path, x[:1], name="fan")
    with pytest.raises(ConversionError, match="the samples name no input 'x1'"):
        convert(path, {"x0": x[0]}, name="fan")
    with pytest.raises(ConversionError, match=r"give one array per input"):
        convert(path, x[0], name="fan")
    with pytest.raises(ConversionError, match=r"different numbers of samples per input \(x0: 8, x1: 5\)"):
        convert(path, [x[0], x[1][:5]], name="fan")


def test_verify_checks_the_samples_it_is_given(fan):
    import onnx2cmsis

    _, conv, _ = fan
    x = _samples(2, 8, seed=1)
    with pytest.raises(ConversionError, match=r"the data holds different numbers of samples per input \(x0: 8, x1: 5\)"):
        onnx2cmsis.verify(conv, [x[0], x[1][:5]])
    with pytest.raises(ConversionError, match=r"the data for input 'x1' has shape \(8, 2, 15\), expected \(N, 2, 16\)"):
        onnx2cmsis.verify(conv, [x[0], x[1][:, :, :15]])
    with pytest.raises(Exception, match="judge one output's classes; this model has 2 outputs"):
        onnx2cmsis.verify(conv, x, labels=np.zeros(8))


def test_streaming_and_labels_are_refused_with_several_outputs(fan):
    path, _, _ = fan
    x = _samples(2, 8, seed=1)
    with pytest.raises(Exception, match="streams models with one input and one output; this one has 2 inputs"):
        convert(path, x, name="fan", streaming=4)
    with pytest.raises(Exception, match="judge one output's classes; this model has 2 outputs"):
        convert(path, x, name="fan", precision="auto", max_accuracy_drop=1.0, calibration_labels=np.zeros(8))


def test_inspect_lists_the_inputs_and_outputs(fan):
    path, _, _ = fan
    r = CliRunner().invoke(app, ["inspect", str(path)])
    assert r.exit_code == 0, r.output
    assert "inputs: 0 'x0' [1, 2, 16], 1 'x1' [1, 2, 16]; outputs: 0 'y0' [1, 6, 16], 1 'y1' [1, 3, 16]" in r.output
    assert "--streaming" not in r.output  # a stream takes one input


def test_command_line_converts_and_verifies_with_npz_files(fan, tmp_path):
    path, _, _ = fan
    x = _samples(2, 64, seed=1)
    np.savez(tmp_path / "calib.npz", x0=x[0], x1=x[1])
    data = _samples(2, 10, seed=9)
    np.savez(tmp_path / "data.npz", *data)
    r = CliRunner().invoke(app, ["convert", str(path), "-c", str(tmp_path / "calib.npz"), "--out",
                                 str(tmp_path / "out"), "-q"])
    assert r.exit_code == 0, r.output
    report = json.loads((tmp_path / "out" / "fan.json").read_text())
    assert [io["name"] for io in report["inputs"]] == ["x0", "x1"]
    assert "fan_invoke(const void *const inputs" in (tmp_path / "out" / "fan.h").read_text()
    oracle_runtime()
    r = CliRunner().invoke(app, ["verify", str(path), "-c", str(tmp_path / "calib.npz"), "--data",
                                 str(tmp_path / "data.npz"), "--json", str(tmp_path / "v.json")])
    assert r.exit_code == 0, r.output
    (result,) = json.loads((tmp_path / "v.json").read_text())
    assert result["bit_exact"] and result["samples"] == 10 and result["oracle"] == "tflite-micro", result


@pytest.mark.slow
@pytest.mark.level
@pytest.mark.keras
def test_three_input_keras_sensor_fusion_isbit_exact_everywhere(tmp_path):
    """Three (64, 9) inputs, a Conv1D + pool branch each, Concatenate, BatchNorm, dense head; trained
    (held-out accuracy 0.99). Calibrated from a .npz by input name."""
    module("keras", 'pip install -e ".[keras]"')
    from tests.keras_models.make_multi_io import fusion_data

    x_cal, _ = fusion_data(64, seed=5)
    np.savez(tmp_path / "calib.npz", mag=x_cal[2], accel=x_cal[0], gyro=x_cal[1])
    conv = convert(FUSION, tmp_path / "calib.npz", name="fusion")
    assert [io["name"] for io in conv.report["inputs"]] == ["accel", "gyro", "mag"]
    assert "#define FUSION_INPUT2_TIME_MAJOR 1" in conv.header
    x, y = fusion_data(120, seed=6)
    samples = MultiSamples(tuple(x))
    want = float_outputs(conv, samples)
    assert float(np.mean(want.argmax(1) == y)) >= 0.95  # the trained weights came through
    out = bit_exact_everywhere(conv, samples, tmp_path)
    got = (out.astype(np.float32) - conv.report["outputs"][0]["zero_point"]) * conv.report["outputs"][0]["scale"]
    assert float(np.mean(got.argmax(1) == y)) >= 0.95
    assert float(np.max(np.abs(got - want))) < 0.1  # in the right order: each input feeds its own branch


@pytest.mark.slow
@pytest.mark.level
@pytest.mark.torch
def test_two_input_two_output_pytorch_export_isbit_exact_everywhere(tmp_path):
    module("torch", 'pip install -e ".[test]"')
    from tests.torch_models import export_torch_two_in_two_out

    path, shapes = export_torch_two_in_two_out(tmp_path)
    rng = np.random.default_rng(4)
    conv = convert(path, [rng.standard_normal((64, *s)).astype(np.float32) for s in shapes], name="two_heads")
    assert [(io["name"], io["shape"]) for io in conv.report["inputs"]] == [("a", [1, 4, 64]), ("b", [1, 2, 32])]
    assert [(io["name"], io["shape"]) for io in conv.report["outputs"]] == [("logits", [1, 5]), ("map", [1, 2, 32])]
    samples = MultiSamples(tuple(rng.standard_normal((40, *s)).astype(np.float32) for s in shapes))
    out = bit_exact_everywhere(conv, samples, tmp_path)
    assert out.shape == (40, 5 + 64)
    ev, _ = evaluate(conv, samples, tmp_path / "again", oracle_samples=0)
    assert ev.sqnr_db > 25, ev  # both outputs follow the float model


@pytest.mark.slow
@pytest.mark.level
@pytest.mark.qemu
def test_int16_and_mixed_width_inputs_and_outputs_on_the_smallest_core(tmp_path):
    """Odd-sized int16 inputs (90 bytes each: the runner pads every part to a word) and, from
    --precision auto, one int8 and one int16 output side by side: bit-exact on the host and M0+."""
    import onnx2cmsis

    path = tmp_path / "fan3.onnx"
    onnx.save(_fan_model(3, channels=3, steps=15), str(path))
    calib, x = _samples(3, 64, 1, channels=3, steps=15), MultiSamples(tuple(_samples(3, 10, 5, channels=3, steps=15)))
    wide = convert(path, calib, name="fan16", precision="int16")
    # 34 dB: above all-int8's held-out lower bound (33.75), below all-int16's (37.99): one output widens
    mixed = convert(path, calib, name="fan_mixed", precision="auto", max_error_db=34)
    assert [io["dtype"] for io in wide.report["inputs"]] == ["int16"] * 3
    assert [io["dtype"] for io in mixed.report["outputs"]] == ["int8", "int16"]
    for conv in (wide, mixed):
        result = onnx2cmsis.verify(conv, x, targets=("host", "m0plus"), workdir=tmp_path / conv.name)
        assert result.passed and all(r.oracle == "tflite-micro" for r in result.results), result.table()
