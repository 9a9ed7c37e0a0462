"""NAME.json and the figures the header comment shows: what a conversion made, for people and tools."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from onnx2cmsis import __version__
from onnx2cmsis.cmsis_nn.source import CmsisTree
from onnx2cmsis.codegen.emit_c import Layer
from onnx2cmsis.codegen.report_page import auto_precision_headline, recipe_text
from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ops.base import VIEW_KERNEL
from onnx2cmsis.ops.registry import Registry, handler_name
from onnx2cmsis.plan.arena import MemoryPlan


def input_window(graph: Graph, k: int = 0) -> dict[str, Any]:
    """Model input k as a window of steps x channels, and in which order its values are stored
    (None for an input without a time axis, e.g. a feature vector)."""
    shape = _without_unit_axes(graph.model_input_shapes[k][1:])
    layout = graph.input_layouts[k] if graph.input_layouts else "flat"
    if len(shape) != 2:
        return {"input_layout": "flat", "input_window": None}
    if layout == "channel-major":
        channels, steps = shape
    elif layout == "time-major":
        steps, channels = shape
    else:  # one of the two is 1: a single-channel signal, the same bytes in either order
        steps, channels = max(shape), 1
    time_major = layout != "channel-major"
    text = "time-major (W, C): input[t * C + c]" if time_major else "channel-major (C, W): input[c * W + t]"
    return {"input_layout": text, "input_window": {"steps": steps, "channels": channels, "time_major": time_major}}


def _without_unit_axes(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A 1D model written with 2-D layers takes (C, 1, T) or (T, 1, C): the same bytes as (C, T) or
    (T, C), so the same window. (A 2-D shape stays as it is: (1, T) is one channel.)"""
    if len(shape) <= 2:
        return tuple(shape)
    kept = tuple(n for n in shape if n > 1)
    return (1,) * (2 - len(kept)) + kept if len(kept) < 2 else kept


def header_summary(model_path: Path, sha: str, graph: Graph, layers: list[Layer], cmsis: CmsisTree) -> dict[str, Any]:
    """What the templates print about the model beside the code."""
    return {
        "model_file": model_path.name,
        "model_sha256": sha,
        "input_shape": list(graph.model_input_shapes[0]),
        "output_shape": list(graph.model_output_shapes[0]),
        **input_window(graph),
        "input_windows": [input_window(graph, k)["input_window"] for k in range(len(graph.inputs))],
        "weights_bytes": sum(layer.weight_bytes for layer in layers),
        "cmsis_api": cmsis.api.level,
        "cmsis_probe": cmsis.api.c_probe,
        "cmsis_versions": cmsis.api.versions,
    }


def _io(graph: Graph, tensor: str, shape: tuple[int, ...]) -> dict[str, Any]:
    q = graph.tensors[tensor].quant
    assert q is not None
    return {"shape": list(shape), "dtype": f"int{q.bits}", "scale": q.scale, "zero_point": q.zero_point}


def layer_entries(graph: Graph, registry: Registry, layers: list[Layer]) -> list[dict[str, Any]]:
    """NAME.json's `layers` (also what `inspect` lists): one entry per layer in execution order."""
    return [
        {
            "index": layer.index, "name": layer.name, "identifier": layer.ident, "op": layer.op,
            "from": layer.origin, "kernel": layer.call.kernel, "input_shape": list(layer.input_shape),
            "output_shape": list(layer.output_shape), "macs": layer.call.macs,
            **({"steps": layer.call.steps, "macs_per_step": layer.call.macs // layer.call.steps}
               if layer.call.steps else {}),
            "weight_bytes": layer.weight_bytes, "scratch_bytes": layer.call.scratch_bytes,
            "handler": handler_name(registry.for_op(node.op)),
            **({"weights": graph.quant_options.weights_of(node)}
               if registry.for_op(node.op).weight_granularities else {}),
            "bits": graph.tensors[node.output].quant.bits if graph.tensors[node.output].quant else None,
            **({"int8_loss_db": node.attrs["int8_loss_db"]} if "int8_loss_db" in node.attrs else {}),
            **({"bias_correction": node.attrs["bias_correction"]} if "bias_correction" in node.attrs else {}),
            **({"weight_rounding": node.attrs["weight_rounding"]} if "weight_rounding" in node.attrs else {}),
            **({"range_floor": node.attrs["range_floor"]} if "range_floor" in node.attrs else {}),
        }
        for layer, node in zip(layers, graph.nodes, strict=True)
    ]


def build_report(name: str, summary: dict[str, Any], graph: Graph, registry: Registry, plan: MemoryPlan,
                 layers: list[Layer], cmsis: CmsisTree, functions: list[str], rewrites: list[str],
                 samples: int, search: dict[str, Any] | None = None,
                 bias_corrected: int | None = None, auto_precision: dict[str, Any] | None = None,
                 stream: dict[str, Any] | None = None, recipe: dict[str, Any] | None = None) -> dict[str, Any]:
    """NAME.json (see docs/c-interface.md), without the budget warnings the caller adds."""
    return {
        "tool": "onnx2cmsis",
        "version": __version__,
        "name": name,
        "model_file": summary["model_file"],
        "model_sha256": summary["model_sha256"],
        "arena_bytes": plan.arena_bytes,
        "arena_lower_bound_bytes": plan.lower_bound,
        "arena_smallest_bound_bytes": plan.schedule.smallest_bound,
        "schedule": {"method": plan.schedule.method, "exact": plan.schedule.exact,
                     "orders_placed": plan.schedule.orders_placed},
        "weights_bytes": summary["weights_bytes"],
        # one input and one output: `input`/`output`; several: `inputs`/`outputs` lists, in model order
        **({"input": _io(graph, graph.inputs[0], graph.model_input_shapes[0]),
            "output": _io(graph, graph.outputs[0], graph.model_output_shapes[0])} if graph.single_io else
           {"inputs": [{"name": n, **_io(graph, t, s)}
                       for t, s, n in zip(graph.inputs, graph.model_input_shapes, graph.input_names)],
            "outputs": [{"name": n, **_io(graph, t, s)}
                        for t, s, n in zip(graph.outputs, graph.model_output_shapes, graph.output_names)]}),
        "layers": layer_entries(graph, registry, layers),
        # --streaming HOP: the hop, the window, the state bytes; else None
        "stream": stream,
        "rewrites": rewrites,
        "cmsis_nn": {"api": cmsis.api.level, "capabilities": cmsis.api.capabilities(), "functions": functions,
                     "sources": cmsis.sources_for(functions), "sources_from": cmsis.sources_from},
        "calibration_samples": samples,
        "quantization": {"precision": graph.quant_options.precision,
                         "dense_weights": graph.quant_options.dense_weights,
                         "calibration_method": graph.quant_options.calibration_method,
                         # a softmax's input range from where it stops telling values apart (range_floors.py)
                         "range_floors": graph.quant_options.range_floors,
                         # the recipe (ranges, dense weights, bias correction) chosen on held-out folds
                         "recipe": recipe,
                         "search": search,
                         # None: off; else how many layers' biases took their mean int8 error
                         "bias_corrected_layers": bias_corrected,
                         # --precision auto: the budget and what int8, int16 and the choice measured
                         "auto_precision": auto_precision},
    }


def auto_precision_lines(auto: dict, layers: list[dict]) -> str:
    """What --precision auto chose and why: the budget, the three measurements, each layer's width and
    the SQNR it would lose at int8."""
    real = [layer for layer in layers if layer["kernel"] != VIEW_KERNEL]
    wide = sum(1 for layer in real if layer["bits"] == 16)
    lines = [f"precision auto: {wide} of {len(real)} layers int16, "
             + auto_precision_headline(auto)]
    lines += [f"  {layer['index']:3d} {layer['op']:<10s} int{layer['bits']:<3d}" +
              (f" int8 loses {layer['int8_loss_db']:.2f} dB" if "int8_loss_db" in layer else "") +
              f"  {layer['name']}" for layer in real]
    return "\n".join(lines)


def recipe_line(recipe: dict[str, Any]) -> str:
    """The quantization recipe chosen, and why (tuning/recipe.py)."""
    return f"recipe: {recipe_text(recipe)}"


def stream_line(stream: dict[str, Any]) -> str:
    """What --streaming made: MACs per push against a full invoke, the state, where the head starts."""
    share = stream["macs_per_push"] / max(stream["macs_per_invoke"], 1)
    what = {"columns": "only the columns each hop changes", "window": "the whole window each push",
            "new steps": "its new steps once, the recurrent layers on from their state"}[stream["recomputes"]]
    line = (f"stream: hop {stream['hop']} of {stream['window']} steps, state {stream['state_bytes']} B; a push "
            f"computes {what}: {stream['macs_per_push']:,} MACs, {100 * share:.0f}% of an invoke's "
            f"{stream['macs_per_invoke']:,}; {stream['head']}")
    return "\n".join([line, *(f"  {note}" for note in stream["notes"])])
