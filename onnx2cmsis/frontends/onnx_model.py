"""Read an .onnx file safely and bring it to a static, batch-1, shape-annotated model.

External data is only read from inside the model's own folder; old opsets are upgraded to 13.
"""

from __future__ import annotations

from collections.abc import Callable

import json
from pathlib import Path

import onnx
from onnx import external_data_helper, helper, shape_inference, version_converter

from onnx2cmsis.errors import ConversionError, OptionError, UnsupportedOpError, count
from onnx2cmsis.frontends.selection_folding import fold_selected_concats
from onnx2cmsis.frontends.shape_folding import fold_shape_subgraphs

MIN_OPSET = 13
MAX_FOLD_ROUNDS = 16  # shape computations folded in turn, each round's results making the next's inputs known
# Model metadata a frontend may write: JSON {ONNX node name: the user's name for the layer it belongs
# to} (the Keras layer), which the importer shows in place of the node name.
LAYER_OF_NODE = "onnx2cmsis.layer_of_node"


def short_error(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__


def load_onnx(path: Path, input_shape: tuple[int, ...] | None = None) -> onnx.ModelProto:
    return normalize(read_onnx(path), str(path), input_shape)


def read_onnx(path: Path) -> onnx.ModelProto:
    """The file as it is (external data read from its own folder only), before normalize."""
    where = str(path)
    if not path.is_file():
        raise ConversionError("file not found", where)
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises several unrelated types for garbage
        raise ConversionError(f"not a readable ONNX model ({short_error(exc)})", where) from exc
    _load_confined_external_data(model, path.parent.resolve(), where)
    return model


def normalize(model: onnx.ModelProto, where: str, input_shape: tuple[int, ...] | None = None) -> onnx.ModelProto:
    """What every model goes through, whichever frontend made it: opset upgrade, canonical node order,
    batch 1, static shapes inferred, shape computations folded (frontends/shape_folding.py), constant
    selections from a Concat taken from the input they select (frontends/selection_folding.py).
    `input_shape` (without the batch) fixes dynamic dimensions."""
    if not model.graph.node:
        raise ConversionError("not an ONNX model (the graph has no nodes)", where)
    model = fix_batch_and_infer_shapes(_upgrade_opset(model, where), where, input_shape)
    for _ in range(MAX_FOLD_ROUNDS):  # a shape folded may make another known (a reshape to a computed target)
        folded = fold_shape_subgraphs(model, where, value_shapes(model))
        if folded is model:
            break
        model = folded
    return fold_selected_concats(model, value_shapes(model))


def _load_confined_external_data(model: onnx.ModelProto, folder: Path, where: str) -> None:
    for tensor in external_data_helper._get_all_tensors(model):
        if not external_data_helper.uses_external_data(tensor):
            continue
        info = external_data_helper.ExternalDataInfo(tensor)
        target = (folder / info.location).resolve()
        if not target.is_relative_to(folder):
            raise ConversionError(
                f"tensor '{tensor.name}' points to external data outside the model's folder ({info.location!r})", where
            )
        if not target.is_file():
            raise ConversionError(f"external data file {info.location!r} of tensor '{tensor.name}' is missing", where)
    try:
        external_data_helper.load_external_data_for_model(model, str(folder))
    except Exception as exc:
        raise ConversionError(f"cannot read external data ({short_error(exc)})", where) from exc


def _default_opset(model: onnx.ModelProto) -> int:
    for o in model.opset_import:
        if o.domain in ("", "ai.onnx"):
            return int(o.version)
    raise ConversionError("model imports no default ONNX opset")


def _upgrade_opset(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    if _default_opset(model) >= MIN_OPSET:
        return model
    try:
        return version_converter.convert_version(model, MIN_OPSET)
    except Exception as exc:
        raise ConversionError(f"cannot upgrade opset {_default_opset(model)} to {MIN_OPSET} ({short_error(exc)})", where)


def canonical_node_order(model: onnx.ModelProto, name_key: Callable[[str], str] = str) -> None:
    """Put the nodes in a topological order that does not depend on the order the exporter wrote them
    in (tf2onnx writes parallel branches in a varying order): among the nodes whose inputs are ready,
    the one whose output names come first. Output names are unique in a valid graph, so the same model
    always gives the same order, and with it the same IR names and the same C. `name_key`: what of a
    name to order by first (the Keras frontend leaves out tf2onnx's counters)."""
    import heapq

    nodes = list(model.graph.node)
    produced = {out: i for i, n in enumerate(nodes) for out in n.output if out}
    waiting = [{produced[v] for v in n.input if v in produced} for n in nodes]
    readers: dict[int, list[int]] = {}
    for i, deps in enumerate(waiting):
        for d in deps:
            readers.setdefault(d, []).append(i)

    def key(i: int) -> tuple:
        return (tuple(name_key(v) for v in nodes[i].output), nodes[i].op_type, tuple(name_key(v) for v in nodes[i].input),
                tuple(nodes[i].output), nodes[i].name)

    ready = [(key(i), i) for i, deps in enumerate(waiting) if not deps]
    heapq.heapify(ready)
    order: list[int] = []
    while ready:
        _, i = heapq.heappop(ready)
        order.append(i)
        for r in readers.get(i, ()):
            waiting[r].discard(i)
            if not waiting[r]:
                heapq.heappush(ready, (key(r), r))
    placed = set(order)
    order += [i for i in range(len(nodes)) if i not in placed]  # a cycle: shape inference names it
    copies = [onnx.NodeProto() for _ in order]
    for copy, i in zip(copies, order):
        copy.CopyFrom(nodes[i])
    del model.graph.node[:]
    model.graph.node.extend(copies)


def fix_batch_and_infer_shapes(model: onnx.ModelProto, where: str,
                               input_shape: tuple[int, ...] | None = None) -> onnx.ModelProto:
    """Batch 1 everywhere (the C processes one sample); every other dimension must be static, or given
    by `input_shape` (the input's shape without the batch, e.g. a PyTorch export's dynamic time axis).
    The nodes are put in canonical order first."""
    canonical_node_order(model)
    inits = {i.name for i in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in inits]
    if not inputs or not model.graph.output:
        raise UnsupportedOpError(f"the model has {count(len(inputs), 'input')} and "
                                 f"{count(len(model.graph.output), 'output')}: nothing to convert", where)
    if input_shape is not None and len(inputs) > 1:
        raise OptionError(f"{{opt:input_shape}} fixes the input of a one-input model; this one has {len(inputs)} "
                          f"({', '.join(repr(i.name) for i in inputs)}): export it with static shapes")
    seen: set[str] = set()
    for node in model.graph.node:
        if node.name and node.name in seen:  # ONNX Runtime refuses duplicates; names are only labels
            k = 1
            while f"{node.name}_{k}" in seen:
                k += 1
            node.name = f"{node.name}_{k}"
        seen.add(node.name)
        if node.domain not in ("", "ai.onnx"):
            raise UnsupportedOpError(f"node '{node.name}' ({node.domain}.{node.op_type}): operator from domain "
                                     f"'{node.domain}' is not supported", where)
    batches = set()
    for model_input in inputs:
        dims = model_input.type.tensor_type.shape.dim
        if not dims:
            raise ConversionError(f"input '{model_input.name}' has no declared shape", where)
        batches.add(dims[0].dim_value if dims[0].HasField("dim_value") else 0)
        dims[0].Clear()
        dims[0].dim_value = 1
        _fix_input_dims(model_input.name, dims, input_shape, where, several=len(inputs) > 1)
    batch = max(batches)
    if batch > 1:
        _reshape_constants_to_batch_1(model, batch)
    model = _inferred(model, where)
    while _explicit_same_transposed_pads(model):  # one at a time: the next one's input width follows
        model = _inferred(model, where)
    return model


def _inferred(model: onnx.ModelProto, where: str) -> onnx.ModelProto:
    """Every value's shape inferred afresh (the outputs' too: an exporter's may be wrong or dynamic)."""
    del model.graph.value_info[:]
    for out in model.graph.output:
        out.type.tensor_type.ClearField("shape")
    try:
        return shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:
        raise ConversionError(f"shape inference failed at batch 1 ({short_error(exc)})", where) from exc


def _explicit_same_transposed_pads(model: onnx.ModelProto) -> bool:
    """Rewrite the first ConvTranspose with auto_pad SAME_UPPER/SAME_LOWER and a nonzero output_padding
    (and no output_shape) with the explicit pads ONNX Runtime computes for it; False: none left.

    ONNX's shape inference makes such a node output_padding wider than ONNX Runtime does (which, as
    the operator's text says, gives input x stride columns, output_padding taken from the padding), so
    the graph would describe another output than the float model computes. With explicit pads and
    output_padding both give the same width: stride (in - 1) + output_padding + dilated kernel - pads."""
    shapes = value_shapes(model)
    for node in model.graph.node:
        if node.op_type != "ConvTranspose":
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        auto_pad = attrs.get("auto_pad", b"NOTSET")
        auto_pad = auto_pad.decode() if isinstance(auto_pad, bytes) else auto_pad
        extra = list(attrs.get("output_padding", []))
        if auto_pad not in ("SAME_UPPER", "SAME_LOWER") or not any(extra) or "output_shape" in attrs:
            continue
        in_shape, w_shape = shapes.get(node.input[0]), shapes.get(node.input[1])
        if in_shape is None or w_shape is None:
            continue  # left to the importer, which names what it cannot read
        spatial = in_shape[2:]
        kernel = list(attrs.get("kernel_shape", w_shape[2:]))
        strides = list(attrs.get("strides", [1] * len(spatial)))
        dilations = list(attrs.get("dilations", [1] * len(spatial)))
        begins, ends = [], []
        for n, k, s, d, e in zip(spatial, kernel, strides, dilations, extra):
            # a stride wider than the kernel leaves less than input x stride columns: ONNX Runtime then
            # pads nothing (and outputs what the taps reach, plus output_padding)
            total = max(0, s * (n - 1) + e + (k - 1) * d + 1 - n * s)
            begin = total // 2 if auto_pad == "SAME_UPPER" else total - total // 2
            begins.append(begin)
            ends.append(total - begin)
        kept = [a for a in node.attribute if a.name != "auto_pad"]
        del node.attribute[:]
        node.attribute.extend(kept + [helper.make_attribute("pads", begins + ends)])
        return True
    return False


def _fix_input_dims(name: str, dims, input_shape: tuple[int, ...] | None, where: str, several: bool = False) -> None:
    """Every input dimension after the batch static: as declared, or as `input_shape` gives it."""
    declared = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims[1:]]
    if input_shape is not None:
        given = [int(v) for v in input_shape]
        clash = [i for i, (d, g) in enumerate(zip(declared, given)) if isinstance(d, int) and d != g]
        if len(given) != len(declared) or clash or min(given, default=1) < 1:
            raise OptionError(f"{{opt:input_shape={','.join(map(str, given))}}} does not fit input '{name}' of "
                              f"shape [N, {', '.join(map(str, declared))}] (give every dimension after the batch; "
                              "the fixed ones as declared)")
        for d, g in zip(dims[1:], given):
            d.Clear()
            d.dim_value = g
        return
    dynamic = [i for i, d in enumerate(declared) if not isinstance(d, int)]
    if dynamic:
        example = ",".join(str(d) if isinstance(d, int) else "LENGTH" for d in declared)
        raise ConversionError(f"input '{name}' has {'a dynamic dimension' if len(dynamic) == 1 else 'dynamic dimensions'} "
                              f"{', '.join(repr(declared[i]) for i in dynamic)} (shape [N, "
                              f"{', '.join(map(str, declared))}]): the C needs a fixed window; "
                              + ("export the model with static input shapes" if several else
                                 f"give it with {{opt:input_shape={example}}}"), where)


def _reshape_constants_to_batch_1(model: onnx.ModelProto, batch: int) -> None:
    """An export at a static batch B > 1 spells B into its Reshape targets ([B, -1]); the C runs one
    sample, so those leading Bs become 1 (a -1 or 0 there already follows the input)."""
    from onnx import numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
    for node in model.graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2:
            continue
        target = node.input[1]
        if target in inits:
            shape = numpy_helper.to_array(inits[target])
            if shape.size and shape[0] == batch:
                fixed = shape.copy()
                fixed[0] = 1
                inits[target].CopyFrom(numpy_helper.from_array(fixed, target))
        elif target in consts:
            for attr in consts[target].attribute:
                if attr.name == "value":
                    shape = numpy_helper.to_array(attr.t)
                    if shape.size and shape[0] == batch:
                        fixed = shape.copy()
                        fixed[0] = 1
                        attr.t.CopyFrom(numpy_helper.from_array(fixed, attr.t.name))


def value_shapes(model: onnx.ModelProto) -> dict[str, tuple[int, ...] | None]:
    """Static shapes of every value; None where a dimension is unknown."""
    shapes: dict[str, tuple[int, ...] | None] = {}
    for vi in list(model.graph.input) + list(model.graph.value_info) + list(model.graph.output):
        tt = vi.type.tensor_type
        if not tt.HasField("shape"):
            shapes[vi.name] = None
            continue
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        shapes[vi.name] = None if any(d is None for d in dims) else tuple(int(d) for d in dims)
    for init in model.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def layer_of_node(model: onnx.ModelProto) -> dict[str, str]:
    """LAYER_OF_NODE's map, or {} (an ONNX file: nodes are shown by their own names)."""
    for prop in model.metadata_props:
        if prop.key == LAYER_OF_NODE:
            try:
                found = json.loads(prop.value)
            except ValueError:
                return {}
            return {str(k): str(v) for k, v in found.items()} if isinstance(found, dict) else {}
    return {}
