"""IR -> IR rewrites, each a small named function returning whether it changed the graph.

`run_passes` applies the ordered list until nothing changes, lowers what is left standing, and checks
every shape rule. No pass names an op: what a node is to them (a clamp, an affine, a zero pad, a
requantize, a transpose) is its handler's `role`; which nodes may absorb one is what their handlers
declare (OpHandler.fuses_activation, .folds_affine, .absorbs_zero_pad, .free_output_quant); what a
node becomes when nothing absorbed it is its handler's `lower`. A plugin op takes part in all of it by
declaring the same.
"""

from __future__ import annotations

from collections.abc import Callable

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.layout import become_view
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.ops.roles import ChannelAffine, Clamp, Requantize, Role, Transpose, ZeroPad

Pass = Callable[[Graph, Registry], bool]


def _private_producer(graph: Graph, tensor: str) -> Node | None:
    """The producer of `tensor` when one node reads it and it is no model input or output: a rewrite
    may then merge the two."""
    if len(graph.consumers(tensor)) != 1 or graph.is_boundary(tensor):
        return None
    return graph.producer(tensor)


def _sole_producer(graph: Graph, tensor: str, registry: Registry, capability: str) -> Node | None:
    """The producer of `tensor` if its handler declares `capability` and nothing else reads the tensor."""
    p = _private_producer(graph, tensor)
    return p if p is not None and getattr(registry.for_op(p.op), capability) else None


def _absorb(graph: Graph, producer: Node, node: Node) -> None:
    """The producer now writes what `node` wrote; `node` disappears."""
    producer.outputs = list(node.outputs)
    graph.nodes.remove(node)


def _file_rounds_between(graph: Graph, inner: str, outer: str) -> bool:
    """The model file (a QDQ model) quantizes `inner` and `outer` differently: merging the node making
    `inner` with the one reading it would skip a rounding its arithmetic does (ONNX Runtime's too)."""
    if graph.file_quant is None:
        return False
    pins = graph.file_quant.activations
    a, b = (pins.get(graph.tensors[t].calib_name or t) for t in (inner, outer))
    return a is not None and a != b


def _role(node: Node, registry: Registry) -> Role | None:
    return registry.for_op(node.op).role(node)


def fold_affine(graph: Graph, registry: Registry) -> bool:
    """scale*x+shift after a producer that folds it (no fused activation yet) becomes its constants."""
    for node in graph.nodes:
        affine = _role(node, registry)
        if not isinstance(affine, ChannelAffine):
            continue
        p = _sole_producer(graph, node.inputs[0], registry, "folds_affine")
        if p is None or "act" in p.attrs or _file_rounds_between(graph, node.inputs[0], node.output):
            continue
        if not registry.for_op(p.op).fold_affine(p, affine.scale, affine.shift):
            continue
        p.origin += "+" + node.origin
        _absorb(graph, p, node)
        return True
    return False


def fold_pad_into_conv(graph: Graph, registry: Registry) -> bool:
    """Zero padding before a convolution is the convolution's own padding (skipped taps)."""
    for node in graph.nodes:
        if not registry.for_op(node.op).absorbs_zero_pad:
            continue
        p = _private_producer(graph, node.inputs[0])
        pad = None if p is None else _role(p, registry)
        if not isinstance(pad, ZeroPad):
            continue
        registry.for_op(node.op).absorb_zero_pad(node, pad.left, pad.right)
        node.inputs = list(p.inputs)
        node.origin = "Pad+" + node.origin
        graph.nodes.remove(p)
        return True
    return False


def fold_requantize_into_producer(graph: Graph, registry: Registry) -> bool:
    """A producer whose output range is free writes directly in the quantization a requantize asks for."""
    for node in graph.nodes:
        if not isinstance(_role(node, registry), Requantize):
            continue
        p = _sole_producer(graph, node.inputs[0], registry, "free_output_quant")
        if p is None or _file_rounds_between(graph, node.inputs[0], node.output):
            continue
        p.outputs = list(node.outputs)  # the output tensor carries the requantize's calibration range
        graph.nodes.remove(node)
        return True
    return False


def fuse_activation(graph: Graph, registry: Registry) -> bool:
    for node in graph.nodes:
        clamp = _role(node, registry)
        if not isinstance(clamp, Clamp):
            continue
        p = _sole_producer(graph, node.inputs[0], registry, "fuses_activation")
        if p is None or _file_rounds_between(graph, node.inputs[0], node.output):
            continue
        old_lo, old_hi = p.attrs.get("act", (None, None))
        lo = clamp.lo if old_lo is None else (old_lo if clamp.lo is None else max(clamp.lo, old_lo))
        hi = clamp.hi if old_hi is None else (old_hi if clamp.hi is None else min(clamp.hi, old_hi))
        p.attrs["act"] = (lo, hi)
        p.origin += "+" + node.origin
        _absorb(graph, p, node)
        return True
    return False


def _is_transpose(node: Node, registry: Registry) -> bool:
    return isinstance(_role(node, registry), Transpose)


def drop_identity_transposes(graph: Graph, registry: Registry) -> bool:
    """A transpose with a dimension of 1 moves no byte: it is a view."""
    for node in graph.nodes:
        if _is_transpose(node, registry) and min(graph.tensors[node.inputs[0]].shape) == 1:
            become_view(node)
            return True
    return False


def cancel_transpose_pairs(graph: Graph, registry: Registry) -> bool:
    for node in graph.nodes:
        if not _is_transpose(node, registry):
            continue
        p = _private_producer(graph, node.inputs[0])
        if p is None or not _is_transpose(p, registry):
            continue
        become_view(p)  # two transposes are the identity: a view of the original bytes
        p.outputs = list(node.outputs)
        graph.nodes.remove(node)
        return True
    return False


def fold_transpose_into_dense(graph: Graph, registry: Registry) -> bool:
    """transpose (a,b)->(b,a), views, then a layer that can read its input transposed (a dense layer
    permutes its weights): no bytes move."""
    for node in graph.nodes:
        if not _is_transpose(node, registry) or graph.is_boundary(node.output):
            continue
        cur = node.output
        while True:
            users = graph.consumers(cur)
            if len(users) != 1 or graph.is_boundary(cur):
                break
            reader = registry.for_op(users[0].op)
            if reader.aliases_input(users[0]):
                cur = users[0].output
                continue
            if reader.reads_transposed_input:
                a, b = graph.tensors[node.inputs[0]].shape
                reader.read_input_transposed(users[0], a, b)
                become_view(node)  # the bytes stay channel-last: the view keeps the input's shape
                graph.tensors[node.output].shape = graph.tensors[node.inputs[0]].shape
                return True
            break
    return False


REWRITES: tuple[Pass, ...] = (
    fold_affine,
    fold_pad_into_conv,
    fuse_activation,
    fold_requantize_into_producer,
    drop_identity_transposes,
    cancel_transpose_pairs,
    fold_transpose_into_dense,
)


def lower_one(graph: Graph, registry: Registry) -> str | None:
    """The first node (in graph order) whose handler lowers it is replaced by the nodes it becomes;
    returns what the report calls it ("lower affine"), None when no node lowers."""
    for i, node in enumerate(graph.nodes):
        lowered = registry.for_op(node.op).lower(node, graph)
        if lowered is None:
            continue
        unknown = sorted({n.op for n in lowered} - set(registry.by_op))
        if unknown:
            raise ConversionError(f"internal: lowering gives ops no handler has: {', '.join(unknown)}", node.where)
        graph.nodes[i:i + 1] = lowered
        return f"lower {node.op}"
    return None


def run_passes(graph: Graph, registry: Registry) -> list[str]:
    """Apply the rewrites to a fixed point; then lower one node that none absorbed and rewrite again
    (what it became may absorb, or be absorbed), until no node lowers. Returns the log (for the
    report): each rewrite that fired and each lowering."""
    log: list[str] = []
    while True:
        changed = True
        while changed:
            changed = False
            for p in REWRITES:
                while p(graph, registry):
                    log.append(p.__name__)
                    changed = True
        lowering = lower_one(graph, registry)
        if lowering is None:
            break
        log.append(lowering)
    graph.remove_unused_tensors()
    check_shapes(graph, registry)
    return log


def check_shapes(graph: Graph, registry: Registry) -> None:
    """Every handler's shape rule must agree with the shapes the model declares."""
    for node in graph.nodes:
        handler = registry.for_op(node.op)
        if handler.aliases_input(node):
            if graph.tensors[node.inputs[0]].size != graph.tensors[node.output].size:
                raise ConversionError("view changes the element count", node.where)
            continue
        expected = handler.output_shapes(node, [graph.tensors[t].shape for t in node.inputs])
        actual = [graph.tensors[t].shape for t in node.outputs]
        if [tuple(e) for e in expected] != actual:
            raise ConversionError(
                f"shape rule gives {expected} but the model declares {actual}", node.where
            )
