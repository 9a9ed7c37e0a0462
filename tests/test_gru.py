"""GRU and simple RNN layers (issue 35): an own exact step loop over CMSIS-NN's LSTM functions.

TFLite has no GRU or RNN operator, so no independent oracle runs them: the numpy reference
(arith/gru.py) is the oracle for the C (host and QEMU), and both are held to the float model (ONNX
Runtime) on held-out data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx2cmsis.api import convert
from onnx2cmsis.cmsis_nn.source import locate_cmsis_nn
from onnx2cmsis.drivers.evaluate import evaluate, quantize_inputs
from onnx2cmsis.errors import ConversionError, UnsupportedOpError
from onnx2cmsis.quant.calibrate import run_float
from onnx2cmsis.quant.quantize import dequantized_outputs
from onnx2cmsis.targets.qemu import build_firmware, run_firmware
from tests.keras_models.data import signals
from tests.needs import level_7_tree, qemu_tools

HERE = Path(__file__).resolve().parent / "lstm_models"
MODELS = {stem: HERE / f"{stem}.onnx" for stem in ("torch_cnn_gru", "torch_cnn_rnn")}
KERAS_MODELS = {stem: HERE / f"{stem}.keras" for stem in ("keras_cnn_gru", "keras_cnn_rnn")}
STEPS, CHANNELS = 64, 3


def _signals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = signals(n, STEPS, CHANNELS, seed=seed)  # training used seeds 6 and 7
    return np.ascontiguousarray(x.transpose(0, 2, 1)), y


CALIBRATION = _signals(64, seed=50)[0]


def _accuracy(codes: np.ndarray, conv, labels: np.ndarray) -> float:
    q = conv.graph.tensors[conv.graph.outputs[0]].quant
    return float(np.mean((codes.astype(np.int64) - q.zero_point).argmax(axis=1) == labels))


@pytest.mark.level
def test_pytorch_gru_and_rnn_c_equals_the_reference_within_a_point_of_float(tmp_path):
    """C == reference on the host (compiled against this level's tree), int8 and 16x8; accuracy on
    held-out signals within one point of the float model's; where the level lacks the LSTM functions,
    a refusal."""
    x, labels = _signals(200, seed=51)
    if not locate_cmsis_nn().api.lstm_s8:
        with pytest.raises(UnsupportedOpError, match=r"built from CMSIS-NN's LSTM functions.*level 2024\.01"):
            convert(MODELS["torch_cnn_gru"], CALIBRATION, name="m")
        return
    for (stem, path), precision in ((case, precision) for case in MODELS.items() for precision in ("int8", "int16")):
        conv = convert(path, CALIBRATION, name=stem, precision=precision)
        ev, out = evaluate(conv, x, tmp_path / f"{stem}_{precision}", oracle_samples=0)
        assert ev.mismatches_vs_reference == 0, (stem, ev)
        floats = np.stack([next(iter(v.values())).reshape(-1) for v in run_float(conv.model, list(x))])
        float_accuracy = float(np.mean(floats.argmax(axis=1) == labels))
        assert _accuracy(out, conv, labels) >= float_accuracy - 0.01, stem
        assert ev.argmax_agreement >= 0.98, (stem, ev)


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.keras
def test_gru_and_rnn_give_the_same_bytes_on_qemu(tmp_path):
    qemu_tools()
    keras_calibration = signals(64, STEPS, CHANNELS, seed=54)[0]
    convs = {**{stem: convert(path, CALIBRATION, name=stem) for stem, path in MODELS.items()},
             **{stem: convert(path, keras_calibration, name=stem) for stem, path in KERAS_MODELS.items()},
             "torch_cnn_gru_16x8": convert(MODELS["torch_cnn_gru"], CALIBRATION, name="torch_cnn_gru_16x8",
                                           precision="int16")}
    inputs = {name: quantize_inputs(conv, _signals(4, seed=52)[0] if name.startswith("torch") else
                                    signals(4, STEPS, CHANNELS, seed=52)[0]) for name, conv in convs.items()}
    for target in ("m4", "m55"):
        got = run_firmware(build_firmware(list(convs.values()), target, tmp_path / target), inputs)
        for name, conv in convs.items():
            assert np.array_equal(got[name], conv.references(inputs[name])), (target, name)


def _model(tmp_path: Path, op: str, **attrs) -> Path:
    """x (1, 8, 3) -> time first -> GRU/RNN(hidden 4) -> batch first -> y (1, 8, directions, 4)."""
    rng = np.random.default_rng(0)
    gates = 3 if op == "GRU" else 1
    directions = 2 if attrs.get("direction") == "bidirectional" else 1
    inits = [numpy_helper.from_array(rng.normal(0, 0.6, (directions, gates * 4, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.6, (directions, gates * 4, 4)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.normal(0, 0.3, (directions, 2 * gates * 4)).astype(np.float32), "B")]
    nodes = [helper.make_node("Transpose", ["x"], ["x_t"], name="time_first", perm=[1, 0, 2]),
             helper.make_node(op, ["x_t", "W", "R", "B"], ["y_t"], name="rnn", hidden_size=4, **attrs),
             helper.make_node("Transpose", ["y_t"], ["y"], name="batch_first", perm=[2, 0, 1, 3])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, directions, 4])], inits)
    path = tmp_path / f"{op}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    return path


@pytest.mark.parametrize("op,attrs,precision", [
    ("GRU", {"linear_before_reset": 1}, "int8"), ("GRU", {}, "int8"),
    ("GRU", {"direction": "bidirectional", "linear_before_reset": 1}, "int8"), ("RNN", {}, "int8"),
    ("RNN", {"direction": "reverse"}, "int8"), ("GRU", {}, "int16")],
    ids=["gru-before-reset", "gru-after-reset", "bigru", "rnn", "rnn-reverse", "gru-16x8"])
def test_the_integer_loop_is_the_models_recurrence(tmp_path, op, attrs, precision):
    """Against ONNX Runtime running the float model (both GRU forms, both directions, 16x8): the hidden
    state at every step within the integers' error; the batch reference equals the one-sample one."""
    x = np.random.default_rng(3).normal(size=(24, 8, 3)).astype(np.float32)
    conv = convert(_model(tmp_path, op, **attrs), x[:16], name="m", cmsis_nn=level_7_tree(), precision=precision)
    assert sum(n.op == "gru" for n in conv.graph.nodes) == (2 if "direction" in attrs and attrs["direction"] ==
                                                             "bidirectional" else 1)
    want = np.stack([v["y"].reshape(-1) for v in run_float(conv.model, list(x))]).astype(np.float64)
    got = dequantized_outputs(conv.graph, conv.registry, x).reshape(len(x), -1)
    assert 10 * np.log10(np.sum(want**2) / np.sum((got - want) ** 2)) > (33 if precision == "int8" else 45)  # the Q0.15 state and 16-bit tables bound 16x8
    codes = quantize_inputs(conv, x)
    assert np.array_equal(conv.references(codes), np.stack([conv.reference(c) for c in codes]))


def test_what_the_loop_cannot_compute_is_refused_naming_the_node(tmp_path):
    calib = np.zeros((4, 8, 3), np.float32)
    with pytest.raises(UnsupportedOpError, match=r"node 'rnn' \(RNN\).*activations \['Relu'\]"):
        convert(_model(tmp_path, "RNN", activations=["Relu"]), calib, name="m")
    with pytest.raises(UnsupportedOpError, match=r"node 'rnn' \(GRU\).*clip"):
        convert(_model(tmp_path, "GRU", clip=2.0), calib, name="m")


@pytest.mark.slow
@pytest.mark.keras
def test_keras_gru_and_simple_rnn_are_keras_in_onnx_and_accurate(tmp_path):
    """GRU (reset_after either way, stacked) and Bidirectional(SimpleRNN) become ONNX GRU/RNN nodes
    whose float model is Keras' prediction; the C equals the reference, with float's accuracy within a
    point on held-out signals."""
    from tests.needs import module

    keras = module("keras", 'the [keras] extra: pip install -e ".[keras]"')
    x, labels = signals(200, STEPS, CHANNELS, seed=53)  # Keras layout; trained on seed 4
    for stem, path in KERAS_MODELS.items():
        conv = convert(path, signals(64, STEPS, CHANNELS, seed=54)[0], name=stem)
        assert any(n.op == "gru" for n in conv.graph.nodes)
        want = keras.models.load_model(path, compile=False).predict(x, verbose=0)
        got = np.stack([next(iter(v.values())).reshape(-1) for v in run_float(conv.model, list(x))])
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=stem)
        ev, out = evaluate(conv, x, tmp_path / stem, oracle_samples=0)
        assert ev.mismatches_vs_reference == 0, (stem, ev)
        assert _accuracy(out, conv, labels) >= float(np.mean(want.argmax(axis=1) == labels)) - 0.01, stem


def test_recurrent_layers_report_their_macs_per_step():
    conv = convert(MODELS["torch_cnn_gru"], CALIBRATION[:8], name="m", cmsis_nn=level_7_tree())
    (layer,) = [layer for layer in conv.report["layers"] if layer["op"] == "gru"]
    assert layer["steps"] == 32 and layer["macs_per_step"] == 3 * 24 * (16 + 24)  # z, r, h gates
    assert layer["macs"] == 32 * layer["macs_per_step"]
    assert f"(32 steps x {layer['macs_per_step']:,})" in conv.pages["m.md"]


def test_activations_are_checked_in_every_direction(tmp_path):
    """A backward direction's activations count too; the defaults spelled out per direction convert."""
    calib = np.random.default_rng(1).normal(size=(8, 8, 3)).astype(np.float32)
    with pytest.raises(UnsupportedOpError, match=r"activations \['Tanh', 'Relu'\]"):
        convert(_model(tmp_path, "RNN", direction="bidirectional", activations=["Tanh", "Relu"]), calib, name="m")
    conv = convert(_model(tmp_path, "GRU", direction="bidirectional", activations=["Sigmoid", "Tanh"] * 2), calib,
                   name="m", cmsis_nn=level_7_tree())
    assert sum(n.op == "gru" for n in conv.graph.nodes) == 2
    assert len({n.name for n in conv.graph.nodes}) == len(conv.graph.nodes)  # each node its own name


def test_a_state_product_the_mve_kernel_would_sum_past_32_bits_is_refused(tmp_path):
    """arm_nn_vec_mat_mul_result_acc_s16's MVE path starts from the int64 bias cut to 32 bits: a GRU
    candidate's recurrent bias far above its weights would differ on M55, so it is refused by name."""
    path = _model(tmp_path, "GRU", linear_before_reset=1)
    model = onnx.load(str(path))
    r = next(i for i in model.graph.initializer if i.name == "R")
    b = next(i for i in model.graph.initializer if i.name == "B")
    r.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(r) * 1e-4, "R"))
    big = numpy_helper.to_array(b).copy()
    big[0, 20:24] = 50.0  # the candidate's recurrent bias (Rb_h)
    b.CopyFrom(numpy_helper.from_array(big, "B"))
    onnx.save(model, str(path))
    with pytest.raises(ConversionError, match=r"node 'rnn' \(GRU\).*MVE s16 kernel sums in 32 bits"):
        convert(path, np.random.default_rng(1).normal(size=(8, 8, 3)).astype(np.float32), name="m",
                cmsis_nn=level_7_tree())
