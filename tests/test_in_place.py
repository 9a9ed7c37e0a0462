"""Elementwise layers written over their input (plan/liveness.py): less arena, the same bytes out.

An activation after a layer (tanh, sigmoid), a residual add and a width change of a mixed model
(requantize) may write their output over their input where they are its only reader: the output
starts at the input's offset, and while the layer runs the two take the larger of their sizes, not
their sum. What must not change is any output byte: the C is checked against the integer reference
and tflite-micro on the host, and the widening loop (int8 -> int16, which runs backward over its own
input) and CMSIS-NN's add loops on QEMU. What must not be overwritten: an input another layer still
reads, the caller's input and output buffers, and a stream's slices.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import onnx2cmsis.api as api
from onnx2cmsis.api import convert
from onnx2cmsis.drivers.evaluate import evaluate, quantize_inputs
from onnx2cmsis.plan.arena import Step, plan_memory
from onnx2cmsis.quant.precision import apply_precision
from onnx2cmsis.targets.qemu import build_firmware, run_firmware
from tests.needs import oracle_runtime, qemu_tools
from tests.onnx_models import make_model

STEPS, CHANNELS = 96, 4


def _conv(name: str, x: str, c_in: int, c_out: int, rng: np.random.Generator, inits: list) -> onnx.NodeProto:
    w = numpy_helper.from_array((rng.standard_normal((c_out, c_in, 3)) / np.sqrt(3 * c_in)).astype(np.float32),
                                f"{name}_w")
    b = numpy_helper.from_array((0.1 * rng.standard_normal(c_out)).astype(np.float32), f"{name}_b")
    inits += [w, b]
    return helper.make_node("Conv", [x, w.name, b.name], [name], kernel_shape=[3], pads=[1, 1], name=f"{name}_node")


def _model(path: Path, residual: bool = False) -> Path:
    """conv (32 channels) > tanh > conv (4) > [add a conv of the first conv's output, if `residual`] >
    global average > dense (3) > sigmoid, the model's output: the tanh's input is read by the tanh
    alone unless `residual`; the sigmoid writes the caller's output buffer."""
    rng, inits = np.random.default_rng(31), []
    nodes = [_conv("a", "x", CHANNELS, 32, rng, inits), helper.make_node("Tanh", ["a"], ["t"], name="tanh"),
             _conv("c", "t", 32, 4, rng, inits)]
    last = "c"
    if residual:
        nodes += [_conv("d", "a", 32, 4, rng, inits), helper.make_node("Add", ["c", "d"], ["s"], name="add")]
        last = "s"
    w = numpy_helper.from_array((rng.standard_normal((4, 3)) / 2).astype(np.float32), "dense_w")
    inits.append(w)
    nodes += [helper.make_node("GlobalAveragePool", [last], ["g"], name="gap"),
              helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
              helper.make_node("MatMul", ["f", "dense_w"], ["m"], name="dense"),
              helper.make_node("Sigmoid", ["m"], ["y"], name="sigmoid")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, CHANNELS, STEPS])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    onnx.save(make_model(nodes, [x], [y], inits), path)
    return path


def _samples(n: int = 24, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, CHANNELS, STEPS)).astype(np.float32)


def _arena_without_in_place(conv) -> int:
    steps = [Step(n, conv.registry.for_op(n.op).emit(n, conv.graph)) for n in conv.graph.nodes]
    return plan_memory(conv.graph, conv.registry, steps, in_place=False)[0].arena_bytes


@pytest.mark.parametrize("precision", ["int8", "int16"])
def test_an_activation_writes_over_its_input_and_the_bytes_stay(precision, tmp_path):
    oracle_runtime()
    conv = convert(_model(tmp_path / "m.onnx"), _samples(), name=f"ip{precision[3:]}", precision=precision)
    # the tanh writes over the conv's output; the sigmoid writes the caller's output buffer
    (t,) = conv.plan.written_in_place
    assert conv.graph.producer(t).name == "tanh" and conv.graph.outputs[0] not in conv.plan.written_in_place
    assert conv.plan.tensors[t] == conv.plan.tensors[conv.graph.producer(t).inputs[0]]
    assert conv.plan.arena_bytes < _arena_without_in_place(conv)
    assert "(in place)" in conv.pages[f"{conv.name}.md"]
    ev, _ = evaluate(conv, _samples(8, seed=2), tmp_path / "host")
    assert ev.mismatches_vs_reference == 0 and ev.mismatches_vs_tflite_micro == 0, ev


@pytest.mark.parametrize("precision", ["int8", "int16"])
def test_an_input_another_layer_still_reads_is_not_overwritten(precision, tmp_path):
    """The first conv's output feeds the tanh and the residual branch: the tanh writes a buffer of its
    own. The add (arm_elementwise_add_s8/_s16) is the only reader of both its inputs: it writes over one."""
    oracle_runtime()
    conv = convert(_model(tmp_path / "r.onnx", residual=True), _samples(), name=f"ipres{precision[3:]}",
                   precision=precision)
    tanh_out = next(n.output for n in conv.graph.nodes if n.op == "lut" and n.output != conv.graph.outputs[0])
    assert tanh_out not in conv.plan.written_in_place
    assert conv.plan.tensors[tanh_out] != conv.plan.tensors[conv.graph.producer(tanh_out).inputs[0]]
    add = next(n for n in conv.graph.nodes if n.op == "add")
    assert add.output in conv.plan.written_in_place
    assert conv.plan.tensors[add.output] in {conv.plan.tensors[t] for t in add.inputs}
    ev, _ = evaluate(conv, _samples(8, seed=2), tmp_path / "host")
    assert ev.mismatches_vs_reference == 0 and ev.mismatches_vs_tflite_micro == 0, ev


@pytest.mark.slow
@pytest.mark.qemu
def test_an_add_in_place_is_bit_exact_on_qemu(tmp_path):
    """CMSIS-NN's DSP (M4) and MVE (M55) add loops, int8 and int16, writing over an input."""
    qemu_tools()
    convs = [convert(_model(tmp_path / "q.onnx", residual=True), _samples(), name=f"ipq{bits}",
                     precision=f"int{bits}") for bits in (8, 16)]
    assert all(next(n.output for n in c.graph.nodes if n.op == "add") in c.plan.written_in_place for c in convs)
    inputs = {c.name: quantize_inputs(c, _samples(6, seed=3)) for c in convs}
    for target in ("m4", "m55"):
        fw = build_firmware(convs, target, tmp_path / target)
        got = run_firmware(fw, inputs)
        assert all(np.array_equal(got[c.name], c.references(inputs[c.name])) for c in convs), target


class _FixedWidths:
    """Stands in for auto_precision.choose_precision: the second conv int8, the rest int16 (a narrowing
    and a widening requantize around it)."""

    def __call__(self, graph, registry, ranges, x, want, budget, cmsis_api, heldout=None, in_place=True,
                 fit_rounding=False):
        apply_precision(graph, [8 if n.name == "c_node" else 16 for n in graph.nodes])

        class Chosen:
            def summary(self):
                unmeasured = {"sqnr_db": 0.0, "arena_bytes": 0, "estimated_instructions": 0, "weights_bytes": 0}
                return {"min_sqnr_db": budget.min_sqnr_db, "max_accuracy_drop": None, "chosen": unmeasured,
                        "int8": unmeasured, "int16": unmeasured, "candidates_measured": 0}
        return Chosen()


@pytest.fixture
def mixed(tmp_path, monkeypatch):
    monkeypatch.setattr(api, "choose_precision", _FixedWidths())
    return convert(_model(tmp_path / "x.onnx"), _samples(), name="ipmix", precision="auto", max_error_db=0.0)


def test_width_changes_write_over_their_input(mixed, tmp_path):
    oracle_runtime()
    changes = [n for n in mixed.graph.nodes if n.op == "requantize"]
    widths = sorted((mixed.graph.tensors[n.inputs[0]].quant.bits, mixed.graph.tensors[n.output].quant.bits)
                    for n in changes)
    assert widths == [(8, 16), (16, 8)]
    assert {n.output for n in changes} <= mixed.plan.written_in_place
    assert mixed.plan.arena_bytes < _arena_without_in_place(mixed)
    ev, _ = evaluate(mixed, _samples(8, seed=2), tmp_path / "host")
    assert ev.mismatches_vs_reference == 0 and ev.mismatches_vs_tflite_micro == 0, ev


@pytest.mark.slow
@pytest.mark.qemu
def test_width_changes_in_place_are_bit_exact_on_qemu(mixed, tmp_path):
    qemu_tools()
    xq = quantize_inputs(mixed, _samples(6, seed=3))
    want = mixed.references(xq)
    for target in ("m4", "m55"):
        fw = build_firmware([mixed], target, tmp_path / target)
        assert np.array_equal(run_firmware(fw, {mixed.name: xq})[mixed.name], want), target


def test_a_stream_keeps_every_buffer_apart(tmp_path):
    conv = convert(_model(tmp_path / "s.onnx"), _samples(), name="ipstream", streaming=16)
    assert conv.plan.written_in_place == frozenset()
