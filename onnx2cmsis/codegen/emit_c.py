"""Quantized graph + memory plan -> NAME.c and NAME.h, through the jinja2 templates only."""

from __future__ import annotations

import functools

from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
import numpy as np

from onnx2cmsis import __version__
from onnx2cmsis.codegen.naming import c_comment, c_identifier, layer_names
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import KernelCall
from onnx2cmsis.plan.arena import MemoryPlan, Placement, Step


@dataclass
class Layer:
    """One node as the generated C and the report see it."""

    index: int
    ident: str
    name: str
    op: str
    origin: str
    call: KernelCall
    input_shape: tuple[int, ...]
    output_shape: tuple[int, ...]
    weight_bytes: int

    def arrays_prefix(self, model: str) -> str:
        """The C names of this layer's constant arrays begin with the model's name: they are static, but
        a firmware with several models then has no two alike in its map file or debugger (and the models
        can be built as one translation unit)."""
        return f"{model}_{self.ident}"


def templates_dir() -> Path:
    """Installed wheels carry the templates as package data; a source checkout has them at the top."""
    try:
        packaged = resources.files("onnx2cmsis") / "templates"
        if packaged.is_dir():
            return Path(str(packaged))
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parents[2] / "templates"


@functools.lru_cache(maxsize=16)
def template_environment(extra_dirs: tuple[Path, ...] = ()) -> jinja2.Environment:
    """One environment per set of template folders, kept: jinja2 compiles a template once per
    environment, and compiling was two thirds of a small model's conversion time."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([str(templates_dir()), *map(str, extra_dirs)]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
    )
    env.filters["comment"] = c_comment
    env.filters["cfloat"] = lambda v: f"{float(np.float32(v)):.9g}f"
    env.filters["c_values"] = format_values
    return env


def format_values(values: np.ndarray, per_line: int = 16) -> str:
    flat = [str(int(v)) for v in np.asarray(values).reshape(-1)]
    lines = [", ".join(flat[i : i + per_line]) for i in range(0, len(flat), per_line)]
    return ",\n".join("    " + ln for ln in lines)


def make_layers(graph: Graph, schedule: list[Step]) -> list[Layer]:
    """One Layer per step of the schedule, in its order (the C's layer numbers)."""
    layers = []
    short = layer_names([s.node.name for s in schedule])
    for i, (node, call) in enumerate((s.node, s.call) for s in schedule):
        layers.append(
            Layer(
                index=i,
                ident=f"l{i:02d}_{c_identifier(short[i])}",
                name=node.name,
                op=node.op,
                origin=node.origin,
                call=call,
                input_shape=graph.tensors[node.inputs[0]].shape,
                output_shape=graph.tensors[node.output].shape,
                weight_bytes=sum(a.values.nbytes for a in call.arrays if a.weights and a.guard is None),
            )
        )
    return layers


def placement_pointer(p: Placement, ctype: str, const: bool, several: bool = False) -> str:
    """A C expression for a tensor's first element, typed as its elements (int8_t or int16_t). With
    several inputs or outputs the caller's buffers are `input<k>`/`output<k>` (the invoke's arrays)."""
    if p.storage in ("input", "output"):
        pointer = f"{p.storage}{p.offset}" if several else p.storage
        return f"({ctype} *){pointer}" if p.storage == "input" and not const else pointer
    return f"(arena + {p.offset})" if ctype == "int8_t" else f"({ctype} *)(void *)(arena + {p.offset})"


def io_context(graph: Graph, windows: list[dict[str, Any] | None]) -> dict[str, list[dict[str, Any]]]:
    """What the templates say of each model input and output, in the model's order."""
    def entry(k: int, tensor: str, shape: tuple[int, ...], name: str) -> dict[str, Any]:
        t = graph.tensors[tensor]
        bits = t.quant.bits
        # quantize_input: saturate to the input type; |v| beyond 2^bits saturates before the int32 cast
        return {"index": k, "name": name, "shape": list(shape), "q": t.quant, "size": t.size,
                "far": 1 << bits, "min": -(1 << (bits - 1)), "max": (1 << (bits - 1)) - 1}

    inputs = [entry(k, t, s, n) for k, (t, s, n) in
              enumerate(zip(graph.inputs, graph.model_input_shapes, graph.input_names))]
    read = {t for n in graph.nodes for t in n.inputs}
    for entry_, window, tensor in zip(inputs, windows, graph.inputs):
        # an input no layer reads (an exporter's leftover) still has its place in `inputs`
        entry_.update(window=window, read=tensor in read)
    outputs = [entry(k, t, s, n) for k, (t, s, n) in
               enumerate(zip(graph.outputs, graph.model_output_shapes, graph.output_names))]
    return {"inputs": inputs, "outputs": outputs}


def _bits(graph: Graph, tensor: str) -> int:
    q = graph.tensors[tensor].quant
    return 8 if q is None else q.bits


def element_ctype(graph: Graph, tensor: str) -> str:
    return "int8_t" if _bits(graph, tensor) == 8 else "int16_t"


def call_context(ident: str, call: KernelCall, node: Node, graph: Graph, pointer: Callable[[str, bool], str],
                 scratch_ptr: str) -> dict[str, Any]:
    """What a handler's template gets: its call's context, the layer's identifier (its arrays' prefix),
    and C expressions for its tensors (`pointer(tensor, const)`) and its scratch."""
    ctx = dict(call.context)
    ctx.update(
        ident=ident,
        in_ptr=pointer(node.inputs[0], True),
        in_ptrs=[pointer(t, True) for t in node.inputs],
        out_ptr=pointer(node.output, False),
        in_ctype=element_ctype(graph, node.inputs[0]),
        out_ctype=element_ctype(graph, node.output),
        scratch_ptr=scratch_ptr,
    )
    return ctx


def render_call(env: jinja2.Environment, call: KernelCall, ctx: dict[str, Any]) -> str:
    return env.get_template(f"ops/{call.template}").render(ctx)


def render(
    name: str,
    graph: Graph,
    layers: list[Layer],
    plan: MemoryPlan,
    summary: dict[str, Any],
    template_dirs: tuple[Path, ...] = (),
) -> tuple[str, str]:
    env = template_environment(template_dirs)
    blocks, hooks = [], []

    def planned(tensor: str, const: bool) -> str:
        return placement_pointer(plan.tensors[tensor], element_ctype(graph, tensor), const, not graph.single_io)

    for layer, node in zip(layers, graph.nodes, strict=True):
        ctx = call_context(layer.arrays_prefix(name), layer.call, node, graph, planned,
                           f"(arena + {plan.scratch[layer.index]})" if layer.index in plan.scratch else "NULL")
        blocks.append(render_call(env, layer.call, ctx))
        bits = _bits(graph, node.output)
        hooks.append((ctx["out_ptr"], graph.tensors[node.output].size, "" if bits == 8 else str(bits)))
    ios = io_context(graph, summary["input_windows"])
    common = dict(
        name=name,
        NAME=name.upper(),
        version=__version__,
        layers=layers,
        blocks=blocks,
        hooks=hooks,
        plan=plan,
        single_io=graph.single_io,
        inputs=ios["inputs"],
        outputs=ios["outputs"],
        in_q=ios["inputs"][0]["q"],
        out_q=ios["outputs"][0]["q"],
        in_size=ios["inputs"][0]["size"],
        out_size=ios["outputs"][0]["size"],
        in_far=ios["inputs"][0]["far"],
        in_min=ios["inputs"][0]["min"],
        in_max=ios["inputs"][0]["max"],
        hook16=any(h[2] == "16" for h in hooks),
        **summary,
    )
    header = env.get_template("model.h.j2").render(common)
    source = env.get_template("model.c.j2").render(common)
    return source, header
