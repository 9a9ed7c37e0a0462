""".tflite in (issue 33, first part): the file's own integer graph, no calibration, byte-identical with
tflite-micro's reference kernels running that very file (the oracle is the file).

Fixtures: this project's own `--tflite` export (written by tflite-micro's model_editor, which leaves
`deprecated_builtin_code` at 0: the reader's trap) and int8 files made by TensorFlow's converter from
trained Keras 1D models (tests/tflite_models/make_tflite.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from onnx2cmsis.api import convert
from onnx2cmsis.errors import ConversionError, UnsupportedOpError
from onnx2cmsis.quant.quantize import quantize_samples
from tests.bit_exact import bit_exact_everywhere
from tests.keras_models.data import signals
from tests.needs import oracle_runtime

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "tests" / "tflite_models"
CNN, BN, FLAT, ZOO = (HERE / f"keras_{n}_int8.tflite" for n in ("cnn", "bn", "flat", "zoo"))
CNN16, FLAT16 = (HERE / f"keras_{n}_16x8.tflite" for n in ("cnn", "flat"))
SHAPED = [HERE / f"keras_{n}_int8.tflite" for n in ("t1c", "flatin", "resize", "gmax")]
TILE = HERE / "keras_tile_int8.tflite"
SUB, SUB16, CONCAT, BN16 = (HERE / f"keras_{n}.tflite" for n in ("sub_int8", "sub_16x8", "concat_int8", "bn_16x8"))
FLOAT = HERE / "keras_cnn_float.tflite"


def _signals(n: int, conv) -> np.ndarray:
    """Held-out windows in the model's own input shape ((T, C), (T, 1, C) or (T*C,))."""
    return signals(n, 64, 3, seed=11)[0].reshape(n, *conv.graph.model_input_shapes[0][1:])


def _file_outputs(path: Path, codes: np.ndarray) -> np.ndarray:
    oracle_runtime()
    from onnx2cmsis.oracle.tflite_export import run_tflite_micro

    return run_tflite_micro(path.read_bytes(), codes)


def test_the_reader_takes_the_larger_of_the_two_operator_code_fields(tmp_path):
    """model_editor leaves deprecated_builtin_code at 0: the tflite package alone reads every op as ADD."""
    oracle_runtime()  # model_editor, which writes the file, comes with the oracle's wheel
    import tflite

    from onnx2cmsis.frontends.tflite_reader import read_tflite
    from onnx2cmsis.oracle.tflite_export import export_tflite

    conv = convert(ROOT / "examples" / "vibration" / "vibration_cnn.onnx", ROOT / "examples" / "vibration" /
                   "calibration.npy", name="v")
    path = tmp_path / "v.tflite"
    path.write_bytes(export_tflite(conv.graph, conv.registry))
    model = tflite.Model.GetRootAsModel(path.read_bytes(), 0)
    naive = {model.OperatorCodes(i).BuiltinCode() for i in range(model.OperatorCodesLength())}
    assert naive == {tflite.BuiltinOperator.ADD}  # the trap is real in this file
    codes = [op.code for op in read_tflite(path).operators]
    assert codes.count("CONV_2D") == 3 and codes.count("FULLY_CONNECTED") == 2 and codes[-1] == "SOFTMAX"


@pytest.mark.oracle
def test_this_projects_own_export_reads_back_into_the_same_integer_graph(tmp_path):
    conv = convert(ROOT / "examples" / "vibration" / "vibration_cnn.onnx", ROOT / "examples" / "vibration" /
                   "calibration.npy", name="v")
    from onnx2cmsis.oracle.tflite_export import export_tflite

    path = tmp_path / "v.tflite"
    path.write_bytes(export_tflite(conv.graph, conv.registry))
    again = convert(path, name="v")  # no calibration: the file is quantized
    x = np.load(ROOT / "examples" / "vibration" / "calibration.npy")[:40]
    codes = quantize_samples(conv.graph, x)[0]
    assert np.array_equal(quantize_samples(again.graph, x)[0], codes)
    assert np.array_equal(again.references(codes), _file_outputs(path, codes))
    assert np.array_equal(again.references(codes), conv.references(codes))
    assert again.report["quantization"]["recipe"]["source"] == "TFLite"


@pytest.mark.oracle
def test_a_tensorflow_converted_int8_file_gives_tflite_micros_bytes():
    conv = convert(CNN, name="cnn")
    x = signals(200, 64, 3, seed=11)[0]
    codes = quantize_samples(conv.graph, x)[0]
    assert np.array_equal(conv.references(codes), _file_outputs(CNN, codes))
    ops = [n.op for n in conv.graph.nodes]
    assert ops.count("lut") == 2 and "dwconv1d" in ops and "avgpool1d" in ops  # tanh, sigmoid, ...


@pytest.mark.oracle
def test_a_dynamic_batchs_shape_arithmetic_folds_and_the_flatten_is_free():
    """Keras' Flatten with a dynamic batch: SHAPE -> STRIDED_SLICE -> PACK compute the reshape's
    target, and the file's static shapes say 1 where the signature is dynamic."""
    from onnx2cmsis.frontends.tflite_reader import read_tflite

    assert {"SHAPE", "STRIDED_SLICE", "PACK"} <= {op.code for op in read_tflite(FLAT).operators}
    conv = convert(FLAT, name="flat")
    assert [n.op for n in conv.graph.nodes if n.op != "reshape"] == ["conv1d", "maxpool1d", "dense", "dense",
                                                                      "softmax"]
    x = signals(200, 64, 3, seed=11)[0]
    codes = quantize_samples(conv.graph, x)[0]
    assert np.array_equal(conv.references(codes), _file_outputs(FLAT, codes))


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.oracle
@pytest.mark.parametrize("path", [CNN, FLAT, BN, ZOO, CNN16, FLAT16, *SHAPED, TILE, SUB, SUB16, CONCAT, BN16],
                         ids=lambda p: p.stem)
def test_a_tensorflow_converted_int8_file_is_bit_exact_on_the_host_and_qemu(tmp_path, path):
    """C == reference == tflite-micro running this tool's export of the same integer graph (for the
    zoo, tflite-micro cannot run the file itself: see the dilated-conv test)."""
    conv = convert(path, name="m", default_api=None)
    x = signals(12, 96, 4, seed=11)[0] if path == ZOO else _signals(12, conv)
    bit_exact_everywhere(conv, x, tmp_path, qemu_samples=3)


@pytest.mark.oracle
def test_an_unfolded_batchnorm_is_tflites_own_mul_and_add_of_constants():
    """The converter leaves BatchNorm as MUL and ADD of int8 constants after the tanh: each rounds, so
    merged into one affine (a float model's way) 27% of the outputs were off tflite-micro's."""
    conv = convert(BN, name="bn")
    assert [n.origin for n in conv.graph.nodes if n.op == "binary_const"] == ["Mul", "Add"]
    x = signals(200, 64, 3, seed=11)[0]
    codes = quantize_samples(conv.graph, x)[0]
    assert np.array_equal(conv.references(codes), _file_outputs(BN, codes))


@pytest.mark.oracle
@pytest.mark.parametrize("path, want", [(SUB, [("binary_const", "sub")]), (SUB16, [("binary_const", "sub")]),
                                        (CONCAT, [("requantize", None)]),
                                        (BN16, [("binary_const", "mul"), ("binary_const", "add")])],
                         ids=lambda v: v.stem if isinstance(v, Path) else "")
def test_sub_of_a_constant_a_requantizing_quantize_and_16x8_constants_are_tflites_own(path, want):
    """SUB of a per-channel constant after a tanh (int8 and 16x8: ADD's rescaling, the constant's value
    subtracted, an own loop), the QUANTIZE int8 -> int8 the converter puts before a concatenation (a
    requantize node), an unfolded BatchNorm's MUL and ADD of int16 constants: tflite-micro's bytes."""
    conv = convert(path, name="m")
    ops = [(n.op, n.attrs.get("fn")) for n in conv.graph.nodes if n.op in ("binary_const", "requantize")
           and not conv.registry.for_op(n.op).aliases_input(n)]  # a requantize into the same quantization is a view
    assert ops == want
    codes = quantize_samples(conv.graph, signals(200, 64, 3, seed=11)[0])[0]
    assert np.array_equal(conv.references(codes), _file_outputs(path, codes))


@pytest.mark.oracle
def test_hard_swish_is_tflites_own_integer_arithmetic():
    """HARD_SWISH's 16-bit fixed-point steps (arith/hard_swish.py) as a table: the bytes tflite-micro
    gives running the converter's file, and the export writes HARD_SWISH itself."""
    path = HERE / "keras_hswish_int8.tflite"
    conv = convert(path, name="hs")
    assert [n.attrs["fn"] for n in conv.graph.nodes if n.op == "lut"] == ["hard_swish", "hard_swish"]
    x = signals(200, 64, 3, seed=11)[0]
    codes = quantize_samples(conv.graph, x)[0]
    assert np.array_equal(conv.references(codes), _file_outputs(path, codes))


@pytest.mark.oracle
@pytest.mark.parametrize("gain,shift", [(0.3, -0.5), (10.0, 3.0)])  # both signs of the relu-ish exponent
def test_an_onnx_hardswish_is_tflites_hard_swish(tmp_path, gain, shift):
    from onnx import TensorProto, helper, numpy_helper

    from onnx2cmsis.oracle.tflite_export import export_tflite, run_tflite_micro
    from tests.onnx_models import make_model

    oracle_runtime()
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.normal(size=(8, 3, 3)) * gain).astype(np.float32), "w")
    b = numpy_helper.from_array(np.full(8, shift, np.float32), "b")
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("HardSwish", ["c"], ["y"], name="hs")]
    path = tmp_path / "hs.onnx"
    import onnx

    onnx.save(make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 32])], [w, b], opset=14),
              str(path))
    x = rng.normal(size=(64, 3, 32)).astype(np.float32)
    conv = convert(path, x[:32], name="hs")
    codes = quantize_samples(conv.graph, x)[0]
    assert np.array_equal(conv.references(codes), run_tflite_micro(export_tflite(conv.graph, conv.registry), codes))


def test_what_is_not_read_yet_is_refused_every_operator_at_once():
    from onnx2cmsis.frontends.tflite import tflite_to_onnx
    from onnx2cmsis.frontends.tflite_reader import TfliteModel, TfliteOperator, TfliteTensor

    def tensor(i, data=None, quantized=True):
        return TfliteTensor(i, f"t{i}", (1, 4), np.dtype(np.int8), data, np.array([0.1], np.float32) if quantized
                            else None, np.array([0]) if quantized else None, 0)

    per_channel = TfliteTensor(1, "t1", (1, 4), np.dtype(np.int8), np.ones((4,), np.int8),
                               np.full(4, 0.1, np.float32), np.zeros(4, np.int64), 0)
    tensors = [tensor(0), per_channel, tensor(2), tensor(3), tensor(4)]
    ops = [TfliteOperator(0, "SUB", (0, 1), (2,)), TfliteOperator(1, "SOFTMAX", (2,), (3,), {"Beta": 2.0}),
           TfliteOperator(2, "SPACE_TO_BATCH_ND", (3,), (4,)), TfliteOperator(3, "SQUARED_DIFFERENCE", (4,), (4,))]
    model = TfliteModel(tensors, ops, (0,), (4,))
    with pytest.raises(UnsupportedOpError, match="2 operator.*SPACE_TO_BATCH_ND.*SQUARED_DIFFERENCE"):
        tflite_to_onnx(model, "m.tflite")
    model = TfliteModel(tensors, ops[:2], (0,), (3,))
    with pytest.raises(UnsupportedOpError, match=r"operator 0 \(SUB\): a constant.*operator 1 \(SOFTMAX\): beta 2"):
        tflite_to_onnx(model, "m.tflite")


def test_a_file_that_is_no_tflite_is_one_clear_error(tmp_path):
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(b"\x00" * 40)
    with pytest.raises(ConversionError, match="not a readable .tflite model|subgraphs"):
        convert(bad)


@pytest.mark.oracle
def test_verify_runs_the_file_itself_in_tflite_micro_and_needs_no_calibration(tmp_path):
    from typer.testing import CliRunner

    from onnx2cmsis.cli import app

    np.save(tmp_path / "x.npy", signals(20, 64, 3, seed=11)[0])
    result = CliRunner().invoke(app, ["verify", str(CNN), "-d", str(tmp_path / "x.npy"), "-t", "host",
                                      "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    (host,) = __import__("json").loads((tmp_path / "r.json").read_text())
    assert host["bit_exact"] and host["oracle"] == "tflite-micro on the file"
    assert host["file_within_one_step"] is None  # no ONNX Runtime comparison: the file is the oracle


def _tensorflow_outputs(path: Path, codes: np.ndarray, resolver: str) -> np.ndarray:
    """TensorFlow's own interpreter on the file (no delegate: XNNPACK's int8 arithmetic is its own)."""
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path),
                                      experimental_op_resolver_type=getattr(tf.lite.experimental.OpResolverType, resolver))
    interpreter.allocate_tensors()
    given, taken = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for x in codes:
        interpreter.set_tensor(given["index"], x.reshape(given["shape"]).astype(given["dtype"]))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(taken["index"]).reshape(-1))
    return np.stack(rows)


@pytest.mark.keras
def test_a_tile_upsampling_matches_tensorflows_interpreter():
    """Keras' UpSampling1D is EXPAND_DIMS -> TILE -> RESHAPE, and tflite-micro has no TILE: the oracle
    is TensorFlow's interpreter (its built-in kernels; the reference resolver has no int8 TILE) in this
    test only. The C reads the chain as a nearest upsampling."""
    conv = convert(TILE, name="tile")
    assert "upsample1d" in [n.op for n in conv.graph.nodes]
    codes = quantize_samples(conv.graph, _signals(40, conv))[0]
    assert np.array_equal(conv.references(codes), _tensorflow_outputs(TILE, codes, "BUILTIN_WITHOUT_DEFAULT_DELEGATES"))


@pytest.mark.keras
def test_a_dilated_conv_written_as_space_to_batch_matches_tensorflows_reference_interpreter():
    """TensorFlow writes a dilated Conv1D as SPACE_TO_BATCH_ND -> CONV_2D -> BATCH_TO_SPACE_ND, whose
    middle tensors have the block as their batch while the file's static shapes say 1: tflite-micro
    (static shapes) computes only the first phase and returns garbage for the rest, so the oracle here
    is TensorFlow's own interpreter with its reference kernels (test only; the C reads the chain as one
    dilated convolution)."""
    conv = convert(ZOO, name="zoo")
    assert "SPACE_TO_BATCH_ND" in {op.code for op in __import__("onnx2cmsis.frontends.tflite_reader",
                                                               fromlist=["read_tflite"]).read_tflite(ZOO).operators}
    assert any(n.attrs.get("window") is not None and n.attrs["window"].dilation == 2 for n in conv.graph.nodes)
    codes = quantize_samples(conv.graph, signals(40, 96, 4, seed=21)[0])[0]
    assert np.array_equal(conv.references(codes), _tensorflow_outputs(ZOO, codes, "BUILTIN_REF"))


@pytest.mark.oracle
@pytest.mark.parametrize("path", [CNN16, FLAT16], ids=lambda p: p.stem)
def test_a_16x8_file_gives_tflite_micros_bytes(path):
    """int16 activations, int8 weights, int64 biases (each within int32 here, as DequantizeLinear carries)."""
    from onnx2cmsis.frontends.tflite_reader import read_tflite

    biases = [t for t in read_tflite(path).tensors if t.dtype == np.int64 and t.data is not None]
    assert biases  # the file is 16x8
    conv = convert(path, name="m")
    assert conv.graph.tensors[conv.graph.inputs[0]].quant.bits == 16
    codes = quantize_samples(conv.graph, signals(100, 64, 3, seed=11)[0])[0]
    assert np.array_equal(conv.references(codes), _file_outputs(path, codes))


@pytest.mark.oracle
@pytest.mark.parametrize("path", SHAPED, ids=lambda p: p.stem)
def test_the_layouts_users_write_1d_models_in_give_tflite_micros_bytes(path):
    """(T, 1, C) with 2-D layers, a flat input reshaped inside, Resizing(nearest) between Reshapes:
    each becomes the 1D model it is (no 2-D op, no copy of the flat input)."""
    conv = convert(path, name="m")
    ops = [n.op for n in conv.graph.nodes]
    assert "conv1d" in ops and ("upsample1d" in ops) == ("resize" in path.stem)
    codes = quantize_samples(conv.graph, _signals(100, conv))[0]
    assert np.array_equal(conv.references(codes), _file_outputs(path, codes))


def test_a_float_file_converts_with_calibration_like_any_float_model():
    with pytest.raises(ConversionError, match="calibration samples are needed: the model is float"):
        convert(FLOAT, name="f")
    conv = convert(FLOAT, signals(200, 64, 3, seed=20)[0], name="f")
    assert conv.report["quantization"]["recipe"]["chosen"] is not None  # calibrated, not the file's
    from onnx2cmsis.drivers.evaluate import float_outputs
    from onnx2cmsis.quant.quantize import output_floats

    x, y = signals(300, 64, 3, seed=11)
    ours = output_floats(conv.graph, conv.references(quantize_samples(conv.graph, x)[0]))
    assert np.mean(ours.argmax(axis=1) == float_outputs(conv, x).argmax(axis=1)) >= 0.98
    assert np.mean(ours.argmax(axis=1) == y) >= 0.95  # the classifier still classifies


@pytest.mark.oracle
@pytest.mark.parametrize("path, why", [(TILE, "cannot run the file"), (ZOO, "SPACE_TO_BATCH_ND")],
                         ids=["tile", "zoo"])
def test_verify_says_why_tflite_micro_cannot_be_the_files_oracle_and_checks_the_export_instead(tmp_path, path, why):
    conv = convert(path, name="m", default_api=None)
    from onnx2cmsis.drivers.verification import verify

    x = signals(8, 96, 4, seed=11)[0] if path == ZOO else _signals(8, conv)
    (host,) = verify(conv, x, ["host"], workdir=tmp_path).results
    assert host.bit_exact and host.oracle.startswith("tflite-micro on this tool's export") and why in host.oracle


def test_a_really_2d_model_is_refused_naming_the_operator_and_its_window():
    """A keyword-spotting-like conv over a 49x10 spectrogram is no 1D model written in 2-D."""
    with pytest.raises(UnsupportedOpError, match=r"CONV_2D_\d+.*on \[1, 49, 10\] with kernel \[3, 3\].*1D windows"):
        convert(HERE / "keras_kws2d_int8.tflite")
