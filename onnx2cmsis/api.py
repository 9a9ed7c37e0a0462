"""The pipeline: model file -> canonical graph -> passes -> quantize -> plan -> C. Nothing op-specific."""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from onnx2cmsis.cmsis_nn.source import CmsisTree, locate_cmsis_nn
from onnx2cmsis.codegen.build_files import render_build_files
from onnx2cmsis.codegen.emit_c import Layer, make_layers, render, template_environment
from onnx2cmsis.codegen.naming import c_identifier
from onnx2cmsis.codegen.report_page import render_report_page
from onnx2cmsis.codegen.stream import stream_parts, stream_spec
from onnx2cmsis.data.samples import MultiSamples, Sample, checked_samples, input_arrays
from onnx2cmsis.errors import ConversionError, OptionError, render_options
from onnx2cmsis.frontends import read_model
from onnx2cmsis.importer.from_onnx import import_onnx
from onnx2cmsis.importer.onnx_nodes import with_internal_values
from onnx2cmsis.frontends.qdq import saturating_float_model
from onnx2cmsis.ir.check import check_graph
from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.options import Budget, ConvertOptions
from onnx2cmsis.ops.registry import Registry, build_registry
from onnx2cmsis.passes.canonical import run_passes
from onnx2cmsis.plan.arena import MemoryPlan, Step, plan_memory
from onnx2cmsis.quant.accuracy import load_labels
from onnx2cmsis.quant.calibrate import load_calibration
from onnx2cmsis.quant.from_file import file_recipe, quantize_from_file
from onnx2cmsis.quant.quantize import output_codes, quantize_graph, reference_outputs, run_reference
from onnx2cmsis.report import build_report, header_summary, input_window
from onnx2cmsis.tuning.auto_precision import choose_precision
from onnx2cmsis.tuning.bias_correction import correct_biases
from onnx2cmsis.tuning.weight_rounding import fit_weight_rounding
from onnx2cmsis.tuning.recipe import CHOICE_SAMPLES, candidate_recipes, choose_recipe, recorded_values, widths_heldout
from onnx2cmsis.tuning.range_floors import mark_floors
from onnx2cmsis.tuning.search import apply_weights, calibrate, float_outputs, search_indices, search_samples

__all__ = ["Budget", "Conversion", "ConvertOptions", "convert", "front_end", "back_end"]


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
    build_files: dict[str, str] = field(default_factory=dict)  # NAME.mk, NAME.cmake
    pages: dict[str, str] = field(default_factory=dict)  # NAME.md, NAME_memory.svg: for people
    # budget warnings with settings as {opt:...} markers (errors.render_options); the report has them
    # spelled as the API's parameters
    warnings: list[str] = field(default_factory=list)
    # a quantized ONNX model (QDQ): the file as read, what ONNX Runtime runs to check the C against
    # (`model` is then its float graph without the Q/DQ pairs); else None (a .tflite file is run by
    # tflite-micro itself)
    file_model: onnx.ModelProto | None = None

    def reference(self, x: Sample) -> np.ndarray:
        """The integer reference's output codes for one sample's input codes (model layout, flattened;
        a tuple with one array per input for several): each output flattened, side by side in output
        order (quant.quantize.output_codes)."""
        return output_codes(self.graph, run_reference(self.graph, self.registry, x))

    def references(self, x: np.ndarray | MultiSamples) -> np.ndarray:
        """`reference` of N samples at once (a batch through every layer): (N, output codes), from (N,
        input codes) or MultiSamples of such arrays for several inputs."""
        return reference_outputs(self.graph, self.registry, input_arrays(x))


def default_name(model_path: Path) -> str:
    return c_identifier(model_path.stem, fallback="model", max_len=40)


Calibration = Path | str | np.ndarray | list[np.ndarray] | dict[str, np.ndarray] | MultiSamples


def convert(model_path: Path | str, calibration: Calibration | None = None, options: ConvertOptions | None = None, *,
            registry: Registry | None = None, progress: Callable[[str], None] | None = None,
            **settings: Any) -> Conversion:
    """MODEL + calibration samples -> the C, its report and its build files, in memory (write_outputs
    writes them). The settings are ConvertOptions' fields, as an object (`options`) or as keyword
    arguments (which replace the object's): name; cmsis_nn/cmsis_api, the CMSIS-NN tree and API level
    to emit for (see locate_cmsis_nn); default_api=None (as verify needs) takes a fetched tree, level 7
    first; budget (exceeding it is a warning in report["warnings"], not an error: the C is still
    right); dense_weights: "auto" (left to the recipe, tuning/recipe.py, whose measured candidate
    chooses per layer), "per-tensor" or "per-channel" (one weight scale per output feature, as TFLite
    2.21 writes it); calibration_method: "auto" (left to the recipe) or one of quant/ranges.py's;
    bias_correction: allow folding each conv/dense layer's mean output error on the calibration
    samples into its bias (tuning/bias_correction.py; the recipe decides); range_floors: let a softmax's
    input range start where it stops telling values apart (tuning/range_floors.py; False: min/max as
    TFLite's converter); weight_rounding: "auto"
    (fitted rounding, tuning/weight_rounding.py, where it beats the nearest on held-out folds),
    "nearest" (as TFLite's converter) or "fitted"; precision: "int8",
    "int16" (TFLite 16x8: int16 activations, int8 weights, int64 biases), or "auto": per layer, the cheapest mix (arena, then instructions, then
    flash) whose output SQNR on the calibration samples is at least `max_error_db` dB, or, given
    `calibration_labels` (each calibration sample's class: .npy or array), whose accuracy is at most
    `max_accuracy_drop` percentage points below the float model's on the same samples
    (tuning/auto_precision.py), within `max_arena_bytes` of arena where given (alone: the most
    accurate mix that fits); input_shape: the model input's shape without the batch, to fix a
    dynamic (e.g. time) dimension; streaming: HOP, to add NAME_stream_push (one output every HOP time
    steps, codegen/stream.py); stateful: with streaming, keep recurrent layers' state across pushes
    (plan/stateful.py); plugins/allow_override: handlers to load besides the installed ones
    (or give a whole `registry`). progress: called with a short phrase as each step starts (what the
    command line shows on a terminal).

    The stages, each its own function below: read the model (front_end), read the samples, quantize
    (calibrate, choose widths, correct biases), schedule and emit (back_end), render the files."""
    opts = (options or ConvertOptions()).with_settings(settings).checked()
    model_path = Path(model_path)
    name = opts.name or default_name(model_path)
    registry = registry or build_registry(extra=opts.plugins, allow_override=opts.allow_override)
    cmsis = locate_cmsis_nn(opts.cmsis_nn, opts.cmsis_api, opts.default_api)
    step = progress or (lambda _: None)
    step(f"reading {model_path.name}")
    model, graph, rewrites, file_model = _front_end(model_path, registry, opts.input_shape)
    stream = stream_spec(opts.streaming, input_window(graph)["input_window"], graph, registry,
                         opts.stateful)  # before the long steps
    data = read_samples(calibration, graph, opts)
    tuning = quantize(model, graph, registry, data, opts, cmsis, step, str(model_path))
    step("planning the arena and writing the C")
    plan, schedule = back_end(graph, registry, cmsis, in_place=stream is None)
    if opts.max_arena_bytes is not None and plan.arena_bytes > opts.max_arena_bytes:  # the chooser planned it
        raise ConversionError(f"internal: the arena came to {plan.arena_bytes:,} B, more than the "
                              f"{{opt:max_arena_bytes}} of {opts.max_arena_bytes:,} B the widths were chosen for",
                              str(model_path))
    conversion = render_files(Emitted(name, model_path, model, graph, registry, plan, schedule, cmsis, rewrites),
                              data, tuning, stream, opts)
    if graph.file_quant is not None and graph.file_quant.source != "TFLite":  # a .tflite is its own oracle
        conversion.file_model = file_model
    return conversion


@dataclass
class SampleData:
    """The calibration samples, checked, and what the searches are judged on."""

    # an array (or a file read a block at a time) for one input, MultiSamples for several; None: a
    # quantized model's file gave every value's quantization, and none were given
    samples: Any
    labels: np.ndarray | None  # each calibration sample's class (--precision auto's accuracy budget)
    chosen: np.ndarray  # the indices of the samples the measured choices use
    search: Any  # those samples


def read_samples(calibration: Calibration | None, graph: Graph, opts: ConvertOptions) -> SampleData:
    """The calibration samples (and labels) checked against the model before any long step."""
    if calibration is None and graph.file_quant is not None:
        return SampleData(None, None, np.arange(0), None)  # the file gives the quantization
    if calibration is None:
        raise OptionError("{opt:calibration} samples are needed: the model is float, and its int8 ranges come "
                          "from running it on them")
    samples = _calibration_samples(calibration, graph)
    if opts.calibration_labels is not None and len(graph.outputs) > 1:
        raise OptionError(f"{{opt:calibration_labels}} judge one output's classes; this model has "
                          f"{len(graph.outputs)} outputs (budget it with {{opt:max_error_db}})")
    labels = None if opts.calibration_labels is None else load_labels(opts.calibration_labels, len(samples),
                                                                        "calibration labels")
    return SampleData(samples, labels, search_indices(len(samples)), search_samples(samples))


@dataclass
class Tuning:
    """What quantizing measured and chose, for the report."""

    search: dict[str, Any]  # the calibration search's summary
    bias_corrected: int | None  # layers whose bias took their mean error (None: off)
    auto_precision: dict[str, Any] | None  # --precision auto's budget, measurements and choice
    recipe: dict[str, Any]  # the quantization recipe chosen and what each candidate measured
    samples_used: int  # how many calibration samples set ranges


def quantize(model: onnx.ModelProto, graph: Graph, registry: Registry, data: SampleData, opts: ConvertOptions,
             cmsis: CmsisTree, step: Callable[[str], None], where: str) -> Tuning:
    """The recipe (chosen on held-out folds), ranges from the samples, then (auto) each layer's width,
    the bias corrections, and the integer parameters: the graph leaves quantized. A quantized model
    file's graph takes its file's quantization instead (quant/from_file.py)."""
    if graph.file_quant is not None:
        calibrated = quantize_from_file(model, graph, registry, data.samples, opts, step, where)
        check_graph(graph, "quantization", quantized=True)
        return Tuning(None, None, None, file_recipe(graph, calibrated),
                      samples_used=len(data.samples) if calibrated else 0)
    graph.quant_options = opts.quant_options
    candidates = candidate_recipes(opts.calibration_method, opts.dense_weights, opts.bias_correction,
                                   opts.weight_rounding)
    # fitted rounding takes only layers reading int16 (tuning/weight_rounding.py): at int8 there are
    # none; --precision auto's widths are chosen after the recipe, so there it is judged with every
    # layer at int16, and its int16 layers get it
    fit_rounding = opts.weight_rounding == "auto" and opts.precision in ("int16", "auto")
    rounding_bits = None if opts.precision != "auto" else \
        [16 if 16 in registry.for_op(n.op).activation_bits else 8 for n in graph.nodes]  # as wide as each can go
    if len(candidates) > 1 or fit_rounding:
        step(f"choosing the quantization recipe on {min(len(data.search), CHOICE_SAMPLES)} samples and held-out "
             "folds of them")
    # the search samples' float values, run once: the recipe's fits, the ranges when the search
    # samples are all there are (up to SEARCH_SAMPLES), the widths' folds and bias correction read them
    reads = (len(candidates) > 1 or fit_rounding or candidates[0].bias_correction or opts.precision == "auto"
             or len(data.samples) == len(data.search))
    recorded = recorded_values(model, graph, data.search) if reads else None
    recipe = choose_recipe(model, graph, registry, data.search, candidates, recorded, fit_rounding, rounding_bits)
    chosen_recipe = recipe.chosen
    graph.quant_options = replace(opts.quant_options, calibration_method=chosen_recipe.calibration_method,
                                  dense_weights=chosen_recipe.dense_weights)
    step(f"calibrating on {len(data.samples)} samples ({chosen_recipe.calibration_method}"
         + (", choosing dense weight scales" if chosen_recipe.dense_weights == "auto" else "") + ")")
    before_widths = copy.deepcopy(graph) if opts.precision == "auto" else None  # what folds are fitted from
    calibration = calibrate(model, graph, registry, data.samples, data.search, chosen_recipe.calibration_method,
                            chosen_recipe.dense_weights, recorded if len(data.samples) == len(data.search) else None)
    apply_weights(graph, calibration.weights)  # on the nodes from here on: indices may shift below
    mark_floors(graph, calibration.floors)
    chosen = None
    if opts.precision == "auto":
        labels = None if opts.max_accuracy_drop is None or data.labels is None else data.labels[data.chosen]
        target = opts.precision_budget(labels)
        step(f"choosing each layer's width for {target.describe(None)}")
        heldout = widths_heldout(model, before_widths, registry, chosen_recipe, data.search, labels, recorded)

        def fit_codes(g: Graph) -> None:  # the codes each assignment will have
            fit_weight_rounding(model, g, registry, calibration.ranges, data.search, recorded)
        try:
            chosen = choose_precision(graph, registry, calibration.ranges, data.search,
                                      float_outputs(model, data.search, recorded), target, cmsis.api, heldout,
                                      in_place=opts.streaming is None,  # arenas as back_end will plan them
                                      fit_rounding=fit_codes if chosen_recipe.weight_rounding == "fitted"
                                      else None)
        except ConversionError as exc:
            raise ConversionError(exc.message, exc.where or where) from None
    if chosen_recipe.weight_rounding == "fitted":
        step("fitting weight rounding to the layers' inputs")
        fit_weight_rounding(model, graph, registry, calibration.ranges, data.search, recorded)
    corrected = None
    if chosen_recipe.bias_correction:
        step("correcting biases")
        corrected = len(correct_biases(model, graph, registry, calibration.ranges, data.search, recorded,
                                       fitted=chosen_recipe.corrects_fitted))
    quantize_graph(graph, registry, calibration.ranges)
    check_graph(graph, "quantization", quantized=True)
    return Tuning(calibration.summary(), corrected, None if chosen is None else chosen.summary(), recipe.summary(),
                  len(data.samples))


@dataclass
class Emitted:
    """A quantized, scheduled conversion before its files are rendered."""

    name: str
    model_path: Path
    model: onnx.ModelProto
    graph: Graph
    registry: Registry
    plan: MemoryPlan
    schedule: list[Step]
    cmsis: CmsisTree
    rewrites: list[str]


def render_files(e: Emitted, data: SampleData, tuning: Tuning, stream: Any, opts: ConvertOptions) -> Conversion:
    """NAME.c/.h (with the stream push), NAME.json, the build files and NAME.md + its memory map."""
    graph, registry, name = e.graph, e.registry, e.name
    layers = make_layers(graph, e.schedule)
    summary = header_summary(e.model_path, hashlib.sha256(e.model_path.read_bytes()).hexdigest(), graph, layers,
                             e.cmsis)
    template_dirs = tuple(dict.fromkeys(registry.for_op(s.node.op).template_dir for s in e.schedule
                                        if registry.for_op(s.node.op).template_dir is not None))
    stream_report = None
    if stream is None:
        summary.update(stream=None)
    else:
        stream_templates, stream_report = stream_parts(stream, template_environment(template_dirs), name, graph,
                                                       registry, layers, e.plan)
        summary.update(stream_templates)
    source, header = render(name, graph, layers, e.plan, summary, template_dirs)
    functions = sorted({f for s in e.schedule for f in s.call.functions}
                       | set(summary["stateful"].functions if summary.get("stateful") else ()))
    report = build_report(name, summary, graph, registry, e.plan, layers, e.cmsis, functions, e.rewrites,
                          tuning.samples_used, tuning.search, tuning.bias_corrected, tuning.auto_precision,
                          stream_report, tuning.recipe)
    warnings = opts.budget.check(summary["weights_bytes"], e.plan.arena_bytes)
    report["warnings"] = [render_options(w) for w in warnings]
    views: dict[str, str] = {}
    for s in e.schedule:
        if registry.for_op(s.node.op).aliases_input(s.node):
            views[s.node.output] = views.get(s.node.inputs[0], s.node.inputs[0])
    markdown, svg = render_report_page(name, report, e.plan, [s.node.output for s in e.schedule], views)
    return Conversion(name, e.model_path, e.model, graph, registry, e.plan, layers, e.cmsis, source, header, report,
                      build_files=render_build_files(name, report["cmsis_nn"]["sources"], e.cmsis.api),
                      pages={f"{name}.md": markdown, f"{name}_memory.svg": svg}, warnings=warnings)


def front_end(model_path: Path, registry: Registry,
              input_shape: tuple[int, ...] | None = None) -> tuple[onnx.ModelProto, Graph, list[str]]:
    """File -> static batch-1 ONNX -> canonical IR -> after the passes (and the rewrites that fired)."""
    return _front_end(model_path, registry, input_shape)[:3]


def _front_end(model_path: Path, registry: Registry, input_shape: tuple[int, ...] | None
               ) -> tuple[onnx.ModelProto, Graph, list[str], onnx.ModelProto | None]:
    """front_end, and a quantized file as read (None for a float model)."""
    loaded = read_model(model_path, input_shape)  # frontends: file -> static, batch-1 float ONNX (+ a
    model, file_quant = loaded.model, loaded.file_quant  # quantized file's own quantization)
    graph = import_onnx(model, registry, str(model_path), file_quant)  # importer: ONNX -> canonical IR
    if file_quant is not None:  # the float reference: the file's model without rounding, saturating as it does
        model = saturating_float_model(model, file_quant)
    model = with_internal_values(model, registry)  # values inside ops that calibration ranges (an LSTM's cell)
    check_graph(graph, "import")
    _check_finite_constants(graph, str(model_path))
    rewrites = run_passes(graph, registry)  # passes: fold, fuse, lower
    check_graph(graph, "the passes")
    return model, graph, rewrites, loaded.file_model


def back_end(graph: Graph, registry: Registry, cmsis: CmsisTree,
             in_place: bool = True) -> tuple[MemoryPlan, list[Step]]:
    """A quantized graph -> each node's kernel call, in the execution order the arena plan chose (the
    graph's nodes take that order too), and the arena. `in_place`: see plan_memory (off for a stream)."""
    graph.cmsis_api = cmsis.api
    steps = [Step(n, registry.for_op(n.op).emit(n, graph)) for n in graph.nodes]  # ops: kernel choice, C arrays
    plan, schedule = plan_memory(graph, registry, steps, in_place)  # plan: order + arena
    graph.nodes = [s.node for s in schedule]
    check_graph(graph, "scheduling", quantized=True)
    return plan, schedule


def _calibration_samples(calibration, graph: Graph):
    """The samples (in memory, or a file read a block at a time), checked to be finite: an array for a
    one-input model, MultiSamples for several (data/samples.py)."""
    if isinstance(calibration, (str, Path)):
        where = str(calibration)
        samples = load_calibration(Path(calibration), graph.model_input_shapes, graph.input_names)
    else:
        where = "calibration data"
        samples = checked_samples(calibration, graph.model_input_shapes, graph.input_names, where)
    for part in input_arrays(samples):
        _check_finite_samples(part, where)
    return samples


def _check_finite_constants(graph, where: str) -> None:
    for node in graph.nodes:
        for key, values in node.consts.items():
            arr = np.asarray(values)
            if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
                raise ConversionError(f"{node.where}: its {key} holds NaN or Inf", where)


def _check_finite_samples(samples: np.ndarray, where: str, chunk: int = 4096) -> None:
    """Before any float inference, so a bad sample is named at once; chunked, so a calibration file of
    any size is read in bounded memory."""
    for start in range(0, len(samples), chunk):
        block = np.asarray(samples[start:start + chunk])
        rows_ok = np.isfinite(block.reshape(len(block), -1)).all(axis=1) if block.dtype.kind == "f" else None
        if rows_ok is not None and not rows_ok.all():
            bad = start + int(np.argmin(rows_ok))
            raise ConversionError(f"calibration sample {bad} holds NaN or Inf", where)
