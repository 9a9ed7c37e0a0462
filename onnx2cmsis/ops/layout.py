"""Layout ops: views, 2D transposes and zero padding along time.

ONNX data movement is imported by ops/movement.py; what it materializes as a plain view or a transpose
lands here. Passes then drop identity transposes, cancel pairs, and fold a transpose that feeds a dense
layer into that layer's weight order, so a PyTorch Flatten -> Linear costs no copy at all.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import VIEW_KERNEL, ImportContext, KernelCall, OnnxNodeView, OpHandler, TfliteContext, TimeGeometry
from onnx2cmsis.ops.roles import Role, Transpose, ZeroPad


class ReshapeHandler(OpHandler):
    """A byte view: the output aliases the input's storage; no code is emitted."""

    op = "reshape"
    activation_bits = (8, 16)

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        raise NotImplementedError("a view's shape is set by its producer")

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        graph.tensors[node.output].quant = graph.tensors[node.inputs[0]].quant

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [inputs[0].reshape(len(inputs[0]), *graph.tensors[node.output].shape)]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        return KernelCall(template="view.c.j2", kernel=VIEW_KERNEL)

    def aliases_input(self, node: Node) -> bool:
        return True

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        ex.reshape(ex.activation(node.inputs[0]), ex.activation(node.output))


def become_view(node: Node) -> None:
    """The node moves no byte any more: its output is its input's bytes under the output's shape."""
    node.op = ReshapeHandler.op
    node.attrs, node.consts, node.qparams = {}, {}, {}


class TransposeHandler(OpHandler):
    """A physical (a, b) -> (b, a) byte transpose; an own loop (CMSIS-NN's snapshot has none)."""

    op = "transpose"
    activation_bits = (8, 16)

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        a, b = input_shapes[0]
        return [(b, a)]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        graph.tensors[node.output].quant = graph.tensors[node.inputs[0]].quant

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        x = inputs[0]  # each sample's axes reversed, as numpy's .T
        return [np.ascontiguousarray(x.transpose(0, *range(x.ndim - 1, 0, -1)))]

    def role(self, node: Node) -> Role | None:
        return Transpose()

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        rows, cols = graph.tensors[node.inputs[0]].shape
        return KernelCall(template="transpose.c.j2", kernel="own loop", context={"rows": rows, "cols": cols})

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        perm = ex.const(np.array([0, 1, 3, 2], np.int32), ex.fb.TensorType.INT32, f"{node.output}_perm")
        ex.op(ex.fb.BuiltinOperator.TRANSPOSE, [ex.activation(node.inputs[0]), perm], [ex.activation(node.output)],
              ex.fb.BuiltinOptions.TransposeOptions, ex.fb.TransposeOptionsT())


class Pad1DHandler(OpHandler):
    """Constant zero padding along time. Before a convolution a pass folds it into the kernel's
    padding (padding with the zero point is what CMSIS-NN's skipped taps mean); elsewhere an own
    copy loop writes the zero point (a real 0.0) around the data."""

    def time_geometry(self, node: Node, graph: Graph) -> TimeGeometry | None:
        return TimeGeometry(pad_left=node.attrs["pad"][0])

    def time_slice(self, node: Node, pad_left: int, pad_right: int, out_w: int) -> Node:
        return replace(node, attrs={**node.attrs, "pad": (pad_left, pad_right)})

    def role(self, node: Node) -> Role | None:
        return ZeroPad(*node.attrs["pad"])

    op = "pad1d"
    activation_bits = (8, 16)
    onnx_ops = ("Pad",)

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        mode = node.attr("mode", "constant")
        logical = ctx.logical_shape(node.inputs[0])
        pads = node.attr("pads")
        if pads is None and len(node.inputs) > 1:
            const = ctx.const(node.inputs[1])
            pads = None if const is None else const.reshape(-1).tolist()
        value = ctx.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
        if len(node.inputs) > 3 and node.inputs[3]:
            raise UnsupportedOpError("Pad with an axes input is not supported", node.where)
        if mode != "constant" or pads is None or len(pads) != 2 * (len(logical) + 1):
            raise UnsupportedOpError(f"only constant padding is supported (mode={mode})", node.where)
        pads = [int(p) for p in pads]
        rank = len(logical) + 1
        begin, end = pads[1:rank], pads[rank + 1:]
        padded = [a for a in range(len(logical)) if begin[a] or end[a]]
        if pads[0] or pads[rank] or len(padded) > 1 or min(pads) < 0:
            raise UnsupportedOpError(f"Pad {pads} pads more than one axis or crops; not supported", node.where)
        if value is not None and float(np.asarray(value).reshape(-1)[0]) != 0.0:
            raise UnsupportedOpError("Pad with a non-zero constant is not supported", node.where)
        time = padded[0] if padded else len(logical) - 1
        others = [a for a in range(len(logical)) if a != time and logical[a] > 1]
        if len(others) > 1:
            raise UnsupportedOpError(f"Pad of a {list(logical)} tensor: only 1D feature maps", node.where)
        axes = (time, others[0] if others else next(a for a in range(len(logical)) if a != time))
        ctx.add_node(Node(node.name, self.op, [ctx.tensor(node.inputs[0], axes)], [ctx.tensor(node.outputs[0], axes)],
                          attrs={"pad": (begin[time], end[time])}, origin=node.op_type))

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        w, c = input_shapes[0]
        return [(w + sum(node.attrs["pad"]), c)]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        graph.tensors[node.output].quant = graph.tensors[node.inputs[0]].quant

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        zp = graph.tensors[node.inputs[0]].quant.zero_point
        return [np.pad(inputs[0], ((0, 0), node.attrs["pad"], (0, 0)), constant_values=zp)]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        (w_in, c), (w_out, _) = graph.tensors[node.inputs[0]].shape, graph.tensors[node.output].shape
        return KernelCall(template="pad1d.c.j2", kernel="own loop", context={
            "w_in": w_in, "w_out": w_out, "c": c, "left": node.attrs["pad"][0], "right": node.attrs["pad"][1],
            "fill": graph.tensors[node.inputs[0]].quant.zero_point})

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        fb = ex.fb
        left, right = node.attrs["pad"]
        pads = ex.const(np.array([[0, 0], [0, 0], [left, right], [0, 0]], np.int32), fb.TensorType.INT32,
                        f"{node.output}_pads")
        ex.op(fb.BuiltinOperator.PAD, [ex.activation(node.inputs[0]), pads], [ex.activation(node.output)],
              fb.BuiltinOptions.PadOptions, fb.PadOptionsT())
