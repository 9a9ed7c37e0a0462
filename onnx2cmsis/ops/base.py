"""The op-handler interface. Built-in ops and plugins implement exactly this.

A handler owns everything about one op family, so a reader finds it in one place:
  - import: `from_onnx` turns a model node into canonical IR nodes (through `ImportContext`, never a
    protobuf; ops/contexts.py, re-exported here with `OnnxNodeView` and `TfliteContext`),
  - the shape rule: `output_shapes`,
  - quantization: `quantize` fixes output quantization and derives the integer parameters,
  - the integer reference: `reference` (one sample) or `reference_batch` (N at once), numpy that is
    bit-exact with the CMSIS-NN arithmetic,
  - kernel choice and C emission: `emit` returns a `KernelCall` rendered by a template,
  - its place in the passes: `role` (what the rewrites may absorb it as: ops/roles.py), the
    capabilities below (what it may absorb), and `lower` (the nodes it becomes when it cannot stay).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnx2cmsis.errors import NotExportable, UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.roles import Role
from onnx2cmsis.arith.rules import QuantParams, activation_quant, activation_range
from onnx2cmsis.ops.contexts import ImportContext, OnnxNodeView, TfliteContext  # noqa: F401 (the handler API)


@dataclass
class CArray:
    """A constant array the generated C needs (weights, bias, multipliers, tables)."""

    suffix: str  # the C name is <layer identifier>_<suffix>
    ctype: str  # int8_t, int32_t, ...
    values: np.ndarray
    comment: str = ""
    guard: str | None = None  # a preprocessor condition, e.g. "defined(ARM_MATH_MVEI)"
    weights: bool = True  # counts as weight bytes in the report


VIEW_KERNEL = "none (view)"  # a KernelCall's kernel when the node is a view: no code, no arena


@dataclass
class KernelCall:
    """How one node becomes C: a template under templates/ops/ and what it needs."""

    template: str
    kernel: str  # the function (or "own loop") that does the work, for the report
    context: dict[str, Any] = field(default_factory=dict)
    arrays: list[CArray] = field(default_factory=list)
    functions: list[str] = field(default_factory=list)  # CMSIS-NN entry points called
    scratch_bytes: int = 0  # the largest over pure C, DSP and MVE builds
    macs: int = 0
    steps: int = 0  # a recurrent layer's time steps, one after another (its MACs per step: macs / steps)


@dataclass(frozen=True)
class TimeGeometry:
    """How a time-local op's output column j (along time, of a (W, C) feature map) reads its input
    columns: j * stride - pad_left + k * dilation for k < kernel, or with upsample u column j // u.
    What `--streaming` needs to recompute only the columns a hop changes (plan/stream.py)."""

    kernel: int = 1
    stride: int = 1
    dilation: int = 1
    pad_left: int = 0
    upsample: int = 1

    @property
    def span(self) -> int:
        return (self.kernel - 1) * self.dilation + 1


@dataclass(frozen=True)
class Recurrence:
    """What a recurrent layer carries from one time step to the next: what a stateful stream
    (`--streaming HOP --stateful`, plan/stateful.py) keeps between pushes."""

    state_bytes: int  # kept besides its outputs (an LSTM's int16 cell state, a GRU's Q0.15 state)
    reads_previous_output: bool  # a step reads the output column before it (an LSTM's hidden state)


class OpHandler:
    """Base class with the defaults most ops want; subclasses override what differs.

    Capabilities: what the graph passes may do around a node of this op. The passes ask these, never
    op names, so a plugin op gets the same fusion and folding by declaring them."""

    op: str = ""
    onnx_ops: tuple[str, ...] = ()
    template_dir: Path | None = None  # a plugin's own templates (searched after the built-in ones)

    # A following Relu/Clip becomes this node's output clamp (node.attrs["act"]; its quantize must
    # apply fused_activation_range).
    fuses_activation: bool = False
    # Its output quantization comes from calibration alone, so it can write directly in the
    # quantization a following requantize asks for.
    free_output_quant: bool = False
    # A following per-channel scale/shift folds into it: see fold_affine.
    folds_affine: bool = False
    # A preceding zero padding along time folds into its own padding: see absorb_zero_pad.
    absorbs_zero_pad: bool = False

    # The weight granularities its quantize can apply (from node.attrs["weights"] via
    # QuantOptions.weights_of), which a calibration search may choose between per node.
    weight_granularities: tuple[str, ...] = ()

    # Its int8 weight codes may be fitted to the inputs it sees (tuning/weight_rounding.py): see
    # weight_columns. Its quantize must then take node.attrs["fitted_weight_scales"] as its scales.
    fits_weight_rounding: bool = False

    # Below some value its output no longer changes (a softmax's far-negative inputs), so its input's
    # range may start there (tuning/range_floors.py): see input_floor. (A subclass of a handler that
    # sets it inherits it: clear it where the kernel differs.)
    floors_input: bool = False

    # Its input, flattened, may arrive as an (a, b) matrix instead of the (b, a) transpose it was
    # given: see read_input_transposed.
    reads_transposed_input: bool = False

    # The activation widths its quantize/reference/emit handle: 8 (int8), 16 (TFLite 16x8). A model
    # converted at a width one of its nodes' handlers lacks is refused, naming every such node.
    activation_bits: tuple[int, ...] = (8,)

    def role(self, node: Node) -> Role | None:
        """What the node is to the rewrites (a clamp, a per-channel affine, a zero pad, a requantize, a
        transpose: ops/roles.py), so they can fold it into its neighbours; None: none of these."""
        return None

    def lower(self, node: Node, graph: Graph) -> list[Node] | None:
        """The nodes this node becomes (in order; new intermediate tensors added to `graph.tensors`,
        each with the calibrated value whose range it takes), asked once no rewrite can absorb it:
        an affine becomes a 1-tap depthwise conv, a lone clamp a table, a plugin's compound op the
        built-in ops it is made of (which the rewrites may then fold further). None: it stays."""
        return None

    def time_geometry(self, node: Node, graph: Graph) -> TimeGeometry | None:
        """Its output's time columns as a function of its inputs' (all (W, C) feature maps), or None
        when it is not time-local (a dense layer, a global pool, a reshape): a stream then runs it,
        and everything after it, in full on every push. Declared with time_slice."""
        return None

    def time_slice(self, node: Node, pad_left: int, pad_right: int, out_w: int) -> Node:
        """The node computing `out_w` consecutive output columns from a slice of its input columns,
        with these zero paddings in place of its own (the slice's shapes are the graph's): what a
        stream emits for the columns a hop changes. Default: a node without padding is its own slice."""
        if pad_left or pad_right:
            raise NotImplementedError(f"op '{node.op}' declares no padded time slice")
        return node

    def recurrence(self, node: Node, graph: Graph) -> Recurrence | None:
        """A recurrent layer's state between steps (None: not recurrent). Declared with emit handling
        node.attrs["stateful"]: then the call runs its input's steps on from the state at `state_ptr`
        (and its output's previous column) instead of from zero, and leaves the state there."""
        return None

    def retimed(self, node: Node, graph: Graph, widths: list[int]) -> Node:
        """The node on inputs of these many time columns instead of the graph's (a stateful stream's
        reference over a whole stream). Default: its attributes do not depend on the width."""
        return node

    def fold_affine(self, node: Node, scale: np.ndarray, shift: np.ndarray) -> bool:
        """Fold y * scale[c] + shift[c] (per output channel) into the node's constants; False when this
        node cannot (e.g. a shape mismatch). Only asked when folds_affine is set."""
        return False

    def input_floor(self, node: Node, x: np.ndarray) -> float | None:  # asked where floors_input is set
        """The lowest value of the node's first input worth a code, from its real values on the
        calibration samples `x` (samples, ..., channels in the node's layout): below it the node's output
        does not change (within what its output can show), so the input's range may start there
        instead of at the lowest value seen, and the codes go to the values that matter. None: every
        value matters (a range floor is never asked above the lowest value seen)."""
        return None

    def weight_columns(self, node: Node, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
        """Which inputs each output channel's weights multiply, from the real-valued inputs `x` (N, *its
        input's shape): (channels, columns) pairs, where row m of `columns` is one output position's
        inputs in the order of node.consts["weight"][c] flattened, for every channel c in `channels`.
        Only asked when fits_weight_rounding is set."""
        raise NotImplementedError(f"op '{node.op}' declares no weight columns")

    def absorb_zero_pad(self, node: Node, left: int, right: int) -> None:
        """Take `left`/`right` zero columns a removed Pad added before the node's input into its own
        padding. Only asked when absorbs_zero_pad is set."""
        raise NotImplementedError

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        """Write the op as TFLite-Micro operators with the same arithmetic, so the tflite-micro runtime
        checks the reference independently. Default: none (the oracle then skips the model)."""
        raise NotExportable(f"no TFLite export for op '{node.op}'", node.name)

    def read_input_transposed(self, node: Node, rows: int, cols: int) -> None:
        """From now on the node reads the (rows, cols) matrix whose transpose it read before (its
        constants change, not its result). Only asked when reads_transposed_input is set."""
        raise NotImplementedError

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        raise UnsupportedOpError(f"operator {node.op_type} is not supported", node.where)

    def float_internals(self, node: OnnxNodeView) -> list[Any]:
        """ONNX nodes (NodeProto) computing, from the node's own inputs, the float values inside the op
        its IR node lists in `internal_values` (an LSTM's cell state at every step): added beside it to
        the float model calibration runs, never imported. Default: none."""
        return []

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        raise NotImplementedError

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        """Default: each output takes the calibrated range of the model value it stands for."""
        for name in node.outputs:
            t = graph.tensors[name]
            if t.quant is None:
                t.quant = calibrated_quant(graph, name, ranges)

    def reference(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """One sample: each input's codes in its tensor's shape -> each output's. A handler overrides
        this or `reference_batch`; each defaults to the other."""
        if type(self).reference_batch is OpHandler.reference_batch:
            raise NotImplementedError(f"the {self.op} handler has no integer reference")
        return [out[0] for out in self.reference_batch(node, graph, [x[np.newaxis] for x in inputs])]

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        """N samples at once: each input (N, *its shape) -> each output (N, *its shape), the same bytes as
        `reference` on each sample. The searches run the whole graph on hundreds of samples, and
        numpy's per-call cost, not the arithmetic, dominated them one sample at a time. Default: one
        `reference` call per sample. Never write into the input arrays: the searches keep every
        tensor of a run and rerun only a graph's tail on them (quantize.rerun_from)."""
        if type(self).reference is OpHandler.reference:
            raise NotImplementedError(f"the {self.op} handler has no integer reference")
        per_sample = [self.reference(node, graph, list(sample)) for sample in zip(*inputs)]
        return [np.stack(outs) for outs in zip(*per_sample)]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        raise NotImplementedError

    def aliases_input(self, node: Node) -> bool:
        """True when the output is the input's bytes (a view): no code, no arena."""
        return False

    def writes_in_place(self, node: Node) -> bool:
        """True when the node's C may write its output over its input: element by element, each input
        element read before any output byte over it is written (a widening loop runs backward). The
        memory plan then starts the output at the input's offset wherever the node is the input's
        only reader (plan/liveness.py): a width change or an activation at the arena's peak then
        costs no second buffer."""
        return False


def file_quant_of(graph: Graph, tensor: str) -> QuantParams | None:
    """The quantization a quantized model's file gives the model value a tensor stands for, else None."""
    if graph.file_quant is None or tensor not in graph.tensors:
        return None
    t = graph.tensors[tensor]
    return graph.file_quant.activations.get(t.calib_name or t.name)


def calibrated_quant(graph: Graph, tensor: str, ranges: dict[str, tuple[float, float]]) -> QuantParams:
    """The quantization of the model value a tensor stands for: the model file's (a QDQ model), else
    TFLite's choice for its calibrated range."""
    pinned = file_quant_of(graph, tensor)
    if pinned is not None:
        return pinned
    t = graph.tensors[tensor]
    key = t.calib_name or t.name
    if key not in ranges:
        raise KeyError(f"no calibration range for tensor '{key}'")
    lo, hi = ranges[key]
    return activation_quant(lo, hi, t.bits or graph.quant_options.activation_bits)


def fused_activation_range(node: Node, graph: Graph) -> tuple[int, int]:
    """The integer clamp of a fused Relu/Clip (node.attrs["act"]) in the node's output quantization."""
    q = graph.tensors[node.output].quant
    assert q is not None
    lo, hi = node.attrs.get("act", (None, None))
    return activation_range(q, lo, hi)


def int_attr_list(node: OnnxNodeView, key: str, default: list[int], length: int) -> list[int]:
    v = node.attr(key)
    if v is None:
        return list(default)
    v = [int(i) for i in v]
    if len(v) != length:
        raise UnsupportedOpError(f"attribute {key}={v} has {len(v)} values, expected {length} (1D)", node.where)
    return v


def same_pads(in_w: int, kernel: int, stride: int, dilation: int, auto_pad: str) -> tuple[int, int]:
    """ONNX auto_pad SAME_UPPER/SAME_LOWER (TFLite SAME is SAME_UPPER: extra tap on the right)."""
    eff_k = (kernel - 1) * dilation + 1
    out = -(-in_w // stride)
    total = max((out - 1) * stride + eff_k - in_w, 0)
    small = total // 2
    return (small, total - small) if auto_pad == "SAME_UPPER" else (total - small, small)


def explicit_pads(node: OnnxNodeView, in_w: int, kernel: int, stride: int, dilation: int) -> tuple[int, int]:
    auto_pad = node.attr("auto_pad", "NOTSET")
    if isinstance(auto_pad, bytes):
        auto_pad = auto_pad.decode()
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return same_pads(in_w, kernel, stride, dilation, auto_pad)
    if auto_pad == "VALID":
        return 0, 0
    pads = int_attr_list(node, "pads", [0, 0], 2)
    if min(pads) < 0:
        raise UnsupportedOpError(f"negative pads {pads} (cropping) are not supported", node.where)
    return pads[0], pads[1]


def check_uint16(where: str, **dims: int) -> None:
    """CMSIS-NN casts dimensions and padding to uint16: refuse what would be truncated."""
    for key, v in dims.items():
        if not 0 <= v <= 0xFFFF:
            raise UnsupportedOpError(f"{key}={v} exceeds the 65535 that CMSIS-NN's uint16 arguments hold", where)


def spatial_1d(node: OnnxNodeView, ctx: ImportContext, kernel: list[int]) -> tuple[OnnxNodeView, tuple[int, int]]:
    """A conv/pool node as 1D: its input is (C, W), or 2D (C, H, W) with a unit spatial axis that the
    window does not span (tf2onnx writes Conv1D as a [1, k] Conv2D, tf_keras pools as [p, 1]).

    Returns the node with 1D attributes and the logical axes that lay the input out as (W, C)."""
    shape = ctx.logical_shape(node.inputs[0])
    if len(shape) == 2:
        return node, (1, 0)
    if len(shape) != 3 or len(kernel) != 2:
        raise UnsupportedOpError(f"only 1D {node.op_type} is supported, got input shape {list(shape)}", node.where)
    pads = int_attr_list(node, "pads", [0, 0, 0, 0], 4)
    for t in (1, 0):  # prefer W as time when both spatial axes are 1
        u = 1 - t
        if shape[1 + u] == 1 and kernel[u] == 1 and pads[u] == 0 and pads[u + 2] == 0:
            break
    else:
        raise UnsupportedOpError(f"2D {node.op_type} on {list(shape)} with kernel {kernel}: only 1D windows (a unit "
                                 "spatial axis) are supported", node.where)
    attrs = dict(node.attrs)
    attrs["kernel_shape"] = [kernel[t]]
    attrs["pads"] = [pads[t], pads[t + 2]]
    for key in ("strides", "dilations"):
        attrs[key] = [int_attr_list(node, key, [1, 1], 2)[t]]
    return OnnxNodeView(node.name, node.op_type, node.inputs, node.outputs, attrs), (1 + t, 0)


def elementwise_io(node: OnnxNodeView, ctx: ImportContext, inputs: list[str] | None = None) -> tuple[list[str], str]:
    """Inputs and output of a shape-preserving op, all in the first input's current layout."""
    names = node.inputs[:1] if inputs is None else inputs
    shapes = {ctx.logical_shape(v) for v in names} | {ctx.logical_shape(node.outputs[0])}
    if len(shapes) != 1:
        raise UnsupportedOpError(f"{node.op_type} of shapes {sorted(shapes)} needs broadcasting: not supported",
                              node.where)
    axes = ctx.layout(names[0])
    return [ctx.tensor(v, axes) for v in names], ctx.tensor(node.outputs[0], axes)
