"""IR -> IR rewrites, each a small named function returning whether it changed the graph.

`run_passes` applies the ordered list until nothing changes, then checks every shape rule.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.registry import Registry

FUSIBLE_ACTIVATION_PRODUCERS = ("conv1d", "dwconv1d", "dense", "maxpool1d", "avgpool1d", "add")
BIAS_PRODUCERS = ("conv1d", "dwconv1d", "dense")
FREE_QUANT_PRODUCERS = ("conv1d", "dwconv1d", "dense", "add")  # output quantization comes from calibration alone


def _sole_producer(graph: Graph, tensor: str, ops: tuple[str, ...]) -> Node | None:
    """The producer of `tensor` if it is one of `ops` and nothing else reads the tensor."""
    p = graph.producer(tensor)
    if p is None or p.op not in ops or len(graph.consumers(tensor)) != 1 or graph.is_boundary(tensor):
        return None
    return p


def _absorb(graph: Graph, producer: Node, node: Node) -> None:
    """The producer now writes what `node` wrote; `node` disappears."""
    producer.outputs = list(node.outputs)
    graph.nodes.remove(node)


def fold_affine(graph: Graph) -> bool:
    """scale*x+shift after a conv/dense (no fused activation yet) becomes its weights and bias."""
    for node in graph.nodes:
        if node.op != "affine":
            continue
        p = _sole_producer(graph, node.inputs[0], BIAS_PRODUCERS + ("affine",))
        if p is None or "act" in p.attrs:
            continue
        scale, shift = node.consts["scale"], node.consts["shift"]
        if p.op == "affine":
            p.consts = {"scale": p.consts["scale"] * scale, "shift": p.consts["shift"] * scale + shift}
        else:
            if scale.shape != p.consts["bias"].shape:
                continue
            w = p.consts["weight"]
            p.consts["weight"] = (w * scale.reshape((-1,) + (1,) * (w.ndim - 1))).astype(np.float32)
            p.consts["bias"] = (p.consts["bias"] * scale + shift).astype(np.float32)
        p.origin += "+" + node.origin
        _absorb(graph, p, node)
        return True
    return False


def fold_pad_into_conv(graph: Graph) -> bool:
    """Zero padding before a convolution is the convolution's own padding (skipped taps)."""
    for node in graph.nodes:
        if node.op not in ("conv1d", "dwconv1d"):
            continue
        p = _sole_producer(graph, node.inputs[0], ("pad1d",))
        if p is None:
            continue
        (a, b), (c, d) = node.attrs["pad"], p.attrs["pad"]
        node.attrs["pad"] = (a + c, b + d)
        node.inputs = list(p.inputs)
        node.origin = "Pad+" + node.origin
        graph.nodes.remove(p)
        return True
    return False


def fold_requantize_into_producer(graph: Graph) -> bool:
    """A producer whose output range is free writes directly in the quantization a requantize asks for."""
    for node in graph.nodes:
        if node.op != "lut" or node.attrs.get("fn") != "requantize":
            continue
        p = _sole_producer(graph, node.inputs[0], FREE_QUANT_PRODUCERS)
        if p is None:
            continue
        p.outputs = list(node.outputs)  # the output tensor carries the requantize's calibration range
        graph.nodes.remove(node)
        return True
    return False


def fuse_activation(graph: Graph) -> bool:
    for node in graph.nodes:
        if node.op != "clip":
            continue
        p = _sole_producer(graph, node.inputs[0], FUSIBLE_ACTIVATION_PRODUCERS)
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


def drop_identity_transposes(graph: Graph) -> bool:
    """A transpose with a dimension of 1 moves no byte: it is a view."""
    for node in graph.nodes:
        if node.op == "transpose" and min(graph.tensors[node.inputs[0]].shape) == 1:
            node.op = "reshape"
            return True
    return False


def cancel_transpose_pairs(graph: Graph) -> bool:
    for node in graph.nodes:
        if node.op != "transpose":
            continue
        p = _sole_producer(graph, node.inputs[0], ("transpose",))
        if p is None:
            continue
        p.op = "reshape"  # two transposes are the identity: a view of the original bytes
        p.outputs = list(node.outputs)
        graph.nodes.remove(node)
        return True
    return False


def fold_transpose_into_dense(graph: Graph) -> bool:
    """transpose (a,b)->(b,a), views, dense: permute the dense weights instead of moving bytes."""
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
            if users[0].op == "dense":
                a, b = graph.tensors[node.inputs[0]].shape
                dense = users[0]
                w = dense.consts["weight"]
                dense.consts["weight"] = np.ascontiguousarray(w.reshape(w.shape[0], b, a).transpose(0, 2, 1).reshape(w.shape[0], a * b))
                dense.origin += " (weights reordered for channel-last input)"
                node.op = "reshape"  # the bytes stay channel-last: the view keeps the input's shape
                graph.tensors[node.output].shape = graph.tensors[node.inputs[0]].shape
                return True
            break
    return False


def standalone_affine_to_depthwise(graph: Graph) -> bool:
    """A per-channel scale/shift no producer could absorb is a 1-tap depthwise convolution (exact)."""
    for node in graph.nodes:
        if node.op == "affine":
            node.op = "dwconv1d"
            node.attrs = {"kernel": 1, "stride": 1, "dilation": 1, "pad": (0, 0)}
            node.consts = {"weight": node.consts["scale"].astype(np.float32).reshape(-1, 1),
                           "bias": node.consts["shift"].astype(np.float32).reshape(-1)}
            node.origin += " as depthwise 1x1"
            return True
    return False


def standalone_activation_to_table(graph: Graph) -> bool:
    """A Relu/Clip no producer could absorb becomes a clamp table in its input's quantization."""
    for node in graph.nodes:
        if node.op == "clip":
            node.op = "lut"
            node.attrs["fn"] = "clamp"
            return True
    return False


PASSES: tuple[Callable[[Graph], bool], ...] = (
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
STAGES: tuple[tuple[Callable[[Graph], bool], ...], ...] = (
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
                while p(graph):
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
                raise ConversionError("view changes the element count", f"node '{node.name}' ({node.origin})")
            continue
        expected = handler.output_shapes(node, [graph.tensors[t].shape for t in node.inputs])
        actual = [graph.tensors[t].shape for t in node.outputs]
        if [tuple(e) for e in expected] != actual:
            raise ConversionError(
                f"shape rule gives {expected} but the model declares {actual}", f"node '{node.name}' ({node.origin})"
            )
