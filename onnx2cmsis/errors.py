"""User-facing failures. Each carries one line: where (file, node) and what is wrong.

The library names the problem, never a command-line flag: where a message tells the user which
setting to change it writes `{opt:NAME}` or `{opt:NAME=VALUE}` with the Python API's parameter name.
`str(error)` spells that as the parameter (`cmsis_api='2024.01'`); the CLI renders the same message
with its flags (`--cmsis-nn-api 2024.01`), which only cli.py knows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

_OPTION = re.compile(r"\{opt:(\w+)(?:=([^}]*))?\}")


def render_options(message: str, flags: Mapping[str, str] | None = None) -> str:
    """`{opt:NAME=VALUE}` as a flag (`--flag VALUE`) when `flags` maps NAME, else as `NAME='VALUE'`."""
    def spell(m: re.Match) -> str:
        name, value = m.group(1), m.group(2)
        if flags is not None and name in flags:
            return flags[name] if value is None else f"{flags[name]} {value}"
        return name if value is None else f"{name}={value!r}"

    return _OPTION.sub(spell, message)


def count(n: int, noun: str) -> str:
    """'1 input', '2 inputs' (messages say numbers the way a person would)."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


class ConversionError(Exception):
    """A problem with the user's input that the user can fix; printed as one line, exit code 1."""

    def __init__(self, message: str, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(render_options(f"{where}: {message}" if where else message))

    def render(self, flags: Mapping[str, str]) -> str:
        """The one line with settings spelled as the caller's flags."""
        return render_options(f"{self.where}: {self.message}" if self.where else self.message, flags)


class UnsupportedOpError(ConversionError):
    """The model uses an operator (or an operator configuration) no handler accepts."""


class ToolchainError(ConversionError):
    """A compiler, emulator or CMSIS-NN source tree is missing or failed."""


class OptionError(ConversionError):
    """A setting's value is invalid (an unknown level, a name that is no C identifier): a usage error,
    exit code 2 from the command line."""


class NotExportable(ConversionError):
    """A node has no TFLite-Micro equivalent with identical arithmetic (the oracle cannot check it)."""
