"""1D networks written with 2-D layers (issue 30, ONNX part): a model over (N, C, 1, T) or (N, C, T, 1)
whose every kernel, stride and pad is 1 (or 0) along the unit axis is the native 1D model, so the C
is the same; a really 2-D window is refused by name."""

from __future__ import annotations

import re

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx2cmsis.api import convert
from onnx2cmsis.errors import UnsupportedOpError
from tests.onnx_models import save_one_input_model

C, T, F = 3, 64, 8
FORMS = {"1d": (C, T), "unit_h": (C, 1, T), "unit_w": (C, T, 1)}


def _model(tmp_path, form: str) -> str:
    """Conv(k5, pad 2) > Relu > MaxPool(2) > depthwise Conv(k3, pad 1) > AveragePool(2) >
    GlobalAveragePool, the same weights in each form."""
    rng = np.random.default_rng(7)
    w1 = (rng.standard_normal((F, C, 5)) / 3).astype(np.float32)
    b1 = (rng.standard_normal(F) / 10).astype(np.float32)
    w2 = (rng.standard_normal((F, 1, 3)) / 2).astype(np.float32)

    def kernel(w: np.ndarray) -> np.ndarray:
        return {"1d": w, "unit_h": w[:, :, None, :], "unit_w": w[:, :, :, None]}[form]

    def window(n: int) -> list[int]:
        return {"1d": [n], "unit_h": [1, n], "unit_w": [n, 1]}[form]

    def pads(n: int) -> list[int]:
        return {"1d": [n, n], "unit_h": [0, n, 0, n], "unit_w": [n, 0, n, 0]}[form]

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=window(5), pads=pads(2)),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("MaxPool", ["r1"], ["p1"], kernel_shape=window(2), strides=window(2)),
             helper.make_node("Conv", ["p1", "w2"], ["c2"], kernel_shape=window(3), group=F, pads=pads(1)),
             helper.make_node("AveragePool", ["c2"], ["p2"], kernel_shape=window(2), strides=window(2)),
             helper.make_node("GlobalAveragePool", ["p2"], ["y"])]
    inits = [numpy_helper.from_array(kernel(w1), "w1"), numpy_helper.from_array(b1, "b1"),
             numpy_helper.from_array(kernel(w2), "w2")]
    return save_one_input_model(tmp_path / f"{form}.onnx", nodes, [1, *FORMS[form]], inits)


def _pad_resize_model(tmp_path, form: str) -> str:
    """Pad (2 before, 3 after, along time) > Conv(k5) > Relu > Resize (nearest, x2 along time) >
    GlobalAveragePool: a decoder's shape of graph, the same weights in each form."""
    w = (np.random.default_rng(1).standard_normal((F, C, 5)) / 3).astype(np.float32)
    kernel = {"1d": w, "unit_h": w[:, :, None, :], "unit_w": w[:, :, :, None]}[form]
    along_time = {"1d": lambda a, b: [b], "unit_h": lambda a, b: [a, b], "unit_w": lambda a, b: [b, a]}[form]
    pads = [0, 0, *along_time(0, 2), 0, 0, *along_time(0, 3)]
    scales = [1.0, 1.0, *along_time(1.0, 2.0)]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"], mode="constant"),
             helper.make_node("Conv", ["p", "w"], ["c"], kernel_shape=list(kernel.shape[2:])),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Resize", ["r", "", "scales"], ["u"], mode="nearest"),
             helper.make_node("GlobalAveragePool", ["u"], ["y"])]
    inits = [numpy_helper.from_array(np.array(pads, np.int64), "pads"), numpy_helper.from_array(kernel, "w"),
             numpy_helper.from_array(np.array(scales, np.float32), "scales")]
    return save_one_input_model(tmp_path / f"{form}_pad_resize.onnx", nodes, [1, *FORMS[form]], inits)


def _code(text: str) -> str:
    """The C without its comments (which name the model file and its input shape)."""
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


@pytest.mark.parametrize("build, settings", [(_model, {}), (_model, {"precision": "int16"}), (_model, {"streaming": 4}),
                                             (_model, {"precision": "auto", "max_error_db": 36.0}),
                                             (_pad_resize_model, {}), (_pad_resize_model, {"precision": "int16"})],
                         ids=["int8", "int16", "stream", "auto", "pad_resize_int8", "pad_resize_int16"])
def test_a_model_written_over_a_unit_axis_gives_the_native_1d_models_c(tmp_path, build, settings):
    samples = np.random.default_rng(8).standard_normal((64, C, T)).astype(np.float32)
    convs = {form: convert(build(tmp_path, form), samples.reshape(64, *shape), name="m", **settings)
             for form, shape in FORMS.items()}
    native = convs["1d"]
    for form in ("unit_h", "unit_w"):
        conv = convs[form]
        assert _code(conv.source) == _code(native.source), form
        assert _code(conv.header) == _code(native.header), form  # steps x channels macros included
        assert conv.report["arena_bytes"] == native.report["arena_bytes"]
        assert conv.report["weights_bytes"] == native.report["weights_bytes"]
        assert [(layer["op"], layer["kernel"]) for layer in conv.report["layers"]] == \
            [(layer["op"], layer["kernel"]) for layer in native.report["layers"]]
    assert "#define M_INPUT_STEPS 64" in convs["unit_h"].header and "#define M_INPUT_CHANNELS 3" in convs["unit_h"].header


def test_a_window_that_spans_both_axes_is_refused_naming_the_node_and_shapes(tmp_path):
    rng = np.random.default_rng(9)
    w = numpy_helper.from_array((rng.standard_normal((4, C, 3, 3)) / 3).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], name="really_2d")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, C, 4, T])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "2d.onnx"))
    with pytest.raises(UnsupportedOpError) as caught:
        convert(tmp_path / "2d.onnx", rng.standard_normal((8, C, 4, T)).astype(np.float32))
    message = str(caught.value)
    assert "really_2d" in message and "[3, 4, 64]" in message and "[3, 3]" in message, message


# --- Keras: (T, 1, C) and (1, T, C) models of 2-D layers

NUMBER = re.compile(r"-?\d+(?:\.\d+)?(?:e[-+]?\d+)?f?")


def _assert_same_c(got: str, want: str) -> None:
    """The same code, and the same numbers but for float rounding: ONNX Runtime computes the 2-D
    form's convolutions in another order, so a calibrated range (hence a scale, a requantization
    multiplier, a bias) may differ in its last bits; int8 weights, shapes and calls do not."""
    assert NUMBER.sub("#", got) == NUMBER.sub("#", want)
    pairs = list(zip(NUMBER.findall(got), NUMBER.findall(want), strict=True))
    close = [abs(float(a.rstrip("f")) - float(b.rstrip("f"))) <= max(1.0, 1e-5 * abs(float(b.rstrip("f"))))
             for a, b in pairs]
    assert all(close), [p for p, ok in zip(pairs, close) if not ok][:5]
    assert sum(a != b for a, b in pairs) <= len(pairs) // 20  # rounding, not another quantization


def _unnamed(conv, text: str) -> str:
    """The C without comments and with each layer's identifier (from its model name, which tf2onnx
    spells differently for the two forms: a 1x1 Conv2D fused with its BatchNorm is named after the
    BatchNorm) replaced by its index."""
    text = _code(text)
    for layer in sorted(conv.report["layers"], key=lambda entry: -len(entry["identifier"])):
        text = re.sub(rf"\b{conv.name}_{re.escape(layer['identifier'])}_", f"{conv.name}_L{layer['index']}_", text)
    return text


def _keras():
    from tests.needs import module

    return module("keras", 'the [keras] extra: pip install -e ".[keras]"')


def _wake_word_pair(keras, tmp_path, unit_axis: int) -> tuple:
    """A streaming wake-word benchmark's shape of model: DepthwiseConv2D (k, 1), k = 3, 5, 10, 15
    (valid), each followed by a 1x1 Conv2D, BatchNorm, ReLU and Dropout, then Flatten and Dense;
    and its native 1D twin with the same weights and layer names (so the C may match byte for byte)."""
    L = keras.layers
    steps, channels = 49, 10
    keras.utils.set_random_seed(3)
    i2 = keras.Input((steps, 1, channels) if unit_axis == 1 else (1, steps, channels))
    i1 = keras.Input((steps, channels))
    x2, x1 = i2, i1
    for k in (3, 5, 10, 15):
        dw2 = L.DepthwiseConv2D((k, 1) if unit_axis == 1 else (1, k), name=f"dw{k}")
        pw2 = L.Conv2D(16, 1, name=f"pw{k}")
        bn2 = L.BatchNormalization(name=f"bn{k}")
        x2 = L.Dropout(0.1, name=f"drop{k}")(L.ReLU(name=f"relu{k}")(bn2(pw2(dw2(x2)))))
        dw1, pw1, bn1 = L.DepthwiseConv1D(k, name=f"dw{k}"), L.Conv1D(16, 1, name=f"pw{k}"), \
            L.BatchNormalization(name=f"bn{k}")
        x1 = L.Dropout(0.1, name=f"drop{k}")(L.ReLU(name=f"relu{k}")(bn1(pw1(dw1(x1)))))
        kernel, bias = dw2.get_weights()
        dw1.set_weights([kernel[:, 0] if unit_axis == 1 else kernel[0], bias])
        kernel, bias = pw2.get_weights()
        pw1.set_weights([kernel[0], bias])
        stats = [np.random.default_rng(k).uniform(0.5, 1.5, 16).astype(np.float32) for _ in range(4)]
        bn2.set_weights(stats)
        bn1.set_weights(stats)
    head2, head1 = L.Dense(4, activation="softmax", name="head"), L.Dense(4, activation="softmax", name="head")
    y2, y1 = head2(L.Flatten(name="flat")(x2)), head1(L.Flatten(name="flat")(x1))
    head1.set_weights(head2.get_weights())
    m2, m1 = keras.Model(i2, y2, name="kws"), keras.Model(i1, y1, name="kws")
    m2.save(tmp_path / "kws_2d.h5")
    m1.save(tmp_path / "kws_1d.h5")
    x = np.random.default_rng(4).standard_normal((64, steps, channels)).astype(np.float32)
    x2d = x[:, :, None, :] if unit_axis == 1 else x[:, None, :, :]
    assert np.allclose(m2.predict(x2d, verbose=0), m1.predict(x, verbose=0), atol=1e-6)  # truly twins
    return tmp_path / "kws_2d.h5", x2d, tmp_path / "kws_1d.h5", x


@pytest.mark.keras
@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize("unit_axis", [1, 0], ids=["T_1_C", "1_T_C"])
def test_a_keras_model_of_2d_layers_over_a_unit_axis_gives_the_native_1d_models_c(tmp_path, unit_axis):
    keras = _keras()
    two_d, x2d, one_d, x = _wake_word_pair(keras, tmp_path, unit_axis)
    conv2, conv1 = convert(two_d, x2d, name="kws"), convert(one_d, x, name="kws")
    _assert_same_c(_unnamed(conv2, conv2.source), _unnamed(conv1, conv1.source))  # calls, constants, arena
    _assert_same_c(_unnamed(conv2, conv2.header), _unnamed(conv1, conv1.header))
    assert conv2.report["arena_bytes"] == conv1.report["arena_bytes"]
    assert "#define KWS_INPUT_STEPS 49" in conv2.header and "#define KWS_INPUT_CHANNELS 10" in conv2.header


@pytest.mark.keras
def test_keras_2d_layers_that_span_the_unit_axis_are_refused_all_at_once(tmp_path):
    keras = _keras()
    L = keras.layers
    i = keras.Input((32, 1, 4))
    x = L.Conv2D(8, (3, 1), name="fine")(i)
    x = L.Conv2D(8, (3, 3), padding="same", name="square")(x)
    x = L.MaxPooling2D((2, 2), padding="same", name="pool22")(x)
    x = L.ZeroPadding2D(((0, 0), (1, 1)), name="pad_w")(x)
    model = keras.Model(i, L.Dense(2)(L.Flatten()(x)))
    model.save(tmp_path / "really_2d.h5")
    with pytest.raises(UnsupportedOpError) as caught:
        convert(tmp_path / "really_2d.h5", np.zeros((4, 32, 1, 4), np.float32))
    message = str(caught.value)
    for name, why in (("square", "kernel_size [3, 3]"), ("pool22", "pool_size [2, 2]"), ("pad_w", "padding")):
        assert f"layer '{name}'" in message and why in message, message
    assert "'fine'" not in message and "[32, 1, 4]" in message and "\n" not in message


@pytest.mark.keras
def test_a_keras_model_with_a_2d_input_is_refused_naming_its_2d_layers(tmp_path):
    keras = _keras()
    L = keras.layers
    i = keras.Input((8, 8, 1))
    model = keras.Model(i, L.Dense(2)(L.Flatten()(L.Conv2D(4, (3, 1), name="image_conv")(i))))
    model.save(tmp_path / "image.h5")
    with pytest.raises(UnsupportedOpError, match=r"layer 'image_conv' \(Conv2D\) is 2-D: the input \[\[8, 8, 1\]\]"):
        convert(tmp_path / "image.h5", np.zeros((4, 8, 8, 1), np.float32))


@pytest.mark.slow
@pytest.mark.keras
def test_a_keras_1d_model_that_reshapes_to_2d_layers_and_back_gives_the_native_c(tmp_path):
    """(T, C) -> Reshape (T, 1, C) -> Conv2D (5, 1) -> MaxPooling2D (2, 1) -> Reshape (T', F) -> Conv1D
    -> Reshape (1, T'', F) -> Conv2D (1, 3) -> GlobalAveragePooling2D -> Dense: the unit axis is where
    each Reshape puts it; the C is its native 1D twin's (same weights)."""
    keras = _keras()
    L = keras.layers
    steps, channels = 40, 3
    keras.utils.set_random_seed(5)
    i2, i1 = keras.Input((steps, channels)), keras.Input((steps, channels))
    a2, a1 = L.Conv2D(8, (5, 1), activation="relu", name="a"), L.Conv1D(8, 5, activation="relu", name="a")
    b2, b1 = L.Conv1D(8, 3, activation="relu", name="b"), L.Conv1D(8, 3, activation="relu", name="b")
    c2, c1 = L.Conv2D(4, (1, 3), name="c"), L.Conv1D(4, 3, name="c")
    d2, d1 = L.Dense(3, activation="softmax", name="d"), L.Dense(3, activation="softmax", name="d")
    x2 = L.MaxPooling2D((2, 1), name="pool")(a2(L.Reshape((steps, 1, channels), name="to_2d")(i2)))
    x2 = L.Reshape((1, 16, 8), name="to_2d_again")(b2(L.Reshape((18, 8), name="to_1d")(x2)))
    y2 = d2(L.GlobalAveragePooling2D(name="gap")(c2(x2)))
    y1 = d1(L.GlobalAveragePooling1D(name="gap")(c1(b1(L.MaxPooling1D(2, name="pool")(a1(i1))))))
    for two, one in ((a2, a1), (c2, c1)):
        kernel, bias = two.get_weights()
        one.set_weights([kernel.reshape(-1, *kernel.shape[2:]), bias])
    b1.set_weights(b2.get_weights())
    d1.set_weights(d2.get_weights())
    m2, m1 = keras.Model(i2, y2, name="rs"), keras.Model(i1, y1, name="rs")
    x = np.random.default_rng(6).standard_normal((48, steps, channels)).astype(np.float32)
    assert np.allclose(m2.predict(x, verbose=0), m1.predict(x, verbose=0), atol=1e-6)  # truly twins
    m2.save(tmp_path / "rs_2d.h5")
    m1.save(tmp_path / "rs_1d.h5")
    conv2, conv1 = convert(tmp_path / "rs_2d.h5", x, name="rs"), convert(tmp_path / "rs_1d.h5", x, name="rs")
    assert [layer["kernel"] for layer in conv2.report["layers"]] == [layer["kernel"] for layer in conv1.report["layers"]]
    _assert_same_c(_unnamed(conv2, conv2.source), _unnamed(conv1, conv1.source))
    assert conv2.report["arena_bytes"] == conv1.report["arena_bytes"]


@pytest.mark.keras
def test_a_keras_reshape_to_a_really_2d_map_is_refused_naming_the_reshape(tmp_path):
    keras = _keras()
    L = keras.layers
    i = keras.Input((40, 3))
    x = L.Conv2D(4, (3, 1), name="conv_on_2d")(L.Reshape((20, 2, 3), name="fold")(i))
    keras.Model(i, L.Dense(2)(L.Flatten()(x))).save(tmp_path / "fold.h5")
    with pytest.raises(UnsupportedOpError) as caught:
        convert(tmp_path / "fold.h5", np.zeros((4, 40, 3), np.float32))
    message = str(caught.value)
    assert "layer 'conv_on_2d' (Conv2D) is 2-D" in message and "Reshape 'fold'" in message and "[20, 2, 3]" in message


# --- trained models written in 2-D (tests/two_d_models/make_two_d.py): the must-show


def _trained(name: str):
    """(model file, calibration samples, test samples) of a fixture in tests/two_d_models."""
    from tests.two_d_models import make_two_d

    x = make_two_d.torch_data(96, seed=3)[0] if name == "torch_unit_h" else make_two_d.keras_data(name, 96, seed=3)[0]
    return make_two_d.HERE / f"{name}{'.onnx' if name == 'torch_unit_h' else '.h5'}", x[:64], x[64:]


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.keras
@pytest.mark.torch
@pytest.mark.qemu
@pytest.mark.oracle
@pytest.mark.parametrize("name", ["kws_t1c", "conv_1tc", "torch_unit_h"])
def test_trained_models_written_in_2d_are_bit_exact_on_the_host_and_qemu(name, tmp_path):
    """A wake-word model over (T, 1, C), a Conv2D/MaxPooling2D model over (1, T, C) (Keras) and a
    PyTorch Conv2d (1, k) model over (N, C, 1, T), trained: at int8 and int16, C == reference ==
    tflite-micro on the host and the same bytes on QEMU M4 and M55. Marked heavy: it runs at both
    levels the tool emits for (7 with v7.0.0, and 2024.01); their C is the native 1D models', whose
    kernels the level tests also check on main."""
    from tests.bit_exact import bit_exact_everywhere

    if name != "torch_unit_h":
        _keras()
    path, calibration, x = _trained(name)
    for precision in ("int8", "int16"):
        conv = convert(path, calibration, name=f"{name}_{precision}", precision=precision)
        assert conv.report["input"]["dtype"] == precision
        assert all(layer["op"] != "conv2d" for layer in conv.report["layers"])  # the native 1D layers
        bit_exact_everywhere(conv, x, tmp_path / precision, qemu_samples=4)


@pytest.mark.keras
@pytest.mark.qemu
@pytest.mark.slow
def test_the_trained_wake_word_model_streams_exactly_on_the_host_and_qemu(tmp_path):
    """kws_t1c, pushed 4 steps at a time: every push's output equals an invoke on the last 49 steps,
    on the host (with invokes in between) and on QEMU M4 and M55."""
    from onnx2cmsis.targets.host import build_conversions
    from onnx2cmsis.targets.qemu import build_firmware, run_firmware, stream_unit
    from tests.needs import qemu_tools
    from tests.test_streaming import _check_host, _stream, _windows

    _keras()
    path, calibration, _ = _trained("kws_t1c")
    conv = convert(path, calibration, name="kws_stream", streaming=4)
    assert conv.report["stream"]["window"] == 49 and conv.report["stream"]["time_major"]
    _check_host(conv, 4, seed=12, tmp=tmp_path / "host")
    qemu_tools()
    host = build_conversions([conv], tmp_path / "invoke")[conv.name]
    stream = _stream(conv, 4, seed=13)
    ready, windows = _windows(conv, stream, 4)
    want = np.stack([host(w) for w in windows])
    unit = stream_unit(conv)
    for target in ("m4", "m55"):
        fw = build_firmware([conv, unit], target, tmp_path / target)
        out = run_firmware(fw, {unit.name: stream.reshape(-1, unit.input_size)}, timeout=300)[unit.name]
        assert list(out[:, 0]) == [1 if k in ready else 0 for k in range(len(out))], target
        assert np.array_equal(out[ready, 1:], want), target
