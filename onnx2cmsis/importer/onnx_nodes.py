"""What the importer and calibration read off the model's nodes before any is imported: decoded
attributes, the nodes no handler takes, and the float model with each op's internal values beside it
(what calibration runs)."""

from __future__ import annotations

import onnx
from onnx import numpy_helper

from onnx2cmsis.ops.base import OnnxNodeView
from onnx2cmsis.ops.registry import Registry


def node_attrs(node: onnx.NodeProto) -> dict:
    """A node's attributes as Python values (text decoded, tensors as arrays)."""
    out = {}
    for a in node.attribute:
        v = onnx.helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        elif isinstance(v, onnx.TensorProto):
            v = numpy_helper.to_array(v)
        out[a.name] = v
    return out


def unsupported_nodes(model: onnx.ModelProto, registry: Registry) -> list[str]:
    """Every node whose operator no handler takes, as "node 'NAME' (OP)"."""
    gaps = []
    for i, proto in enumerate(model.graph.node):
        known = proto.domain in ("", "ai.onnx") and (proto.op_type == "Constant" or proto.op_type in registry.by_onnx_op)
        if not known:
            op = proto.op_type if proto.domain in ("", "ai.onnx") else f"{proto.domain}.{proto.op_type}"
            gaps.append(f"node '{proto.name or f'{proto.op_type}_{i}'}' ({op})")
    return gaps


def with_internal_values(model: onnx.ModelProto, registry: Registry) -> onnx.ModelProto:
    """The float model with the nodes computing values inside its ops (each handler's
    `float_internals`, e.g. an LSTM's cell state at every step) added beside them: what calibration
    runs. The model itself when no op has any."""
    extra = []
    for proto in model.graph.node:
        handler = registry.by_onnx_op.get(proto.op_type) if proto.domain in ("", "ai.onnx") else None
        if handler is not None:
            extra += handler.float_internals(OnnxNodeView(proto.name, proto.op_type, list(proto.input),
                                                          list(proto.output), node_attrs(proto)))
    if not extra:
        return model
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    augmented.graph.node.extend(extra)
    return augmented
