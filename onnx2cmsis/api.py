"""The pipeline: model file -> canonical graph -> passes -> quantize -> plan -> C. Nothing op-specific."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx2cmsis import __version__
from onnx2cmsis.cmsis_nn.api_levels import DEFAULT_API
from onnx2cmsis.cmsis_nn.source import CmsisTree, locate_cmsis_nn
from onnx2cmsis.codegen.emit_c import Layer, make_layers, render
from onnx2cmsis.codegen.naming import c_identifier, is_c_identifier
from onnx2cmsis.errors import ConversionError
from onnx2cmsis.frontends import load_model
from onnx2cmsis.ir.from_onnx import import_onnx
from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ops.registry import Registry, build_registry, handler_name
from onnx2cmsis.passes.canonical import run_passes
from onnx2cmsis.plan.arena import MemoryPlan, plan_memory
from onnx2cmsis.quant.calibrate import collect_ranges, load_calibration
from onnx2cmsis.quant.quantize import calibration_values, quantize_graph, run_reference


@dataclass
class Conversion:
    name: str
    model_path: Path
    model: onnx.ModelProto  # static, batch 1: the float reference
    graph: Graph  # quantized
    registry: Registry
    plan: MemoryPlan
    layers: list[Layer]
    cmsis: CmsisTree
    source: str  # NAME.c
    header: str  # NAME.h
    report: dict[str, Any] = field(default_factory=dict)  # NAME.json

    def reference(self, x_int8: np.ndarray) -> np.ndarray:
        """The integer reference's output bytes for one input (model layout, flattened)."""
        out = run_reference(self.graph, self.registry, x_int8)[self.graph.outputs[0]]
        return out.reshape(-1)


@dataclass(frozen=True)
class Budget:
    """What the target part offers. The defaults flag models that fit few Cortex-M parts: 512 KiB of
    flash for the weights alone (code and CMSIS-NN add 5-30 KB) and 128 KiB of RAM for the arena."""

    flash_bytes: int = 512 * 1024
    ram_bytes: int = 128 * 1024

    def check(self, weights_bytes: int, arena_bytes: int) -> list[str]:
        warnings = []
        if weights_bytes > self.flash_bytes:
            warnings.append(f"the weights take {weights_bytes / 1024:.0f} KiB of flash, more than the "
                            f"{self.flash_bytes / 1024:.0f} KiB budget (set your part's with --flash-kb)")
        if arena_bytes > self.ram_bytes:
            warnings.append(f"the arena takes {arena_bytes / 1024:.0f} KiB of RAM, more than the "
                            f"{self.ram_bytes / 1024:.0f} KiB budget (set your part's with --ram-kb)")
        return warnings


def default_name(model_path: Path) -> str:
    return c_identifier(model_path.stem, fallback="model", max_len=40)


def convert(
    model_path: Path | str,
    calibration: Path | str | np.ndarray,
    name: str | None = None,
    cmsis_nn: str | os.PathLike[str] | None = None,
    registry: Registry | None = None,
    cmsis_api: str | None = None,
    default_api: str | None = DEFAULT_API.level,
    budget: Budget | None = None,
) -> Conversion:
    """cmsis_nn/cmsis_api: the CMSIS-NN tree and API level to emit for (see locate_cmsis_nn);
    default_api=None makes the buildable snapshot the default, as verify needs. Exceeding `budget`
    is a warning in report["warnings"], not an error: the C is still right."""
    model_path = Path(model_path)
    name = name or default_name(model_path)
    if not is_c_identifier(name):
        raise ConversionError(f"--name {name!r} is not a valid C identifier")
    registry = registry or build_registry()
    cmsis = locate_cmsis_nn(cmsis_nn, cmsis_api, default_api)
    model = load_model(model_path)
    graph = import_onnx(model, registry, str(model_path))
    _check_finite_constants(graph, str(model_path))
    rewrites = run_passes(graph, registry)

    if isinstance(calibration, np.ndarray):
        samples = calibration
    else:
        samples = load_calibration(Path(calibration), graph.model_input_shapes[0])
    _check_finite_samples(samples, "calibration data" if isinstance(calibration, np.ndarray) else str(calibration))
    ranges = collect_ranges(model, samples, calibration_values(graph))
    quantize_graph(graph, registry, ranges)
    graph.cmsis_api = cmsis.api

    calls = [registry.for_op(n.op).emit(n, graph) for n in graph.nodes]
    plan = plan_memory(graph, registry, [c.scratch_bytes for c in calls])  # also puts graph.nodes in order
    calls = [calls[i] for i in plan.order]
    layers = make_layers(graph, calls)
    functions = sorted({f for c in calls for f in c.functions})
    sources = cmsis.sources_for(functions) if cmsis.root is not None else None
    sha = hashlib.sha256(model_path.read_bytes()).hexdigest()
    in_t, out_t = graph.tensors[graph.inputs[0]], graph.tensors[graph.outputs[0]]
    weights_bytes = sum(layer.weight_bytes for layer in layers)
    summary = {
        "model_file": model_path.name,
        "model_sha256": sha,
        "input_shape": list(graph.model_input_shapes[0]),
        "output_shape": list(graph.model_output_shapes[0]),
        "input_layout": "channel-major (C, W)" if len(graph.model_input_shapes[0]) == 3 else "flat",
        "weights_bytes": weights_bytes,
        "cmsis_api": cmsis.api.level,
        "cmsis_probe": cmsis.api.c_probe,
        "cmsis_versions": cmsis.api.versions,
    }
    handlers = [registry.for_op(n.op) for n in graph.nodes]
    template_dirs = tuple(dict.fromkeys(h.template_dir for h in handlers if h.template_dir is not None))
    source, header = render(name, graph, layers, plan, summary, template_dirs)
    report = {
        "tool": "onnx2cmsis",
        "version": __version__,
        "name": name,
        "model_file": model_path.name,
        "model_sha256": sha,
        "arena_bytes": plan.arena_bytes,
        "arena_lower_bound_bytes": plan.lower_bound,
        "arena_smallest_bound_bytes": plan.schedule.smallest_bound,
        "schedule": {"method": plan.schedule.method, "exact": plan.schedule.exact,
                     "orders_placed": plan.schedule.orders_placed},
        "weights_bytes": weights_bytes,
        "input": {"shape": list(graph.model_input_shapes[0]), "dtype": "int8", "scale": in_t.quant.scale,
                  "zero_point": in_t.quant.zero_point},
        "output": {"shape": list(graph.model_output_shapes[0]), "dtype": "int8", "scale": out_t.quant.scale,
                   "zero_point": out_t.quant.zero_point},
        "layers": [
            {
                "index": layer.index, "name": layer.name, "identifier": layer.ident, "op": layer.op,
                "from": layer.origin, "kernel": layer.call.kernel, "input_shape": list(layer.input_shape),
                "output_shape": list(layer.output_shape), "macs": layer.call.macs,
                "weight_bytes": layer.weight_bytes, "scratch_bytes": layer.call.scratch_bytes,
                "handler": handler_name(handler),
            }
            for layer, handler in zip(layers, handlers)
        ],
        "rewrites": rewrites,
        "cmsis_nn": {"api": cmsis.api.level, "capabilities": cmsis.api.capabilities(), "functions": functions, "sources": sources},
        "calibration_samples": int(len(samples)),
    }
    report["warnings"] = (budget or Budget()).check(weights_bytes, plan.arena_bytes)
    return Conversion(name, model_path, model, graph, registry, plan, layers, cmsis, source, header, report)


def _check_finite_constants(graph, where: str) -> None:
    for node in graph.nodes:
        for key, values in node.consts.items():
            arr = np.asarray(values)
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise ConversionError(f"node '{node.name}' ({node.origin}): its {key} holds NaN or Inf", where)


def _check_finite_samples(samples: np.ndarray, where: str, chunk: int = 4096) -> None:
    """Before any float inference, so a bad sample is named at once; chunked, so a calibration file of
    any size is read in bounded memory."""
    for start in range(0, len(samples), chunk):
        block = np.asarray(samples[start:start + chunk])
        rows_ok = np.isfinite(block.reshape(len(block), -1)).all(axis=1) if block.dtype.kind == "f" else None
        if rows_ok is not None and not rows_ok.all():
            bad = start + int(np.argmin(rows_ok))
            raise ConversionError(f"calibration sample {bad} holds NaN or Inf", where)


def _umask() -> int:
    current = os.umask(0o022)
    os.umask(current)
    return current


def write_outputs(conv: Conversion, out_dir: Path, tflite: bool = False) -> list[Path]:
    """Write NAME.c/.h/.json (and NAME.tflite) atomically: all of them appear, or none changes.

    NAME.tflite is the same int8 graph for TFLite-Micro, with exactly NAME_invoke's input and output
    bytes (the [verify] extra)."""
    if not out_dir.is_dir():
        raise ConversionError("output folder does not exist", str(out_dir))
    files: dict[Path, str | bytes] = {
        out_dir / f"{conv.name}.c": conv.source,
        out_dir / f"{conv.name}.h": conv.header,
        out_dir / f"{conv.name}.json": json.dumps(conv.report, indent=2, sort_keys=False) + "\n",
    }
    if tflite:
        from onnx2cmsis.oracle.tflite_export import export_tflite

        files[out_dir / f"{conv.name}.tflite"] = export_tflite(conv.graph)
    staged: list[tuple[str, Path]] = []
    mode = 0o666 & ~_umask()  # mkstemp makes 0600 files; sources are shared like any the user writes
    try:
        for path, content in files.items():
            fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=out_dir)
            staged.append((tmp, path))
            os.fchmod(fd, mode)
            if isinstance(content, bytes):
                with os.fdopen(fd, "wb") as fb:
                    fb.write(content)
                continue
            with os.fdopen(fd, "w", encoding="ascii", newline="\n") as f:
                f.write(content)
        for tmp, path in staged:
            os.replace(tmp, path)
    except OSError as exc:
        raise ConversionError(f"cannot write output ({exc.strerror})", str(out_dir)) from exc
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return list(files)
