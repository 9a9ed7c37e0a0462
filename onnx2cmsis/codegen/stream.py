"""`--streaming HOP`: the C for a continuous signal, one output every HOP time steps.

The stream state lives apart from the arena. Its incremental form (plan/stream.py,
codegen/stream_code.py) keeps every time-resolved feature map of the window and recomputes per push
only the columns the hop changes, then the head in full. Where a model's input is not a (W, C) map a
push can fill, the state is the window itself (in the model's layout) and a push runs the whole model
on it. Either way every output is byte for byte NAME_invoke on the last WINDOW steps pushed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jinja2

from onnx2cmsis.codegen.emit_c import Layer
from onnx2cmsis.codegen.stateful_code import stateful_code
from onnx2cmsis.codegen.stream_code import StreamCode, stream_code, stream_context
from onnx2cmsis.errors import OptionError
from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.plan.arena import MemoryPlan
from onnx2cmsis.plan.stateful import plan_stateful
from onnx2cmsis.plan.stream import StreamPlan, hop_multiple, plan_stream, state_bytes


@dataclass(frozen=True)
class StreamSpec:
    hop: int  # time steps per push
    window: int  # time steps of the model's input window
    channels: int
    time_major: bool  # the model's input layout (the pushed samples are always time-major)
    hop_multiple: int  # what HOP is a multiple of: the time strides before the head (plan.stream)
    stateful: bool = False  # recurrent state kept across pushes (plan/stateful.py), not a window

    def window_state_bytes(self, element_bytes: int) -> int:
        """The window form: the steps pushed since the reset (int32), then the window, in whole words."""
        return 4 + state_bytes(self.window * self.channels * element_bytes)


def stream_parts(spec: StreamSpec, env: jinja2.Environment, name: str, graph: Graph, registry: Registry,
                 layers: list[Layer], plan: MemoryPlan) -> tuple[dict[str, Any], dict[str, Any]]:
    """(what the templates need, NAME.json's `stream`) for a quantized, planned graph."""
    if spec.stateful:
        return _stateful_parts(spec, env, name, graph, registry, layers, plan)
    element = graph.tensors[graph.inputs[0]].nbytes // graph.tensors[graph.inputs[0]].size
    sp = plan_stream(graph, registry, spec.hop, spec.window, spec.channels)
    code = None if sp is None else stream_code(env, name, graph, registry, layers, plan, sp)
    state = spec.window_state_bytes(element) if sp is None else 4 + sp.maps_bytes
    context = {"stream": spec, "stream_state_size": state, "stateful": None,
               **(stream_context(code) if code else {"stream_layers": None})}
    return context, _report(spec, state, sp, code, sum(layer.call.macs for layer in layers))


def _stateful_parts(spec: StreamSpec, env: jinja2.Environment, name: str, graph: Graph, registry: Registry,
                    layers: list[Layer], plan: MemoryPlan) -> tuple[dict[str, Any], dict[str, Any]]:
    sp = plan_stateful(graph, registry, spec.hop, spec.window, spec.channels)
    code = stateful_code(env, name, graph, registry, layers, plan, sp)
    steps = sp.output_map.hop if sp.output_map else None  # a time-resolved output's new steps per push
    size = steps * sp.output_map.channels if sp.output_map else None
    context = {"stream": spec, "stream_state_size": sp.state_bytes, "stream_layers": None, "stateful": code,
               "stream_output_steps": steps, "stream_output_size": size}
    heads = code.head
    report = {"hop": spec.hop, "window": spec.window, "channels": spec.channels, "time_major": spec.time_major,
              "state_bytes": sp.state_bytes, "macs_per_invoke": sum(layer.call.macs for layer in layers),
              "recomputes": "new steps", "stateful": True, "recurrent_state_bytes": sp.recurrent_state_bytes,
              "macs_per_push": code.macs_per_push, "first_output_push": code.first_output_push,
              "output_steps_per_push": steps, "output_size_per_push": size or graph.tensors[graph.outputs[0]].size,
              "bytes_moved_per_push": sum(keep for _, _, keep in code.shifts), "hop_multiple": spec.hop_multiple,
              "head": (f"layer {heads[0].index} '{heads[0].name}' and after run in full each push, from the "
                       "recurrent layer's last step" if heads else "no layer runs in full"),
              "notes": []}
    return context, report


def _report(spec: StreamSpec, state: int, sp: StreamPlan | None, code: StreamCode | None,
            macs: int) -> dict[str, Any]:
    figures = {"hop": spec.hop, "window": spec.window, "channels": spec.channels, "time_major": spec.time_major,
               "state_bytes": state, "macs_per_invoke": macs}
    if sp is None or code is None:
        return {**figures, "recomputes": "window", "macs_per_push": macs, "hop_multiple": None,
                "head": "the model's input is no (steps, channels) map a push can fill: a push runs the window",
                "notes": []}
    moved = sum(keep for _, _, keep in code.shifts) + (spec.window - spec.hop) * sp.buffers[sp.input_tensor].row_bytes
    return {**figures, "recomputes": "columns", "macs_per_push": code.macs_per_push, "bytes_moved_per_push": moved,
            "hop_multiple": spec.hop_multiple, "head": sp.head_reason, "notes": code.notes}


def stream_spec(hop: int | None, input_window: dict[str, Any] | None, graph: Graph,
                registry: Registry, stateful: bool = False) -> StreamSpec | None:
    """The stream of a model whose input is a window of time steps (report.input_window), or None
    without `hop`. Refuses a model without a time axis, a HOP outside 1..WINDOW, and a HOP that is
    not a multiple of every time stride before the head (naming the multiples that are)."""
    if hop is None:
        if stateful:
            raise OptionError("{opt:stateful} needs {opt:streaming}: the hop, the time steps of one push")
        return None
    if not graph.single_io:
        raise OptionError(f"{{opt:streaming}} streams models with one input and one output; this one has "
                          f"{len(graph.inputs)} inputs and {len(graph.outputs)} outputs")
    if input_window is None:
        raise OptionError("{opt:streaming} needs a model whose input is a window of time steps (steps x "
                          "channels); this model's input has no time axis")
    window = int(input_window["steps"])
    if not 1 <= int(hop) <= window:
        raise OptionError(f"{{opt:streaming}} {hop}: the hop must be 1 to {window} time steps (the model's window)")
    channels = int(input_window["channels"])
    multiple, widest = hop_multiple(graph, registry, window, channels)
    if int(hop) % multiple:
        allowed = ", ".join(str(k) for k in range(multiple, window + 1, multiple)[:6])
        raise OptionError(f"{{opt:streaming}} {hop}: the hop must be a multiple of {multiple} ({widest}), so that "
                          f"every column of every layer before the head moves by whole columns: {allowed}"
                          + (", ..." if window // multiple > 6 else ""))
    if stateful:  # refused now, before calibration, naming every layer in the way
        plan_stateful(graph, registry, int(hop), window, channels)
    return StreamSpec(int(hop), window, channels, bool(input_window["time_major"]), multiple, stateful)
