"""The `onnx2cmsis` command. Thin: parse options, call api, print one line per outcome."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer

from onnx2cmsis import __version__
from onnx2cmsis.errors import ConversionError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Trained 1D CNNs -> int8 C for CMSIS-NN.")


def _fail(message: str) -> None:
    typer.echo(f"onnx2cmsis: error: {message}", err=True)
    raise typer.Exit(1)


@app.callback()
def main() -> None:
    """Convert ONNX models into C that calls CMSIS-NN kernels."""


@app.command()
def version() -> None:
    """Print the tool version."""
    typer.echo(__version__)


@app.command()
def convert(
    model: Path = typer.Argument(..., help="Model file (.onnx)."),
    name_arg: Optional[str] = typer.Argument(None, metavar="[NAME]", help="C name (the original tool's form)."),
    outdir_arg: Optional[Path] = typer.Argument(None, metavar="[OUTDIR]", help="Output folder (original form)."),
    calibration: Optional[Path] = typer.Option(
        None, "--calibration", "-c", help=".npy/.npz of N samples shaped like the input (without batch)."
    ),
    name: Optional[str] = typer.Option(None, "--name", "-n", help="C identifier prefix (default: model file stem)."),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output folder (default: current folder)."),
    cmsis_nn: Optional[Path] = typer.Option(
        None, "--cmsis-nn", envvar="CMSIS_NN_PATH", help="CMSIS-NN tree (default: the pinned PyPI snapshot)."
    ),
    debug: bool = typer.Option(False, "--debug", help="Show tracebacks."),
) -> None:
    """Write NAME.c, NAME.h and NAME.json for MODEL."""
    from onnx2cmsis.api import convert as run_convert
    from onnx2cmsis.api import write_outputs

    if name and name_arg and name != name_arg:
        _fail(f"two names given: {name_arg!r} and --name {name!r}")
    if out and outdir_arg and out != outdir_arg:
        _fail(f"two output folders given: {outdir_arg} and --out {out}")
    if calibration is None:
        _fail("--calibration CALIB.npy is required (samples to choose the int8 ranges from)")
    try:
        result = run_convert(model, calibration, name=name or name_arg, cmsis_nn=cmsis_nn)
        written = write_outputs(result, out or outdir_arg or Path.cwd())
    except ConversionError as exc:
        if debug:
            raise
        _fail(str(exc))
    except Exception as exc:  # a bug of ours: still one line unless --debug
        if debug:
            raise
        _fail(f"{model}: internal error ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
              "rerun with --debug and report it")
    r = result.report
    typer.echo(
        f"{model.name} -> {', '.join(str(p) for p in written)}: {len(r['layers'])} layers, "
        f"arena {r['arena_bytes']} B (lower bound {r['arena_lower_bound_bytes']} B), weights {r['weights_bytes']} B"
    )


def run() -> None:
    app(prog_name="onnx2cmsis")


if __name__ == "__main__":
    sys.exit(run())
