"""int16 (TFLite 16x8) end to end: int16 activations with zero point 0, int8 weights, int64 biases.

The same chain as int8: the generated C == the numpy reference, byte for byte, on the host and on
QEMU (M4 DSP, M55 MVE); the reference == the tflite-micro runtime on the same quantized graph written
as a 16x8 .tflite, the independent check of the arithmetic. Tanh and sigmoid, whose 16x8 algorithm
reads an interpolated table, are checked over all 65,536 input codes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper

from onnx2cmsis.api import convert
from onnx2cmsis.errors import OptionError
from onnx2cmsis.oracle.tflite_export import NotExportable, export_tflite, run_tflite_micro
from onnx2cmsis.arith.rules import activation_quant, quantize_tensor
from onnx2cmsis.targets.host import build_conversions
from onnx2cmsis.targets.qemu import build_firmware, run_firmware
from tests.bit_exact import batch_mismatches
from tests.keras_models import input_window, keras_fixtures
from tests.needs import module, oracle_runtime, qemu_tools
from tests.onnx_models import make_model
from tests.zoo import make_op_zoo

ROOT = Path(__file__).resolve().parents[1]
PER_FAMILY = 25  # per sweep family: ~300 one-op models, every family's int16 path and kernel branch


def _int16_inputs(rng: np.random.Generator, conv, n: int) -> np.ndarray:
    size = conv.graph.tensors[conv.graph.inputs[0]].size
    x = rng.integers(-32768, 32768, (n, size)).astype(np.int16)
    x[0], x[1] = -32768, 32767  # the extremes exercise saturation and the accumulators' headroom
    # and codes of the calibrated range, where a model's values live
    q = conv.graph.tensors[conv.graph.inputs[0]].quant
    x[2:] //= np.int16(rng.choice([1, 4, 64], size=(n - 2, 1)))
    assert q.bits == 16 and q.zero_point == 0
    return x


def test_int16_activation_quantization_is_symmetric():
    q = activation_quant(-0.5, 2.0, bits=16)
    assert (q.zero_point, q.bits, q.scale) == (0, 16, float(np.float32(2.0 / 32767)))
    assert quantize_tensor(np.array([-3.0, 2.0, 1e-9]), q).tolist() == [-32768, 32767, 0]
    assert quantize_tensor(np.array([2.0]), q).dtype == np.int16


def test_unknown_precision_is_an_option_error(tmp_path):
    with pytest.raises(OptionError, match="precision"):
        convert(ROOT / "examples/vibration/vibration_cnn.onnx", ROOT / "examples/vibration/calibration.npy",
                precision="int4")


@pytest.mark.slow
@pytest.mark.heavy
def test_int16_c_types_and_report():
    conv = convert(ROOT / "examples/vibration/vibration_cnn.onnx", ROOT / "examples/vibration/calibration.npy",
                   precision="int16")
    assert "typedef int16_t vibration_cnn_input_t;" in conv.header
    assert "#define VIBRATION_CNN_INPUT_BITS 16" in conv.header
    assert conv.report["quantization"]["precision"] == "int16"
    assert conv.report["input"]["dtype"] == "int16" and conv.report["output"]["dtype"] == "int16"
    kernels = {layer["kernel"] for layer in conv.report["layers"]}
    assert {"arm_convolve_wrapper_s16", "arm_max_pool_s16", "arm_softmax_s16"} <= kernels
    int8 = convert(ROOT / "examples/vibration/vibration_cnn.onnx", ROOT / "examples/vibration/calibration.npy")
    assert conv.plan.arena_bytes == 2 * int8.plan.arena_bytes  # every activation twice as wide here


@pytest.fixture(scope="module")
def int16_zoo(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int16_zoo")
    convs = make_op_zoo(folder, per_family=PER_FAMILY, seed=16, prefix="s16_", precision="int16")
    rng = np.random.default_rng(17)
    return folder, convs, {c.name: _int16_inputs(rng, c, 6) for c in convs}


@pytest.mark.slow
@pytest.mark.level
def test_int16_sweeps_c_matches_reference(int16_zoo):
    folder, convs, inputs = int16_zoo
    models = build_conversions(convs, folder / "build", library="int16_zoo")
    bad = [c.name for c in convs if any(not np.array_equal(models[c.name](x), c.reference(x)) for x in inputs[c.name])]
    assert not bad, f"{len(bad)}/{len(convs)} int16 cases differ from the reference: {bad[:5]}"
    bad = batch_mismatches(convs, inputs)
    assert not bad, f"{len(bad)}/{len(convs)} int16 cases differ between batch and single samples: {bad[:5]}"


@pytest.mark.slow
@pytest.mark.oracle
def test_int16_sweeps_reference_matches_tflite_micro(int16_zoo):
    oracle_runtime()
    _, convs, inputs = int16_zoo
    checked, bad = 0, []
    for c in convs:
        try:
            tflite = export_tflite(c.graph, c.registry)
        except NotExportable:
            continue
        got = run_tflite_micro(tflite, inputs[c.name])
        want = np.stack([c.reference(x) for x in inputs[c.name]])
        checked += 1
        if not np.array_equal(got, want):
            bad.append(c.name)
    assert not bad, f"{len(bad)}/{checked} int16 cases differ from tflite-micro: {bad[:5]}"
    assert checked >= 0.9 * len(convs)


def _elementwise_model(op: str, folder: Path, scale: float) -> object:
    """A one-op model whose calibration puts the input scale near `scale`."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256, 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    path = folder / f"{op}_{scale:g}.onnx"
    import onnx

    onnx.save(make_model([helper.make_node(op, ["x"], ["y"])], [x], [y], []), str(path))
    calib = np.full((1, 256, 256), scale * 32767, np.float32)
    return convert(path, calib, name=f"{op.lower()}_{len(folder.name)}_{int(scale * 1e6)}", precision="int16")


@pytest.mark.slow
@pytest.mark.oracle
@pytest.mark.parametrize("op", ["Tanh", "Sigmoid"])
def test_tanh_and_sigmoid_exact_over_every_int16_code(op, tmp_path):
    """All 65,536 codes at scales that exercise the table's whole range, saturation and the rescale."""
    oracle_runtime()
    codes = np.arange(-32768, 32768, dtype=np.int16)
    convs = [_elementwise_model(op, tmp_path, scale) for scale in (1e-4, 2.7e-4, 1.0 / 4096, 1.3e-3)]
    models = build_conversions(convs, tmp_path / "build", library=op.lower())
    for c in convs:
        x = codes.reshape(256, 256).T.reshape(1, -1)  # the model layout (C, W): any order covers every code
        want = c.reference(x[0])
        assert np.array_equal(models[c.name](x[0]), want), c.name
        assert np.array_equal(run_tflite_micro(export_tflite(c.graph, c.registry), x)[0], want), c.name


def _whole_models(folder: Path) -> list:
    """The bundled examples and the Keras fixtures at int16 (tanh, sigmoid, softmax, residual adds,
    separable convs, upsampling, dense heads)."""
    example = ROOT / "examples" / "vibration"
    convs = [convert(example / "vibration_cnn.onnx", example / "calibration.npy", name="s16_vibration",
                     precision="int16")]
    module("keras", 'pip install -e ".[keras]"')
    keras_example = ROOT / "examples" / "vibration_keras"
    convs.append(convert(keras_example / "vibration_cnn.h5", keras_example / "calibration.npy",
                         name="s16_vibration_keras", precision="int16"))
    rng = np.random.default_rng(16)
    for path in keras_fixtures():
        steps, channels = input_window(path)
        calib = rng.standard_normal((64, steps, channels)).astype(np.float32)
        convs.append(convert(path, calib, name=f"s16_{path.stem}", precision="int16"))
    return convs


@pytest.fixture(scope="module")
def int16_models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("int16_models")
    convs = _whole_models(folder)
    rng = np.random.default_rng(18)
    inputs = {}
    for c in convs:
        q = c.graph.tensors[c.graph.inputs[0]].quant
        x = rng.standard_normal((8, *c.graph.model_input_shapes[0][1:])).astype(np.float32)
        inputs[c.name] = np.stack([quantize_tensor(s, q).reshape(-1) for s in x])
        inputs[c.name][0] = 32767
    return folder, convs, inputs


@pytest.mark.slow
@pytest.mark.level
def test_int16_models_c_reference_and_tflite_micro_agree(int16_models):
    oracle_runtime()
    folder, convs, inputs = int16_models
    assert len(convs) >= 6
    models = build_conversions(convs, folder / "host", library="int16_models")
    for c in convs:
        want = np.stack([c.reference(x) for x in inputs[c.name]])
        assert np.array_equal(np.stack([models[c.name](x) for x in inputs[c.name]]), want), c.name
        assert np.array_equal(run_tflite_micro(export_tflite(c.graph, c.registry), inputs[c.name]), want), c.name


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.level
@pytest.mark.parametrize("target", ["m4", "m55"])
def test_int16_models_and_zoo_bit_exact_on_qemu(int16_models, int16_zoo, target, tmp_path):
    qemu_tools()
    _, models, model_inputs = int16_models
    _, zoo, zoo_inputs = int16_zoo
    convs = models + zoo[::3]  # every family is in a third of the zoo
    inputs = {**model_inputs, **zoo_inputs}
    fw = build_firmware(convs, target, tmp_path)
    outputs = run_firmware(fw, {c.name: inputs[c.name] for c in convs})
    bad = [c.name for c in convs if not np.array_equal(outputs[c.name], np.stack([c.reference(x) for x in inputs[c.name]]))]
    assert not bad, f"{target}: {bad[:5]} differ from the reference"


@pytest.mark.slow
@pytest.mark.heavy
def test_cli_converts_int16_and_writes_the_16x8_tflite(tmp_path):
    oracle_runtime()
    from tests.test_cli import run_cli

    example = ROOT / "examples" / "vibration"
    proc = run_cli("convert", str(example / "vibration_cnn.onnx"), "-c", str(example / "calibration.npy"),
                   "--precision", "int16", "--tflite", "-o", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "typedef int16_t vibration_cnn_input_t;" in (tmp_path / "vibration_cnn.h").read_text()
    from tflite_micro.python.tflite_micro import runtime

    interp = runtime.Interpreter.from_file(str(tmp_path / "vibration_cnn.tflite"), arena_size=1 << 20)
    assert interp.get_input_details(0)["dtype"] == np.int16 and interp.get_output_details(0)["dtype"] == np.int16
    bad = run_cli("convert", str(example / "vibration_cnn.onnx"), "-c", str(example / "calibration.npy"),
                  "--precision", "int4", "-o", str(tmp_path / "bad"))
    assert bad.returncode == 2 and "--precision 'int4' is not one of int8, int16" in bad.stderr
    assert not (tmp_path / "bad").exists()


def test_s16_convolution_that_could_overflow_its_32_bit_sum_is_refused(tmp_path):
    """arm_convolve_s16 sums in 32 bits, TFLite-Micro in 64: a layer where they could differ
    (32768 x sum|w| past 2^31) is refused by name rather than converted."""
    import onnx
    from onnx import numpy_helper

    from onnx2cmsis.errors import ConversionError

    w = numpy_helper.from_array(np.full((2, 200, 3), 0.01, np.float32), "w")  # sum|w_q| = 600 x 127
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3], name="wide_conv")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 200, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    path = tmp_path / "wide.onnx"
    onnx.save(make_model([node], [x], [y], [w]), str(path))
    calib = np.random.default_rng(0).standard_normal((16, 200, 8)).astype(np.float32)
    convert(path, calib, name="wide8")  # int8 is fine: its int32 sum has room
    with pytest.raises(ConversionError, match=r"node 'wide_conv' .*int32 partial sum of output channel 0 can "
                                              r"overflow at int16.*sum\|w\| 76200") as refused:
        convert(path, calib, name="wide16", precision="int16")
    # the way out as the API's parameter; the command line spells the same message with its flag
    from onnx2cmsis.cli_options import FLAGS

    assert str(refused.value).endswith("use precision='int8'")
    assert refused.value.render(FLAGS).endswith("use --precision int8")
