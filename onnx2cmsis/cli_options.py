"""The options `convert` and `verify` share, and help text as click writes it: declarations only.

The quantization and plugin options both commands take are declared once (`SHARED`) and added to each
command by `with_conversion_options`, which hands the command their values as the settings of one
ConvertOptions (onnx2cmsis/options.py, where they are validated for the API and the CLI alike).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer
from typer.core import TyperCommand

# The library's setting names (errors.py) as this command line spells them.
FLAGS = {"calibration": "--calibration", "name": "--name", "cmsis_nn": "--cmsis-nn", "cmsis_api": "--cmsis-nn-api", "plugins": "--plugin",
         "allow_override": "--allow-override", "flash_bytes": "--flash-kb", "ram_bytes": "--ram-kb",
         "fetch_cmsis_nn": "onnx2cmsis cmsis-nn fetch --level", "dense_weights": "--dense-weights",
         "weight_rounding": "--weight-rounding", "range_floors": "--no-range-floors",
         "calibration_method": "--calibration-method", "precision": "--precision", "max_error_db": "--max-error",
         "input_shape": "--input-shape", "data": "--data", "targets": "--target", "labels": "--labels",
         "max_accuracy_drop": "--max-error", "calibration_labels": "--calibration-labels",
         "max_arena_bytes": "--max-arena",
         "streaming": "--streaming", "stateful": "--stateful", "source": "onnx2cmsis cmsis-nn fetch --from"}

# The quantization choices convert and verify share.
PRECISION_OPTION = typer.Option(
    "int8", "--precision", metavar="int8|int16|auto",
    help="Activation width: int8 (TFLite int8), int16 (TFLite 16x8: int16 activations, int8 weights; "
         "more accurate, twice the arena), or auto: per layer, the least RAM that meets --max-error, "
         "the most accurate that fits --max-arena, or the least RAM within --max-arena that meets "
         "--max-error (see docs/quantization.md).")
INPUT_SHAPE_OPTION = typer.Option(
    None, "--input-shape", metavar="D1,D2",
    help="The input's shape without the batch, e.g. 3,128: fixes a dynamic dimension (a PyTorch export's "
         "time axis, a Keras Input without a length).")
QUIET_OPTION = typer.Option(False, "--quiet", "-q", help="Print nothing but errors and warnings.")
VERBOSE_OPTION = typer.Option(False, "--verbose", "-v", help="Say what each step is doing, also when the output "
                              "is not a terminal (on a terminal it does anyway).")
MAX_ERROR_OPTION = typer.Option(
    None, "--max-error", metavar="DB|POINTS",
    help="With --precision auto: the output SQNR (dB, vs the float model on the calibration samples) "
         "the model must keep; with --calibration-labels, the accuracy (percentage points) it may lose "
         "against the float model on those samples.")
MAX_ARENA_OPTION = typer.Option(
    None, "--max-arena", metavar="BYTES", min=1,
    help="With --precision auto: the arena (bytes) the widths must fit in; alone, the most accurate "
         "widths that fit (expected output SQNR on calibration samples held out from the ranges).")
CALIBRATION_LABELS_OPTION = typer.Option(
    None, "--calibration-labels", metavar="Y.npy",
    help="With --precision auto: each calibration sample's class (.npy, N integers or one-hot), making "
         "--max-error an accuracy drop.")
DENSE_WEIGHTS_OPTION = typer.Option(
    "auto", "--dense-weights", metavar="auto|per-tensor|per-channel",
    help="Dense layer weight scales: one per layer, one per output feature (as TFLite 2.21 writes them), "
         "or auto: per layer, whichever gives the smaller output error on the calibration samples.")
CALIBRATION_METHOD_OPTION = typer.Option(
    "auto", "--calibration-method", metavar="auto|minmax|percentile|mse|output",
    help="How each value's range is chosen: auto (minmax or mse, chosen with the dense weights and bias "
         "correction on calibration samples held out from the fit, TFLite's recipe unless another beats "
         "it there), the extremes seen, clipped at 1e-4 tails, the MSE-optimal clip, or per value "
         "whichever gives the smaller output error (slower; see docs/benchmarks.md).")
BIAS_CORRECTION_OPTION = typer.Option(
    True, "--bias-correction/--no-bias-correction",
    help="Allow folding each conv/dense layer's mean output error on the calibration samples into its "
         "bias, in the recipes that do it (chosen only when they beat TFLite's recipe on calibration "
         "samples held out from the fit; see docs/quantization.md).")
RANGE_FLOORS_OPTION = typer.Option(
    True, "--range-floors/--no-range-floors",
    help="Start a softmax's input range 10 (more past 43 classes) below the lowest row maximum the calibration "
         "samples give, "
         "not at the lowest value they give: the softmax cannot tell values below apart, and the codes "
         "go to those it can (--no-range-floors: min/max as TFLite's converter; see docs/quantization.md).")
WEIGHT_ROUNDING_OPTION = typer.Option(
    "auto", "--weight-rounding", metavar="auto|nearest|fitted",
    help="int8 weight codes: each rounded to its nearest step (as TFLite's converter), fitted to the "
         "inputs each layer sees on the calibration samples (smaller output error, most at int16), or "
         "auto: fitted where that beats nearest on calibration samples held out from the fit.")

STREAMING_OPTION = typer.Option(
    None, "--streaming", metavar="HOP",
    help="Also write NAME_stream_push: push HOP time steps at a time, get the model's output on the last "
         "window each time (docs/c-interface.md).")

STATEFUL_OPTION = typer.Option(
    False, "--stateful",
    help="With --streaming, for a model with LSTM/GRU/RNN layers: keep their state across pushes, so each "
         "push runs only its HOP new steps, and get the output for every step pushed since the reset "
         "(layers before the recurrence must be causal; docs/c-interface.md).")

PLUGIN_OPTION = typer.Option([], "--plugin", metavar="MODULE:CLASS", help="Op handler to load (repeatable).")
ALLOW_OVERRIDE_OPTION = typer.Option(False, "--allow-override", help="Let plugins replace built-in handlers.")

# (parameter, type, declaration): what `with_conversion_options` adds to convert and verify, in help order.
SHARED: tuple[tuple[str, Any, Any], ...] = (
    ("precision", str, PRECISION_OPTION),
    ("max_error", Optional[float], MAX_ERROR_OPTION),
    ("max_arena", Optional[int], MAX_ARENA_OPTION),
    ("calibration_labels", Optional[Path], CALIBRATION_LABELS_OPTION),
    ("streaming", Optional[int], STREAMING_OPTION),
    ("stateful", bool, STATEFUL_OPTION),
    ("input_shape", Optional[str], INPUT_SHAPE_OPTION),
    ("dense_weights", str, DENSE_WEIGHTS_OPTION),
    ("calibration_method", str, CALIBRATION_METHOD_OPTION),
    ("bias_correction", bool, BIAS_CORRECTION_OPTION),
    ("range_floors", bool, RANGE_FLOORS_OPTION),
    ("weight_rounding", str, WEIGHT_ROUNDING_OPTION),
    ("plugin", list[str], PLUGIN_OPTION),
    ("allow_override", bool, ALLOW_OVERRIDE_OPTION),
)


def conversion_settings(precision: str, max_error: Optional[float], max_arena: Optional[int],
                        calibration_labels: Optional[Path],
                        streaming: Optional[int], stateful: bool, input_shape: Optional[str], dense_weights: str,
                        calibration_method: str, bias_correction: bool, range_floors: bool, weight_rounding: str,
                        plugin: list[str], allow_override: bool) -> dict[str, Any]:
    """The shared options' values as ConvertOptions settings: --max-error is an SQNR in dB, or with
    --calibration-labels an accuracy drop in points; --input-shape 3,128 is text until checked."""
    budget = {"max_error_db": max_error} if calibration_labels is None else \
        {"max_accuracy_drop": max_error, "calibration_labels": calibration_labels}
    return {"precision": precision, **budget, "max_arena_bytes": max_arena, "streaming": streaming,
            "stateful": stateful, "input_shape": input_shape,
            "dense_weights": dense_weights, "calibration_method": calibration_method,
            "bias_correction": bias_correction, "range_floors": range_floors, "weight_rounding": weight_rounding,
            "plugins": tuple(plugin),
            "allow_override": allow_override}


def with_conversion_options(command: Callable[..., None]) -> Callable[..., None]:
    """`command(..., conversion: dict)` as a command that takes the SHARED options after its own and
    passes their values as `conversion` (ConvertOptions settings, see conversion_settings)."""
    own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.name != "conversion"]
    shared = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=declared, annotation=kind)
              for name, kind, declared in SHARED]
    names = [name for name, _, _ in SHARED]

    @functools.wraps(command)
    def with_shared(**values: Any) -> None:
        command(conversion=conversion_settings(**{n: values.pop(n) for n in names}), **values)

    with_shared.__signature__ = inspect.Signature(own + shared)  # type: ignore[attr-defined]
    return with_shared


class PlainHelpCommand(TyperCommand):
    """Arguments in usage and help as their metavar says (MODEL [NAME]), without typer's {MODEL}
    braces and <path> type placeholders. (Typer vendors its own click, so parameters are told apart
    by their declared kind, not by class.)"""

    def collect_usage_pieces(self, ctx: Any) -> list[str]:
        pieces = [self.options_metavar] if self.options_metavar else []
        return pieces + [p.metavar or p.name or "" for p in self.get_params(ctx) if p.param_type_name == "argument"]

    def format_options(self, ctx: Any, formatter: Any) -> None:
        args = [(p.metavar or p.name or "", (p.help or "") + ("  [required]" if p.required else ""))
                for p in self.get_params(ctx) if p.param_type_name == "argument" and not getattr(p, "hidden", False)]
        opts = [record for p in self.get_params(ctx) if p.param_type_name == "option"
                for record in [p.get_help_record(ctx)] if record is not None]
        if args:
            with formatter.section("Arguments"):
                formatter.write_dl(args)
        if opts:
            with formatter.section("Options"):
                formatter.write_dl(opts)
