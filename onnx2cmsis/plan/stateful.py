"""The plan behind `--streaming HOP --stateful`: a model with recurrent layers run on an endless
stream, each push taking the new HOP steps once through every layer and on through the recurrences
from the state the last push left.

Contract: after every push the output is what the model's integer reference gives run once over every
step pushed since the reset (with its recurrent layers' last step, ops/movement.py's end-anchored crop,
read at the last step pushed). That holds only where a layer's output step reads no input step after
it: every time-local layer before the last step reaches back `span - stride` columns at most
(`padding='causal'`, or 'valid', which lags its input: the stream computes it as a causal layer whose
first columns, before the one run's first, it then overwrites with the zero point the one run pads
with; a recurrence skips them, and a push returns 0 until the crops hold steps of the one run), with
zeros for padding and a lag its stride divides. A 'same' layer (it reads ahead), a time reversal (a
backward direction), a global pool or flatten over a recurrent layer's steps is refused, naming the
layer.

What a push keeps (the stream state): a word saying whether the stream has started; each
time-resolved map's new columns and, before them, the history its readers reach back over (a recurrent
layer's previous output, a causal window's span - stride columns, the crop's last steps); each
recurrent layer's state (ops/base.py Recurrence). The reset zeroes the state; the first push after it
fills each map's history with the map's zero point (the zero padding the one run sees before the
stream starts), so zeroed memory is a reset state.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field, replace

from onnx2cmsis.errors import OptionError
from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ops.base import TimeGeometry
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.plan.stream import MapBytes, Region, state_bytes, stream_input


HEADER_BYTES = 4  # an int32 before the maps: 0 after a reset (the first push fills the histories)


@dataclass
class StatefulMap(MapBytes):
    """A time-resolved feature map's last columns in the stream state: `keep` of history, then the
    `hop` a push adds."""

    tensor: str
    hop: int
    channels: int
    element_bytes: int
    zero_point: int
    keep: int = 0
    offset: int = 0  # bytes from the start of the state
    # Columns a push computes before the one run's first (a 'valid' layer lags its input: the stream
    # computes it as a causal one, whose first outputs read the padding); the first pushes overwrite
    # them with the zero point, which is what the one run's padding is, and a recurrence skips them.
    delay: int = 0

    @property
    def delayed_pushes(self) -> int:
        """Pushes after the reset whose new columns include some before the one run's first."""
        return -(-self.delay // self.hop)

    @property
    def width(self) -> int:  # type: ignore[override]
        return self.keep + self.hop


@dataclass
class StatefulStep:
    index: int  # the node's position in graph.nodes
    kind: str  # "layer": its new columns on a slice; "recurrence"; "view" (no code); "head": in full
    reach: int = 0  # a layer's input columns before its first new output's own (span - stride)
    region: Region | None = None  # a layer's new columns (state columns of its maps)
    state_offset: int = 0  # a recurrence's state in the stream state
    state_bytes: int = 0


@dataclass
class StatefulPlan:
    hop: int
    input_tensor: str  # the map the pushed samples go into (time-major)
    skipped: set[int]  # nodes a push does not run (the input's transpose: the samples arrive transposed)
    maps: dict[str, StatefulMap]
    aliases: dict[str, str]  # a view of a map -> the map
    tails: dict[str, tuple[str, int]]  # a map's last steps (a crop, or a view of one) -> (map, steps)
    steps: list[StatefulStep] = field(default_factory=list)

    output_map: StatefulMap | None = None  # a time-resolved model output: each push gives its new steps

    @property
    def first_output_push(self) -> int:
        """The first push (1-based) after which every crop read by the head (or a time-resolved output's
        new steps) holds steps of the one run: the pushes before it return 0, as a model run on fewer
        steps than its layers need."""
        reads = [*((self.maps[m], width) for m, width in self.tails.values()),
                 *([(self.output_map, self.output_map.hop)] if self.output_map else [])]
        return max([1, *(-(-(m.delay + width) // m.hop) for m, width in reads)])

    @property
    def counted_pushes(self) -> int:
        """What the push counter in the state saturates at: past every push that differs."""
        return max(self.first_output_push, *(m.delayed_pushes for m in self.maps.values())) + 1

    @property
    def state_bytes(self) -> int:
        """The int32 flag (0: reset, so zeroed memory is a reset state), the maps, the recurrent states."""
        return HEADER_BYTES + sum(state_bytes(m.nbytes) for m in self.maps.values()) + self.recurrent_state_bytes

    @property
    def recurrent_state_bytes(self) -> int:
        return sum(state_bytes(s.state_bytes) for s in self.steps if s.kind == "recurrence")

    def root(self, tensor: str) -> str:
        return self.aliases.get(tensor, tensor)

    def column(self, tensor: str) -> tuple[StatefulMap, int] | None:
        """Where a tensor's bytes start in the state: (its map, the column), or None (the arena)."""
        if tensor in self.tails:
            m = self.maps[self.tails[tensor][0]]
            return m, m.width - self.tails[tensor][1]
        if self.root(tensor) in self.maps:
            return self.maps[self.root(tensor)], 0
        return None


def plan_stateful(graph: Graph, registry: Registry, hop: int, window: int, channels: int) -> StatefulPlan:
    """The stateful stream of `graph`, or OptionError naming every layer that keeps it from one."""
    found = stream_input(graph, registry, window, channels)
    if found is None:
        raise OptionError("{opt:stateful} needs a model whose input is a (steps, channels) map a push can fill")
    source, skipped = found
    sp = StatefulPlan(hop, source, skipped, {source: _new_map(graph, source, hop)}, {}, {})
    problems: list[str] = []
    refused: set[str] = set()
    for i, node in enumerate(graph.nodes):
        if i in skipped:
            continue
        handler = registry.for_op(node.op)
        where = f"layer {i} '{node.name}' ({node.op})"
        streamed = [t for t in node.inputs if sp.root(t) in sp.maps]
        if handler.aliases_input(node) and (node.inputs[0] in sp.tails or streamed):
            if node.inputs[0] in sp.tails:
                sp.tails[node.output] = sp.tails[node.inputs[0]]
            elif graph.tensors[node.output].shape == graph.tensors[sp.root(node.inputs[0])].shape:
                sp.aliases[node.output] = sp.root(node.inputs[0])
            else:
                problems.append(f"{where} regroups the steps of a time-resolved map")
            sp.steps.append(StatefulStep(i, "view"))
            continue
        if any(t in refused for t in node.inputs):  # after a refused layer: said once, at that layer
            refused.add(node.output)
            continue
        if not streamed:
            sp.steps.append(StatefulStep(i, "head"))
            continue
        out = graph.tensors[node.output]
        recurrence = handler.recurrence(node, graph)
        if recurrence is not None:
            source_map = sp.maps[sp.root(node.inputs[0])]
            sp.maps[node.output] = _new_map(graph, node.output, source_map.hop,
                                            1 if recurrence.reads_previous_output else 0, source_map.delay)
            sp.steps.append(StatefulStep(i, "recurrence", state_bytes=recurrence.state_bytes))
            continue
        geometry = handler.time_geometry(node, graph) if len(out.shape) == 2 else None
        if geometry is None or len(streamed) != len(node.inputs):
            problems.append(f"{where} reads every step of a time-resolved map (it is not time-local, as a backward "
                            "direction's time reversal, a flatten or a global pool): a stateful stream runs in full "
                            "only what follows a recurrent layer's last step")
            refused.add(node.output)
            continue
        widths = [graph.tensors[t].shape[0] for t in node.inputs]
        if _is_tail(geometry, widths[0], out.shape[0]) and len(node.inputs) == 1 and \
                not _read_step_by_step(graph, registry, node.output):
            m = sp.maps[sp.root(node.inputs[0])]
            m.keep = max(m.keep, out.shape[0] - m.hop)
            sp.tails[node.output] = (m.tensor, out.shape[0])
            sp.steps.append(StatefulStep(i, "view"))
            continue
        hops = {sp.maps[sp.root(t)].hop for t in node.inputs}
        delays = {sp.maps[sp.root(t)].delay for t in node.inputs}
        why = _not_causal(geometry, widths, out.shape[0], handler.absorbs_zero_pad) or (
            "its inputs arrive at different rates" if len(hops) > 1 else None) or (
            f"its inputs lag by different numbers of steps ({', '.join(map(str, sorted(delays)))}: 'valid' layers "
            "on one branch only)" if len(delays) > 1 else None)
        h_in, d_in = hops.pop(), max(delays)
        lag = 0 if geometry.upsample > 1 else geometry.span - geometry.stride - geometry.pad_left
        if why is None and geometry.upsample == 1 and h_in % geometry.stride:
            why = (f"its stride {geometry.stride} does not divide the {h_in} new columns a push gives it (make "
                   "HOP a multiple of the strides before it)")
        elif why is None and geometry.upsample == 1 and (d_in + lag) % geometry.stride:
            why = (f"its stride {geometry.stride} does not divide the {d_in + lag} steps its input lags the stream "
                   "by ('valid' layers before it): its windows would not start where the one run's do")
        if why:  # refused, and taken as it is to find what is wrong after it too
            problems.append(f"{where} {why}")
        reach = 0 if geometry.upsample > 1 else geometry.span - geometry.stride
        for t in node.inputs:
            m = sp.maps[sp.root(t)]
            m.keep = max(m.keep, reach)
        h_out = h_in * geometry.upsample if geometry.upsample > 1 else max(h_in // geometry.stride, 1)
        if why:  # what follows is judged as if the refused layer were causal: no lag of its own to blame
            lag = 0
        d_out = d_in * geometry.upsample if geometry.upsample > 1 else (d_in + lag) // max(geometry.stride, 1)
        sp.maps[node.output] = _new_map(graph, node.output, h_out, 0, d_out)
        sp.steps.append(StatefulStep(i, "layer", reach=reach))
    if not any(registry.for_op(n.op).recurrence(n, graph) for n in graph.nodes):
        problems.append("the model has no recurrent layer (LSTM, GRU, RNN) whose state a push could keep: "
                        "stream it without {opt:stateful}")
    elif not any(step.kind == "recurrence" for step in sp.steps) and not problems:
        problems.append("no recurrent layer reads the stream step by step (each reads a window's last steps): "
                        "stream it without {opt:stateful}")
    out_map = sp.maps.get(sp.root(graph.outputs[0]))
    if out_map is not None and out_map.delay % out_map.hop:
        problems.append(f"its output '{graph.outputs[0]}' lags the stream by {out_map.delay} steps, which its "
                        f"{out_map.hop} steps per push do not divide: a push would hold steps of two pushes")
    if problems:
        raise OptionError("{opt:stateful} cannot stream this model: " + "; ".join(problems))
    sp.output_map = out_map
    _place(graph, sp)
    return sp


def _new_map(graph: Graph, tensor: str, hop: int, keep: int = 0, delay: int = 0) -> StatefulMap:
    t = graph.tensors[tensor]
    return StatefulMap(tensor, hop, t.shape[1], t.nbytes // t.size, t.quant.zero_point if t.quant else 0, keep,
                       delay=delay)


def _read_step_by_step(graph: Graph, registry: Registry, tensor: str) -> bool:
    """Whether a layer that goes step by step (time-local or recurrent) reads the tensor, through views:
    then a crop of the last steps is a crop of the stream's start, not the steps the head reads."""
    for reader in graph.consumers(tensor):
        handler = registry.for_op(reader.op)
        if handler.aliases_input(reader):
            if _read_step_by_step(graph, registry, reader.output):
                return True
        elif handler.recurrence(reader, graph) is not None or (
                len(graph.tensors[reader.output].shape) == 2 and handler.time_geometry(reader, graph) is not None):
            return True
    return False


def _is_tail(g: TimeGeometry, w_in: int, w_out: int) -> bool:
    """A crop of the map's last w_out columns (a recurrent layer's last step)."""
    return (g.kernel, g.stride, g.upsample) == (1, 1, 1) and w_out < w_in and -g.pad_left + w_out == w_in


def _not_causal(g: TimeGeometry, widths: list[int], w_out: int, pads_zeros: bool) -> str | None:
    """Why the layer's output step t would read input steps after t (or another origin than the
    one run's), or None."""
    if g.upsample > 1:
        return None if g.pad_left == 0 else "pads an upsampled map"
    right = (w_out - 1) * g.stride - g.pad_left + g.span - widths[0]
    if right > 0:
        return (f"pads {right} steps on the right: its last outputs read steps not pushed yet (a stateful stream "
                "needs causal padding: Keras padding='causal', PyTorch padding on the left only)")
    if right <= -g.stride:
        return f"drops its input's last {-right} steps: a stream's last steps are the ones it has just pushed"
    if g.pad_left < 0:
        return (f"crops its input's first {-g.pad_left} steps: over a stream the one run would crop its first steps "
                "only, not each window's")
    if g.pad_left > g.span - g.stride:
        return f"pads {g.pad_left} steps on the left, more than its window reaches back"
    if g.pad_left and not pads_zeros:
        return "pads its start with something else than zeros"
    return None


def _place(graph: Graph, sp: StatefulPlan) -> None:
    """Offsets in the state (maps in the order they appear, then the recurrent states) and each
    layer's slice: its new output columns from its inputs' new columns and the history it reaches."""
    used = HEADER_BYTES
    for m in sp.maps.values():
        m.offset = used
        used += state_bytes(m.nbytes)
    for step in sp.steps:
        node = graph.nodes[step.index]
        if step.kind == "recurrence":
            step.state_offset = used
            used += state_bytes(step.state_bytes)
        elif step.kind == "layer":
            out = sp.maps[node.output]
            inputs = tuple((sp.maps[sp.root(t)].keep - step.reach, sp.maps[sp.root(t)].width) for t in node.inputs)
            step.region = Region(out.keep, out.width, inputs, (0, 0))


def retimed_graph(graph: Graph, registry: Registry, sp: StatefulPlan, window: int, steps: int) -> Graph:
    """The graph over `steps` input steps instead of its window: the one run a stateful stream's
    pushes equal, and what tflite-micro runs a push as. Each node as its handler retimes it, each
    shape by its handler's rule (a view that keeps its input's shape keeps it)."""
    g = copy.copy(graph)
    g.tensors = dict(graph.tensors)
    t = graph.tensors[graph.inputs[0]]
    g.tensors[t.name] = replace(t, shape=_with_steps(t.shape, graph.input_layout, window, steps))
    if graph.model_input_shapes:  # as the model declares it, batch first
        declared = graph.model_input_shapes[0]
        g.model_input_shapes = [(declared[0], *_with_steps(declared[1:], graph.input_layout, window, steps))]
    g.nodes = []
    for node in graph.nodes:
        handler = registry.for_op(node.op)
        shapes = [g.tensors[t].shape for t in node.inputs]
        new = handler.retimed(node, graph, [s[0] for s in shapes])
        if handler.aliases_input(node):  # a view: the samples' map, a stream map as wide as its input, or steps
            out = graph.tensors[node.output].shape
            outs = [(steps, *out[1:]) if node.output == sp.input_tensor else
                    shapes[0] if sp.root(node.output) in sp.maps else out]
        else:
            outs = handler.output_shapes(new, shapes)
        for name, shape in zip(new.outputs, outs, strict=True):
            g.tensors[name] = replace(graph.tensors[name], shape=tuple(shape))
        g.nodes.append(new)
    return g


def _with_steps(shape: tuple[int, ...], layout: str, window: int, steps: int) -> tuple[int, ...]:
    """The input shape (batch left out) with its time axis `steps` long: the first of (W, C), the last of
    (C, W), and in a one-channel ("flat") input the last axis as long as the window."""
    if layout == "time-major":
        axis = 0
    elif layout == "channel-major":
        axis = len(shape) - 1
    else:
        axis = max(i for i, n in enumerate(shape) if n == window)
    return tuple(steps if i == axis else n for i, n in enumerate(shape))
