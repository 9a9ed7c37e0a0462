"""The C of an incremental stream push (plan/stream.py says which columns): each time-local layer's
changed columns as its own kernel called on a slice of the stored maps, the head in full.

A slice is the layer's handler emitting the node it gets from `time_slice` over the slice's shapes:
the same template and the same constant arrays (the call names the layer's arrays, so nothing is
duplicated in flash). Where that call would differ in its arrays, want more scratch or another
CMSIS-NN function than the whole layer's, the layer is recomputed whole instead: still exact.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace
from typing import Any

import jinja2
import numpy as np

from onnx2cmsis.codegen.emit_c import Layer, call_context, element_ctype, placement_pointer, render_call
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import KernelCall
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.plan.arena import MemoryPlan
from onnx2cmsis.plan.stream import Region, StreamPlan


@dataclass
class StreamLayer:
    """One layer in the push: `whole` runs on the first full window (and every push when `changed` is
    None), `changed` on later pushes."""

    index: int
    ident: str
    name: str
    origin: str
    kernel: str
    whole: str
    changed: str | None  # None: the layer runs whole on every push (the head, or no slice)
    macs_per_push: int


@dataclass
class StreamCode:
    layers: list[StreamLayer]
    shifts: list[tuple[int, int, int]]  # (offset, hop bytes, bytes kept) of each stored map but the input
    input_offset: int  # where the pushed samples' map starts in the state's maps
    output_copy: tuple[int, int] | None  # (offset, bytes): the model output is itself a stored map
    macs_per_push: int
    notes: list[str] = field(default_factory=list)  # layers recomputed whole, and why


def stream_code(env: jinja2.Environment, name: str, graph: Graph, registry: Registry, layers: list[Layer],
                plan: MemoryPlan, sp: StreamPlan) -> StreamCode:
    def state_pointer(tensor: str, column: int) -> str:
        b = sp.buffers[sp.root(tensor)]
        at = f"(st + {b.offset + column * b.row_bytes})"
        ctype = element_ctype(graph, tensor)
        return at if ctype == "int8_t" else f"({ctype} *)(void *){at}"

    def pointer(tensor: str, const: bool) -> str:
        if sp.root(tensor) in sp.buffers:
            return state_pointer(tensor, 0)
        if plan.tensors[tensor].storage == "input":
            raise AssertionError("a stream push reads the model input only through its stored map")
        return placement_pointer(plan.tensors[tensor], element_ctype(graph, tensor), const)

    def scratch(index: int) -> str:
        return f"(arena + {plan.scratch[index]})" if index in plan.scratch else "NULL"

    out: list[StreamLayer] = []
    notes: list[str] = []
    by_index = {step.index: step for step in sp.steps}
    for layer, node in zip(layers, graph.nodes, strict=True):
        step = by_index.get(layer.index)
        if step is None:  # skipped: the samples arrive as its output
            continue
        whole = render_call(env, layer.call, call_context(layer.arrays_prefix(name), layer.call, node, graph, pointer,
                                                          scratch(layer.index)))
        changed, macs = None, layer.call.macs
        if step.streams and not step.whole:
            parts, macs = [], 0
            for region in step.regions:
                sub_node, sub_graph, call = slice_call(registry, node, graph, region)
                why = unlike(layer.call, call)
                if why:
                    notes.append(f"layer {layer.index} '{node.name}' recomputed whole each push: {why}")
                    parts, macs = [], layer.call.macs
                    break
                columns = dict(zip(node.inputs, (first for first, _ in region.inputs)))
                columns[node.output] = region.start

                def sliced(tensor: str, const: bool, columns: dict[str, int] = columns) -> str:
                    return state_pointer(tensor, columns[tensor])

                parts.append(f"    /* columns {region.start}..{region.stop - 1} */\n" + render_call(
                    env, call, call_context(layer.arrays_prefix(name), call, sub_node, sub_graph, sliced, scratch(layer.index))))
                macs += call.macs
            changed = "".join(parts) if parts else None
        out.append(StreamLayer(layer.index, layer.ident, layer.name, layer.origin, layer.call.kernel, whole, changed,
                               macs))
    # a map its layer rewrites whole need not move; the samples' map moves in the template
    rewritten = {graph.nodes[layer.index].output for layer in out if layer.changed is None}
    shifts = [(b.offset, b.hop * b.row_bytes, (b.width - b.hop) * b.row_bytes) for t, b in sp.buffers.items()
              if t != sp.input_tensor and t not in rewritten]
    model_out = sp.root(graph.outputs[0])
    copy_out = (sp.buffers[model_out].offset, sp.buffers[model_out].nbytes) if model_out in sp.buffers else None
    return StreamCode(out, shifts, sp.buffers[sp.input_tensor].offset, copy_out,
                      sum(layer.macs_per_push for layer in out), notes)


def slice_call(registry: Registry, node: Node, graph: Graph, region: Region) -> tuple[Node, Graph, KernelCall]:
    """The handler's call for output columns region.start..stop-1 over its input slices."""
    handler = registry.for_op(node.op)
    sub = handler.time_slice(node, region.pad[0], region.pad[1], region.stop - region.start)
    g = copy.copy(graph)
    g.tensors = dict(graph.tensors)
    for t, (first, last) in zip(node.inputs, region.inputs):
        g.tensors[t] = replace(graph.tensors[t], shape=(last - first, graph.tensors[t].shape[1]))
    g.tensors[node.output] = replace(graph.tensors[node.output],
                                     shape=(region.stop - region.start, graph.tensors[node.output].shape[1]))
    return sub, g, handler.emit(sub, g)


def unlike(whole: KernelCall, part: KernelCall, same_functions: bool = True) -> str | None:
    """Why the slice's call cannot stand in the whole layer's C, or None (`same_functions=False`: the
    caller adds the functions it calls to the build)."""
    if [a.suffix for a in whole.arrays] != [a.suffix for a in part.arrays] or not all(
            a.ctype == b.ctype and np.array_equal(a.values, b.values) for a, b in zip(whole.arrays, part.arrays)):
        return "its slice would need other constants"
    if part.scratch_bytes > whole.scratch_bytes:
        return f"its slice needs {part.scratch_bytes} B of scratch, the layer {whole.scratch_bytes} B"
    if same_functions and not set(part.functions) <= set(whole.functions):
        return f"its slice calls {', '.join(sorted(set(part.functions) - set(whole.functions)))}"
    return None


def stream_context(code: StreamCode) -> dict[str, Any]:
    return {"stream_layers": code.layers, "stream_shifts": code.shifts, "stream_input_offset": code.input_offset,
            "stream_output_copy": code.output_copy}
