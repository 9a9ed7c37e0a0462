"""`--streaming HOP --stateful` (issue 35): recurrent state kept across pushes. After every push the
output is the integer reference run once over every step pushed since the reset; where the one run is
a window (the first WINDOW steps), NAME_invoke on it; where only pointwise layers surround the
recurrences, tflite-micro keeping its LSTM state across invokes (an independent oracle)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx2cmsis.api import convert
from onnx2cmsis.drivers.stream_check import stateful_ready, stateful_want
from onnx2cmsis.drivers.verification import verify
from onnx2cmsis.errors import OptionError
from onnx2cmsis.oracle.tflite_export import export_tflite, run_tflite_micro
from onnx2cmsis.plan.stateful import plan_stateful, retimed_graph
from onnx2cmsis.targets.host import build_conversions
from onnx2cmsis.targets.qemu import build_firmware, run_firmware, stream_unit
from tests.keras_models.data import signals
from tests.needs import level_7_tree, module, oracle_runtime, qemu_tools
from tests.test_cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "tests" / "lstm_models"
STEPS, CHANNELS = 64, 3
CALIBRATION = signals(48, STEPS, CHANNELS, seed=40)[0]


def _convert(stem: str, hop: int, precision: str = "int8", **settings):
    module("keras", 'the [keras] extra: pip install -e ".[keras]"')
    return convert(HERE / f"{stem}.keras", CALIBRATION, name=f"{stem}_{precision}_{hop}", precision=precision,
                   streaming=hop, stateful=True, cmsis_nn=level_7_tree(), **settings)


def _stream(conv, windows: int, seed: int) -> np.ndarray:
    """Held-out signals end to end, quantized: (steps, channels) time-major codes."""
    x = signals(windows, STEPS, CHANNELS, seed=seed)[0].reshape(-1, CHANNELS)
    q = conv.graph.tensors[conv.graph.inputs[0]].quant
    info = np.iinfo(q.dtype)
    return np.clip(np.round(x / q.scale) + q.zero_point, info.min, info.max).astype(q.dtype)


def _push_all(model, stream: np.ndarray, hop: int, first: int = 1, **kwargs) -> np.ndarray:
    """Every push's output, from the `first` (1-based) on: each reports, on every step since the reset."""
    got = []
    for k in range(len(stream) // hop):
        status, out = model.stream_push(stream[k * hop:(k + 1) * hop], **kwargs)
        assert status == (1 if k + 1 >= first else 0), (k, status)
        if status == 1:
            got.append(out)
    return np.stack(got)


@pytest.mark.level
@pytest.mark.keras
@pytest.mark.parametrize("stem, hop, precision", [("keras_causal_cnn_lstm", 4, "int8"),
                                                  ("keras_causal_cnn_gru", 4, "int8"),
                                                  ("keras_causal_cnn_lstm", 8, "int16"),
                                                  ("keras_causal_cnn_gru", 6, "int16"),
                                                  ("keras_valid_cnn_lstm", 2, "int8")])
def test_every_push_equals_the_one_run_over_the_whole_stream(stem, hop, precision, tmp_path):
    """>= 50 pushes of held-out signals: each equals the reference run once over every step since the
    reset; the push that completes the first window equals NAME_invoke on it; an invoke between pushes
    changes nothing (the state is apart from the arena); a reset starts the same stream again. The
    'valid' model's convolutions lag their inputs by 2 steps each: the pushes before the pool has one
    column of the one run return 0 and leave the output alone."""
    conv = _convert(stem, hop, precision)
    s = conv.report["stream"]
    assert s["stateful"] and s["recomputes"] == "new steps"
    assert s["macs_per_push"] * (STEPS // hop) <= 1.1 * s["macs_per_invoke"]  # the new steps, once
    assert f"#define {conv.name.upper()}_STREAM_STATEFUL 1" in conv.header
    model = build_conversions([conv], tmp_path)[conv.name]
    stream = _stream(conv, windows=-(-50 * hop // STEPS), seed=41)
    other = np.zeros(model.input_size, model.input_dtype)
    # 'valid': two convs lag 2 + 2 steps, the pool halves it: 2 of its columns before the one run's first
    first = {"keras_valid_cnn_lstm": -(-(2 + 1) // (hop // 2))}.get(stem, 1)
    assert s["first_output_push"] == first
    got, statuses = [], []
    for k in range(len(stream) // hop):
        sentinel = np.full(model.output_size, 77, model.output_dtype)
        status, out = model.stream_push(stream[k * hop:(k + 1) * hop], output=sentinel)
        statuses.append(status)
        if status == 1:
            got.append(out)
        else:
            assert np.all(out == 77)  # untouched
        model(other)
    assert statuses == [0] * (first - 1) + [1] * (len(statuses) - first + 1)
    got = np.stack(got)
    assert len(got) >= 50 and np.array_equal(got, stateful_want(conv, stream))
    if STEPS % hop == 0:  # the one run over the first window is the model on it
        assert np.array_equal(got[STEPS // hop - first], model(stream[:STEPS].reshape(-1)))
    model.stream_reset()
    assert np.array_equal(_push_all(model, stream[:(first + 3) * hop], hop, first), got[:4])


@pytest.mark.oracle
@pytest.mark.keras
@pytest.mark.parametrize("hop, precision", [(4, "int8"), (5, "int16")])
def test_tflite_micro_keeping_its_lstm_state_gives_the_same_pushes(hop, precision, tmp_path):
    """LSTM, a dense layer on every step, LSTM, dense: our graph over HOP steps exported to TFLite and
    invoked once per push without a reset (TFLite-Micro keeps an LSTM's state across invokes) gives
    every push's bytes."""
    oracle_runtime()
    conv = _convert("keras_lstm_first", hop, precision)
    model = build_conversions([conv], tmp_path)[conv.name]
    stream = _stream(conv, windows=4, seed=42)
    got = _push_all(model, stream, hop)
    sp = plan_stateful(conv.graph, conv.registry, hop, STEPS, CHANNELS)
    tflite = export_tflite(retimed_graph(conv.graph, conv.registry, sp, STEPS, hop), conv.registry)
    pushes = stream[:len(got) * hop].reshape(len(got), hop, CHANNELS)
    assert len(got) >= 50 and np.array_equal(run_tflite_micro(tflite, pushes, keep_state=True), got)


def _channel_major_gru(tmp_path: Path, kernel: int = 3, pads: tuple[int, int] = (2, 0), pool: bool = False,
                       channels: int = 3) -> Path:
    """A PyTorch-layout model written by hand: x (1, channels, 32) -> Conv (causal: pads 2, 0) -> Relu (->
    MaxPool(2)) -> time first -> GRU(6) -> its last state Y_h -> Gemm(4)."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, channels, kernel)).astype(np.float32), "cw"),
             numpy_helper.from_array(rng.normal(0, 0.5, (1, 18, 8)).astype(np.float32), "W"),
             numpy_helper.from_array(rng.normal(0, 0.5, (1, 18, 6)).astype(np.float32), "R"),
             numpy_helper.from_array(rng.normal(0, 0.5, (4, 6)).astype(np.float32), "dw"),
             numpy_helper.from_array(np.array([1, 6], np.int64), "flat")]
    nodes = [helper.make_node("Conv", ["x", "cw"], ["c"], name="conv", pads=list(pads), kernel_shape=[kernel]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             *([helper.make_node("MaxPool", ["r"], ["p"], name="pool", kernel_shape=[2], strides=[2])] if pool else []),
             helper.make_node("Transpose", ["p" if pool else "r"], ["t"], name="time_first", perm=[2, 0, 1]),
             helper.make_node("GRU", ["t", "W", "R"], ["steps", "h"], name="gru", hidden_size=6, linear_before_reset=1),
             helper.make_node("Reshape", ["h", "flat"], ["hf"], name="flatten"),
             helper.make_node("Gemm", ["hf", "dw"], ["y"], name="dense", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    path = tmp_path / f"gru_{kernel}_{pads[0]}{pads[1]}_{int(pool)}_{channels}.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]), str(path))
    return path


def test_a_channel_major_model_streams_its_interleaved_samples(tmp_path):
    """PyTorch's (C, W) layout: pushed samples are time-major whatever the model's layout; two streams
    with their own states through one arena give each its own one-run outputs."""
    x = np.random.default_rng(6).normal(size=(32, 3, 32)).astype(np.float32)
    conv = convert(_channel_major_gru(tmp_path), x, name="cm", streaming=2, stateful=True, cmsis_nn=level_7_tree())
    assert not conv.report["stream"]["time_major"]
    model = build_conversions([conv], tmp_path / "build")[conv.name]
    rng = np.random.default_rng(7)
    streams = [rng.integers(-128, 128, (120, 3)).astype(np.int8) for _ in range(2)]
    states, arena = [model.new_stream_state(), model.new_stream_state()], model.new_arena()
    got: list[list[np.ndarray]] = [[], []]
    for k in range(60):
        for i, s in enumerate(streams):
            status, out = model.stream_push(s[2 * k:2 * k + 2], state=states[i], arena=arena)
            assert status == 1
            got[i].append(out)
    for i, s in enumerate(streams):
        assert np.array_equal(np.stack(got[i]), stateful_want(conv, s))
    assert np.array_equal(got[0][15], model(streams[0][:32].T.reshape(-1)))  # the first window: invoke


def test_a_one_channel_signal_streams_as_its_one_run(tmp_path):
    """x (1, 1, 32): a 'flat' input whose time axis is its last; the one run over 60 pushes of 2 steps."""
    x = np.random.default_rng(9).normal(size=(32, 1, 32)).astype(np.float32)
    conv = convert(_channel_major_gru(tmp_path, channels=1), x, name="one", streaming=2, stateful=True,
                   cmsis_nn=level_7_tree())
    model = build_conversions([conv], tmp_path / "build")[conv.name]
    stream = np.random.default_rng(10).integers(-128, 128, (120, 1)).astype(np.int8)
    got = _push_all(model, stream, 2)
    assert np.array_equal(got, stateful_want(conv, stream))
    assert np.array_equal(got[15], model(stream[:32].reshape(-1)))


@pytest.mark.keras
def test_a_time_resolved_output_gives_each_pushs_new_steps(tmp_path):
    """A per-step classifier (causal conv, LSTM with every step, Dense on each): each push gives its
    HOP new output steps, the last ones of the one run; the first window's pushes laid end to end are
    NAME_invoke on it. A 'valid' conv lagging 2 steps streams at HOP 2 and is refused at HOP 4, whose
    pushes would each hold steps of two."""
    keras = module("keras", 'the [keras] extra: pip install -e ".[keras]"')
    keras.utils.set_random_seed(2)
    x = np.random.default_rng(11).normal(size=(32, 32, 3)).astype(np.float32)
    for padding, hop in (("causal", 4), ("valid", 2)):
        inp = keras.Input((32, 3))
        y = keras.layers.LSTM(6, return_sequences=True)(keras.layers.Conv1D(8, 3, padding=padding)(inp))
        path = tmp_path / f"per_step_{padding}.keras"
        keras.Model(inp, keras.layers.Dense(4)(y)).save(path)
        conv = convert(path, x, name=f"ps_{padding}", streaming=hop, stateful=True, cmsis_nn=level_7_tree())
        assert conv.report["stream"]["output_steps_per_push"] == hop
        assert f"#define PS_{padding.upper()}_STREAM_OUTPUT_SIZE {hop * 4}" in conv.header
        model = build_conversions([conv], tmp_path / padding)[conv.name]
        stream = np.random.default_rng(12).integers(-128, 128, (hop * 50, 3)).astype(np.int8)
        first = 1 if padding == "causal" else 2
        got = _push_all(model, stream, hop, first)
        assert len(got) >= 49 and np.array_equal(got, stateful_want(conv, stream))
        if padding == "causal":
            assert np.array_equal(np.concatenate(got[:32 // hop]), model(stream[:32].reshape(-1)))
    with pytest.raises(OptionError, match="lags the stream by 2 steps, which its 4 steps per push do not divide"):
        convert(tmp_path / "per_step_valid.keras", None, name="m", streaming=4, stateful=True)


def test_verify_holds_a_stateful_stream_to_the_one_run_and_fails_one_that_loses_its_history(tmp_path):
    """verify --stateful pushes the data end to end and checks every push against the one run; with
    one map's history move cut from the generated push, invoke stays exact and the stream does not."""
    x = np.random.default_rng(8).normal(size=(32, 3, 32)).astype(np.float32)
    conv = convert(_channel_major_gru(tmp_path), x, name="cm", streaming=2, stateful=True, cmsis_nn=level_7_tree())
    (result,) = verify(conv, x[:4], ["host"], workdir=tmp_path / "ok").results
    assert result.bit_exact and result.stream_stateful and result.stream_pushes >= 50
    assert result.stream_mismatches == 0
    moves = re.findall(r"\n *memmove\(st \+ \d+, st \+ \d+, \d+\); /\* a map's history moves to its start \*/",
                       conv.source)
    assert moves
    conv.source = conv.source.replace(moves[0], "", 1)
    (broken,) = verify(conv, x[:4], ["host"], workdir=tmp_path / "broken").results
    assert broken.mismatches == 0 and broken.stream_mismatches > 0 and not broken.bit_exact


@pytest.mark.keras
def test_layers_that_read_ahead_or_across_the_stream_are_refused_naming_each(tmp_path):
    """'same' padding (reads steps not pushed yet), a time reversal (a backward LSTM), a flatten over
    every step, no recurrent layer at all, --stateful without --streaming: one line each, before
    calibration, every layer at once."""
    module("keras", 'the [keras] extra: pip install -e ".[keras]"')
    with pytest.raises(OptionError) as err:
        convert(HERE / "keras_cnn_lstm.keras", None, name="m", streaming=4, stateful=True)
    message = str(err.value)
    assert "layer 0 'conv1d' (conv1d) pads 2 steps on the right" in message and "\n" not in message
    with pytest.raises(OptionError) as err:
        convert(HERE / "keras_bilstm.keras", None, name="m", streaming=4, stateful=True)
    message = str(err.value)
    assert "layer 0 'conv1d_1' (conv1d) pads 2 steps on the right" in message
    assert "layer 3 'bidirectional_backward_reverse_input' (gather) reads every step" in message
    assert message.count("layer ") == 2  # what follows a refused layer is not blamed again
    with pytest.raises(OptionError, match=r"layer \d+ 'pool' \(maxpool1d\) its stride 2 does not divide the 1 steps"):
        convert(_channel_major_gru(tmp_path, kernel=2, pads=(0, 0), pool=True), None, name="m", streaming=2,
                stateful=True)
    keras = module("keras", 'the [keras] extra: pip install -e ".[keras]"')
    for crop, why in (((0, 2), "drops its input's last 2 steps"), ((2, 0), "crops its input's first 2 steps")):
        inp = keras.Input((32, 3))
        y = keras.layers.LSTM(8)(keras.layers.Cropping1D(crop)(inp))
        path = tmp_path / f"crop{crop[0]}{crop[1]}.keras"
        keras.Model(inp, keras.layers.Dense(4)(y)).save(path)
        with pytest.raises(OptionError, match=why):
            convert(path, None, name="m", streaming=2, stateful=True)
    inp = keras.Input((32, 3))  # a 'same' conv before a pool: the conv is named, not the pool after it
    y = keras.layers.MaxPooling1D(2)(keras.layers.Conv1D(4, 3, padding="same")(inp))
    path = tmp_path / "same_pool.keras"
    keras.Model(inp, keras.layers.Dense(4)(keras.layers.LSTM(8)(y))).save(path)
    with pytest.raises(OptionError) as err:
        convert(path, None, name="m", streaming=2, stateful=True)
    assert "pads 1 steps on the right" in str(err.value) and "max_pooling1d" not in str(err.value)
    with pytest.raises(OptionError, match="no recurrent layer"):
        convert(ROOT / "examples" / "vibration" / "vibration_cnn.onnx", None, name="m", streaming=16, stateful=True)
    with pytest.raises(OptionError, match="needs .*streaming"):
        convert(HERE / "keras_causal_cnn_lstm.keras", None, name="m", stateful=True)
    np.save(tmp_path / "calib.npy", CALIBRATION[:4])
    r = run_cli("convert", str(HERE / "keras_cnn_lstm.keras"), "--streaming", "4", "--stateful",
                "--calibration", str(tmp_path / "calib.npy"), "--out", str(tmp_path / "out"))
    assert r.returncode == 2 and "--stateful cannot stream" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.keras
def test_stateful_pushes_give_the_same_bytes_on_qemu(tmp_path):
    """CNN-LSTM and CNN-GRU, int8 and 16x8, and the 'valid' CNN-LSTM on M4 and M55: every push's status
    and output as the one run's."""
    qemu_tools()
    convs = [_convert("keras_causal_cnn_lstm", 4), _convert("keras_causal_cnn_gru", 4),
             _convert("keras_causal_cnn_lstm", 8, "int16"), _convert("keras_causal_cnn_gru", 8, "int16"),
             _convert("keras_valid_cnn_lstm", 2)]
    streams = {c.name: _stream(c, windows=4, seed=43) for c in convs}
    want = {c.name: stateful_want(c, streams[c.name]) for c in convs}
    ready = {c.name: stateful_ready(c, streams[c.name]) for c in convs}
    units = [stream_unit(c) for c in convs]
    for target in ("m4", "m55"):
        fw = build_firmware([*convs, *units], target, tmp_path / target)
        jobs = {u.name: streams[c.name].reshape(-1, u.input_size) for c, u in zip(convs, units)}
        out = run_firmware(fw, jobs, timeout=300)
        for c, u in zip(convs, units):
            statuses = out[u.name][:, 0]
            assert list(np.flatnonzero(statuses == 1)) == ready[c.name] and ready[c.name][-1] == len(statuses) - 1
            assert np.array_equal(out[u.name][ready[c.name], 1:], want[c.name]), (target, c.name)
