"""User-facing failures. Each carries one line: where (file, node) and what is wrong."""

from __future__ import annotations


class ConversionError(Exception):
    """A problem with the user's input that the user can fix; printed as one line, exit code 1."""

    def __init__(self, message: str, where: str | None = None) -> None:
        self.message = message
        self.where = where
        super().__init__(f"{where}: {message}" if where else message)


class UnsupportedOpError(ConversionError):
    """The model uses an operator (or an operator configuration) no handler accepts."""


class ToolchainError(ConversionError):
    """A compiler, emulator or CMSIS-NN source tree is missing or failed."""
