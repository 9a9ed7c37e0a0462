"""Shape computations folded at import (frontends/shape_folding.py): what PyTorch's TorchScript
exporter writes for code that reads tensor sizes becomes constants once the input shape is fixed."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx2cmsis
from onnx2cmsis.api import convert
from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.frontends.onnx_model import normalize
from tests.needs import module


def _pad_from_sizes(tmp_path) -> str:
    """x (1, 4, 30) -> Conv(k3, valid) -> Pad whose pads come from Shape/Gather/Sub/Div/Concat/Cast of
    both sizes (diff // 2 before, the rest after), a ConstantOfShape zero state added -> y."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((4, 4, 3)) / 3).astype(np.float32), "w")
    c = lambda name, v: numpy_helper.from_array(np.array(v, np.int64), name)  # noqa: E731
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["conv"], kernel_shape=[3]),
        helper.make_node("Shape", ["x"], ["sx"]), helper.make_node("Shape", ["conv"], ["sc"]),
        helper.make_node("Gather", ["sx", "two"], ["wx"], axis=0), helper.make_node("Gather", ["sc", "two"], ["wc"], axis=0),
        helper.make_node("Sub", ["wx", "wc"], ["diff"]), helper.make_node("Div", ["diff", "two"], ["half"]),
        helper.make_node("Sub", ["diff", "half"], ["rest"]),
        helper.make_node("Unsqueeze", ["half", "zero_axis"], ["half1"]), helper.make_node("Unsqueeze", ["rest", "zero_axis"], ["rest1"]),
        helper.make_node("Concat", ["zeros4", "half1", "zeros2", "rest1"], ["pads"], axis=0),
        helper.make_node("Cast", ["pads"], ["pads64"], to=TensorProto.INT64),
        helper.make_node("Pad", ["conv", "pads64"], ["padded"]),
        helper.make_node("ConstantOfShape", ["sx"], ["state"], value=numpy_helper.from_array(np.zeros(1, np.float32))),
        helper.make_node("Add", ["padded", "state"], ["y"]),
    ]
    inits = [w, c("two", 2), c("zero_axis", [0]), c("zeros4", [0, 0]), c("zeros2", [0, 0])]
    graph = helper.make_graph(nodes, "pad_from_sizes", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 30])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = tmp_path / "pad_from_sizes.onnx"
    onnx.save(model, str(path))
    return str(path)


def test_shape_arithmetic_feeding_pad_and_a_zero_state_folds_to_constants(tmp_path):
    path = _pad_from_sizes(tmp_path)
    folded = normalize(onnx.load(path), path)
    assert sorted({n.op_type for n in folded.graph.node}) == ["Add", "Conv", "Pad"]
    pads = next(numpy_helper.to_array(i) for i in folded.graph.initializer if i.name == "pads64")
    assert pads.tolist() == [0, 0, 1, 0, 0, 1]  # 30 - 28 = 2 columns: one before, one after
    x = np.random.default_rng(1).standard_normal((40, 4, 30)).astype(np.float32)
    conv = convert(path, x[:32], name="pad_from_sizes")
    result = onnx2cmsis.verify(conv, x[32:], targets=("host",), workdir=tmp_path / "verify")
    assert result.passed, result.table()


def test_a_foldable_op_on_activations_is_not_folded_and_is_named(tmp_path):
    nodes = [helper.make_node("Floor", ["x"], ["y"], name="floor_of_signal")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "floor.onnx"))
    with pytest.raises(UnsupportedOpError, match=r"'floor_of_signal' \(Floor\)"):
        convert(tmp_path / "floor.onnx", np.zeros((4, 2, 8), np.float32))


@pytest.mark.slow
@pytest.mark.torch
def test_a_pytorch_unet_that_pads_from_sizes_converts_from_the_torchscript_exporter(tmp_path):
    """The U-Net up step (ConvTranspose1d, then F.pad by the size difference to the skip, concat):
    the TorchScript exporter writes the pads as Shape/Slice/Cast/ConstantOfShape/Concat nodes. After
    folding the C is the dynamo export's (which folds them itself): same layers and arena, and C ==
    reference == tflite-micro on the host."""
    torch = module("torch", 'pip install -e ".[test]"')
    nn, F = torch.nn, torch.nn.functional

    class UNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inc = nn.Sequential(nn.Conv1d(1, 8, 3, padding=1), nn.ReLU())
            self.down = nn.Sequential(nn.MaxPool1d(2), nn.Conv1d(8, 16, 3, padding=1), nn.ReLU())
            self.up = nn.ConvTranspose1d(16, 8, 2, stride=2)
            self.fuse = nn.Sequential(nn.Conv1d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv1d(8, 1, 1))

        def forward(self, x):
            skip = self.inc(x)
            up = self.up(self.down(skip))
            diff = skip.size(2) - up.size(2)
            return self.fuse(torch.cat([skip, F.pad(up, [diff // 2, diff - diff // 2])], dim=1))

    torch.manual_seed(0)
    model, example = UNet().eval(), (torch.randn(1, 1, 101),)
    x = np.random.default_rng(2).standard_normal((40, 1, 101)).astype(np.float32)
    convs = {}
    for exporter in ("legacy", "dynamo"):
        path = tmp_path / f"unet_{exporter}.onnx"
        if exporter == "legacy":
            torch.onnx.export(model, example, str(path), dynamo=False, opset_version=13)
            assert "ConstantOfShape" in {n.op_type for n in onnx.load(str(path)).graph.node}  # the pads, computed
        else:
            torch.onnx.export(model, example, str(path), dynamo=True, external_data=False)
        convs[exporter] = convert(path, x[:32], name="unet")
    legacy, dynamo = convs["legacy"], convs["dynamo"]
    assert [layer["op"] for layer in legacy.report["layers"]] == [layer["op"] for layer in dynamo.report["layers"]]
    assert legacy.report["arena_bytes"] == dynamo.report["arena_bytes"]
    result = onnx2cmsis.verify(legacy, x[32:], targets=("host",), workdir=tmp_path / "verify")
    assert result.passed, result.table()


def test_a_constant_of_shape_asking_for_a_billion_values_is_not_evaluated(tmp_path):
    """A hostile shape input: the fold is skipped before anything is allocated, and the model is
    refused naming the node the importer cannot take."""
    nodes = [helper.make_node("ConstantOfShape", ["huge"], ["big"], name="huge_state"),
             helper.make_node("Add", ["x", "big"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array([10**9, 2, 8], np.int64), "huge")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "huge.onnx"))
    with pytest.raises(UnsupportedOpError, match=r"'huge_state' \(ConstantOfShape\)"):
        convert(tmp_path / "huge.onnx", np.zeros((4, 2, 8), np.float32))


def test_a_gather_of_a_concat_reads_the_input_it_selects_even_unnamed():
    """PyTorch's h_n[-1]: a constant selection from a Concat becomes a selection from the input it falls
    in (frontends/selection_folding.py); unnamed Gathers keep distinct index constants, and ONNX
    Runtime computes the same before and after."""
    import onnxruntime as ort

    from onnx2cmsis.frontends.onnx_model import value_shapes
    from onnx2cmsis.frontends.selection_folding import fold_selected_concats

    nodes = [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Sigmoid", ["x"], ["s"]),
             helper.make_node("Concat", ["a", "x", "s"], ["c"], axis=0),  # (2 + 1 + 1, 3, 4)
             helper.make_node("Gather", ["c", "i1"], ["y1"], axis=0), helper.make_node("Gather", ["c", "i2"], ["y2"], axis=0)]
    inits = [numpy_helper.from_array(np.array(1, np.int64), "i1"), numpy_helper.from_array(np.array(-1, np.int64), "i2")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4])],
                              [helper.make_tensor_value_info(y, TensorProto.FLOAT, [3, 4]) for y in ("y1", "y2")], inits)
    nodes[2].input[:] = ["a", "a", "s"]  # (1 + 1 + 1, 3, 4): index 1 is the second a, -1 the sigmoid
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)]))
    folded = fold_selected_concats(model, value_shapes(model))
    assert "Concat" not in [n.op_type for n in folded.graph.node]
    onnx.checker.check_model(folded)
    x = np.random.default_rng(0).normal(size=(1, 3, 4)).astype(np.float32)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})  # noqa: E731
    for want, got in zip(run(model), run(folded)):
        np.testing.assert_array_equal(want, got)
