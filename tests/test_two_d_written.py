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
    graph = helper.make_graph(nodes, form, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, *FORMS[form]])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / f"{form}.onnx"
    onnx.save(model, str(path))
    return str(path)


def _code(text: str) -> str:
    """The C without its comments (which name the model file and its input shape)."""
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


@pytest.mark.parametrize("settings", [{}, {"precision": "int16"}, {"streaming": 4}], ids=["int8", "int16", "stream"])
def test_a_model_written_over_a_unit_axis_gives_the_native_1d_models_c(tmp_path, settings):
    samples = np.random.default_rng(8).standard_normal((64, C, T)).astype(np.float32)
    convs = {form: convert(_model(tmp_path, form), samples.reshape(64, *shape), name="m", **settings)
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
