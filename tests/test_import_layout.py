"""Exporter-style data movement must reach the canonical graph a native 1D export gives: the
movement costs no gather where a view, transpose, upsample or crop does the job."""

from __future__ import annotations

import numpy as np
import pytest

from onnx2cmsis.api import convert
from onnx2cmsis.ir.layout import Binding, MovementKind, arrangement, classify, gather_map, layout_of
from tests.onnx_builders import layout_case

EXPECTED = {
    "conv2d": ["transpose", "conv1d", "transpose"],  # (C, W) in and out: the model's own layout
    "pool_p1": ["transpose", "pool", "transpose"],  # tf_keras' [p, 1] windows: max or average
    "tile": ["transpose", "upsample1d", "conv1d", "transpose"],
    "split": ["transpose", "upsample1d", "conv1d", "transpose"],
    "crop_time": ["transpose", "slice1d", "conv1d", "transpose"],
    "crop_channels": None,  # a channel subset is not contiguous in (W, C): any op sequence, exact
    "nwc_matmul": ["transpose", "conv1d"],  # Relu fused; the (W, F) output is already the model's layout
    "flatten": ["reshape", "dense"],  # (C, W) flattened C-major is the input's own byte order
}


def test_each_exporter_pattern_canonicalizes(tmp_path):
    rng, seen, i = np.random.default_rng(11), set(), 0
    while len(seen) < len(EXPECTED) and i < 500:
        case = layout_case(rng, i)
        i += 1
        kind = case.params["kind"]
        if kind in seen or min(case.calibration.shape[1:]) == 1:
            continue
        conv = convert(case.save(tmp_path), case.calibration, name=case.name, **case.options)
        if min(conv.graph.model_output_shapes[0][1:]) == 1:
            continue  # a (1, W) output needs only a view where (C, W) needs a transpose
        seen.add(kind)
        ops = [n.op for n in conv.graph.nodes]
        if EXPECTED[kind] is None:
            assert ops.count("gather") <= 1, ops
        else:
            ops = ["pool" if op in ("maxpool1d", "avgpool1d") else op for op in ops]
            assert ops == EXPECTED[kind], kind
    assert seen == set(EXPECTED)


@pytest.mark.parametrize("shape,axes", [((1, 3, 5), (2, 1)), ((1, 3, 1, 5), (3, 1)), ((1, 4, 2), (1, 2)),
                                        ((1, 1, 7), (2,)), ((1, 6), (1,))])
def test_arrangement_round_trips_through_layout_of(shape, axes):
    physical, index = arrangement(shape, axes)
    assert sorted(index.reshape(-1).tolist()) == list(range(int(np.prod(shape))))
    assert layout_of(Binding("t", index), physical) == axes
    dst, src_of = gather_map(Binding("t", index), axes)
    assert dst == physical and classify(physical, dst, src_of).kind is MovementKind.SAME


def test_classify_recognizes_each_movement():
    w, c = 5, 3
    ident = np.arange(w * c)
    assert classify((w, c), (w * c,), ident).kind is MovementKind.VIEW
    assert classify((w, c), (c, w), ident.reshape(w, c).T.reshape(-1)).kind is MovementKind.TRANSPOSE
    up = classify((w, c), (2 * w, c), np.repeat(ident.reshape(w, c), 2, axis=0).reshape(-1))
    assert (up.kind, up.attrs) == (MovementKind.UPSAMPLE, {"factor": 2})
    crop = classify((w, c), (2, c), ident.reshape(w, c)[1:3].reshape(-1))
    assert (crop.kind, crop.attrs) == (MovementKind.CROP, {"start": 1, "width": 2})
    assert classify((w, c), (w, 2), ident.reshape(w, c)[:, :2].reshape(-1)).kind is MovementKind.GATHER


def _layout_of(model, tmp_path) -> str:
    import onnx

    from onnx2cmsis.api import front_end
    from onnx2cmsis.ops.registry import build_registry

    onnx.save(model, str(tmp_path / "m.onnx"))
    return front_end(tmp_path / "m.onnx", build_registry())[1].input_layout


@pytest.mark.parametrize("filters", [4, 5])
def test_a_time_major_input_stays_time_major_when_a_later_map_is_transposed(tmp_path, filters):
    """(1, W, C) -> Transpose -> Conv -> Flatten: the flatten transposes the conv's output, whose
    columns may equal the input's (4 filters, 4 channels); only the input's own use decides."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    steps, channels = 16, 4
    inits = [numpy_helper.from_array(rng.standard_normal((filters, channels, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.standard_normal((3, filters * steps)).astype(np.float32), "g")]
    nodes = [helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1]),
             helper.make_node("Conv", ["xt", "w"], ["c"], pads=[1, 1]), helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Flatten", ["r"], ["f"]), helper.make_node("Gemm", ["f", "g"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, steps, channels])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert _layout_of(model, tmp_path) == "time-major"


def test_a_channel_major_input_behind_an_elementwise_op_is_channel_major(tmp_path):
    """(1, C, W) -> Relu -> Conv: the relu decides no axis, the conv's transpose of its output does."""
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((5, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Conv", ["r", "w"], ["y"], pads=[1, 1])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    assert _layout_of(model, tmp_path) == "channel-major"
