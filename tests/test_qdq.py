"""Quantized (QDQ) ONNX models in (issue 32): the file's own scales and zero points, no calibration.

The fixtures (tests/qdq_models/make_qdq.py) are ONNX Runtime `quantize_static` outputs of trained
models: a PyTorch autoencoder with int8, uint8 and symmetric int16 activations, and a tf2onnx export
of a trained Keras classifier. ONNX Runtime running the QDQ file (no graph optimization) is the
reference of what the file means; expected parameters are read from the file itself."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx2cmsis.api import convert
from onnx2cmsis.errors import ConversionError, OptionError, UnsupportedOpError
from onnx2cmsis.quant.quantize import quantize_samples
from tests.bit_exact import bit_exact_everywhere
from tests.decoder_models.make_decoders import channel_major, denoising
from tests.keras_models.data import signals
from tests.onnx_models import make_model

HERE = Path(__file__).resolve().parent / "qdq_models"
AE = {kind: HERE / f"torch_ae_{kind}.onnx" for kind in ("s8", "u8", "s16")}
ZOO = HERE / "keras_zoo_s8.onnx"
QAT = HERE / "torch_qat.onnx"


def _initializers(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


def _heldout(path: Path, n: int) -> np.ndarray:
    if path == QAT:
        return np.ascontiguousarray(signals(n, 64, 3, seed=11)[0].transpose(0, 2, 1))  # held out in training
    if path == ZOO:
        steps, channels = (d.dim_value for d in onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[1:])
        return signals(n, steps, channels, seed=21)[0]  # the calibration used seed 20
    return channel_major(denoising(n, seed=4)[0])  # the calibration used seed 3


def _onnx_runtime_codes(path: Path, x: np.ndarray, conv) -> np.ndarray:
    """The QDQ file run by ONNX Runtime without graph optimization (its fused integer kernels round
    differently), its float output put back on the output's integer grid."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    out = np.stack([session.run(None, {name: row[np.newaxis]})[0].reshape(-1) for row in x])
    q = conv.graph.tensors[conv.graph.outputs[0]].quant
    return np.round(out / q.scale).astype(np.int64) + q.zero_point


def test_a_qdq_model_converts_without_calibration_taking_the_files_parameters():
    conv = convert(AE["s8"], name="ae")
    init = _initializers(AE["s8"])
    g = conv.graph
    q_in, q_out = g.tensors[g.inputs[0]].quant, g.tensors[g.outputs[0]].quant
    assert (q_in.scale, q_in.zero_point) == (float(init["noisy_scale"]), int(init["noisy_zero_point"]))
    assert (q_out.scale, q_out.zero_point) == (float(init["denoised_scale"]), int(init["denoised_zero_point"]))
    first = g.nodes[1]  # after the input's transpose: the first Conv1d, weights (C_out, K, C_in)
    weight_names = [k for k in init if k.endswith("weight_quantized")]
    codes = init[sorted(weight_names)[0]]
    assert np.array_equal(first.qparams["weight"], codes.transpose(0, 2, 1))
    assert np.array_equal(first.qparams["bias"], init[sorted(k for k in init if k.endswith("bias_quantized"))[0]])
    r = conv.report
    assert r["calibration_samples"] == 0
    assert r["quantization"]["recipe"]["source"] == "QDQ"
    assert "own quantization" in conv.pages["ae.md"]


def test_uint8_activations_are_the_same_reals_as_int8_with_the_zero_point_128_lower():
    s8, u8 = convert(AE["s8"], name="a"), convert(AE["u8"], name="b")
    init = _initializers(AE["u8"])
    assert u8.graph.tensors[u8.graph.inputs[0]].quant.zero_point == int(init["noisy_zero_point"]) - 128
    x = _heldout(AE["s8"], 40)
    # ONNX Runtime chose the uint8 parameters from the same ranges: the same scales, zero points 128 apart
    assert np.array_equal(s8.references(quantize_samples(s8.graph, x)[0]),
                          u8.references(quantize_samples(u8.graph, x)[0]))


@pytest.mark.parametrize("kind", ["s8", "u8"])
def test_int8_c_matches_onnx_runtime_on_held_out_data(kind):
    conv = convert(AE[kind], name="ae")
    x = _heldout(AE[kind], 200)
    ours = conv.references(quantize_samples(conv.graph, x)[0]).astype(np.int64)
    want = _onnx_runtime_codes(AE[kind], x, conv)
    assert np.mean(np.abs(ours - want) <= 1) >= 0.99


def test_the_tf2onnx_classifier_keeps_onnx_runtimes_classes():
    conv = convert(ZOO, name="zoo")
    x = _heldout(ZOO, 200)
    ours = conv.references(quantize_samples(conv.graph, x)[0]).astype(np.int64)
    want = _onnx_runtime_codes(ZOO, x, conv)
    assert np.mean(ours.argmax(axis=1) == want.argmax(axis=1)) >= 0.99
    assert np.mean(np.abs(ours - want) <= 1) >= 0.98
    # softmax's kernel writes 1/256; the file says ONNX Runtime's 1/255: an exact requantize follows
    assert g_ops(conv)[-2:] == ["softmax", "requantize"]


def test_a_pytorch_qat_export_keeps_its_trained_weight_codes_and_classes():
    """torch's exporter writes FakeQuantize as Q/DQ of the float weights ([-128, 127]: -128 occurs)."""
    conv = convert(QAT, name="qat")
    init = _initializers(QAT)
    w, s = init["conv1.weight"].astype(np.float32), init["w1.scale"].astype(np.float32)
    codes = np.clip(np.rint(w / s[:, None, None]), -128, 127)  # QuantizeLinear: halves to even, zero point 0
    assert np.array_equal(conv.graph.nodes[1].qparams["weight"], codes.transpose(0, 2, 1))
    assert min(int(n.qparams["weight"].min()) for n in conv.graph.nodes if "weight" in n.qparams) == -128
    x = _heldout(QAT, 300)
    ours = conv.references(quantize_samples(conv.graph, x)[0]).astype(np.int64)
    want = _onnx_runtime_codes(QAT, x, conv)
    assert np.mean(np.abs(ours - want) <= 1) >= 0.99
    assert np.mean(ours.argmax(axis=1) == want.argmax(axis=1)) >= 0.99


def g_ops(conv) -> list[str]:
    return [n.op for n in conv.graph.nodes]


def test_int16_activations_stay_within_two_steps_of_onnx_runtime():
    # TFLite's 16x8 kernels requantize with a 16-bit multiplier (CMSIS-NN's arm_nn_requantize_s64):
    # a step off ONNX Runtime's float requantization on a few percent of each layer's values
    conv = convert(AE["s16"], name="ae")
    assert conv.graph.tensors[conv.graph.inputs[0]].quant.bits == 16
    x = _heldout(AE["s16"], 100)
    ours = conv.references(quantize_samples(conv.graph, x)[0]).astype(np.int64)
    want = _onnx_runtime_codes(AE["s16"], x, conv)
    assert np.mean(np.abs(ours - want) <= 2) >= 0.99


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.oracle
@pytest.mark.parametrize("path", [AE["s8"], AE["u8"], AE["s16"], ZOO, QAT], ids=lambda p: p.stem)
def test_qdq_models_are_bit_exact_on_the_host_and_qemu(tmp_path, path):
    conv = convert(path, name="m", default_api=None)
    bit_exact_everywhere(conv, _heldout(path, 12), tmp_path, qemu_samples=3)


def test_settings_the_file_decides_are_refused_by_name():
    with pytest.raises(OptionError, match="calibration_method.*fixes its own quantization"):
        convert(AE["s8"], calibration_method="mse")
    # auto's budgets are named with it, so that one correction is enough
    with pytest.raises(OptionError, match="precision='auto'.*max_error_db.*max_arena_bytes.*fixes its own"):
        convert(AE["s8"], precision="auto", max_error_db=30.0, max_arena_bytes=4096)


# --- hand-written QDQ graphs: what cannot be taken as it is is refused, naming the node

def _qdq_conv(tmp_path: Path, zp_type: int = TensorProto.INT8, act_zp: int = 0, weight_zp: int = 0,
              relu_float: bool = False, bias: tuple[int, ...] = (10, -3, 0, 7), bias_scale: float = 0.02 * 0.01) -> str:
    """x -> Q/DQ -> Conv(DQ(int8 w), DQ(int32 b)) [-> Relu unquantized] -> Q/DQ -> y."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (4, 2, 3)).astype(np.int8)
    inits = [numpy_helper.from_array(w, "w_q"), numpy_helper.from_array(np.float32(0.01), "w_s"),
             numpy_helper.from_array(np.int8(weight_zp), "w_z"),
             numpy_helper.from_array(np.array(bias, np.int32), "b_q"),
             numpy_helper.from_array(np.float32(bias_scale), "b_s"),
             numpy_helper.from_array(np.float32(0.02), "x_s"), numpy_helper.from_array(np.float32(0.05), "y_s"),
             helper.make_tensor("x_z", zp_type, [], [act_zp]), helper.make_tensor("y_z", zp_type, [], [act_zp])]
    last = "c_relu" if relu_float else "c"
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["x_q"], name="q_in"),
             helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_d"], name="dq_in"),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], name="dq_w"),
             helper.make_node("DequantizeLinear", ["b_q", "b_s"], ["b"], name="dq_b"),
             helper.make_node("Conv", ["x_d", "w", "b"], ["c"], name="conv", pads=[1, 1])]
    if relu_float:
        nodes.append(helper.make_node("Tanh", ["c"], ["c_relu"], name="tanh"))
    nodes += [helper.make_node("QuantizeLinear", [last, "y_s", "y_z"], ["y_q"], name="q_out"),
              helper.make_node("DequantizeLinear", ["y_q", "y_s", "y_z"], ["y"], name="dq_out")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    path = tmp_path / "qdq.onnx"
    onnx.save(make_model(nodes, [x], [y], inits, opset=21 if zp_type == TensorProto.INT16 else 13), str(path))
    return str(path)


def test_a_hand_written_qdq_conv_is_exact_integer_arithmetic(tmp_path):
    conv = convert(_qdq_conv(tmp_path), name="m")
    node = conv.graph.nodes[-1] if conv.graph.nodes[-1].op == "conv1d" else conv.graph.nodes[1]
    assert np.array_equal(node.qparams["bias"], [10, -3, 0, 7])
    x = np.random.default_rng(1).standard_normal((5, 2, 16)).astype(np.float32)
    codes = quantize_samples(conv.graph, x)[0]
    # the integer conv by hand: (x - 0) * w + b, requantized by 0.02 * 0.01 / 0.05, rounded half away
    w = numpy_helper.to_array(onnx.load(_qdq_conv(tmp_path)).graph.initializer[0]).astype(np.int64)
    xc = codes.reshape(5, 16, 2).transpose(0, 2, 1).astype(np.int64) if conv.graph.input_layout == "time-major" \
        else codes.reshape(5, 2, 16).astype(np.int64)
    padded = np.pad(xc, ((0, 0), (0, 0), (1, 1)))
    acc = np.stack([np.einsum("nck,ock->no", padded[:, :, t:t + 3], w) for t in range(16)], axis=2)
    acc += np.array([10, -3, 0, 7])[None, :, None]
    real = acc * (0.02 * 0.01 / 0.05)
    want = np.clip(np.sign(real) * np.floor(np.abs(real) + 0.5), -128, 127)
    assert np.array_equal(conv.references(codes).reshape(5, 4, 16), want)


def test_asymmetric_int16_and_asymmetric_weights_are_refused_naming_the_node(tmp_path):
    with pytest.raises(UnsupportedOpError, match="q_in.*zero point 5 .asymmetric"):
        convert(_qdq_conv(tmp_path, TensorProto.INT16, act_zp=5))
    with pytest.raises(UnsupportedOpError, match="node 'conv'.*zero point 3.*symmetric int8"):
        convert(_qdq_conv(tmp_path, weight_zp=3))


def test_a_value_the_file_leaves_float_needs_calibration_and_gets_it(tmp_path):
    path = _qdq_conv(tmp_path, relu_float=True)  # the conv's output goes into the tanh unquantized
    with pytest.raises(ConversionError, match="leaves 1 value.*'c'.*calibration"):
        convert(path)
    samples = np.random.default_rng(2).standard_normal((20, 2, 16)).astype(np.float32)
    conv = convert(path, samples)
    assert conv.report["calibration_samples"] == 20
    assert conv.report["quantization"]["recipe"]["calibrated_values"] == ["c"]
    # samples given to a model whose file quantizes everything set nothing: the report says none were used
    assert convert(_qdq_conv(tmp_path), samples).report["calibration_samples"] == 0


def test_a_tanh_between_pairs_is_one_table_in_the_files_output_quantization(tmp_path):
    """Not TFLite's fixed 1/128 then a requantize: the table maps each code through the float tanh
    straight to the file's output scale, as ONNX Runtime computes it."""
    inits = [numpy_helper.from_array(np.float32(0.03), "x_s"), numpy_helper.from_array(np.int8(-5), "x_z"),
             numpy_helper.from_array(np.float32(0.0071), "y_s"), numpy_helper.from_array(np.int8(3), "y_z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "x_z"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_s", "x_z"], ["x_d"]),
             helper.make_node("Tanh", ["x_d"], ["t"], name="tanh"),
             helper.make_node("QuantizeLinear", ["t", "y_s", "y_z"], ["t_q"]),
             helper.make_node("DequantizeLinear", ["t_q", "y_s", "y_z"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    path = tmp_path / "tanh.onnx"
    onnx.save(make_model(nodes, [x], [y], inits, opset=13), str(path))
    conv = convert(path, name="m")
    assert g_ops(conv) == ["lut"]
    codes = np.arange(-128, 128, dtype=np.int8)[np.newaxis]
    import math
    want = [min(127, max(-128, int(math.copysign(math.floor(abs(math.tanh(0.03 * (c + 5)) / 0.0071) + 0.5),
                                                 math.tanh(0.03 * (c + 5)))) + 3)) for c in range(-128, 128)]
    assert conv.references(codes)[0].tolist() == want


def test_the_float_reference_is_the_files_model_with_its_dropped_relus_back():
    """ONNX Runtime drops a Relu whose Q/DQ pair clips at zero already; without the clipping the float
    graph between the pairs would be another model (this one's float outputs were 5.7 off)."""
    from onnx2cmsis.drivers.evaluate import file_model_codes, float_outputs
    from onnx2cmsis.quant.quantize import output_floats

    conv = convert(AE["s8"], name="ae")
    x = _heldout(AE["s8"], 30)
    file_floats = output_floats(conv.graph, file_model_codes(conv, x))
    step = conv.graph.tensors[conv.graph.outputs[0]].quant.scale
    assert np.max(np.abs(float_outputs(conv, x) - file_floats)) <= 4 * step


@pytest.mark.oracle
def test_verify_needs_no_calibration_and_compares_with_onnx_runtime_on_the_file(tmp_path):
    from typer.testing import CliRunner

    from onnx2cmsis.cli import app

    np.save(tmp_path / "x.npy", _heldout(AE["s8"], 20))
    result = CliRunner().invoke(app, ["verify", str(AE["s8"]), "-d", str(tmp_path / "x.npy"), "-t", "host",
                                      "--json", str(tmp_path / "r.json")])
    assert result.exit_code == 0, result.output
    assert "vs ONNX Runtime running the quantized file" in result.output
    (host,) = __import__("json").loads((tmp_path / "r.json").read_text())
    assert host["bit_exact"] and host["oracle"] == "tflite-micro"
    assert host["file_within_one_step"] >= 0.99 and host["file_argmax_agreement"] is not None
    assert host["max_abs_error_vs_float"] < 0.1  # the float reference clips as the file does


def test_onnx_runtimes_own_16_bit_pairs_below_opset_21_are_read(tmp_path):
    """quantize_static with UseQDQContribOps writes int16 pairs in the com.microsoft domain and keeps
    the model's opset (shape inference cannot see through them: they are split off first); they
    mean what the standard ops mean."""
    standard = onnx.load(_qdq_conv(tmp_path, TensorProto.INT16))
    contrib = onnx.ModelProto()
    contrib.CopyFrom(standard)
    for node in contrib.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            node.domain = "com.microsoft"
    del contrib.opset_import[:]
    contrib.opset_import.extend([helper.make_opsetid("", 13), helper.make_opsetid("com.microsoft", 1)])
    onnx.save(contrib, str(tmp_path / "contrib.onnx"))
    a, b = convert(tmp_path / "qdq.onnx", name="m"), convert(tmp_path / "contrib.onnx", name="m")
    assert a.graph.tensors[a.graph.inputs[0]].quant.bits == b.graph.tensors[b.graph.inputs[0]].quant.bits == 16
    strip = lambda text: text.replace("qdq.onnx", "").replace("contrib.onnx", "")  # noqa: E731
    assert [strip(line) for line in a.source.splitlines() if "SHA-256" not in line] == \
        [strip(line) for line in b.source.splitlines() if "SHA-256" not in line]
    x = np.random.default_rng(3).standard_normal((6, 2, 16)).astype(np.float32)
    from onnx2cmsis.drivers.evaluate import file_model_codes

    assert np.array_equal(file_model_codes(a, x), file_model_codes(b, x))  # ONNX Runtime agrees


def test_a_qoperator_model_is_refused_naming_the_integer_op(tmp_path):
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    rows = iter([{"noisy": row[np.newaxis]} for row in _heldout(AE["s8"], 8)])

    class Reader(CalibrationDataReader):
        def get_next(self):
            return next(rows, None)

    out = tmp_path / "qop.onnx"
    quantize_static(str(HERE.parent / "decoder_models" / "torch_ae_legacy.onnx"), str(out), Reader(),
                    quant_format=QuantFormat.QOperator)
    with pytest.raises(UnsupportedOpError, match=r"\(QLinearConv\) reads its integer output"):
        convert(out)


@pytest.mark.parametrize("path", [ZOO, AE["s16"]], ids=lambda p: p.stem)
def test_inspect_shows_what_the_file_converts_to(path):
    """The file fixes widths, weight granularities and requantizes: inspect counts those, not int8 per
    tensor, and its arena and weights are convert's."""
    from onnx2cmsis.drivers.inspect_model import format_inspection, inspect

    found, conv = inspect(path), convert(path, name="m")
    assert (found.arena_bytes, found.weights_bytes) == (conv.plan.arena_bytes, conv.report["weights_bytes"])
    assert [r["kernel"] for r in found.layers] == [r["kernel"] for r in conv.report["layers"]]
    assert "the model file's own quantization (QDQ" in format_inspection(found)


def _conv_node(conv):
    return next(n for n in conv.graph.nodes if n.op == "conv1d")


def test_bias_codes_are_the_files_at_the_kernels_scale_and_rounded_to_it_otherwise(tmp_path):
    # 2**24 + 1 has no float32: the dequantized float bias has lost the +1, the file's codes have not
    exact = convert(_qdq_conv(tmp_path, bias=(2**24 + 1, -3, 0, 7)), name="m")
    assert _conv_node(exact).qparams["bias"].tolist() == [2**24 + 1, -3, 0, 7]
    # a bias at twice the kernel's scale (s_in * s_w = 0.0002): its reals rounded to the kernel's scale
    doubled = convert(_qdq_conv(tmp_path, bias=(10, -3, 0, 7), bias_scale=0.0004), name="m")
    assert _conv_node(doubled).qparams["bias"].tolist() == [20, -6, 0, 14]


def test_a_float_weight_the_file_quantizes_rounds_halves_to_even_as_quantizelinear_does(tmp_path):
    """Q(float weights) -> DQ, as torch writes QAT weights; 2.5 and -2.5 steps are ties."""
    w = np.array([2.5, 3.5, -2.5, 0.5, 1.0, -127.5], np.float32).reshape(2, 1, 3) * np.float32(0.5)
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.float32(0.5), "w_s"),
             numpy_helper.from_array(np.int8(0), "z"), numpy_helper.from_array(np.float32(0.1), "x_s"),
             numpy_helper.from_array(np.float32(0.2), "y_s")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_s", "z"], ["x_q"]),
             helper.make_node("DequantizeLinear", ["x_q", "x_s"], ["x_d"]),  # no zero point: the Q's int8
             helper.make_node("QuantizeLinear", ["w", "w_s", "z"], ["w_q"]),
             helper.make_node("DequantizeLinear", ["w_q", "w_s", "z"], ["w_d"]),
             helper.make_node("Conv", ["x_d", "w_d"], ["c"], name="conv"),
             helper.make_node("QuantizeLinear", ["c", "y_s", "z"], ["c_q"]),
             helper.make_node("DequantizeLinear", ["c_q", "y_s", "z"], ["y"])]
    path = tmp_path / "qat.onnx"
    onnx.save(make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8])],
                         [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits, opset=13), str(path))
    weight = _conv_node(convert(path, name="m")).qparams["weight"]
    assert weight.reshape(2, 3).tolist() == [[2, 4, -2], [0, 1, -128]]


def test_outputs_that_cannot_take_their_values_name_get_a_clear_error(tmp_path):
    def model(outputs: list[str], nodes_after: list) -> Path:
        inits = [numpy_helper.from_array(np.float32(0.1), "s"), numpy_helper.from_array(np.int8(0), "z")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["x_q"]),
                 helper.make_node("DequantizeLinear", ["x_q", "s", "z"], ["x_d"]),
                 helper.make_node("Relu", ["x_d"], ["r"]), *nodes_after]
        path = tmp_path / f"{len(outputs)}_{len(nodes_after)}.onnx"
        onnx.save(make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8])],
                             [helper.make_tensor_value_info(o, TensorProto.FLOAT, None) for o in outputs], inits,
                             opset=13), str(path))
        return path

    pair = [helper.make_node("QuantizeLinear", ["r", "s", "z"], ["r_q"]),
            helper.make_node("DequantizeLinear", ["r_q", "s", "z"], ["y1"]),
            helper.make_node("DequantizeLinear", ["r_q", "s", "z"], ["y2"])]
    with pytest.raises(UnsupportedOpError, match="outputs 'y1' and 'y2' hold the same values"):
        convert(model(["y1", "y2"], pair))
    with pytest.raises(UnsupportedOpError, match="the model output 'x_d' is its input"):
        convert(model(["x_d"], []))


def test_weights_an_old_export_also_lists_as_inputs_are_no_inputs(tmp_path):
    """torch's keep_initializers_as_inputs (the default of old exports) lists every initializer as an
    input too: the split replaces the quantized weights, and their input entries go with them."""
    m = onnx.load(_qdq_conv(tmp_path))
    m.graph.input.extend(helper.make_tensor_value_info(i.name, i.data_type, list(i.dims)) for i in m.graph.initializer)
    onnx.save(m, str(tmp_path / "listed.onnx"))
    conv = convert(tmp_path / "listed.onnx", name="m")
    assert len(conv.graph.inputs) == 1
