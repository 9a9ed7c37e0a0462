"""The C of a stateful stream push (plan/stateful.py): each time-local layer's new columns through
its own kernel on a slice of the stored maps (codegen/stream_code.py's slices), each recurrent layer's
new steps on from the state the last push left, then the head in full from the last step.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
import jinja2

from onnx2cmsis.codegen.emit_c import Layer, call_context, element_ctype, placement_pointer, render_call
from onnx2cmsis.codegen.stream_code import slice_call, unlike
from onnx2cmsis.errors import OptionError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import KernelCall
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.plan.arena import MemoryPlan
from onnx2cmsis.plan.stateful import StatefulMap, StatefulPlan, StatefulStep


@dataclass
class StatefulLayer:
    index: int
    ident: str
    name: str
    origin: str
    kernel: str
    code: str
    what: str  # what a push runs of it, for the comment
    macs_per_push: int


@dataclass
class StatefulCode:
    layers: list[StatefulLayer]  # what runs on the new steps, in order
    head: list[StatefulLayer]  # then, once the model has an output, the layers after the last step
    counted_pushes: int  # what the state's push counter saturates at
    first_output_push: int  # the pushes before it return 0
    resets: list[tuple[int, int, int, str]]  # (offset, bytes, byte value, what) the reset fills
    shifts: list[tuple[int, int, int]]  # (offset, hop bytes, bytes kept) of each map with a history
    input_at: int  # where the pushed samples go in the state
    output_copy: tuple[int, int] | None  # (offset, bytes): the model output is in the state
    macs_per_push: int
    functions: list[str]  # CMSIS-NN functions the push calls besides the invoke's


def stateful_code(env: jinja2.Environment, name: str, graph: Graph, registry: Registry, layers: list[Layer],
                  plan: MemoryPlan, sp: StatefulPlan) -> StatefulCode:
    def state_pointer(tensor: str, column: int) -> str:
        found = sp.column(tensor)
        assert found is not None, tensor
        m, first = found
        at = f"(st + {m.offset + (first + column) * m.row_bytes})"
        ctype = element_ctype(graph, tensor)
        return at if ctype == "int8_t" else f"({ctype} *)(void *){at}"

    def pointer(tensor: str, const: bool) -> str:
        if sp.column(tensor) is not None:
            return state_pointer(tensor, 0)
        return placement_pointer(plan.tensors[tensor], element_ctype(graph, tensor), const)

    def scratch(index: int) -> str:
        return f"(arena + {plan.scratch[index]})" if index in plan.scratch else "NULL"

    by_index = {step.index: step for step in sp.steps}
    out: list[StatefulLayer] = []
    head: list[StatefulLayer] = []
    functions: set[str] = set()
    for layer, node in zip(layers, graph.nodes, strict=True):
        step = by_index.get(layer.index)
        if step is None or step.kind == "view":
            continue
        prefix = layer.arrays_prefix(name)
        if step.kind == "head":
            code = render_call(env, layer.call, call_context(prefix, layer.call, node, graph, pointer,
                                                             scratch(layer.index)))
            head.append(StatefulLayer(layer.index, layer.ident, layer.name, layer.origin, layer.call.kernel, code,
                                      "in full", layer.call.macs))
            continue
        sub, sub_graph, call = _step_call(registry, node, graph, step, sp)
        why = unlike(layer.call, call, same_functions=False)
        if why:
            raise OptionError(f"{{opt:stateful}}: layer {layer.index} '{node.name}' ({node.op}): {why}")
        columns = {t: first for t, (first, _) in zip(node.inputs, step.region.inputs)} if step.region else {
            node.inputs[0]: sp.maps[sp.root(node.inputs[0])].keep}
        columns[node.output] = sp.maps[node.output].keep

        def sliced(tensor: str, const: bool, columns: dict[str, int] = columns) -> str:
            return state_pointer(tensor, columns[tensor])

        ctx = call_context(prefix, call, sub, sub_graph, sliced, scratch(layer.index))
        out_map = sp.maps[node.output]
        if step.kind == "recurrence":  # the steps before the one run's first are skipped, not run
            skip = f"skip_{layer.index}" if out_map.delay else None
            ctx.update(state_ptr=f"(st + {step.state_offset})", first_step=skip)
            code = (_delayed_columns(out_map, skip) if skip else "") + render_call(env, call, ctx)
        else:
            code = render_call(env, call, ctx) + (_delayed_columns(out_map, None) if out_map.delay else "")
        functions.update(call.functions)
        what = f"its {out_map.hop} new step{'s' if out_map.hop > 1 else ''}" + (
            " on from the state" if step.kind == "recurrence" else "")
        out.append(StatefulLayer(layer.index, layer.ident, layer.name, layer.origin, call.kernel, code, what,
                                 call.macs))
    resets = _resets(sp, graph)
    shifts = [(m.offset, m.hop * m.row_bytes, m.keep * m.row_bytes) for m in sp.maps.values() if m.keep]
    source = sp.maps[sp.input_tensor]
    model_out = sp.column(graph.outputs[0])
    copy_out = None
    if sp.output_map is not None:  # a time-resolved output: the push's new steps
        m = sp.output_map
        copy_out = (m.offset + m.keep * m.row_bytes, m.hop * m.row_bytes)
    elif model_out is not None:
        m, first = model_out
        copy_out = (m.offset + first * m.row_bytes, graph.tensors[graph.outputs[0]].nbytes)
    return StatefulCode(out, head, sp.counted_pushes, sp.first_output_push, resets, shifts,
                        source.offset + source.keep * source.row_bytes, copy_out,
                        sum(layer.macs_per_push for layer in (*out, *head)), sorted(functions))


def _delayed_columns(m: StatefulMap, skip: str | None) -> str:
    """C for the first pushes after the reset: the new columns that come before the one run's first
    (a lagging 'valid' layer's) hold its padding, the zero point; `skip` (a recurrence's) counts them."""
    at = m.offset + m.keep * m.row_bytes
    lines = [f"    int32_t {skip} = 0; /* steps before the one run's first, skipped */" if skip else None,
             f"    if (pushes <= {m.delayed_pushes}) {{ /* columns before the one run's first: its zero padding */",
             f"        const int32_t early = {m.delay} - (pushes - 1) * {m.hop};",
             f"        const int32_t columns = early < {m.hop} ? early : {m.hop};",
             f"        {skip} = columns;" if skip else None,
             f"        memset(st + {at}, {m.zero_point & 0xFF}, (size_t)columns * {m.row_bytes});",
             "    }"]
    return "".join(f"{line}\n" for line in lines if line is not None)


def _resets(sp: StatefulPlan, graph: Graph) -> list[tuple[int, int, int, str]]:
    """What the reset writes: each map's history its zero point (the zero padding the one run sees
    before the stream's start; int16 zero points are 0), each recurrent state zero."""
    fills = []
    for m in sp.maps.values():
        if m.element_bytes == 1:
            fills.append((m.offset, m.nbytes, m.zero_point & 0xFF, f"'{m.tensor}' at its zero point {m.zero_point}"))
        elif m.zero_point:  # a quantized file's int16 value with a zero point: no byte fills it
            raise OptionError(f"{{opt:stateful}}: '{m.tensor}' is int16 with zero point {m.zero_point}; the stream's "
                              "padding fill takes zero points of 0 at 16 bits (TFLite's 16x8)")
        else:
            fills.append((m.offset, m.nbytes, 0, f"'{m.tensor}' at its zero point 0"))
    for step in sp.steps:
        if step.kind == "recurrence":
            fills.append((step.state_offset, step.state_bytes, 0, f"layer {step.index}'s recurrent state"))
    return fills


def _step_call(registry: Registry, node: Node, graph: Graph, step: StatefulStep,
               sp: StatefulPlan) -> tuple[Node, Graph, KernelCall]:
    """The handler's call for a push's new columns: a layer's slice, or a recurrence's new steps."""
    if step.kind == "layer":
        assert step.region is not None
        return slice_call(registry, node, graph, step.region)
    steps = sp.maps[node.output].hop
    sub = replace(node, attrs={**node.attrs, "stateful": True})
    g = replace(graph, tensors=dict(graph.tensors))
    for t in (node.inputs[0], node.output):
        g.tensors[t] = replace(graph.tensors[t], shape=(steps, graph.tensors[t].shape[1]))
    return sub, g, registry.for_op(node.op).emit(sub, g)
