"""The `onnx2cmsis` command. Thin: parse options, call api, print one line per outcome."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Optional

import typer

from onnx2cmsis import __version__
from onnx2cmsis.cli_options import (ALLOW_OVERRIDE_OPTION, FLAGS, INPUT_SHAPE_OPTION, PLUGIN_OPTION, QUIET_OPTION,
                                    VERBOSE_OPTION, PlainHelpCommand, with_conversion_options)
from onnx2cmsis.cli_progress import step_progress
from onnx2cmsis.errors import ConversionError, OptionError, render_options

# Plain help: rich markup would swallow "[keras]" and add type placeholders.
app = typer.Typer(add_completion=False, no_args_is_help=True, rich_markup_mode=None,
                  context_settings={"help_option_names": ["-h", "--help"]})


def _fail(message: str) -> None:
    typer.echo(f"onnx2cmsis: error: {message}", err=True)
    raise typer.Exit(1)


def _usage(message: str, command: str) -> None:
    """A usage error: exit 2, pointing at the command's help (as for an unknown option)."""
    typer.echo(f"onnx2cmsis: error: {message} (see onnx2cmsis {command} --help)", err=True)
    raise typer.Exit(2)


def _shape(text: Optional[str], command: str) -> Optional[tuple[int, ...]]:
    """--input-shape 3,128 as (3, 128)."""
    if text is None:
        return None
    try:
        return tuple(int(v) for v in text.replace("x", ",").split(",") if v.strip())
    except ValueError:
        _usage(f"--input-shape {text!r} is not a list of sizes such as 3,128", command)
    return None


@contextmanager
def _reported(model: Path, command: str, debug: bool) -> Iterator[None]:
    """Errors inside as one line: the library's (exit 1, or 2 for a bad option value) and, as an
    internal error, any other (a bug of ours); with --debug, the traceback instead."""
    try:
        yield
    except typer.Exit:
        raise
    except ConversionError as exc:
        if debug:
            raise
        _refuse(exc, command)
    except Exception as exc:
        if debug:
            raise
        _fail(f"{model}: internal error ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
              "rerun with --debug and report it")


def _refuse(exc: ConversionError, command: str) -> None:
    if isinstance(exc, OptionError):
        _usage(exc.render(FLAGS), command)
    _fail(exc.render(FLAGS))


def _print_version(value: bool) -> None:
    if value:
        typer.echo(__version__)
        raise typer.Exit(0)


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the tool version and exit."),
) -> None:
    """Trained 1D CNNs (Keras, ONNX) -> int8 or int16 C that calls CMSIS-NN kernels.

    \b
    Example:
      onnx2cmsis convert model.h5 --calibration calib.npy --out out
    """


@app.command(cls=PlainHelpCommand)
def version() -> None:
    """Print the tool version (also: onnx2cmsis --version)."""
    typer.echo(__version__)


@app.command(cls=PlainHelpCommand)
@with_conversion_options
def convert(
    model: Path = typer.Argument(..., metavar="MODEL",
                                 help="Model file (.onnx, .tflite with the [tflite] extra, or Keras .h5/.keras with "
                                      "the [keras] extra)."),
    name_arg: Optional[str] = typer.Argument(None, metavar="[NAME]", help="C name (the original tool's form)."),
    outdir_arg: Optional[Path] = typer.Argument(None, metavar="[OUTDIR]", help="Output folder (original form)."),
    calibration: Optional[Path] = typer.Option(
        None, "--calibration", "-c", metavar="CALIB.npy",
        help=".npy/.npz of N samples shaped like the input (without batch); for several inputs a .npz "
             "with one array per input, by input name (or arr_0, arr_1, ...). Required for a float model; a "
             "quantized (QDQ) model brings its own quantization."
    ),
    name: Optional[str] = typer.Option(None, "--name", "-n", metavar="NAME",
                                       help="C identifier prefix (default: model file stem)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", metavar="DIR",
                                       help="Output folder (default: current folder)."),
    cmsis_nn: Optional[Path] = typer.Option(
        None, "--cmsis-nn", envvar="CMSIS_NN_PATH", metavar="PATH",
        help="Your CMSIS-NN tree: its API level is detected from its headers and NAME.json lists the files to compile."
    ),
    cmsis_api: Optional[str] = typer.Option(
        None, "--cmsis-nn-api", metavar="LEVEL",
        help="CMSIS-NN API level to emit for: 7 (v7.0.0 and later, main; the default) or 2024.01 "
             "(the PyPI snapshot). Must match --cmsis-nn's tree if both are given."
    ),
    flash_kb: int = typer.Option(512, "--flash-kb", min=1, metavar="KIB", help="Flash your part has for the weights (KiB): "
                                 "warn above it."),
    ram_kb: int = typer.Option(128, "--ram-kb", min=1, metavar="KIB", help="RAM your part has for the arena (KiB): warn above it."),
    tflite: bool = typer.Option(False, "--tflite", help="Also write NAME.tflite: the same integer graph for "
                                "TFLite-Micro, with NAME_invoke's input and output (the [verify] extra)."),
    quiet: bool = QUIET_OPTION,
    verbose: bool = VERBOSE_OPTION,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    conversion: Optional[dict] = None,
) -> None:
    """Write NAME.c, NAME.h, NAME.json, NAME.mk, NAME.cmake and the NAME.md report for MODEL.

    \b
    Example:
      onnx2cmsis convert examples/vibration_keras/vibration_cnn.h5 \\
          --calibration examples/vibration_keras/calibration.npy --out out
    """
    from onnx2cmsis.output_files import write_outputs
    from onnx2cmsis.api import convert as run_convert
    from onnx2cmsis.options import Budget, ConvertOptions
    from onnx2cmsis.report import auto_precision_lines, recipe_line, stream_line

    if name and name_arg and name != name_arg:
        _usage(f"two names given: {name_arg!r} and --name {name!r}", "convert")
    if out and outdir_arg and out != outdir_arg:
        _usage(f"two output folders given: {outdir_arg} and --out {out}", "convert")
    with _reported(model, "convert", debug), step_progress(quiet, verbose) as progress:
        options = ConvertOptions(name=name or name_arg, cmsis_nn=cmsis_nn, cmsis_api=cmsis_api,
                                 budget=Budget(flash_kb * 1024, ram_kb * 1024), **(conversion or {}))
        result = run_convert(model, calibration, options, progress=progress)
        written = write_outputs(result, out or outdir_arg or Path.cwd(), tflite=tflite)
    r = result.report
    for warning in result.warnings:
        typer.echo(f"onnx2cmsis: warning: {model}: {render_options(warning, FLAGS)}", err=True)
    if quiet:
        return
    best = "of any order" if r["schedule"]["exact"] else f"of the {r['schedule']['orders_placed']} orders tried"
    typer.echo(
        f"{model.name} -> {', '.join(str(p) for p in written)}: {len(r['layers'])} layers, "
        f"arena {r['arena_bytes']} B (live-set bound {r['arena_lower_bound_bytes']} B; smallest {best} "
        f"{r['arena_smallest_bound_bytes']} B), weights {r['weights_bytes']} B"
    )
    typer.echo(recipe_line(r["quantization"]["recipe"]))
    auto = r["quantization"]["auto_precision"]
    if auto is not None:
        typer.echo(auto_precision_lines(auto, r["layers"]))
    if r["stream"] is not None:
        typer.echo(stream_line(r["stream"]))
    typer.echo(_cmsis_line(result.cmsis))


@app.command("inspect", cls=PlainHelpCommand)
def inspect_command(
    model: Path = typer.Argument(..., metavar="MODEL", help="Model file (.onnx, .tflite, .h5, .keras)."),
    cmsis_api: Optional[str] = typer.Option(None, "--cmsis-nn-api", metavar="LEVEL",
                                            help="CMSIS-NN API level: 7 (the default) or 2024.01."),
    input_shape: Optional[str] = INPUT_SHAPE_OPTION,
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="Also write the table as JSON."),
    plugin: list[str] = PLUGIN_OPTION,
    allow_override: bool = ALLOW_OVERRIDE_OPTION,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Show what MODEL converts to, before any calibration: each layer's kernel, shapes, MACs and
    weight bytes, the flash and RAM the C will need; every unsupported node at once (exit 1).

    \b
    Example:
      onnx2cmsis inspect examples/vibration/vibration_cnn.onnx
    """
    import json

    from onnx2cmsis.drivers.inspect_model import format_inspection
    from onnx2cmsis.drivers.inspect_model import inspect as run_inspect
    from onnx2cmsis.ops.registry import build_registry

    with _reported(model, "inspect", debug):
        result = run_inspect(model, cmsis_api=cmsis_api,
                             registry=build_registry(extra=tuple(plugin), allow_override=allow_override),
                             input_shape=_shape(input_shape, "inspect"))
    typer.echo(format_inspection(result, flags=FLAGS))
    if json_out is not None:
        data = {k: v for k, v in vars(result).items() if k != "model_path"}
        json_out.write_text(json.dumps({"model": str(result.model_path), **data}, indent=2) + "\n")


def _cmsis_line(cmsis) -> str:
    """Which CMSIS-NN the C is for and where the tree comes from (or how to get one)."""
    level = cmsis.api.level
    if cmsis.root is None:
        return (f"CMSIS-NN: API level {level} ({cmsis.api.versions}); no tree here, sources listed from "
                f"{cmsis.sources_from}. To build: onnx2cmsis cmsis-nn fetch --level {level}, then set CMSIS_NN_PATH "
                f"to what `onnx2cmsis cmsis-nn path --level {level}` prints (NAME.mk, NAME.cmake)")
    return f"CMSIS-NN: {cmsis.root} (API level {level})"


@app.command(cls=PlainHelpCommand)
@with_conversion_options
def verify(
    model: Path = typer.Argument(..., metavar="MODEL", help="Model file (.onnx, .tflite, .h5, .keras)."),
    calibration: Optional[Path] = typer.Option(None, "--calibration", "-c", metavar="CALIB.npy",
                                               help="The calibration samples convert uses (none for a quantized "
                                                    "(QDQ) model)."),
    data: Path = typer.Option(..., "--data", "-d", metavar="X.npy",
                              help=".npy/.npz of samples to run, shaped like the input (several inputs: "
                                   "as --calibration)."),
    labels: Optional[Path] = typer.Option(None, "--labels", metavar="Y.npy",
                                          help=".npy of integer class labels (accuracy)."),
    target: str = typer.Option("host", "--target", "-t", metavar="TARGETS",
                               help="host, m0plus, m4, m7, m55 or all (the Cortex-M ones run on QEMU)."),
    json_out: Optional[Path] = typer.Option(None, "--json", metavar="FILE", help="Also write the results as JSON."),
    layers: bool = typer.Option(False, "--layers", help="Also print each layer's integer accuracy vs the float "
                                "model (SQNR, max error in LSB) over the first 64 samples."),
    name: Optional[str] = typer.Option(None, "--name", "-n", metavar="NAME", help="C identifier prefix."),
    cmsis_nn: Optional[Path] = typer.Option(None, "--cmsis-nn", envvar="CMSIS_NN_PATH", metavar="PATH",
                                            help="CMSIS-NN tree to build with (default: the pinned PyPI snapshot)."),
    cmsis_api: Optional[str] = typer.Option(
        None, "--cmsis-nn-api", metavar="LEVEL",
        help="API level (7 or 2024.01); refused unless it is the level of the tree verify builds with."),
    quiet: bool = QUIET_OPTION,
    verbose: bool = VERBOSE_OPTION,
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
    conversion: Optional[dict] = None,
) -> None:
    """Convert MODEL, run DATA on each target, compare byte for byte with tflite-micro; exit 0 only
    when every target that ran is bit-exact.

    \b
    Example:
      onnx2cmsis verify examples/vibration/vibration_cnn.onnx -c examples/vibration/calibration.npy \\
          -d examples/vibration/calibration.npy --target host,m4
    """
    import json

    from onnx2cmsis.api import convert as run_convert
    from onnx2cmsis.drivers.evaluate import layer_accuracy
    from onnx2cmsis.drivers.verification import format_layer_table, format_table
    from onnx2cmsis.options import ConvertOptions
    from onnx2cmsis.targets.catalog import TARGET_NAMES
    from onnx2cmsis.drivers.verification import verify as run_verify

    targets = list(TARGET_NAMES) if target == "all" else [t.strip() for t in target.split(",")]
    unknown = [t for t in targets if t not in TARGET_NAMES]
    if unknown:
        _usage(f"unknown target {unknown[0]!r} (choose from {', '.join(TARGET_NAMES)} or all)", "verify")
    with _reported(model, "verify", debug), step_progress(quiet, verbose) as progress:
        # verify builds what it converts, so it needs a tree: a fetched one, level 7 first.
        options = ConvertOptions(name=name, cmsis_nn=cmsis_nn, cmsis_api=cmsis_api, default_api=None,
                                 **(conversion or {}))
        conv = run_convert(model, calibration, options, progress=progress)
        found = run_verify(conv, data, targets, labels=labels, progress=progress)
        results = found.results
        per_layer = layer_accuracy(conv, found.samples[:64]) if layers else None
    if not quiet:
        typer.echo(_cmsis_line(conv.cmsis))
        typer.echo(format_table(results))
        if per_layer is not None:
            typer.echo(format_layer_table(per_layer))
    if json_out is not None:
        json_out.write_text(json.dumps([r.as_dict() for r in results], indent=2) + "\n")
    if not found.passed:
        raise typer.Exit(1)


cmsis_app = typer.Typer(no_args_is_help=True, help="Get a CMSIS-NN tree that matches the generated C.")
app.add_typer(cmsis_app, name="cmsis-nn")


@cmsis_app.command("fetch", cls=PlainHelpCommand)
def cmsis_fetch(
    level: str = typer.Option("7", "--level", metavar="LEVEL",
                              help="API level: 7 (CMSIS-NN v7.0.0 from GitHub) or 2024.01 (the PyPI snapshot)."),
    source: Optional[str] = typer.Option(None, "--from", metavar="ARCHIVE",
                                         help="A .tar.gz (path or URL) of CMSIS-NN v7.0.0 or main 99f736a6 to use "
                                              "instead of GitHub's; checked against the pinned file hashes."),
) -> None:
    """Download (once) and check a CMSIS-NN tree; print its folder. The only command that uses the network.

    Example: onnx2cmsis cmsis-nn fetch --level 7
    """
    from onnx2cmsis.cmsis_nn.fetch import fetch_cmsis_nn

    try:
        typer.echo(fetch_cmsis_nn(level, source))
    except ConversionError as exc:
        _refuse(exc, "cmsis-nn fetch")


@cmsis_app.command("path", cls=PlainHelpCommand)
def cmsis_path(level: str = typer.Option("7", "--level", metavar="LEVEL", help="API level: 7 or 2024.01.")) -> None:
    """Print the folder of the fetched tree of LEVEL (for CMSIS_NN_PATH or a build file).

    Example: export CMSIS_NN_PATH=$(onnx2cmsis cmsis-nn path)
    """
    from onnx2cmsis.cmsis_nn.fetch import cached_tree
    from onnx2cmsis.cmsis_nn.source import check_api_level

    try:
        check_api_level(level)
    except ConversionError as exc:
        _refuse(exc, "cmsis-nn path")
    tree = cached_tree(level)
    if tree is None:
        _fail(f"no CMSIS-NN tree of API level {level} has been fetched: run onnx2cmsis cmsis-nn fetch --level {level}")
    typer.echo(tree)


def run() -> int:
    """The console entry point. A usage error (unknown option, bad value, missing argument) is one
    line and exit status 2, like every other error, instead of a framed panel."""
    try:
        code = app(prog_name="onnx2cmsis", standalone_mode=False)
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("onnx2cmsis: aborted", err=True)
        return 1
    except typer.TyperException as exc:  # typer's (vendored click's) usage errors
        ctx = getattr(exc, "ctx", None)
        if type(exc).__name__ == "NoArgsIsHelpError" and ctx is not None:
            typer.echo(ctx.get_help())
            return 0
        where = f" (see {ctx.command_path} --help)" if ctx is not None else ""
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        typer.echo(f"onnx2cmsis: error: {' '.join(message.split())}{where}", err=True)
        return 2
    return code if isinstance(code, int) else 0


if __name__ == "__main__":
    sys.exit(run())
