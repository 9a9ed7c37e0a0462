"""Which columns a stream push recomputes: the plan behind `--streaming HOP`'s incremental form.

A stream keeps every time-resolved feature map ((W, C), from the input up to the head) of the current
window in its state. A push of HOP new steps moves each map left by its own hop (HOP over the map's
time stride); a column whose inputs did not change is then already right. What changed: the new
columns at the right end, and the columns whose receptive field reaches a window edge, where the
full-window invoke sees zero padding (or an edge-affected input column) that the stream interior
does not. Per layer, from its TimeGeometry (ops/base.py), with a_in/b_in the input's changed
columns at the left/right edge:

    left:  output j changed if j * stride - pad_left < a_in            (upsample u: j < a_in * u)
    right: output j changed if j * stride - pad_left + span - 1 >= W_in - b_in

and at least the map's hop at the right. Everything else equals the previous window's column j + hop:
its inputs are the same values shifted by the input's hop, all inside the window. The first node that
is not time-local (a global pool, a flatten, a dense layer), or whose stride does not divide HOP,
starts the head, which runs in full on every push from the stored maps. Exactness does not depend on
the kernels: a layer whose slice a handler cannot emit is recomputed whole (codegen/stream_code.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from fractions import Fraction
from math import ceil, lcm

from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ops.roles import Transpose
from onnx2cmsis.ops.base import TimeGeometry
from onnx2cmsis.ops.registry import Registry

STATE_ALIGN = 4


def state_bytes(nbytes: int) -> int:
    """Bytes a buffer takes in the stream state: its own, rounded up to whole words (STATE_ALIGN)."""
    return -(-nbytes // STATE_ALIGN) * STATE_ALIGN


class MapBytes:
    """The bytes of a (width, channels) map kept in a stream state (time-major: one row per column)."""

    width: int
    channels: int
    element_bytes: int

    @property
    def row_bytes(self) -> int:
        return self.channels * self.element_bytes

    @property
    def nbytes(self) -> int:
        return self.width * self.row_bytes


@dataclass(frozen=True)
class StreamBuffer(MapBytes):
    """A time-resolved feature map's columns in the stream state."""

    tensor: str
    width: int  # columns (time steps of this map)
    channels: int
    element_bytes: int
    offset: int  # bytes from the start of the state's maps
    hop: int  # columns a push moves it by


@dataclass(frozen=True)
class Region:
    """Output columns [start, stop) of a node, from input columns [first, last) of each input, with
    these zero paddings around the slice."""

    start: int
    stop: int
    inputs: tuple[tuple[int, int], ...]
    pad: tuple[int, int]


@dataclass
class StreamStep:
    index: int  # the node's position in graph.nodes
    geometry: TimeGeometry | None  # None: a head node (runs in full every push)
    regions: list[Region] = field(default_factory=list)  # the columns a push recomputes
    whole: bool = False  # every column changes each push: no regions, the whole layer

    @property
    def streams(self) -> bool:
        return self.geometry is not None


@dataclass
class StreamPlan:
    hop: int
    window: int
    input_tensor: str  # the map the pushed samples go into (time-major)
    skipped: set[int]  # nodes a push does not run (the input's transpose: the samples arrive transposed)
    buffers: dict[str, StreamBuffer]  # time-resolved map -> its place in the state
    aliases: dict[str, str]  # a view of a map -> the map
    steps: list[StreamStep]
    head_reason: str  # why the head starts where it does

    @property
    def maps_bytes(self) -> int:
        return sum(state_bytes(b.nbytes) for b in self.buffers.values())

    def root(self, tensor: str) -> str:
        return self.aliases.get(tensor, tensor)


def stream_input(graph: Graph, registry: Registry, window: int, channels: int) -> tuple[str, set[int]] | None:
    """The (W, C) map the samples fill: the model input itself, or the transpose (or, for one
    channel, the view) that reads a channel-major input, then skipped. None: no such map."""
    source = graph.inputs[0]
    if graph.tensors[source].shape == (window, channels):
        return source, set()
    readers = [i for i, n in enumerate(graph.nodes) if source in n.inputs]
    if len(readers) == 1:
        node = graph.nodes[readers[0]]
        handler = registry.for_op(node.op)
        moves = isinstance(handler.role(node), Transpose) or handler.aliases_input(node)
        if moves and graph.tensors[node.output].shape == (window, channels):
            return node.output, {readers[0]}
    return None


def hop_multiple(graph: Graph, registry: Registry, window: int, channels: int) -> tuple[int, str | None]:
    """What every HOP must be a multiple of for each time-local layer before the head to stream
    (its time strides' least common multiple), and the layer with the largest stride (None: 1)."""
    found = stream_input(graph, registry, window, channels)
    if found is None:
        return 1, None
    source, skipped = found
    stride: dict[str, Fraction] = {source: Fraction(1)}
    multiple, widest, largest = 1, None, Fraction(1)
    for i, node in enumerate(graph.nodes):
        handler = registry.for_op(node.op)
        if i in skipped or not all(t in stride for t in node.inputs):
            continue
        out = graph.tensors[node.output]
        if handler.aliases_input(node):
            if out.shape == graph.tensors[node.inputs[0]].shape:
                stride[node.output] = stride[node.inputs[0]]
            continue
        geometry = handler.time_geometry(node, graph) if len(out.shape) == 2 else None
        strides = {stride[t] for t in node.inputs}
        if geometry is None or len(strides) != 1:
            continue
        stride[node.output] = strides.pop() * geometry.stride / geometry.upsample
        multiple = lcm(multiple, stride[node.output].numerator)
        if stride[node.output] > largest:
            largest = stride[node.output]
            widest = f"layer {i} '{node.name}' ({node.op}) moves {largest} input steps per column"
    return multiple, widest


def plan_stream(graph: Graph, registry: Registry, hop: int, window: int, channels: int) -> StreamPlan | None:
    """The incremental stream of `graph` (None when its input is not a (W, C) map a push can fill)."""
    found = stream_input(graph, registry, window, channels)
    if found is None:
        return None
    source, skipped = found
    element = graph.tensors[source].nbytes // graph.tensors[source].size
    stride: dict[str, Fraction] = {source: Fraction(1)}
    edges: dict[str, tuple[int, int]] = {source: (0, hop)}  # changed columns at the left, right
    buffers = {source: StreamBuffer(source, window, channels, element, 0, hop)}
    aliases: dict[str, str] = {}
    time_maps = {source}  # the maps and the views of them that keep their columns
    steps: list[StreamStep] = []
    head_reason = "every layer streams"
    used = state_bytes(buffers[source].nbytes)  # where the next map goes
    for i, node in enumerate(graph.nodes):
        if i in skipped:
            continue
        handler = registry.for_op(node.op)
        roots = [aliases.get(t, t) for t in node.inputs]
        resolved = all(t in time_maps for t in node.inputs)
        out = graph.tensors[node.output]
        if handler.aliases_input(node):
            if roots[0] in buffers:
                aliases[node.output] = roots[0]  # a view of a map: the map's bytes (for the head too)
                if resolved and out.shape == graph.tensors[roots[0]].shape:
                    time_maps.add(node.output)  # the same columns: it streams on
                elif resolved and head_reason == "every layer streams":
                    head_reason = f"layer {i} '{node.name}' ({node.op}) starts the head: it regroups the columns"
            steps.append(StreamStep(i, None))
            continue
        geometry = handler.time_geometry(node, graph) if resolved and len(out.shape) == 2 else None
        if geometry is not None:
            strides = {stride[r] for r in roots}
            out_stride = strides.pop() * geometry.stride / geometry.upsample if len(strides) == 1 else None
            if out_stride is None:
                geometry, why = None, "its inputs move at different time strides"
            elif (hop / out_stride).denominator != 1:
                geometry, why = None, f"its time stride {out_stride} does not divide the hop {hop}"
            if geometry is None and head_reason == "every layer streams":
                head_reason = f"layer {i} '{node.name}' ({node.op}) starts the head: {why}"
        if geometry is None:
            if resolved and head_reason == "every layer streams":
                head_reason = f"layer {i} '{node.name}' ({node.op}) starts the head: it is not time-local"
            steps.append(StreamStep(i, None))
            continue
        w_out, c_out = out.shape
        h_out = int(hop / out_stride)
        step, (a_out, b_out) = _streamed_step(i, geometry, [graph.tensors[r].shape[0] for r in roots],
                                              [edges[r] for r in roots], w_out, h_out)
        buffers[node.output] = StreamBuffer(node.output, w_out, c_out, out.nbytes // out.size, used, h_out)
        used += state_bytes(out.nbytes)
        time_maps.add(node.output)
        stride[node.output] = out_stride
        edges[node.output] = (a_out, b_out)
        steps.append(step)
    return StreamPlan(hop, window, source, skipped, buffers, aliases, steps, head_reason)


def _streamed_step(index: int, geometry: TimeGeometry, widths: list[int], edges: list[tuple[int, int]], w_out: int,
                   h_out: int) -> tuple[StreamStep, tuple[int, int]]:
    """A time-local layer's step (the output regions a push recomputes, or whole) and its output's
    changed columns at the left and right."""
    step = StreamStep(index, geometry)
    a_out, b_out = _changed(geometry, widths, edges, w_out, h_out)
    if a_out + b_out >= w_out:
        step.whole = True
        return step, (a_out, b_out)
    ranges = [(0, a_out)] if a_out else []
    ranges.append((w_out - b_out, w_out))
    for j0, j1 in ranges:
        region = _region(geometry, j0, j1, widths)
        if region is None:
            step.whole, step.regions = True, []
            break
        step.regions.append(region)
    return step, (a_out, b_out)


def _changed(g: TimeGeometry, widths: list[int], edges: list[tuple[int, int]], w_out: int,
             h_out: int) -> tuple[int, int]:
    """How many output columns change at the left and the right edge (see the module docstring)."""
    a_in = max(a for a, _ in edges)
    if g.upsample > 1:
        w_in, b_in = widths[0], edges[0][1]
        left, first_right = a_in * g.upsample, (w_in - b_in) * g.upsample
    else:
        left = ceil((a_in + g.pad_left) / g.stride)
        first_right = min(ceil((w - b + g.pad_left - g.span + 1) / g.stride) for w, (_, b) in zip(widths, edges))
    a_out = min(max(left, 0), w_out)
    b_out = max(w_out - min(max(first_right, 0), w_out), h_out)
    return a_out, b_out


def _region(g: TimeGeometry, j0: int, j1: int, widths: list[int]) -> Region | None:
    """Output columns [j0, j1) and the input slice with its paddings; None when the slice would hold
    no input column at all (only padding)."""
    if g.upsample > 1:
        return Region(j0, j1, tuple((j0 // g.upsample, -(-j1 // g.upsample)) for _ in widths), (0, 0))
    first = j0 * g.stride - g.pad_left
    end = (j1 - 1) * g.stride - g.pad_left + g.span  # one past the last input column read
    slices = []
    for w in widths:
        r0, r1 = max(first, 0), min(end, w)
        if r1 <= r0:
            return None
        slices.append((r0, r1))
    return Region(j0, j1, tuple(slices), (max(first, 0) - first, end - min(end, widths[0])))
