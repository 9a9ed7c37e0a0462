"""`onnx2cmsis inspect`: what a model becomes before any calibration.

The canonical layers with the handler and CMSIS-NN kernel each gets, their shapes, MACs and weight
bytes, and the flash (weights) and RAM (arena) the C will need. None of these depends on the
calibrated ranges, so the model is quantized with a placeholder range for every value (no samples,
no ONNX Runtime run) and then lowered exactly as convert lowers it: the figures are convert's.
Dense layers are counted per tensor, as `--dense-weights per-tensor` converts them (`auto` may pick
per channel for some, which adds their per-feature multipliers and shifts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from onnx2cmsis.api import back_end, front_end
from onnx2cmsis.cmsis_nn.source import locate_cmsis_nn
from onnx2cmsis.codegen.emit_c import make_layers
from onnx2cmsis.codegen.naming import layer_names
from onnx2cmsis.errors import render_options
from onnx2cmsis.ir.graph import QuantOptions
from onnx2cmsis.ir.target import DEFAULT_API
from onnx2cmsis.ops.registry import Registry, build_registry
from onnx2cmsis.quant.from_file import prepare_file_widths, quantize_with_file
from onnx2cmsis.quant.quantize import calibration_values, quantize_graph
from onnx2cmsis.plan.stream import hop_multiple
from onnx2cmsis.report import input_window, layer_entries

PLACEHOLDER_RANGE = (-1.0, 1.0)


@dataclass
class Inspection:
    model_path: Path
    cmsis_api: str
    layers: list[dict[str, Any]]
    weights_bytes: int
    arena_bytes: int
    arena_lower_bound_bytes: int
    macs: int
    # what --streaming HOP takes: multiples of this (None: the input has no time axis), and why
    stream_hop_multiple: int | None = None
    stream_hop_reason: str | None = None
    # a model with several inputs or outputs: each as "k 'name' [shape]", in the model's order
    inputs: list[str] | None = None
    outputs: list[str] | None = None
    quantization: str = "int8, dense layers per tensor"  # what the counts assume


def inspect(model_path: Path | str, cmsis_api: str | None = None, registry: Registry | None = None,
            input_shape: tuple[int, ...] | None = None) -> Inspection:
    """The layers, kernels and memory of MODEL as convert would emit them (int8, dense per tensor; a
    quantized model as its file says)."""
    model_path = Path(model_path)
    registry = registry or build_registry()
    cmsis = locate_cmsis_nn(None, cmsis_api, DEFAULT_API.level)
    _, graph, _ = front_end(model_path, registry, input_shape)
    window = input_window(graph)["input_window"] if graph.single_io else None  # streams take one input
    multiple, why = (None, None) if window is None else hop_multiple(graph, registry, window["steps"],
                                                                       window["channels"])
    placeholders = {v: PLACEHOLDER_RANGE for v in calibration_values(graph)}
    if graph.file_quant is None:
        graph.quant_options = QuantOptions(dense_weights="per-tensor")
        quantize_graph(graph, registry, placeholders)
        quantization = "int8, dense layers per tensor"
    else:  # a quantized model: its file's widths, weight granularities and requantizes are known already
        prepare_file_widths(graph, registry)
        quantize_with_file(graph, registry, placeholders)
        quantization = f"the model file's own quantization ({graph.file_quant.source}, {graph.quant_options.precision})"
    plan, schedule = back_end(graph, registry, cmsis)
    layers = make_layers(graph, schedule)
    rows = layer_entries(graph, registry, layers)
    several = None if graph.single_io else (
        [f"{k} '{n}' {list(s)}" for k, (n, s) in enumerate(zip(graph.input_names, graph.model_input_shapes))],
        [f"{k} '{n}' {list(s)}" for k, (n, s) in enumerate(zip(graph.output_names, graph.model_output_shapes))])
    return Inspection(model_path, cmsis.api.level, rows, sum(r["weight_bytes"] for r in rows), plan.arena_bytes,
                      plan.lower_bound, sum(r["macs"] or 0 for r in rows), multiple, why,
                      *(several or (None, None)), quantization=quantization)


def _cell(text: str, width: int) -> str:
    """Model text for a fixed-width column: printable, cut with '...' when wider (never run into the next)."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text)
    return text if len(text) <= width else text[: width - 3] + "..."


def format_inspection(result: Inspection, max_width: int = 40, flags: Mapping[str, str] | None = None) -> str:
    """The table and its summary lines; a setting it names is spelled by `flags` (the CLI's) or, without
    them, as the API's parameter (errors.render_options)."""
    names = layer_names([r["name"] for r in result.layers])
    cells = [[str(r["index"]), name, r["from"], r["kernel"], "x".join(map(str, r["output_shape"])),
              _macs(r), f"{r['weight_bytes']:,}"] for r, name in zip(result.layers, names, strict=True)]
    header = ["#", "layer", "from", "kernel", "output", "MACs", "weights"]
    right = (True, False, False, False, True, True, True)
    # each column as wide as its widest cell (model text capped), two spaces apart
    widths = [min(max([len(h)] + [len(c[k]) for c in cells]), max_width) for k, h in enumerate(header)]

    def row(values: list[str]) -> str:
        return "  ".join(_cell(v, w).rjust(w) if r else _cell(v, w).ljust(w)
                         for v, w, r in zip(values, widths, right)).rstrip()

    head = row(header)
    lines = [head, "-" * len(head), *(row(c) for c in cells)]
    lines.append(f"{len(result.layers)} layers, {result.macs:,} MACs; flash for weights {result.weights_bytes:,} B, "
                 f"arena {result.arena_bytes:,} B (live-set bound {result.arena_lower_bound_bytes:,} B); "
                 f"CMSIS-NN API level {result.cmsis_api}; {result.quantization}")
    if result.inputs:
        printable = lambda text: "".join(ch if ch.isprintable() else "?" for ch in text)  # noqa: E731 - model text
        lines.append(f"inputs: {printable(', '.join(result.inputs))}; outputs: {printable(', '.join(result.outputs))}")
    if result.stream_hop_multiple is not None:
        # only this line is rendered: model text in the table could hold an {opt:...} of its own
        lines.append(render_options("{opt:streaming=HOP}", flags) + f": a multiple of {result.stream_hop_multiple}"
                     + (f" ({result.stream_hop_reason})" if result.stream_hop_reason else ""))
    return "\n".join(lines)


def _macs(layer: dict) -> str:
    """The layer's MACs, per step too for a recurrent layer (its steps run one after another)."""
    total = f"{layer['macs'] or 0:,}"
    return f"{total} ({layer['steps']} x {layer['macs_per_step']:,})" if layer.get("steps") else total
