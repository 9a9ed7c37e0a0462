"""Fold the shape arithmetic exporters write around a fixed-shape model into constants.

PyTorch's TorchScript exporter writes what Python code computed from tensor sizes (a U-Net's
`F.pad(x, [diff // 2, diff - diff // 2])` with `diff = skip.size(2) - x.size(2)`, zero initial states,
a reshape to `(x.size(0), -1)`) as Shape/Gather/Cast/ConstantOfShape/Concat/Slice/arithmetic
subgraphs feeding Pad, Reshape, Resize or an Add. Once the input shape is fixed (batch 1, static
dimensions), every such value is a constant: each node whose inputs are all constants (or a Shape of
a value whose shape is static) is computed once, here, by ONNX's own reference implementation of
that operator, and replaced by an initializer. Only a fixed set of side-effect-free operators is
evaluated, and only small values (shape vectors, pads, scales, small zero states); anything else is
left to the importer, which names what it cannot take.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

from onnx2cmsis.errors import ConversionError

# Operators that only compute from their inputs (no randomness, no state): what shape code uses.
FOLDABLE = frozenset({
    "Shape", "Size", "Gather", "GatherElements", "Cast", "CastLike", "ConstantOfShape", "Concat", "Slice", "Squeeze",
    "Unsqueeze", "Reshape", "Flatten", "Transpose", "Identity", "Range", "Expand", "Tile",
    "Add", "Sub", "Mul", "Div", "Mod", "Neg", "Abs", "Floor", "Ceil", "Sqrt", "Min", "Max",
    "Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Where",
    "ReduceProd", "ReduceSum", "ReduceMin", "ReduceMax",
})
MAX_FOLDED_ELEMENTS = 4096  # larger results (weights computed from weights) stay for the importer


def fold_shape_subgraphs(model: onnx.ModelProto, where: str,
                         shapes: dict[str, tuple[int, ...] | None]) -> onnx.ModelProto:
    """The model with every foldable node computed (see the module docstring); shapes inferred again
    when anything was folded. `shapes`: each value's static shape, None where a dimension is unknown
    (frontends/onnx_model.py's value_shapes)."""
    known = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    kept, folded = [], []
    for node in model.graph.node:
        values = _fold(node, known, shapes)
        if values is None:
            kept.append(node)
            if node.op_type == "Constant":  # what later nodes may compute from
                value = _constant(node)
                if value is not None:
                    known[node.output[0]] = value
            continue
        known.update(values)
        folded.append(node)
    if not folded:
        return model
    used = {name for node in kept for name in node.input} | {o.name for o in model.graph.output}
    new_inits = [numpy_helper.from_array(np.asarray(known[out]), out) for node in folded for out in node.output
                 if out in used]
    del model.graph.node[:]
    model.graph.node.extend(kept)
    model.graph.initializer.extend(new_inits)
    folded_names = {out for node in folded for out in node.output}
    kept_info = [vi for vi in model.graph.value_info if vi.name not in folded_names]
    del model.graph.value_info[:]
    model.graph.value_info.extend(kept_info)
    try:
        return shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise ConversionError(f"shape inference failed after folding the shape computations ({exc})", where) from exc


def _fold(node: onnx.NodeProto, known: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...] | None]) -> dict | None:
    """The node's outputs when it folds, else None."""
    if node.domain not in ("", "ai.onnx") or node.op_type not in FOLDABLE:
        return None
    if node.op_type == "Shape":
        shape = shapes.get(node.input[0])
        if shape is None:
            return None
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        start, end = attrs.get("start", 0), attrs.get("end", len(shape))
        return {node.output[0]: np.array(shape[start:end], np.int64)}
    if not all(name == "" or name in known for name in node.input):
        return None
    if node.op_type == "Size":
        return {node.output[0]: np.array(np.size(known[node.input[0]]), np.int64)}
    try:
        if _result_size(node, known, shapes) > MAX_FOLDED_ELEMENTS:  # checked before anything is allocated
            return None
        outputs = _evaluate(node, known)
    except Exception:  # what ONNX's reference cannot compute is left for the importer to name
        return None
    if any(np.size(v) > MAX_FOLDED_ELEMENTS for v in outputs):
        return None
    return dict(zip(node.output, outputs, strict=True))


def _result_size(node: onnx.NodeProto, known: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...] | None]) -> int:
    """An upper bound on the node's largest output, from shape inference or its inputs' values (a
    model asking ConstantOfShape or Range for 10^9 elements is not evaluated)."""
    if shapes.get(node.output[0]) is not None:
        return int(np.prod(shapes[node.output[0]]))
    values = [np.asarray(known[name]) for name in node.input if name]
    if node.op_type == "ConstantOfShape":
        return int(np.prod(values[0].astype(np.float64)))
    if node.op_type == "Range":
        start, limit, delta = (float(v) for v in values)
        return int(max(0.0, np.ceil((limit - start) / delta))) if delta else MAX_FOLDED_ELEMENTS + 1
    if node.op_type == "Expand":
        return int(np.prod(np.broadcast_shapes(values[0].shape, tuple(int(d) for d in values[1]))))
    if node.op_type == "Tile":
        return int(values[0].size * np.prod(values[1].astype(np.float64)))
    if len(values) > 1 and node.op_type not in ("Concat", "Gather", "GatherElements", "Slice", "Reshape", "Squeeze",
                                                 "Unsqueeze", "CastLike", "ReduceProd", "ReduceSum", "ReduceMin",
                                                 "ReduceMax"):
        return int(np.prod(np.broadcast_shapes(*(v.shape for v in values))))  # elementwise, broadcast
    return int(sum(v.size for v in values))


def _evaluate(node: onnx.NodeProto, known: dict[str, np.ndarray]) -> list[np.ndarray]:
    from onnx.reference import ReferenceEvaluator

    inputs = [name for name in node.input if name]
    graph = helper.make_graph([node], "fold", [], [helper.make_tensor_value_info(o, onnx.TensorProto.UNDEFINED, None)
                                                   for o in node.output],
                              [numpy_helper.from_array(np.asarray(known[name]), name) for name in inputs])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    return [np.asarray(v) for v in ReferenceEvaluator(model).run(None, {})]


def _constant(node: onnx.NodeProto) -> np.ndarray | None:
    for attr in node.attribute:
        if attr.name == "value":
            return numpy_helper.to_array(attr.t)
        if attr.name in ("value_float", "value_int", "value_floats", "value_ints"):
            return np.asarray(helper.get_attribute_value(attr))
    return None
