"""What a command shows of its steps while it works (the library's `progress` callback)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Optional

import typer


@contextmanager
def step_progress(quiet: bool, verbose: bool) -> Iterator[Optional[Callable[[str], None]]]:
    """The `progress` callback for a command's steps. On a terminal, a rich spinner names the running
    step and each finished step stays as one line with its duration; with -v
    and no terminal (a log), one plain line per step as it starts; nothing with -q or in a pipe."""
    if quiet or not (verbose or sys.stderr.isatty()):
        yield None
        return
    if not sys.stderr.isatty():
        yield lambda text: typer.echo(f"onnx2cmsis: {text} ...", err=True)
        return
    from rich.console import Console
    from rich.markup import escape

    console = Console(stderr=True, highlight=False)
    current: list = []  # [text, start time] of the running step

    def finish() -> None:
        if current:
            console.print(f"[green]done[/] {escape(current[0])} [dim]({time.monotonic() - current[1]:.1f} s)[/]")

    with console.status("onnx2cmsis: starting", spinner="dots") as status:
        def step(text: str) -> None:
            finish()
            current[:] = [text, time.monotonic()]
            status.update(f"onnx2cmsis: {escape(text)} ...")

        try:
            yield step
        except BaseException:
            current.clear()  # the error line says what happened to the running step
            raise
        finish()
