"""MaxPool1D -> arm_max_pool_s8. The output keeps the input's quantization (a TFLite rule)."""

from __future__ import annotations

import numpy as np

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import (
    ImportContext,
    KernelCall,
    OnnxNodeView,
    OpHandler,
    check_uint16,
    explicit_pads,
    int_attr_list,
)
from onnx2cmsis.quant.rules import activation_range, saturate_int8


class MaxPool1DHandler(OpHandler):
    op = "maxpool1d"
    onnx_ops = ("MaxPool",)

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        in_shape = ctx.logical_shape(node.inputs[0])
        if len(in_shape) != 2:
            raise UnsupportedOpError(f"only 1D pooling on (N, C, W) input is supported, got {in_shape}", node.where)
        if len(node.outputs) > 1 and node.outputs[1]:
            raise UnsupportedOpError("MaxPool with an Indices output is not supported", node.where)
        (k,) = int_attr_list(node, "kernel_shape", [1], 1)
        (stride,) = int_attr_list(node, "strides", [1], 1)
        (dilation,) = int_attr_list(node, "dilations", [1], 1)
        if dilation != 1:
            raise UnsupportedOpError(f"MaxPool with dilation {dilation} is not supported yet", node.where)
        pad_l, _ = explicit_pads(node, in_shape[1], k, stride, 1)
        if pad_l >= k:
            raise UnsupportedOpError(f"MaxPool padding {pad_l} must be smaller than the kernel {k}", node.where)
        out_w = ctx.logical_shape(node.outputs[0])[1]
        w_in = in_shape[1]
        last_start = (out_w - 1) * stride - pad_l
        if last_start >= w_in:
            raise UnsupportedOpError("MaxPool has an output window that covers only padding", node.where)
        ctx.add_node(
            Node(
                node.name,
                self.op,
                [ctx.tensor(node.inputs[0])],
                [ctx.tensor(node.outputs[0])],
                attrs={"kernel": k, "stride": stride, "pad_left": pad_l, "out_w": out_w},
                origin=node.op_type,
            )
        )

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        return [(node.attrs["out_w"], input_shapes[0][1])]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        q = graph.tensors[node.inputs[0]].quant
        graph.tensors[node.output].quant = q
        lo, hi = node.attrs.get("act", (None, None))
        node.qparams = {"act_range": activation_range(q, lo, hi)}

    def reference(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        x = inputs[0]
        k, s, p, out_w = (node.attrs[key] for key in ("kernel", "stride", "pad_left", "out_w"))
        out = np.empty((out_w, x.shape[1]), np.int8)
        for o in range(out_w):
            start = o * s - p
            out[o] = x[max(0, start) : min(x.shape[0], start + k)].max(axis=0)
        return [saturate_int8(out, *node.qparams["act_range"])]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        (w_in, c), (w_out, _) = graph.tensors[node.inputs[0]].shape, graph.tensors[node.output].shape
        a = node.attrs
        check_uint16(f"node '{node.name}' ({node.origin})", width=w_in, channels=c, kernel=a["kernel"])
        return KernelCall(
            template="maxpool1d.c.j2",
            kernel="arm_max_pool_s8",
            context={
                "w_in": w_in, "c": c, "w_out": w_out, "k": a["kernel"], "stride": a["stride"],
                "pad": a["pad_left"], "act_min": node.qparams["act_range"][0], "act_max": node.qparams["act_range"][1],
            },
            functions=["arm_max_pool_s8"],
        )
