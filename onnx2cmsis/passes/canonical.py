"""IR -> IR rewrites, each a small named function returning whether it changed the graph.

`run_passes` applies the ordered list until nothing changes, then checks every shape rule. Which
nodes may absorb an activation, a per-channel affine, a zero pad or a requantize is what their
handlers declare (OpHandler.fuses_activation, .folds_affine, .absorbs_zero_pad, .free_output_quant),
so a plugin op takes part by declaring the same; the passes name only the ops they rewrite away.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ir.window import Window
from onnx2cmsis.ops.registry import Registry

Pass = Callable[[Graph, Registry], bool]


def _sole_producer(graph: Graph, tensor: str, registry: Registry, capability: str) -> Node | None:
    """The producer of `tensor` if its handler declares `capability` and nothing else reads the tensor."""
    p = graph.producer(tensor)
    if p is None or len(graph.consumers(tensor)) != 1 or graph.is_boundary(tensor):
        return None
    return p if getattr(registry.for_op(p.op), capability) else None


def _absorb(graph: Graph, producer: Node, node: Node) -> None:
    """The producer now writes what `node` wrote; `node` disappears."""
    producer.outputs = list(node.outputs)
    graph.nodes.remove(node)


def fold_affine(graph: Graph, registry: Registry) -> bool:
    """scale*x+shift after a producer that folds it (no fused activation yet) becomes its constants."""
    for node in graph.nodes:
        if node.op != "affine":
            continue
        p = _sole_producer(graph, node.inputs[0], registry, "folds_affine")
        if p is None or "act" in p.attrs:
            continue
        if not registry.for_op(p.op).fold_affine(p, node.consts["scale"], node.consts["shift"]):
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
        p = graph.producer(node.inputs[0])
        if p is None or p.op != "pad1d" or len(graph.consumers(node.inputs[0])) != 1 \
                or graph.is_boundary(node.inputs[0]):
            continue
        registry.for_op(node.op).absorb_zero_pad(node, *p.attrs["pad"])
        node.inputs = list(p.inputs)
        node.origin = "Pad+" + node.origin
        graph.nodes.remove(p)
        return True
    return False


def fold_requantize_into_producer(graph: Graph, registry: Registry) -> bool:
    """A producer whose output range is free writes directly in the quantization a requantize asks for."""
    for node in graph.nodes:
        if node.op != "lut" or node.attrs.get("fn") != "requantize":
            continue
        p = _sole_producer(graph, node.inputs[0], registry, "free_output_quant")
        if p is None:
            continue
        p.outputs = list(node.outputs)  # the output tensor carries the requantize's calibration range
        graph.nodes.remove(node)
        return True
    return False


def fuse_activation(graph: Graph, registry: Registry) -> bool:
    for node in graph.nodes:
        if node.op != "clip":
            continue
        p = _sole_producer(graph, node.inputs[0], registry, "fuses_activation")
        if p is None:
            continue
        lo, hi = node.attrs["act"]
        old_lo, old_hi = p.attrs.get("act", (None, None))
        lo = lo if old_lo is None else (old_lo if lo is None else max(lo, old_lo))
        hi = hi if old_hi is None else (old_hi if hi is None else min(hi, old_hi))
        p.attrs["act"] = (lo, hi)
        p.origin += "+" + node.origin
        _absorb(graph, p, node)
        return True
    return False


def drop_identity_transposes(graph: Graph, registry: Registry) -> bool:
    """A transpose with a dimension of 1 moves no byte: it is a view."""
    for node in graph.nodes:
        if node.op == "transpose" and min(graph.tensors[node.inputs[0]].shape) == 1:
            node.op = "reshape"
            return True
    return False


def cancel_transpose_pairs(graph: Graph, registry: Registry) -> bool:
    for node in graph.nodes:
        if node.op != "transpose":
            continue
        p = graph.producer(node.inputs[0])
        if p is None or p.op != "transpose" or len(graph.consumers(node.inputs[0])) != 1 \
                or graph.is_boundary(node.inputs[0]):
            continue
        p.op = "reshape"  # two transposes are the identity: a view of the original bytes
        p.outputs = list(node.outputs)
        graph.nodes.remove(node)
        return True
    return False


def fold_transpose_into_dense(graph: Graph, registry: Registry) -> bool:
    """transpose (a,b)->(b,a), views, then a layer that can read its input transposed (a dense layer
    permutes its weights): no bytes move."""
    for node in graph.nodes:
        if node.op != "transpose" or graph.is_boundary(node.output):
            continue
        cur = node.output
        while True:
            users = graph.consumers(cur)
            if len(users) != 1 or graph.is_boundary(cur):
                break
            if users[0].op == "reshape":
                cur = users[0].output
                continue
            if registry.for_op(users[0].op).reads_transposed_input:
                a, b = graph.tensors[node.inputs[0]].shape
                registry.for_op(users[0].op).read_input_transposed(users[0], a, b)
                node.op = "reshape"  # the bytes stay channel-last: the view keeps the input's shape
                graph.tensors[node.output].shape = graph.tensors[node.inputs[0]].shape
                return True
            break
    return False


def standalone_affine_to_depthwise(graph: Graph, registry: Registry) -> bool:
    """A per-channel scale/shift no producer could absorb is a 1-tap depthwise convolution (exact)."""
    for node in graph.nodes:
        if node.op == "affine":
            node.op = "dwconv1d"
            node.attrs = {"window": Window()}
            node.consts = {"weight": node.consts["scale"].astype(np.float32).reshape(-1, 1),
                           "bias": node.consts["shift"].astype(np.float32).reshape(-1)}
            node.origin += " as depthwise 1x1"
            return True
    return False


def standalone_activation_to_table(graph: Graph, registry: Registry) -> bool:
    """A Relu/Clip no producer could absorb becomes a clamp table in its input's quantization."""
    for node in graph.nodes:
        if node.op == "clip":
            node.op = "lut"
            node.attrs["fn"] = "clamp"
            return True
    return False


PASSES: tuple[Pass, ...] = (
    fold_affine,
    fold_pad_into_conv,
    fuse_activation,
    fold_requantize_into_producer,
    drop_identity_transposes,
    cancel_transpose_pairs,
    fold_transpose_into_dense,
)


# Stages run in order, each to its fixed point: an affine op left standing once the rewrites are done
# becomes a depthwise conv, which may then absorb an activation; only activations still standing
# after that become tables.
STAGES: tuple[tuple[Pass, ...], ...] = (
    PASSES,
    (standalone_affine_to_depthwise,),
    PASSES,
    (standalone_activation_to_table,),
)


def run_passes(graph: Graph, registry: Registry) -> list[str]:
    """Apply the rewrites to a fixed point, then the lowerings; returns the log (for the report)."""
    log: list[str] = []
    for passes in STAGES:
        changed = True
        while changed:
            changed = False
            for p in passes:
                while p(graph, registry):
                    log.append(p.__name__)
                    changed = True
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
