"""The canonicalizing rewrites: what they fold, what they refuse, and that folding keeps the math."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx2cmsis.api import convert
from onnx2cmsis.drivers.evaluate import evaluate
from tests.onnx_models import make_model


def _conv_then(tail: list, c_in: int = 3, c_out: int = 6, w: int = 40, seed: int = 0, extra_inits=()):
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array((rng.standard_normal((c_out, c_in, 3)) * 0.4).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal(c_out) * 0.2).astype(np.float32), "b"), *extra_inits]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["t0"], kernel_shape=[3], pads=[1, 1]), *tail]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, w])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return make_model(nodes, [x], [y], inits), rng.standard_normal((64, c_in, w)).astype(np.float32)


def _bn_inits(rng, c, prefix="bn"):
    return [
        numpy_helper.from_array(rng.uniform(0.5, 2.0, c).astype(np.float32), f"{prefix}_g"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32), f"{prefix}_b"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32) * 0.3, f"{prefix}_m"),
        numpy_helper.from_array(rng.uniform(0.2, 3.0, c).astype(np.float32), f"{prefix}_v"),
    ]


def _convert(tmp_path, model, calib, name="m"):
    import onnx

    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return convert(path, calib, name=name)


@pytest.mark.parametrize("seed", range(6))
def test_batchnorm_mul_add_fold_into_the_conv_and_keep_the_math(tmp_path, seed):
    rng = np.random.default_rng(100 + seed)
    scale = numpy_helper.from_array(rng.uniform(-2, 2, (1, 6, 1)).astype(np.float32), "s")
    shift = numpy_helper.from_array(rng.standard_normal((6, 1)).astype(np.float32), "h")
    tail = [
        helper.make_node("BatchNormalization", ["t0", "bn_g", "bn_b", "bn_m", "bn_v"], ["t1"], epsilon=1e-3),
        helper.make_node("Mul", ["t1", "s"], ["t2"]),
        helper.make_node("Sub", ["t2", "h"], ["t3"]),
        helper.make_node("Relu", ["t3"], ["y"]),
    ]
    model, calib = _conv_then(tail, seed=seed, extra_inits=(*_bn_inits(rng, 6), scale, shift))
    conv = _convert(tmp_path, model, calib)
    assert [n.op for n in conv.graph.nodes] == ["transpose", "conv1d", "transpose"]
    assert conv.report["rewrites"].count("fold_affine") == 3
    ev, _ = evaluate(conv, calib, tmp_path / "build", oracle_samples=0)
    assert ev.mismatches_vs_reference == 0
    assert ev.sqnr_db >= 30.0, ev


def test_batchnorm_after_relu_becomes_an_exact_depthwise_conv(tmp_path):
    rng = np.random.default_rng(0)
    tail = [helper.make_node("Relu", ["t0"], ["t1"]),
            helper.make_node("BatchNormalization", ["t1", "bn_g", "bn_b", "bn_m", "bn_v"], ["y"], name="late_bn")]
    model, calib = _conv_then(tail, extra_inits=_bn_inits(rng, 6))
    conv = _convert(tmp_path, model, calib)
    ops = [n.op for n in conv.graph.nodes]
    assert ops == ["transpose", "conv1d", "dwconv1d", "transpose"], ops
    assert "depthwise 1x1" in conv.graph.nodes[2].origin
    ev, _ = evaluate(conv, calib, tmp_path / "build", oracle_samples=16)
    assert ev.mismatches_vs_reference == 0 and ev.mismatches_vs_tflite_micro == 0, ev
    assert ev.sqnr_db >= 30.0, ev


def test_add_after_a_fused_relu_is_not_folded_into_the_bias(tmp_path):
    """Conv -> Relu -> Add(c): adding c to the bias would move it inside the ReLU."""
    c = numpy_helper.from_array(np.full((6, 1), 0.5, np.float32), "c")
    tail = [helper.make_node("Relu", ["t0"], ["t1"]), helper.make_node("Add", ["t1", "c"], ["y"])]
    model, calib = _conv_then(tail, extra_inits=(c,))
    conv = _convert(tmp_path, model, calib)
    conv_node = conv.graph.nodes[1]
    assert conv_node.op == "conv1d" and conv_node.attrs.get("act") == (0.0, None)
    assert conv.graph.nodes[2].op == "dwconv1d"  # the shift stays outside the ReLU
    ev, _ = evaluate(conv, calib, tmp_path / "build", oracle_samples=16)
    assert ev.mismatches_vs_reference == 0 and ev.mismatches_vs_tflite_micro == 0, ev
    assert ev.sqnr_db >= 30.0, ev


def test_pad_folds_into_the_following_conv(tmp_path):
    rng = np.random.default_rng(3)
    inits = [numpy_helper.from_array(np.array([0, 0, 2, 0, 0, 0], np.int64), "pads"),
             numpy_helper.from_array((rng.standard_normal((4, 2, 3)) * 0.5).astype(np.float32), "w")]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]),  # a Keras-style causal pad
             helper.make_node("Conv", ["p", "w"], ["y"], kernel_shape=[3], dilations=[1])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 30])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    calib = rng.standard_normal((32, 2, 30)).astype(np.float32)
    conv = _convert(tmp_path, model, calib)
    convs = [n for n in conv.graph.nodes if n.op == "conv1d"]
    assert len(convs) == 1 and convs[0].attrs["window"].pad == (2, 0)
    assert "pad1d" not in [n.op for n in conv.graph.nodes]
    ev, _ = evaluate(conv, calib, tmp_path / "build", oracle_samples=None)
    assert ev.mismatches_vs_reference == 0 and ev.mismatches_vs_tflite_micro == 0
    assert ev.sqnr_db >= 30.0


def test_flatten_before_dense_costs_no_copy(tmp_path):
    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 3, 3)) * 0.5).astype(np.float32), "w"),
             numpy_helper.from_array((rng.standard_normal((4 * 20, 5)) * 0.2).astype(np.float32), "d")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("Flatten", ["c"], ["f"]), helper.make_node("MatMul", ["f", "d"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 20])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    calib = rng.standard_normal((32, 3, 20)).astype(np.float32)
    conv = _convert(tmp_path, model, calib)
    assert [n.op for n in conv.graph.nodes] == ["transpose", "conv1d", "reshape", "reshape", "dense"]
    ev, _ = evaluate(conv, calib, tmp_path / "build", oracle_samples=None)
    assert ev.mismatches_vs_reference == 0 and ev.mismatches_vs_tflite_micro == 0 and ev.sqnr_db >= 30.0


def test_static_batch_export_with_batch_in_reshape_constants(tmp_path):
    """An export at batch 4 writes Reshape([4, -1]); the loader makes it batch 1 like the input."""
    rng = np.random.default_rng(5)
    inits = [numpy_helper.from_array((rng.standard_normal((4, 2, 3)) / 2).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([4, -1], np.int64), "flat_shape"),
             numpy_helper.from_array((rng.standard_normal((4 * 10, 3)) / 5).astype(np.float32), "m")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3]),
             helper.make_node("Reshape", ["c", "flat_shape"], ["f"]),
             helper.make_node("MatMul", ["f", "m"], ["y"])]
    model = make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 2, 12])],
                   [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])], inits)
    calib = rng.standard_normal((32, 2, 12)).astype(np.float32)
    conv = _convert(tmp_path, model, calib)
    assert conv.graph.model_input_shapes[0] == (1, 2, 12)
    ev, _ = evaluate(conv, calib, tmp_path / "build", oracle_samples=8)
    assert ev.mismatches_vs_reference == 0 and ev.mismatches_vs_tflite_micro == 0 and ev.sqnr_db >= 30.0, ev


@pytest.mark.parametrize("declares", [True, False])
def test_passes_ask_handler_capabilities_not_op_names(declares):
    """A plugin op that declares fuses_activation / folds_affine gets a following clip fused and a
    following per-channel affine folded, through its own fold_affine; one that does not, does not."""
    from onnx2cmsis.ir.graph import Graph, Node, Tensor
    from onnx2cmsis.ops.base import OpHandler
    from onnx2cmsis.ops.registry import build_registry
    from onnx2cmsis.passes.canonical import fold_affine, fuse_activation

    folded = []

    class PluginOp(OpHandler):
        op = "plugin_op"
        fuses_activation = folds_affine = declares

        def fold_affine(self, node, scale, shift):
            folded.append((scale.tolist(), shift.tolist()))
            return True

    registry = build_registry(plugins=False)
    registry.add(PluginOp())
    tensors = {n: Tensor(n, (8, 2)) for n in ("x", "a", "b", "y")}
    nodes = [Node("p", "plugin_op", ["x"], ["a"]),
             Node("bn", "affine", ["a"], ["b"], consts={"scale": np.array([2.0, 3.0]), "shift": np.array([1.0, 0.0])}),
             Node("relu", "clip", ["b"], ["y"], attrs={"act": (0.0, None)})]
    graph = Graph(tensors, nodes, ["x"], ["y"])
    assert fold_affine(graph, registry) is declares
    assert fuse_activation(graph, registry) is declares
    if declares:
        assert [n.op for n in graph.nodes] == ["plugin_op"] and graph.nodes[0].attrs["act"] == (0.0, None)
        assert folded == [([2.0, 3.0], [1.0, 0.0])] and graph.nodes[0].outputs == ["y"]
    else:
        assert [n.op for n in graph.nodes] == ["plugin_op", "affine", "clip"] and not folded
