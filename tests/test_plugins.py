"""Op handler plugins: the example package (entry point), --plugin ad hoc, and the override rule."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from onnx2cmsis.api import convert
from onnx2cmsis.cli import app
from onnx2cmsis.errors import ConversionError, UnsupportedOpError
from onnx2cmsis.drivers.evaluate import evaluate
from onnx2cmsis.ops.base import OpHandler
from onnx2cmsis.ops.registry import build_registry
from tests.needs import module
from tests.onnx_models import make_model

plugin = module("onnx2cmsis_hardsigmoid", "pip install -e examples/plugin")
SPEC = "onnx2cmsis_hardsigmoid:HardSigmoidHandler"
LOWERED = "onnx2cmsis_hardsigmoid.lowered:HardSigmoidLowering"


class ClaimsRelu(OpHandler):
    """A plugin that wants an op a built-in already handles."""

    op = "my_relu"
    onnx_ops = ("Relu",)


def _hardsigmoid_model(tmp_path, after_conv: bool = True):
    """Conv -> HardSigmoid -> Conv (or, without the first conv, HardSigmoid on the model input)."""
    rng = np.random.default_rng(0)
    w1 = numpy_helper.from_array((rng.standard_normal((6, 3, 3)) / 2).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((4, 6 if after_conv else 3, 1)) / 2).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("HardSigmoid", ["c" if after_conv else "x", ], ["h"], alpha=0.25, beta=0.4, name="gate"),
             helper.make_node("Conv", ["h", "w2"], ["y"], kernel_shape=[1])][0 if after_conv else 1:]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    path = tmp_path / "hs.onnx"
    import onnx

    onnx.save(make_model(nodes, [x], [y], [w1, w2] if after_conv else [w2]), str(path))
    return path, rng.standard_normal((128, 3, 32)).astype(np.float32) * 2


def test_installed_plugin_converts_bit_exact_and_is_named_in_the_report(tmp_path):
    path, calib = _hardsigmoid_model(tmp_path)
    conv = convert(path, calib, name="hs")
    handlers = {layer["op"]: layer["handler"] for layer in conv.report["layers"]}
    assert handlers["hardsigmoid"] == SPEC
    assert handlers["conv1d"] == "onnx2cmsis.ops.conv:Conv1DHandler"
    assert "hs_table" in conv.source or "_table[" in conv.source
    ev, _ = evaluate(conv, calib, tmp_path / "build", oracle_samples=0)  # TFLite has no HARD_SIGMOID
    assert ev.mismatches_vs_reference == 0
    assert ev.sqnr_db >= 30.0, ev


@pytest.mark.parametrize("after_conv", [True, False], ids=["after_a_conv", "on_the_input"])
def test_a_plugin_op_that_lowers_into_built_ins_takes_their_rewrites_and_their_oracle(tmp_path, after_conv):
    """The example's second handler has no kernel: `lower` makes HardSigmoid an affine and a clamp. After
    a conv both fold into it (no layer left of the op); on the model input they become a 1-tap
    depthwise conv with the clamp fused. Either way the C equals the reference (TFLite has no fused
    [0, 1] clamp, so tflite-micro cannot run this graph)."""
    path, calib = _hardsigmoid_model(tmp_path, after_conv)
    conv = convert(path, calib, name="hs_lowered", registry=build_registry(plugins=False, extra=(LOWERED,)))
    layers = conv.report["layers"]
    assert "lower hardsigmoid_lowered" in conv.report["rewrites"]
    assert not {"hardsigmoid_lowered", "affine", "clip", "lut"} & {layer["op"] for layer in layers}, layers
    gate = [layer for layer in layers if "HardSigmoid" in layer["from"]]
    assert len(gate) == 1 and gate[0]["op"] == ("conv1d" if after_conv else "dwconv1d"), layers
    ev, _ = evaluate(conv, calib, tmp_path / "build", oracle_samples=0)
    assert ev.mismatches_vs_reference == 0, ev
    assert ev.sqnr_db >= 30.0, ev


def test_a_plugin_without_int16_is_refused_at_int16_by_name(tmp_path):
    """The example plugin declares int8 only (OpHandler.activation_bits): at int16 the conversion stops
    and names the node and the way out, instead of running an int8 table on int16 codes."""
    from onnx2cmsis.errors import ConversionError

    path, calib = _hardsigmoid_model(tmp_path)
    with pytest.raises(ConversionError, match=r"node 'gate' \(HardSigmoid\): its handler \(hardsigmoid\) "
                                              r"supports int8 activations only \(convert with precision='int8'"):
        convert(path, calib, name="hs16", precision="int16")


def test_table_matches_the_float_function_within_half_a_step():
    from onnx2cmsis.arith.rules import QuantParams

    q_in = QuantParams(0.05, 3)
    table = plugin.hardsigmoid_table(q_in, 0.2, 0.5).astype(np.float64)
    x = (np.arange(-128, 128) - 3) * np.float32(0.05)
    want = np.clip(0.2 * x + 0.5, 0, 1)
    got = (table + 128) / 256.0
    assert np.max(np.abs(got - np.minimum(want, 127 / 256 + 0.5))) <= 0.5 / 256 + 1e-9


def test_ad_hoc_plugin_without_entry_points(tmp_path):
    path, calib = _hardsigmoid_model(tmp_path)
    with pytest.raises(UnsupportedOpError, match="operator HardSigmoid is not supported"):
        convert(path, calib, registry=build_registry(plugins=False))
    conv = convert(path, calib, registry=build_registry(plugins=False, extra=(SPEC,)))
    assert any(layer["handler"] == SPEC for layer in conv.report["layers"])


def test_overriding_a_built_in_needs_the_flag():
    with pytest.raises(ConversionError, match=r"would override \['Relu'\]; allow_override lets plugins"):
        build_registry(extra=("tests.test_plugins:ClaimsRelu",))
    reg = build_registry(extra=("tests.test_plugins:ClaimsRelu",), allow_override=True)
    assert isinstance(reg.by_onnx_op["Relu"], ClaimsRelu)


@pytest.mark.parametrize("spec,message", [("nocolon", "expected module:Class"),
                                          ("no_such_module_xyz:H", "cannot import it"),
                                          ("onnx2cmsis.api:convert", "is not an onnx2cmsis.ops.base.OpHandler")])
def test_bad_plugin_spec_is_one_line(tmp_path, spec, message):
    path, calib = _hardsigmoid_model(tmp_path)
    np.save(tmp_path / "c.npy", calib)
    r = CliRunner().invoke(app, ["convert", str(path), "-c", str(tmp_path / "c.npy"), "--out", str(tmp_path),
                                 "--plugin", spec])
    assert r.exit_code == 1 and message in r.output and "Traceback" not in r.output, r.output
    assert not list(tmp_path.glob("*.c"))


class OffByOneHardSigmoid(plugin.HardSigmoidHandler):
    """A plugin whose C disagrees with its own reference: its table is one code off at the top."""

    op = "hardsigmoid_off_by_one"

    def emit(self, node, graph):
        call = super().emit(node, graph)
        wrong = call.arrays[0].values.copy()
        wrong[wrong < 127] += 1
        call.arrays[0].values = wrong
        return call


def test_verify_with_a_wrong_plugin_names_its_layer(tmp_path):
    """verify finds the first bad layer with the conversion's own handlers, plugins included (it used
    to build a fresh registry without them and fail with a KeyError)."""
    path, calib = _hardsigmoid_model(tmp_path)
    np.save(tmp_path / "c.npy", calib[:64])
    np.save(tmp_path / "x.npy", calib[64:80])
    r = CliRunner().invoke(app, ["verify", str(path), "-c", str(tmp_path / "c.npy"), "-d", str(tmp_path / "x.npy"),
                                 "--plugin", "tests.test_plugins:OffByOneHardSigmoid", "--allow-override"])
    assert r.exit_code == 1, r.output
    assert "first bad layer: layer 2 'gate' (hardsigmoid_off_by_one" in r.output and "KeyError" not in r.output, r.output


class TableRelu(OpHandler):
    """A plugin op with an exact TFLite equivalent: ReLU as a 256-entry table in its input's
    quantization (TFLite's RELU with equal input and output quantization is the same clamp), exported
    through its own export_tflite."""

    op = "table_relu"
    onnx_ops = ("Relu",)

    def from_onnx(self, node, ctx):
        from onnx2cmsis.ir.graph import Node
        from onnx2cmsis.ops.base import elementwise_io

        (x,), y = elementwise_io(node, ctx)
        ctx.add_node(Node(node.name, self.op, [x], [y], origin=node.op_type))

    def output_shapes(self, node, input_shapes):
        return [input_shapes[0]]

    def quantize(self, node, graph, ranges):
        q = graph.tensors[node.inputs[0]].quant
        graph.tensors[node.output].quant = q
        node.qparams = {"table": np.maximum(np.arange(-128, 128), q.zero_point).astype(np.int8)}

    def reference(self, node, graph, inputs):
        return [node.qparams["table"][inputs[0].astype(np.int64) + 128]]

    def emit(self, node, graph):
        from onnx2cmsis.ops.base import CArray, KernelCall

        return KernelCall(template="lut.c.j2", kernel="own loop (table)",
                          context={"size": graph.tensors[node.inputs[0]].size, "fn": "relu"},
                          arrays=[CArray("table", "int8_t", node.qparams["table"], "relu of every int8 code")])

    def export_tflite(self, ex, node):
        ex.op(ex.fb.BuiltinOperator.RELU, [ex.activation(node.inputs[0])], [ex.activation(node.output)])


@pytest.mark.oracle
def test_a_plugin_op_is_checked_against_tflite_micro_through_its_own_export(tmp_path):
    from onnx2cmsis.oracle.tflite_export import export_tflite, run_tflite_micro
    from onnx2cmsis.targets.host import build_conversions
    from tests.needs import oracle_runtime

    oracle_runtime()
    rng = np.random.default_rng(4)
    w1 = numpy_helper.from_array((rng.standard_normal((6, 3, 3)) / 2).astype(np.float32), "w1")
    w2 = numpy_helper.from_array((rng.standard_normal((4, 6, 1)) / 2).astype(np.float32), "w2")
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="plugin_relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], kernel_shape=[1])]
    path = tmp_path / "relu.onnx"
    import onnx

    onnx.save(make_model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 32])],
                     [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w1, w2]), str(path))
    registry = build_registry(extra=("tests.test_plugins:TableRelu",), allow_override=True)
    conv = convert(path, rng.standard_normal((64, 3, 32)).astype(np.float32), name="relu_plugin", registry=registry)
    assert [layer["op"] for layer in conv.report["layers"]].count("table_relu") == 1
    x = rng.integers(-128, 128, (16, 96)).astype(np.int8)
    want = np.stack([conv.reference(s) for s in x])
    assert np.array_equal(run_tflite_micro(export_tflite(conv.graph, conv.registry), x), want)
    built = build_conversions([conv], tmp_path / "build")[conv.name]
    assert np.array_equal(np.stack([built(s) for s in x]), want)
