"""`--streaming HOP`: every output a push reports is, byte for byte, NAME_invoke on the last WINDOW
steps pushed, for streams of random samples over at least 50 windows; on the host and on QEMU."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx2cmsis.api import convert, front_end
from onnx2cmsis.ops.registry import build_registry
from onnx2cmsis.plan.stream import hop_multiple
from onnx2cmsis.errors import OptionError
from onnx2cmsis.targets.host import build_conversions
from onnx2cmsis.targets.qemu import build_firmware, run_firmware, stream_unit
from tests.keras_models import input_window, keras_fixtures
from tests.needs import module, qemu_tools
from tests.test_cli import run_cli

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vibration"
WINDOWS = 60  # outputs checked per stream


def _stream(conv, hop: int, seed: int) -> np.ndarray:
    """Random time-major input codes: (steps, channels), enough for WINDOWS outputs."""
    window = conv.report["stream"]["window"]
    channels = conv.report["stream"]["channels"]
    steps = window - window % hop + hop * WINDOWS
    q = conv.graph.tensors[conv.graph.inputs[0]].quant
    info = np.iinfo(q.dtype)
    return np.random.default_rng(seed).integers(info.min, info.max + 1, (steps, channels)).astype(q.dtype)


def _windows(conv, stream: np.ndarray, hop: int) -> tuple[list[int], np.ndarray]:
    """Which pushes should report (1-based count of steps pushed >= WINDOW) and the model inputs they
    stand for: the last WINDOW steps, in the model's own layout. Written out here, not taken from
    stream_check.stream_windows: the tests hold the library to the contract's rule."""
    window = conv.report["stream"]["window"]
    time_major = conv.report["stream"]["time_major"]
    pushes = len(stream) // hop
    ready = [k for k in range(pushes) if (k + 1) * hop >= window]
    inputs = [stream[(k + 1) * hop - window:(k + 1) * hop] for k in ready]
    return ready, np.stack([w.reshape(-1) if time_major else w.T.reshape(-1) for w in inputs])


def _hop(path: Path, near: int) -> int:
    """The multiple of the model's time strides nearest below `near` (at least one such multiple)."""
    registry = build_registry()
    _, graph, _ = front_end(path, registry)
    steps, channels = graph.model_input_shapes[0][1:]
    multiple, _ = hop_multiple(graph, registry, steps, channels)
    return max(multiple, near // multiple * multiple)


def _check_host(conv, hop: int, seed: int, tmp: Path) -> None:
    model = build_conversions([conv], tmp)[conv.name]
    stream = _stream(conv, hop, seed)
    ready, windows = _windows(conv, stream, hop)
    want = np.stack([model(w) for w in windows])
    model.stream_reset()
    got, statuses = [], []
    other = np.zeros(model.input_size, model.input_dtype)
    for k in range(len(stream) // hop):
        status, out = model.stream_push(stream[k * hop:(k + 1) * hop])
        statuses.append(status)
        if status == 1:
            got.append(out)
        model(other)  # an invoke between pushes: the stream state is not the arena
    assert statuses == [1 if k in ready else 0 for k in range(len(statuses))]
    assert len(got) >= 50 and np.array_equal(np.stack(got), want)


@pytest.mark.parametrize("hop", [16, 48, 8, 128])
def test_stream_equals_invoke_on_the_last_window_pytorch_layout(hop, tmp_path):
    """The example is a PyTorch-style (C, W) model: pushed samples are interleaved, the window is not."""
    conv = convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy", name=f"s{hop}", streaming=hop)
    assert conv.report["stream"]["hop"] == hop and not conv.report["stream"]["time_major"]
    assert f"#define S{hop}_STREAM_HOP {hop}" in conv.header
    _check_host(conv, hop, seed=hop, tmp=tmp_path)


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize("precision, parts", [("int8", 8), ("int16", 8), ("int8", 3)])
def test_stream_equals_invoke_keras_layouts_and_heads(precision, parts, tmp_path):
    """Keras (W, C) models: 'same', 'valid' and causal padding, strides, dilation, pools, upsampling,
    residual adds, channel concatenation, zero padding and cropping; global-pool and flatten + dense
    heads. HOPs near WINDOW / 8 and WINDOW / 3, rounded down to a multiple of the time strides."""
    module("keras", 'pip install -e ".[keras]"')
    convs = []
    for i, path in enumerate(keras_fixtures()):
        steps, channels = input_window(path)
        calib = np.random.default_rng(i).standard_normal((32, steps, channels)).astype(np.float32)
        convs.append(convert(path, calib, name=f"k{i}_{precision}_{parts}", precision=precision,
                             streaming=_hop(path, steps // parts)))
        assert convs[-1].report["stream"]["recomputes"] == "columns"
    for conv in convs:
        assert conv.report["stream"]["time_major"]
        _check_host(conv, conv.report["stream"]["hop"], seed=7, tmp=tmp_path / conv.name)


def test_app_owned_states_run_independent_streams(tmp_path):
    """Two streams of one model, each with its own state, pushed in turn through one arena."""
    conv = convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy", name="two", streaming=32)
    model = build_conversions([conv], tmp_path)[conv.name]
    a, b = _stream(conv, 32, 1), _stream(conv, 32, 2)
    states = [model.new_stream_state(), model.new_stream_state()]
    arena = model.new_arena()
    got: list[list[np.ndarray]] = [[], []]
    for k in range(len(a) // 32):
        for i, s in enumerate((a, b)):
            status, out = model.stream_push(s[k * 32:(k + 1) * 32], state=states[i], arena=arena)
            if status == 1:
                got[i].append(out)
    for i, s in enumerate((a, b)):
        _, windows = _windows(conv, s, 32)
        assert np.array_equal(np.stack(got[i]), np.stack([model(w) for w in windows]))
    status, _ = model.stream_push(a[:32], state=None, arena=arena)
    assert status == -1  # ARM_CMSIS_NN_ARG_ERROR


def test_stream_quantize_helper_matches_quantize_input(tmp_path):
    conv = convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy", name="qs", streaming=16)
    model = build_conversions([conv], tmp_path)[conv.name]
    x = np.random.default_rng(3).standard_normal((16, 3)).astype(np.float32) * 3
    got = model.quantize_stream_input(x)
    whole = np.zeros((128, 3), np.float32)
    whole[:16] = x
    assert np.array_equal(got, model.quantize_input(whole.T)[...].reshape(3, 128).T[:16].reshape(-1))


def _save_onnx(nodes: list, x_shape: list[int], y_shape: list[int], inits: list, path: Path) -> None:
    """A one-input, one-output opset-17 model of `nodes` (input "x", output "y")."""
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, x_shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, y_shape)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def _flat_model(path: Path) -> None:
    """A dense-only model: its input is a feature vector, no time axis."""
    w = numpy_helper.from_array(np.ones((8, 4), np.float32), "w")
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    _save_onnx([node], [1, 8], [1, 4], [w], path)


def test_bad_hops_and_models_without_time_are_refused(tmp_path):
    """A HOP outside the window, or one a strided layer before the head could not move by whole
    columns, is refused with the multiples that work; so is a model without a time axis."""
    for hop, expect in ((0, "the hop must be 1 to 128 time steps"), (129, "the hop must be 1 to 128"),
                        (12, r"the hop must be a multiple of 8 \(layer 4 'node_max_pool1d_1' \(maxpool1d\) moves 8 "
                             r"input steps per column\).*: 8, 16, 24, 32, 40, 48, \.\.\."),
                        (1, "the hop must be a multiple of 8")):
        with pytest.raises(OptionError, match=expect):
            convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy", streaming=hop)
    _flat_model(tmp_path / "flat.onnx")
    np.save(tmp_path / "c.npy", np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32))
    with pytest.raises(OptionError, match="needs a model whose input is a window of time steps"):
        convert(tmp_path / "flat.onnx", tmp_path / "c.npy", streaming=4)
    r = run_cli("convert", str(EXAMPLE / "vibration_cnn.onnx"), "-c", str(EXAMPLE / "calibration.npy"),
                "--streaming", "200", "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "--streaming 200: the hop must be 1 to 128" in r.stderr, r.stderr
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.parametrize("target", ["m0plus", "m4", "m7", "m55"])
def test_stream_equals_invoke_on_qemu(target, tmp_path):
    """The same on each core: the pushes' outputs on QEMU == invoke on the host, window by window. The
    PyTorch-layout example ('same' and valid padding, strides, flatten + dense), at int16 too; Keras
    fixtures: flatten + dense heads, causal and dilated convs with a global-pool head, a residual block
    with concatenation, zero padding and cropping."""
    qemu_tools()
    convs = [convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy", name="q_torch", streaming=16)]
    module("keras", 'pip install -e ".[keras]"')
    fixtures = ["dense_heads", "conv_zoo"]
    if target != "m0plus":  # the micro:bit's 16 KiB of RAM hold three streams' maps, not five
        convs.append(convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy", name="q_torch16",
                             precision="int16", streaming=48))
        fixtures.append("separable_residual")
    for name in fixtures:
        path = ROOT / "tests" / "keras_models" / f"{name}.h5"
        steps, channels = input_window(path)
        calib = np.random.default_rng(0).standard_normal((32, steps, channels)).astype(np.float32)
        convs.append(convert(path, calib, name=f"q_{name}", streaming=_hop(path, steps // 8)))
    host = build_conversions(convs, tmp_path / "host")
    units = [stream_unit(c) for c in convs]
    fw = build_firmware([*convs, *units], target, tmp_path / target)
    streams = {c.name: _stream(c, c.report["stream"]["hop"], seed=11) for c in convs}
    jobs = {u.name: streams[c.name].reshape(-1, u.input_size) for c, u in zip(convs, units)}
    out = run_firmware(fw, jobs, timeout=300)
    for c, u in zip(convs, units):
        hop = c.report["stream"]["hop"]
        ready, windows = _windows(c, streams[c.name], hop)
        statuses = out[u.name][:, 0]
        assert list(statuses) == [1 if k in ready else 0 for k in range(len(statuses))], c.name
        want = np.stack([host[c.name](w) for w in windows])
        assert len(ready) >= 50 and np.array_equal(out[u.name][ready, 1:], want), c.name


def test_a_push_computes_only_the_changed_columns():
    """The example at HOP = WINDOW / 8: the three convs and two pools stream, the flatten starts the
    head; a push's MACs are a fraction of an invoke's (figures computed here from the layers)."""
    conv = convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy", name="cols", streaming=16)
    s = conv.report["stream"]
    assert s["recomputes"] == "columns" and s["hop_multiple"] == 8 and not s["notes"]
    assert "starts the head: it regroups the columns" in s["head"]
    # from the architecture (examples/vibration/make_example.py), not from the code's own layer
    # figures: output steps x output channels x input channels x taps, then the two dense layers
    convs = 128 * 8 * 3 * 5 + 32 * 16 * 8 * 3 + 12 * 16 * 16 * 3
    head_macs = 192 * 16 + 16 * 4
    assert s["macs_per_invoke"] == convs + head_macs == 40_000
    assert head_macs < s["macs_per_push"] < 0.3 * s["macs_per_invoke"]
    # the stored maps: the input window (128 x 3) and each conv/pool output, word-aligned, after `steps`
    maps = [(128, 3), (128, 8), (64, 8), (32, 16), (16, 16), (12, 16)]
    assert s["state_bytes"] == 4 + sum(-(-w * c // 4) * 4 for w, c in maps)



@pytest.mark.slow
def test_stream_equals_invoke_on_the_benchmark_models(tmp_path):
    """The trained benchmark models (causal dilated, residual ReLU6, strided + dense, tanh + BatchNorm +
    global pool, pooling, upsampling autoencoder) at HOP = WINDOW / 8 on the host."""
    module("keras", 'pip install -e ".[keras]"')
    paths = sorted((ROOT / "benchmarks" / "models").glob("*.h5"))
    assert len(paths) == 6, paths  # a loop over nothing would pass
    for i, path in enumerate(paths):
        steps, channels = input_window(path)
        calib = np.random.default_rng(i).standard_normal((32, steps, channels)).astype(np.float32)
        conv = convert(path, calib, name=f"b{i}", streaming=_hop(path, steps // 8))
        _check_host(conv, conv.report["stream"]["hop"], seed=i, tmp=tmp_path / conv.name)


def test_a_concatenation_along_time_streams_exactly_as_the_head(tmp_path):
    """Two conv branches joined along time cannot move by a hop (the second branch's columns sit after
    the first's): the concatenation starts the head, which runs in full from the stored maps, and
    every push is still invoke on its window."""
    rng = np.random.default_rng(5)
    w1 = numpy_helper.from_array(rng.standard_normal((4, 2, 3)).astype(np.float32), "w1")
    w2 = numpy_helper.from_array(rng.standard_normal((4, 2, 5)).astype(np.float32), "w2")
    w3 = numpy_helper.from_array(rng.standard_normal((6, 4, 3)).astype(np.float32), "w3")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("Conv", ["x", "w2"], ["b"], kernel_shape=[5], strides=[2], pads=[2, 2]),
             helper.make_node("Concat", ["a", "b"], ["c"], axis=2),
             helper.make_node("Conv", ["c", "w3"], ["d"], kernel_shape=[3]),
             helper.make_node("GlobalAveragePool", ["d"], ["y"])]
    _save_onnx(nodes, [1, 2, 32], [1, 6, 1], [w1, w2, w3], tmp_path / "tcat.onnx")
    conv = convert(tmp_path / "tcat.onnx", rng.standard_normal((32, 2, 32)).astype(np.float32), name="tcat",
                   streaming=4)
    s = conv.report["stream"]
    assert s["recomputes"] == "columns" and "(concat) starts the head: it is not time-local" in s["head"]
    assert s["macs_per_push"] < s["macs_per_invoke"]  # the two branches still stream
    _check_host(conv, 4, seed=3, tmp=tmp_path / "host")


def test_a_mixed_precision_stream_equals_invoke(tmp_path, monkeypatch):
    """Random int8/int16 widths per layer (the chooser replaced, as tests/test_mixed_precision.py
    does): each stored map keeps its own element type, requantize steps stream like any layer."""
    import onnx2cmsis.api as api
    from tests.test_mixed_precision import _RandomWidths

    monkeypatch.setattr(api, "choose_precision", _RandomWidths(4))
    conv = convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy", name="mixs", precision="auto",
                   max_error_db=0.0, streaming=16)
    bits = {layer["bits"] for layer in conv.report["layers"]}
    assert bits == {8, 16} and conv.report["stream"]["recomputes"] == "columns"
    _check_host(conv, 16, seed=9, tmp=tmp_path)


def test_a_single_channel_pytorch_signal_streams(tmp_path):
    """A (1, W) input (an ECG lead, say) reaches the first conv through a view, not a transpose: the
    stream still fills that map directly and computes only the changed columns."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 1, 5)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], kernel_shape=[5], pads=[2, 2]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("GlobalAveragePool", ["b"], ["y"])]
    _save_onnx(nodes, [1, 1, 64], [1, 4, 1], [w], tmp_path / "lead.onnx")
    conv = convert(tmp_path / "lead.onnx", rng.standard_normal((16, 1, 64)).astype(np.float32), name="lead",
                   streaming=8)
    s = conv.report["stream"]
    assert s["recomputes"] == "columns" and s["macs_per_push"] < s["macs_per_invoke"] / 4
    _check_host(conv, 8, seed=1, tmp=tmp_path / "host")


def test_an_input_read_in_its_own_layout_streams_the_window(tmp_path):
    """A channel-major input that one branch reads as it is (a flatten into a dense layer) is no map
    a push can fill time-major: the stream keeps the window in the model's layout and runs the model
    on it each push, still exact."""
    rng = np.random.default_rng(2)
    inits = [numpy_helper.from_array(rng.standard_normal((4, 2, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((32, 4)).astype(np.float32), "d"),
             numpy_helper.from_array(np.array([1, 4], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("GlobalAveragePool", ["a"], ["g"]),
             helper.make_node("Reshape", ["g", "shape"], ["gf"]),
             helper.make_node("Flatten", ["x"], ["f"]),
             helper.make_node("MatMul", ["f", "d"], ["m"]),
             helper.make_node("Add", ["gf", "m"], ["y"])]
    _save_onnx(nodes, [1, 2, 16], [1, 4], inits, tmp_path / "both.onnx")
    conv = convert(tmp_path / "both.onnx", rng.standard_normal((16, 2, 16)).astype(np.float32), name="both",
                   streaming=4)
    s = conv.report["stream"]
    assert s["recomputes"] == "window" and s["macs_per_push"] == s["macs_per_invoke"]
    _check_host(conv, 4, seed=2, tmp=tmp_path / "host")
