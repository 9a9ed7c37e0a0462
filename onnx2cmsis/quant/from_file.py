"""Quantize a graph with its model file's own quantization (a QDQ model: frontends/qdq.py).

Every tensor standing for a value the file quantized takes the file's scale and zero point
(ops.base.calibrated_quant), every conv/dense layer its weight scales and bias codes
(ops.conv.file_weights); nothing is calibrated, chosen or corrected. Two things remain:

- a value the file leaves float (an op outside its Q/DQ pairs) needs a calibrated range, so it needs
  samples; one that a transpose or a view moves into a quantized value takes that value's quantization
  instead (tf2onnx's leading Transpose sits outside the first pair);
- a handler that fixes its own output quantization (softmax's 1/256, a table's 1/128) where the file
  gave another gets an exact requantize to the file's after it (TFLite's QUANTIZE): the rest of the
  graph then reads what the file says it reads.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import onnx

from onnx2cmsis.errors import ConversionError, OptionError
from onnx2cmsis.ir.graph import Graph, Node, QuantOptions, Tensor
from onnx2cmsis.ops.base import calibrated_quant
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.ops.requantize import requantize_node
from onnx2cmsis.ops.roles import Transpose
from onnx2cmsis.quant.calibrate import collect_ranges
from onnx2cmsis.quant.quantize import quantize_graph

FILE_METHOD = "file"  # QuantOptions.calibration_method of a graph quantized from its file


def option_conflicts(opts: Any, file_bits: set[int]) -> list[str]:
    """The conversion settings a quantized model's file decides instead (ConvertOptions' {opt:} text)."""
    problems = []
    if opts.calibration_method != "auto":
        problems.append("{opt:calibration_method}")
    if opts.dense_weights != "auto":
        problems.append("{opt:dense_weights}")
    if opts.precision == "auto" or (opts.precision == "int16" and file_bits != {16}):
        problems.append(f"{{opt:precision={opts.precision}}}")
    # auto's budgets go with it (a file fixes its widths)
    problems += [f"{{opt:{name}}}" for name in ("max_error_db", "max_accuracy_drop", "max_arena_bytes")
                 if getattr(opts, name, None) is not None]
    return problems


def quantize_from_file(model: onnx.ModelProto, graph: Graph, registry: Registry, samples: Any, opts: Any,
                       step: Callable[[str], None], where: str) -> list[str]:
    """Quantize `graph` (with graph.file_quant) as its file says; `samples` (or None) calibrate only the
    values the file leaves float. Returns those values (calibrated on the samples)."""
    pins = graph.file_quant.activations
    widths = {p.bits for p in pins.values()}
    conflicts = option_conflicts(opts, widths)
    if conflicts:
        raise OptionError(f"{', '.join(conflicts)}: the model file is quantized (Q/DQ) and fixes its own "
                          "quantization; convert it without these settings")
    prepare_file_widths(graph, registry)
    missing = _ranges_asked(graph, registry)
    ranges: dict[str, tuple[float, float]] = {}
    if missing:
        if samples is None:
            shown = ", ".join(f"'{v}'" for v in missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
            raise ConversionError(f"the quantized model leaves {len(missing)} value(s) float ({shown}): give "
                                  "{opt:calibration} samples for their ranges, or quantize them in the model", where)
        step(f"calibrating the {len(missing)} value(s) the model file leaves float")
        ranges = collect_ranges(model, samples, missing)
    quantize_with_file(graph, registry, ranges)
    return missing


def prepare_file_widths(graph: Graph, registry: Registry) -> None:
    """Before quantizing with the file: each tensor's width from the file's parameters (16 bits where
    it gives int16), the rest the file's common width, and the quantization of values a move carries."""
    pins = graph.file_quant.activations
    widths = {p.bits for p in pins.values()}
    graph.quant_options = QuantOptions(calibration_method=FILE_METHOD, precision="int16" if widths == {16} else "int8")
    _borrow_readers_quantization(graph, registry)
    for t in graph.tensors.values():
        pin = pins.get(t.calib_name or t.name)
        if pin is not None:
            t.bits = pin.bits


def quantize_with_file(graph: Graph, registry: Registry, ranges: dict[str, tuple[float, float]]) -> None:
    """quantize_graph with the file's parameters (after prepare_file_widths), a requantize to the file's
    after each kernel that fixes other ones; `ranges` for the values it leaves float."""
    quantize_graph(graph, registry, ranges, after=lambda node: _requantize_to_file(graph, registry, node, ranges))


class _RecordingRanges(dict):
    """Calibrated ranges for a dry run: every value has one, (-1, 1), and each asked for is noted."""

    def __init__(self) -> None:
        super().__init__()
        self.asked: list[str] = []

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> tuple[float, float]:
        if key not in self.asked:
            self.asked.append(key)
        return (-1.0, 1.0)


def _ranges_asked(graph: Graph, registry: Registry) -> list[str]:
    """The values whose calibrated range quantizing the graph with its file's parameters asks for, in
    execution order: those the file leaves float and no handler derives from its inputs (a max pool's
    output has its input's parameters, whatever the file says of it)."""
    trial = copy.deepcopy(graph)
    ranges = _RecordingRanges()
    quantize_with_file(trial, registry, ranges)
    return ranges.asked


def _borrow_readers_quantization(graph: Graph, registry: Registry) -> None:
    """A value the file leaves float that one transpose or view moves into a value it quantized takes
    that quantization (the same values, so the same parameters): a model input before tf2onnx's
    leading Transpose, a Tanh before the Unsqueeze that ONNX Runtime quantizes after."""
    pins = graph.file_quant.activations
    for node in reversed(graph.nodes):  # readers first: a chain of moves passes the parameters back
        handler = registry.for_op(node.op)
        if not (isinstance(handler.role(node), Transpose) or handler.aliases_input(node)) or len(node.inputs) != 1:
            continue
        src, out = graph.tensors[node.inputs[0]], graph.tensors[node.output]
        key = src.calib_name or src.name
        if key not in pins and (out.calib_name or out.name) in pins and len(graph.consumers(src.name)) == 1:
            pins[key] = pins[out.calib_name or out.name]


def _requantize_to_file(graph: Graph, registry: Registry, node: Node, ranges: dict[str, tuple[float, float]]) -> None:
    """Where the node's handler chose its own output quantization and the file gave another, a
    requantize into the file's after it (the node writes a new tensor in its own); before any reader
    is quantized, so every reader reads the file's."""
    pins = graph.file_quant.activations
    for k, out in enumerate(node.outputs):
        t = graph.tensors[out]
        pin = pins.get(t.calib_name or out)
        if pin is None or t.quant == pin:
            continue
        own = f"{out}_own"
        while own in graph.tensors:
            own += "_"
        graph.tensors[own] = Tensor(own, t.shape, quant=t.quant, bits=t.quant.bits, calib_index=t.calib_index)
        node.outputs[k] = own
        fix = requantize_node(f"{node.name}_to_file", own, out, origin="requantize to the file's quantization")
        t.quant = calibrated_quant(graph, out, ranges)
        registry.for_op(fix.op).quantize(fix, graph, ranges)
        graph.nodes.insert(graph.nodes.index(node) + 1, fix)


def file_recipe(graph: Graph, calibrated: list[str]) -> dict[str, Any]:
    """NAME.json's quantization.recipe for a graph quantized from its file (`calibrated`: the values the
    file left float, calibrated on the samples)."""
    fq = graph.file_quant
    layers = sum(1 for n in graph.nodes if "file_weights" in n.attrs)
    pinned = sum(1 for t in graph.tensors.values() if (t.calib_name or t.name) in fq.activations)
    rest = (f"; {len(calibrated)} value(s) it leaves float calibrated on the samples" if calibrated
            else ", no calibration")
    return {"chosen": None, "source": fq.source,
            "reason": f"the model file's own quantization ({fq.source}): the scales and zero points of "
                      f"{len(fq.activations)} values and the weights of {layers} layers{rest}",
            "file_values": len(fq.activations), "file_tensors": pinned, "file_weight_layers": layers,
            "calibrated_values": calibrated}
