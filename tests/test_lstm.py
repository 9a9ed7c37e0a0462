"""LSTM layers (issue 34): PyTorch CNN-LSTMs as ONNX LSTM nodes -> arm_lstm_unidirectional_s8.

The fixtures (tests/lstm_models/make_lstm.py) are trained on the four-tone signals; the integer LSTM
is checked against tflite-micro running our export of the same quantization as TFLite's
UNIDIRECTIONAL_SEQUENCE_LSTM (the independent oracle), on the host and on QEMU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx2cmsis.api import convert
from onnx2cmsis.arith.lstm import cell_scale_power
from onnx2cmsis.drivers.evaluate import evaluate
from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.cmsis_nn.source import locate_cmsis_nn
from onnx2cmsis.quant.calibrate import run_float
from onnx2cmsis.quant.quantize import dequantized_outputs, quantize_samples
from onnx2cmsis.targets.qemu import build_firmware, run_firmware
from onnx2cmsis.drivers.evaluate import quantize_inputs
from onnx2cmsis.ops.lstm_float import cell_states_value
from tests.keras_models.data import signals
from tests.needs import level_7_tree, module, oracle_runtime, qemu_tools

HERE = Path(__file__).resolve().parent / "lstm_models"
MODELS = {stem: HERE / f"{stem}.onnx" for stem in ("torch_cnn_lstm", "torch_cnn_lstm_dynamo", "torch_lstm_stack",
                                                           "torch_bilstm")}
KERAS_MODELS = {stem: HERE / f"{stem}.keras" for stem in ("keras_cnn_lstm", "keras_bilstm", "keras_backwards")}
TFLITE_LSTM = HERE / "tfkeras_cnn_lstm_int8.tflite"  # TensorFlow's converter's int8 file of a tf_keras CNN-LSTM
STEPS, CHANNELS = 64, 3


def _signals(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = signals(n, STEPS, CHANNELS, seed=seed)  # training used seeds 1 and 2, held-out checks 101 and 102
    return np.ascontiguousarray(x.transpose(0, 2, 1)), y


CALIBRATION = _signals(64, seed=30)[0]


@pytest.fixture(scope="module")
def conversions():
    if not locate_cmsis_nn().api.lstm_s8:
        pytest.skip("not reached: test_lstm_models_at_every_level checks the refusal")
    module("keras", 'the [keras] extra: pip install -e ".[keras]"')
    keras_calibration = signals(64, STEPS, CHANNELS, seed=34)[0]
    return {**{stem: convert(path, CALIBRATION, name=stem) for stem, path in MODELS.items()},
            **{stem: convert(path, keras_calibration, name=stem) for stem, path in KERAS_MODELS.items()},
            "tfkeras_cnn_lstm": convert(TFLITE_LSTM, name="tfkeras_cnn_lstm"),
            "torch_cnn_lstm_16x8": convert(MODELS["torch_cnn_lstm"], CALIBRATION, name="torch_cnn_lstm_16x8",
                                           precision="int16"),
            "keras_cnn_lstm_16x8": convert(KERAS_MODELS["keras_cnn_lstm"], keras_calibration,
                                           name="keras_cnn_lstm_16x8", precision="int16")}


@pytest.mark.level
@pytest.mark.oracle
def test_lstm_models_are_bit_exact_with_tflite_micro_and_accurate(tmp_path):
    """C == reference == tflite-micro on the host (compiled against this level's tree), int8 and 16x8,
    argmax as the float model's on held-out signals; where the level has no integer LSTM kernel, a
    one-line refusal."""
    x, labels = _signals(120, seed=31)
    if not locate_cmsis_nn().api.lstm_s8:
        with pytest.raises(UnsupportedOpError, match=r"needs arm_lstm_unidirectional_s8.*level 2024\.01"):
            convert(MODELS["torch_cnn_lstm"], CALIBRATION, name="m")
        return
    cases = [(stem, path, "int8") for stem, path in MODELS.items()] + \
        [(stem, MODELS[stem], "int16") for stem in ("torch_cnn_lstm", "torch_lstm_stack")]
    for stem, path, precision in cases:
        conv = convert(path, CALIBRATION, name=stem, precision=precision)
        ev, out = evaluate(conv, x, tmp_path / f"{stem}_{precision}")
        assert ev.mismatches_vs_reference == 0 and ev.mismatches_vs_tflite_micro == 0, (stem, precision, ev)
        assert ev.argmax_agreement >= 0.97, (stem, precision, ev)
        assert {layer["kernel"] for layer in conv.report["layers"] if layer["op"] == "lstm"} == \
            {"arm_lstm_unidirectional_s8" if precision == "int8" else "arm_lstm_unidirectional_s16"}


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.keras
def test_lstm_models_give_the_same_bytes_on_qemu(conversions, tmp_path):
    qemu_tools()
    x, keras_x = _signals(4, seed=32)[0], signals(4, STEPS, CHANNELS, seed=32)[0]
    inputs = {name: quantize_inputs(conv, x if name.startswith("torch") else keras_x)
              for name, conv in conversions.items()}
    want = {name: conv.references(inputs[name]) for name, conv in conversions.items()}
    for target in ("m4", "m55"):
        fw = build_firmware(list(conversions.values()), target, tmp_path / target)
        got = run_firmware(fw, inputs)
        for name in conversions:
            assert np.array_equal(got[name], want[name]), (target, name)


def test_the_calibration_scan_gives_the_cell_state_of_a_float_lstm():
    """The Scan beside each LSTM (ops/lstm_float.py) against an LSTM step written here in numpy from
    the ONNX definition, on the stacked model's first layer."""
    conv = convert(MODELS["torch_lstm_stack"], CALIBRATION[:8], name="m", cmsis_nn=level_7_tree(), calibration_method="minmax")
    lstm = next(n for n in onnx.load(str(MODELS["torch_lstm_stack"])).graph.node if n.op_type == "LSTM")
    init = {i.name: numpy_helper.to_array(i) for i in onnx.load(str(MODELS["torch_lstm_stack"])).graph.initializer}
    x_name, cells = lstm.input[0], cell_states_value(lstm.output[0])
    values = next(run_float(conv.model, [CALIBRATION[0]], [x_name, cells]))
    w, r, b = init[lstm.input[1]][0], init[lstm.input[2]][0], init[lstm.input[3]][0]
    hidden = r.shape[1]
    h, c, want = np.zeros(hidden), np.zeros(hidden), []
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for x_t in values[x_name].reshape(-1, w.shape[1]).astype(np.float64):
        g = w @ x_t + r @ h + b[:4 * hidden] + b[4 * hidden:]
        i, o, f, cell = (g[k * hidden:(k + 1) * hidden] for k in range(4))
        c = sigmoid(f) * c + sigmoid(i) * np.tanh(cell)
        h = sigmoid(o) * np.tanh(c)
        want.append(c)
    np.testing.assert_allclose(values[cells].reshape(len(want), hidden), np.array(want), atol=1e-5)
    # the layer's cell scale: the power of two whose int16 range holds every step of every sample
    largest = max(float(np.abs(v[cells]).max()) for v in run_float(conv.model, list(CALIBRATION[:8]), [cells]))
    node = next(n for n in conv.graph.nodes if n.op == "lstm" and n.attrs["cell_value"] == cells)
    assert node.qparams["cell_power"] == cell_scale_power(largest)
    assert 2.0 ** node.qparams["cell_power"] * 32767 >= largest > 2.0 ** node.qparams["cell_power"] * 16383


def _lstm_model(tmp_path: Path, **attrs) -> Path:
    """x (1, 8, 3) -> time first -> LSTM(hidden 4) -> batch first -> y (1, 8, directions, 4), with the
    given attributes (ONNX Runtime runs only time-first LSTMs, layout 0)."""
    rng = np.random.default_rng(0)
    directions = 2 if attrs.get("direction") == "bidirectional" else 1
    inits = [numpy_helper.from_array(rng.normal(size=(directions, 16, 3)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(size=(directions, 16, 4)).astype(np.float32), "R")]
    nodes = [helper.make_node("Transpose", ["x"], ["x_t"], name="time_first", perm=[1, 0, 2]),
             helper.make_node("LSTM", ["x_t", "W", "R"], ["y_t"], name="rnn", hidden_size=4, **attrs),
             helper.make_node("Transpose", ["y_t"], ["y"], name="batch_first", perm=[2, 0, 1, 3])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 3])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, directions, 4])], inits)
    path = tmp_path / "lstm.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    return path


def test_lstms_tflite_cannot_compute_are_refused_naming_the_node_and_every_reason(tmp_path):
    path = _lstm_model(tmp_path, activations=["Sigmoid", "Relu", "Tanh"], clip=3.0, input_forget=1)
    calib = np.zeros((4, 8, 3), np.float32)
    with pytest.raises(UnsupportedOpError) as err:
        convert(path, calib, name="m")
    message = str(err.value)
    assert "node 'rnn' (LSTM)" in message and "\n" not in message
    for reason in ("activations", "clip", "input_forget"):
        assert reason in message, reason


@pytest.mark.parametrize("direction", ["reverse", "bidirectional"])
def test_backward_lstms_run_forward_over_the_reversed_sequence(tmp_path, direction):
    """A backward direction is the forward kernel between two time reversals (TFLite's REVERSE_V2);
    both directions of a bidirectional LSTM side by side at each step, in one concat."""
    x = np.random.default_rng(3).normal(size=(16, 8, 3)).astype(np.float32)
    conv = convert(_lstm_model(tmp_path, direction=direction), x, name="m", cmsis_nn=level_7_tree())
    ops = [n.op for n in conv.graph.nodes if n.op != "reshape"]
    assert ops == (["gather", "lstm", "gather"] if direction == "reverse" else
                   ["gather", "lstm", "gather", "lstm", "concat"]), ops
    lstms = [n for n in conv.graph.nodes if n.op == "lstm"]
    assert len({n.attrs["cell_value"] for n in lstms}) == len(lstms)  # each direction its own cell range
    codes = quantize_inputs(conv, x)
    assert np.array_equal(conv.references(codes), np.stack([conv.reference(c) for c in codes]))
    # and it is the model's LSTM: within int8's error of ONNX Runtime running the float model
    want = np.stack([v["y"].reshape(-1) for v in run_float(conv.model, list(x))]).astype(np.float64)
    got = dequantized_outputs(conv.graph, conv.registry, x).reshape(len(x), -1)
    assert 10 * np.log10(np.sum(want**2) / np.sum((got - want) ** 2)) > 30


def test_a_single_lstm_model_converts_and_matches_its_reference_one_sample_at_a_time(tmp_path):
    """The whole-sequence output of a lone LSTM (hidden state at every step); the batch reference (what
    verify and the searches run) equals the reference one sample at a time."""
    path = _lstm_model(tmp_path)
    x = np.random.default_rng(3).normal(size=(16, 8, 3)).astype(np.float32)
    conv = convert(path, x, name="m", cmsis_nn=level_7_tree())
    (node,) = conv.graph.nodes
    assert node.op == "lstm" and conv.graph.tensors[node.output].shape == (8, 4)
    codes = quantize_inputs(conv, x)
    assert np.array_equal(conv.references(codes), np.stack([conv.reference(c) for c in codes]))
    assert "arm_lstm_unidirectional_s8" in conv.source and "memset(&buffers, 0, sizeof(buffers));" in conv.source


def test_per_layer_precision_chooses_the_lstms_width_like_any_layers():
    """`--precision auto` may put the LSTM at 16x8 (arm_lstm_unidirectional_s16) or keep it int8."""
    conv = convert(MODELS["torch_cnn_lstm"], CALIBRATION[:32], name="m", cmsis_nn=level_7_tree(), precision="auto",
                   max_error_db=47.0)
    bits = {n.op: conv.graph.tensors[n.output].quant.bits for n in conv.graph.nodes}
    assert 16 in bits.values(), bits  # 47 dB needs more than all-int8 (43.8 dB)
    assert "int8_loss_db" in next(n for n in conv.graph.nodes if n.op == "lstm").attrs


@pytest.mark.slow
@pytest.mark.keras
@pytest.mark.oracle
def test_keras_lstm_layers_are_keras_in_onnx_and_bit_exact_with_tflite_micro(tmp_path):
    """LSTM (stacked, return_sequences either way, go_backwards) and Bidirectional(LSTM) (concat and
    sum) become ONNX LSTM nodes whose float model is Keras' own prediction, and C == reference ==
    tflite-micro with the float model's argmax on held-out signals."""
    keras = module("keras", 'the [keras] extra: pip install -e ".[keras]"')
    x, _ = signals(60, STEPS, CHANNELS, seed=33)  # Keras layout (N, T, C); trained on seed 4
    for stem, path in KERAS_MODELS.items():
        conv = convert(path, signals(64, STEPS, CHANNELS, seed=34)[0], name=stem)
        assert sum(n.op == "lstm" for n in conv.graph.nodes) >= 1
        want = keras.models.load_model(path, compile=False).predict(x, verbose=0)
        got = np.stack([next(iter(v.values())).reshape(-1) for v in run_float(conv.model, list(x))])
        np.testing.assert_allclose(got, want, atol=1e-5, err_msg=stem)
        ev, _ = evaluate(conv, x, tmp_path / stem)
        assert ev.mismatches_vs_reference == 0 and ev.mismatches_vs_tflite_micro == 0, (stem, ev)
        assert ev.argmax_agreement >= 0.95, (stem, ev)


def test_keras_recurrent_layers_tflite_cannot_compute_are_refused_before_loading():
    from onnx2cmsis.frontends.keras_recurrent import recurrent_problems

    layers = [{"class_name": "LSTM", "config": {"name": "old", "recurrent_activation": "hard_sigmoid"}},
              {"class_name": "LSTM", "config": {"name": "kept", "stateful": True, "return_state": True}},
              {"class_name": "Bidirectional", "config": {"name": "bi", "merge_mode": "mul",
                                                         "layer": {"class_name": "LSTM", "config": {"units": 4}}}},
              {"class_name": "Bidirectional", "config": {"name": "conv", "layer": {"class_name": "ConvLSTM1D",
                                                                                    "config": {}}}}]
    problems = recurrent_problems(layers)
    assert len(problems) == 4
    assert "layer 'old' (LSTM) has recurrent_activation 'hard_sigmoid'" in problems[0]
    assert "stateful=True" in problems[1] and "return_state=True" in problems[1]
    assert "layer 'bi' (Bidirectional) merges with 'mul'" in problems[2]
    assert "layer 'conv' (Bidirectional) wraps a ConvLSTM1D: only LSTM, GRU, SimpleRNN convert" in problems[3]

@pytest.mark.oracle
def test_tensorflows_own_int8_lstm_file_gives_tflite_micros_bytes_without_calibration():
    """The fused UNIDIRECTIONAL_SEQUENCE_LSTMs TensorFlow's converter writes for a tf_keras CNN-LSTM:
    the file's gate scales, biases, cell scales and cell clip, and the C's bytes are tflite-micro's
    running the file itself."""
    from onnx2cmsis.frontends.tflite_reader import read_tflite
    from onnx2cmsis.oracle.tflite_export import run_tflite_micro

    oracle_runtime()
    conv = convert(TFLITE_LSTM, name="m", cmsis_nn=level_7_tree())
    lstms = [n for n in conv.graph.nodes if n.op == "lstm"]
    ops = [op for op in read_tflite(TFLITE_LSTM).operators if op.code == "UNIDIRECTIONAL_SEQUENCE_LSTM"]
    assert len(lstms) == len(ops) == 2
    tensors = read_tflite(TFLITE_LSTM).tensors
    for node, op in zip(lstms, ops):
        gates = [tensors[i] for i in op.inputs[1:5]]  # input, forget, cell, output: GATES' order
        assert np.array_equal(node.qparams["weight"], np.stack([t.data for t in gates]))
        assert np.array_equal(node.qparams["bias"], np.stack([tensors[i].data for i in op.inputs[12:16]]))
        assert 2.0 ** node.qparams["cell_power"] == tensors[op.inputs[19]].scales[0]
        assert node.qparams["cell_clip_real"] == op.options["CellClip"] == 10.0
    x = signals(200, STEPS, CHANNELS, seed=36)[0]
    codes = quantize_samples(conv.graph, x)[0]
    assert np.array_equal(conv.references(codes), run_tflite_micro(TFLITE_LSTM.read_bytes(), codes))


def test_tflite_lstms_tflite_micro_cannot_run_on_cmsis_nn_are_refused_naming_each_reason():
    from types import SimpleNamespace

    from onnx2cmsis.frontends.tflite_lstm import lstm_problems

    inputs = [0, -1, 2, 3, 4, 5, 6, 7, 8, 9, -1, -1, 12, 13, 14, 15, 16, -1, 18, 19, 20, -1, -1, -1]
    op = SimpleNamespace(options={"FusedActivationFunction": 6, "ProjClip": 1.0, "CellClip": 10.0})
    assert lstm_problems(op, inputs) == ["cell activation 6 (TANH expected)", "projection clipping",
                                         "no input gate (coupled input and forget gates)", "a projection",
                                         "layer normalization", "peephole weights"]


def test_a_stream_recomputes_the_recurrence_over_the_window_and_equals_invoke(tmp_path):
    """With --streaming the LSTM is not time-local: each push runs the convolution on the new steps
    only and the LSTM and what follows on the whole window, as NAME_invoke would (the contract)."""
    from tests.test_streaming import _check_host

    conv = convert(MODELS["torch_cnn_lstm"], CALIBRATION[:16], name="s", cmsis_nn=level_7_tree(), streaming=8)
    assert "(lstm) starts the head: it is not time-local" in conv.report["stream"]["head"]
    _check_host(conv, 8, seed=3, tmp=tmp_path)


@pytest.mark.slow
@pytest.mark.keras
def test_keras_sum_merged_sequences_and_a_free_time_axis_convert(tmp_path):
    """Bidirectional(merge_mode="sum") with return_sequences=True (the two directions added as 1D
    maps), and an LSTM on an Input without a length, fixed by input_shape: Keras' own predictions."""
    keras = module("keras", 'the [keras] extra: pip install -e ".[keras]"')
    keras.utils.set_random_seed(0)
    L = keras.layers
    inp = keras.Input((None, CHANNELS))
    y = L.Bidirectional(L.GRU(6, return_sequences=True), merge_mode="sum")(L.Conv1D(8, 3, padding="same")(inp))
    model = keras.Model(inp, L.Dense(2)(L.LSTM(5)(y)))
    path = tmp_path / "free.keras"
    model.save(path)
    x = signals(8, 40, CHANNELS, seed=9)[0]
    conv = convert(path, x, name="m", input_shape=(40, CHANNELS), cmsis_nn=level_7_tree())
    assert sorted(n.op for n in conv.graph.nodes if n.op in ("gru", "lstm")) == ["gru", "gru", "lstm"]
    got = np.stack([next(iter(v.values())).reshape(-1) for v in run_float(conv.model, list(x))])
    np.testing.assert_allclose(got, model.predict(x, verbose=0), atol=1e-5)
