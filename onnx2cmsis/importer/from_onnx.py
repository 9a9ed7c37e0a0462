"""ONNX (static, batch 1) -> the canonical IR. Handlers translate nodes; this file keeps the books.

Every model value is bound to an IR tensor and an index array (ir/layout.py): data-movement ops only
rewrite index arrays, and a compute op asks for its inputs in the physical layout it needs (a 1D
feature map as time-major (W, C), a vector as (F,)). Only then is a layout change materialized, as
the cheapest exact IR op, once per distinct layout. The model's input and output keep the model's
own layout (row-major over its shape), so the C interface takes exactly the bytes the model does.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import onnx
from onnx import numpy_helper

from onnx2cmsis.arith.rules import QuantParams
from onnx2cmsis.errors import ConversionError, UnsupportedOpError
from onnx2cmsis.frontends.onnx_model import layer_of_node, value_shapes
from onnx2cmsis.ir.graph import Graph, Node, Tensor
from onnx2cmsis.ir.tensor import ConstQuant, FileQuantization
from onnx2cmsis.ir.layout import Binding, MovementKind, arrangement, classify, gather_map, layout_of
from onnx2cmsis.ops.base import OnnxNodeView
from onnx2cmsis.importer.onnx_nodes import node_attrs, unsupported_nodes
from onnx2cmsis.ops.registry import Registry

# The IR op that makes each kind of layout change (a transpose has its own path: a pair may cancel).
MOVEMENT_OPS = {MovementKind.VIEW: "reshape", MovementKind.UPSAMPLE: "upsample1d", MovementKind.CROP: "slice1d",
                MovementKind.GATHER: "gather"}


def default_axes(rank: int, where: str) -> tuple[int, ...]:
    """Logical axes (batch excluded) in physical order: (C, W) is stored time-major as (W, C)."""
    if rank == 0:
        return ()
    if rank == 1:
        return (0,)
    if rank == 2:
        return (1, 0)
    raise UnsupportedOpError(f"tensors of rank {rank + 1} (2D data) are not supported here; 1D models only", where)


class GraphBuilder:
    """Implements ops.base.ImportContext for one model."""

    def __init__(self, model: onnx.ModelProto, source: str, registry: Registry,
                 file_quant: FileQuantization | None = None) -> None:
        self.source = source
        self.file_quant = file_quant
        self.registry = registry
        self.shapes = value_shapes(model)
        self.consts: dict[str, np.ndarray] = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        self.tensors: dict[str, Tensor] = {}
        self.bindings: dict[str, Binding] = {}
        self.materialized: dict[tuple, str] = {}
        self.nodes: list[Node] = []
        self.where = source
        self.node_name = "input"
        # which model nodes (by the names users see) moved each value's bytes (Reshape, Slice, ...): a
        # layout step made where the value is read is named after them, not after the value
        self.movers: dict[str, tuple[str, ...]] = {}
        self.layout_nodes: list[tuple[Node, tuple[str, ...]]] = []
        self.layer_of = layer_of_node(model)  # a Keras layer's name for each of its nodes
        self.user_layers = set(self.layer_of.values()) if self.layer_of else None
        self.read_values = {v for n in model.graph.node for v in n.input} | {o.name for o in model.graph.output}

    def is_read(self, value: str) -> bool:
        return value in self.read_values

    # --- ImportContext: shapes and constants
    def full_shape(self, value: str) -> tuple[int, ...]:
        shape = self.shapes.get(value)
        if shape is None:
            raise ConversionError(f"value '{value}' has no static shape", self.where)
        if 0 in shape:
            raise ConversionError(f"value '{value}' has a zero-size dimension {list(shape)}", self.where)
        return tuple(int(n) for n in shape)

    def logical_shape(self, value: str) -> tuple[int, ...]:
        shape = self.full_shape(value)
        if value in self.consts:
            return shape
        if not shape or shape[0] != 1:
            raise ConversionError(f"value '{value}' has shape {list(shape)}: expected batch 1 first", self.where)
        return shape[1:]

    def const(self, value: str) -> np.ndarray | None:
        c = self.consts.get(value)
        return None if c is None else np.asarray(c)

    def const_quant(self, value: str) -> ConstQuant | None:
        return None if self.file_quant is None else self.file_quant.constants.get(value)

    def activation_quant(self, value: str) -> QuantParams | None:
        return None if self.file_quant is None else self.file_quant.activations.get(value)

    # --- ImportContext: tensors in layouts
    def layout(self, value: str) -> tuple[int, ...]:
        """The logical axes order the value is stored in now (so elementwise ops copy nothing)."""
        b = self.bindings.get(value)
        if b is not None:
            axes = layout_of(b, self.tensors[b.tensor].shape)
            if axes is not None and 0 not in axes:
                return tuple(a - 1 for a in axes)
        return default_axes(len(self.logical_shape(value)), self.where)

    def tensor(self, value: str, axes: tuple[int, ...] | None = None, batched: bool = True) -> str:
        """The IR tensor holding `value` with its logical axes in `axes` order (outer first).

        An unbound value (a node output) is bound to a fresh tensor in that layout. With
        batched=False, `axes` index the full shape: for values whose first dimension is not a batch
        (a (W, C) matrix fed to MatMul)."""
        full = self.full_shape(value) if not batched else (1, *self.logical_shape(value))
        if axes is None:
            axes = default_axes(len(full) - 1, self.where)
        full_axes = tuple(a + 1 for a in axes) if batched else tuple(axes)
        if value not in self.bindings:
            physical, index = arrangement(full, full_axes)
            name = self.new_tensor(physical, value, calib_name=value)
            self.tensors[name].calib_index = index.reshape(-1)
            self.bindings[value] = Binding(name, index)
            return name
        return self._materialize(self.bindings[value], full_axes, value)

    def physical_shape(self, tensor: str) -> tuple[int, ...]:
        return self.tensors[tensor].shape

    def new_tensor(self, shape: tuple[int, ...], hint: str, calib_name: str | None = None) -> str:
        name = self._unique(hint)
        self.tensors[name] = Tensor(name, tuple(shape), calib_name=calib_name)
        return name

    def bind(self, value: str, tensor: str, axes: tuple[int, ...]) -> None:
        full = self.full_shape(value)
        physical, index = arrangement(full, tuple(axes))
        if int(np.prod(physical)) != int(np.prod(self.tensors[tensor].shape)) or value in self.bindings:
            raise ConversionError(f"internal: cannot bind '{value}' {list(full)} to tensor '{tensor}' "
                                  f"{list(self.tensors[tensor].shape)}", self.where)
        self.bindings[value] = Binding(tensor, index)

    def add_node(self, node: Node) -> None:
        if node.op not in self.registry.by_op:
            raise ConversionError(f"internal: a handler made a node of op '{node.op}', which no handler owns",
                                  self.where)
        self.nodes.append(node)

    def delegate(self, op: str, node: OnnxNodeView) -> None:
        self.registry.for_op(op).from_onnx(node, self)

    def move(self, outputs: list[str], inputs: list[str], fn: Callable[[list[np.ndarray]], list[np.ndarray]]) -> bool:
        """Pure data movement: apply `fn` (numpy, ONNX semantics, batch included) to constants, or to
        the index arrays of values that share one source tensor. False when they do not share one."""
        if all(v in self.consts for v in inputs):
            for out, arr in zip(outputs, fn([np.asarray(self.consts[v]) for v in inputs]), strict=True):
                self.consts[out] = np.asarray(arr)
                self.shapes[out] = tuple(np.shape(arr))
            return True
        if any(v in self.consts for v in inputs):
            return False
        for v in inputs:
            if v not in self.bindings:
                self.tensor(v)
        sources = {self.bindings[v].tensor for v in inputs}
        if len(sources) != 1:
            return False
        (source,) = sources
        for out, index in zip(outputs, fn([self.bindings[v].index for v in inputs]), strict=True):
            expected = self.full_shape(out)
            if tuple(index.shape) != expected:
                raise ConversionError(f"'{out}' came out as {list(index.shape)}, the model says {list(expected)}",
                                      self.where)
            self.bindings[out] = Binding(source, index)
            before = [m for v in inputs for m in self.movers.get(v, ())]
            # an exporter's own node (tf2onnx's transposes) is no layer of the user's model
            mover = [self.node_name] if self.user_layers is None or self.node_name in self.user_layers else []
            self.movers[out] = tuple(dict.fromkeys([*before, *mover]))
            self._carry_file_quant(source, out, index)
        return True

    def _carry_file_quant(self, source: str, moved: str, index: np.ndarray) -> None:
        """A moved value the file quantized, whose source tensor's value it left float (ONNX Runtime
        quantizes after tf2onnx's Unsqueeze, not before it): when the move keeps every source element
        exactly once (a reshape, a transpose; not a slice, a split or a tile), the same values, so
        the source takes the moved value's quantization."""
        pins = None if self.file_quant is None else self.file_quant.activations
        key = self.tensors[source].calib_name or source
        if pins is None or moved not in pins or key in pins:
            return
        size = self.tensors[source].size
        if index.size == size and np.unique(index).size == size:
            pins[key] = pins[moved]

    # --- helpers
    def _materialize(self, binding: Binding, full_axes: tuple[int, ...], value: str) -> str:
        try:
            dst_shape, src_of = gather_map(binding, full_axes)
        except ValueError:
            raise UnsupportedOpError(f"value '{value}' of shape {list(binding.index.shape)} cannot be laid out as a "
                                     "1D feature map", self.where) from None
        src = binding.tensor
        key = (src, dst_shape, src_of.tobytes())
        if key in self.materialized:
            return self.materialized[key]
        move = classify(self.tensors[src].shape, dst_shape, src_of)
        src_shape = self.tensors[src].shape
        if move.kind is MovementKind.GATHER and len(src_shape) == 2 and min(src_shape) > 1:
            # e.g. an upsampling or crop of a (C, W) model input: a transpose, then the cheap op
            rows, cols = src_shape
            if classify((cols, rows), dst_shape, (src_of % cols) * rows + src_of // cols).kind is not MovementKind.GATHER:
                index = (binding.index % cols) * rows + binding.index // cols
                return self._materialize(Binding(self._transposed(src, value), index), full_axes, value)
        if move.kind is MovementKind.SAME:
            out = src
        elif move.kind is MovementKind.TRANSPOSE:
            rows, cols = self.tensors[src].shape
            out = self._transposed(src, value)
            if (cols, rows) != dst_shape:
                view = self.new_tensor(dst_shape, f"{value}_view")
                self._add_layout(Node(view, "reshape", [out], [view], origin="layout"), value)
                out = view
        else:
            attrs = dict(move.attrs)
            if move.kind is MovementKind.GATHER:
                attrs.update(index=src_of, shape=dst_shape)
            op = MOVEMENT_OPS[move.kind]
            cropped = (attrs["width"], src_shape[1]) if move.kind is MovementKind.CROP else dst_shape
            out = self.new_tensor(cropped, f"{value}_{op}")
            self._add_layout(Node(out, op, [src], [out], attrs=attrs, origin="layout"), value)
            if cropped != dst_shape:  # whole steps read as a vector: the crop's bytes under that shape
                view = self.new_tensor(dst_shape, f"{value}_view")
                self._add_layout(Node(view, "reshape", [out], [view], origin="layout"), value)
                out = view
        self.materialized[key] = out
        return out

    def _add_layout(self, node: Node, value: str) -> None:
        self.add_node(node)
        self.layout_nodes.append((node, self.movers.get(value, ())))

    def name_layout_nodes(self) -> None:
        """A layout step takes the names of the model nodes that moved its bytes and compute nothing
        themselves (a Flatten, a Cropping1D; not the conv whose exporter-made transposes also moved
        them), else of the last one; one without any keeps its value's name."""
        layout = {id(node) for node, _ in self.layout_nodes}
        computing = {node.name for node in self.nodes if id(node) not in layout}
        for node, movers in self.layout_nodes:
            own = [m for m in movers if m not in computing] or list(movers[-1:])
            if own:
                node.name = "+".join(own)

    def _transposed(self, src: str, value: str) -> str:
        key = (src, "transposed")
        if key not in self.materialized:
            rows, cols = self.tensors[src].shape
            out = self.new_tensor((cols, rows), f"{value}_transposed")
            self._add_layout(Node(out, "transpose", [src], [out], origin="layout"), value)
            self.materialized[key] = out
        return self.materialized[key]

    def _unique(self, hint: str) -> str:
        name, i = hint, 1
        while name in self.tensors:
            name, i = f"{hint}_{i}", i + 1
        return name


def import_onnx(model: onnx.ModelProto, registry: Registry, source: str,
                file_quant: FileQuantization | None = None) -> Graph:
    """The canonical graph of a float model (a QDQ model's after frontends.qdq.split_qdq, whose
    quantization `file_quant` is)."""
    gaps = unsupported_nodes(model, registry)
    if len(gaps) > 1:  # all of them at once, so one round of changes to the model can fix them all
        raise UnsupportedOpError(f"{len(gaps)} nodes use operators no handler supports: {', '.join(gaps)} "
                                 f"(supported: {', '.join(sorted(registry.by_onnx_op))})", source)
    b = GraphBuilder(model, source, registry, file_quant)
    g = model.graph
    inits = {i.name for i in g.initializer}
    raws, in_shapes = _bind_inputs(b, [i for i in g.input if i.name not in inits])  # numbered in the graph's order
    for proto in g.node:
        _import_node(b, proto, registry, source)
    b.where, b.node_name = source, "output"
    results, out_shapes = _bind_outputs(b, list(g.output), raws, source)
    b.name_layout_nodes()
    return Graph(
        tensors=b.tensors,
        nodes=b.nodes,
        inputs=raws,
        outputs=results,
        model_input_shapes=in_shapes,
        model_output_shapes=out_shapes,
        model_input_names=[i.name for i in g.input if i.name not in inits],
        model_output_names=[o.name for o in g.output],
        input_layouts=_input_layouts(b, raws),
        file_quant=file_quant,
    )


def _bind_inputs(b: GraphBuilder, inputs: list[onnx.ValueInfoProto]) -> tuple[list[str], list[tuple[int, ...]]]:
    """Each model input as an IR tensor in its own byte order (unit axes dropped), and its shape."""
    raws: list[str] = []
    in_shapes: list[tuple[int, ...]] = []
    for model_in in inputs:
        in_logical = b.logical_shape(model_in.name)
        raw_shape = in_logical if len(in_logical) <= 2 else tuple(n for n in in_logical if n > 1) or (1,)
        raw = b.new_tensor(raw_shape or (1,), model_in.name, calib_name=model_in.name)
        b.bindings[model_in.name] = Binding(raw, np.arange(int(np.prod(in_logical))).reshape((1, *in_logical)))
        b.tensors[raw].calib_index = b.bindings[model_in.name].index.reshape(-1)
        raws.append(raw)
        in_shapes.append((1, *in_logical))
    return raws, in_shapes


def _import_node(b: GraphBuilder, proto: onnx.NodeProto, registry: Registry, source: str) -> None:
    """One model node through its handler (a Constant is just recorded); errors name the file too."""
    view = OnnxNodeView(b.layer_of.get(proto.name) or proto.name or f"{proto.op_type}_{len(b.nodes)}", proto.op_type,
                        list(proto.input), list(proto.output), node_attrs(proto))
    b.where = f"{source}: {view.where}"
    b.node_name = view.name
    if proto.domain not in ("", "ai.onnx"):
        raise UnsupportedOpError(f"operator {proto.domain}.{proto.op_type} is not supported", b.where)
    if proto.op_type == "Constant":
        b.consts[proto.output[0]] = _constant_value(view, b.where)
        b.shapes[proto.output[0]] = b.consts[proto.output[0]].shape
        return
    try:
        registry.for_onnx(proto.op_type, b.where).from_onnx(view, b)
    except ConversionError as exc:  # handlers name the node; the message also names the file
        exc.where = b.where if not exc.where or exc.where == view.where else exc.where
        if not exc.where.startswith(source):
            exc.where = f"{source}: {exc.where}"
        raise


def _bind_outputs(b: GraphBuilder, outputs: list[onnx.ValueInfoProto], raws: list[str],
                  source: str) -> tuple[list[str], list[tuple[int, ...]]]:
    """The IR tensor of each model output (in its own byte order), and its shape; an output that is a
    constant, an input or another output's twin is refused by name."""
    results: list[str] = []
    out_shapes: list[tuple[int, ...]] = []
    for model_out in outputs:
        out_logical = b.logical_shape(model_out.name)
        if model_out.name not in b.bindings:
            raise ConversionError(f"the model output '{model_out.name}' is a constant", source)
        result = b.tensor(model_out.name,
                          tuple(a for a, n in enumerate(out_logical) if n > 1) or (0,) * bool(out_logical))
        if result in raws:
            which = "its input" if len(raws) == 1 else f"its input {raws.index(result)}"
            raise UnsupportedOpError(f"the model output '{model_out.name}' is {which}: nothing to compute", source)
        if result in results:  # the C writes each output into its own caller buffer
            twin = outputs[results.index(result)].name
            raise UnsupportedOpError(f"the model outputs '{twin}' and '{model_out.name}' hold the same values "
                                     "(drop one of them from the model's outputs)", source)
        results.append(result)
        out_shapes.append((1, *out_logical))
    return results, out_shapes


def _input_layouts(b: GraphBuilder, raws: list[str]) -> list[str]:
    """The IR's feature maps are (W, C): a 2-D input the builder had to transpose was (C, W). So was
    one that first went, in the model's own layout, through nodes that decide no axis and then was
    transposed: a concatenation of channel-major inputs along their channels, an add of two inputs,
    an elementwise map (the requantization before a concatenation). Such a node has no constants,
    reads only model inputs or what these nodes made of them, keeps their columns, and has several
    inputs or an output shaped as its input (a pool or a conv decides the axes: the walk stops)."""
    derived = {raw: {raw} for raw in raws}
    combined = set(raws)
    for node in b.nodes:  # in import order: producers first
        elementwise = len(node.inputs) == 1 and all(b.tensors[o].shape == b.tensors[node.inputs[0]].shape
                                                    for o in node.outputs)
        if node.consts or not (len(node.inputs) > 1 or elementwise) or not set(node.inputs) <= combined:
            continue
        if not all(len(b.tensors[o].shape) == 2 and all(b.tensors[o].shape[1] == b.tensors[t].shape[1]
                                                      for t in node.inputs) for o in node.outputs):
            continue
        combined.update(node.outputs)
        for raw in raws:
            if derived[raw] & set(node.inputs):
                derived[raw].update(node.outputs)
    layouts = []
    for raw in raws:
        shape = b.tensors[raw].shape
        if len(shape) != 2 or min(shape) == 1:
            layouts.append("flat")
        else:
            moved = any((t, "transposed") in b.materialized for t in derived[raw])
            layouts.append("channel-major" if moved else "time-major")
    return layouts


def _constant_value(view: OnnxNodeView, where: str) -> np.ndarray:
    for key in ("value", "value_float", "value_int", "value_floats", "value_ints"):
        if key in view.attrs:
            return np.asarray(view.attrs[key])
    raise UnsupportedOpError("Constant node without a numeric value", where)
