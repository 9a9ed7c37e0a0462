"""`--streaming HOP`: the C for a continuous signal, one output every HOP time steps.

The generated stream keeps the last WINDOW steps pushed (the model's input window, in the model's
own input layout) in a state apart from the arena: a push shifts the window by HOP steps, writes the
HOP new steps in (interleaved time-major samples, as sensors deliver them, whatever the model's
layout) and, once WINDOW steps have arrived since the reset, runs the model on the window. Every
output is therefore byte for byte NAME_invoke on the last WINDOW steps. This first form recomputes
the whole window per push; computing only the columns a hop changes is the next step (docs/streaming.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from onnx2cmsis.errors import OptionError

STATE_ALIGN = 4


@dataclass(frozen=True)
class StreamSpec:
    hop: int  # time steps per push
    window: int  # time steps of the model's input window
    channels: int
    time_major: bool  # the model's input layout (the pushed samples are always time-major)

    def state_bytes(self, element_bytes: int) -> int:
        """The steps pushed since the reset (int32), then the window, padded to whole words."""
        return 4 + -(-self.window * self.channels * element_bytes // STATE_ALIGN) * STATE_ALIGN

    def report(self, element_bytes: int) -> dict[str, Any]:
        """NAME.json's `stream`."""
        return {"hop": self.hop, "window": self.window, "channels": self.channels, "time_major": self.time_major,
                "state_bytes": self.state_bytes(element_bytes), "recomputes": "window"}


def stream_spec(hop: int | None, input_window: dict[str, Any] | None) -> StreamSpec | None:
    """The stream of a model whose input is a window of time steps (report.input_window), or None
    without `hop`. Refuses a model without a time axis and a HOP outside 1..WINDOW."""
    if hop is None:
        return None
    if input_window is None:
        raise OptionError("{opt:streaming} needs a model whose input is a window of time steps (steps x "
                          "channels); this model's input has no time axis")
    window = int(input_window["steps"])
    if not 1 <= int(hop) <= window:
        raise OptionError(f"{{opt:streaming}} {hop}: the hop must be 1 to {window} time steps (the model's window)")
    return StreamSpec(int(hop), window, int(input_window["channels"]), bool(input_window["time_major"]))
