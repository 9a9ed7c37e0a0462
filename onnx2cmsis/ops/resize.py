"""Nearest-neighbour upsampling along time by an integer factor (Resize / Upsample): a byte copy.

Every coordinate mode ONNX offers maps output step t to input step floor(t / f) for integer factors
under the modes accepted here; the importer computes the map and refuses anything else.
"""

from __future__ import annotations

import math

import numpy as np

from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import ImportContext, KernelCall, OnnxNodeView, OpHandler, TfliteContext, TimeGeometry


def _source_index(o: int, factor: int, coord: str, nearest: str) -> int:
    if coord == "asymmetric":
        x = o / factor
    elif coord in ("half_pixel", "pytorch_half_pixel"):
        x = (o + 0.5) / factor - 0.5
    else:
        raise ValueError(coord)
    if nearest == "floor":
        return math.floor(x)
    if nearest == "ceil":
        return math.ceil(x)
    frac = x - math.floor(x)
    if frac == 0.5:
        return math.floor(x) if nearest == "round_prefer_floor" else math.ceil(x)
    return round(x)


class Upsample1DHandler(OpHandler):
    op = "upsample1d"
    activation_bits = (8, 16)
    onnx_ops = ("Resize", "Upsample")

    def time_geometry(self, node: Node, graph: Graph) -> TimeGeometry | None:
        return TimeGeometry(upsample=node.attrs["factor"])

    def from_onnx(self, node: OnnxNodeView, ctx: ImportContext) -> None:
        l_in, l_out = ctx.logical_shape(node.inputs[0]), ctx.logical_shape(node.outputs[0])
        scaled = [a for a in range(len(l_in)) if l_in[a] != l_out[a]] if len(l_in) == len(l_out) else []
        # (C, W), or (C, H, W) with a unit spatial axis left as it is: a 1D model written in 2-D
        one_d = len(l_in) == 2 or (len(l_in) == 3 and len(scaled) == 1 and scaled[0] > 0 and l_in[3 - scaled[0]] == 1)
        if not one_d or len(scaled) != 1 or l_out[scaled[0]] % l_in[scaled[0]]:
            raise UnsupportedOpError(f"only integer upsampling along time is supported ({l_in} -> {l_out})", node.where)
        time = scaled[0]
        axes = (time, 1 - time) if len(l_in) == 2 else (time, 0)
        mode = node.attr("mode", "nearest")
        coord = node.attr("coordinate_transformation_mode", "half_pixel" if node.op_type == "Resize" else "asymmetric")
        nearest = node.attr("nearest_mode", "round_prefer_floor" if node.op_type == "Resize" else "floor")
        factor = l_out[time] // l_in[time]
        if mode != "nearest" or coord not in ("asymmetric", "half_pixel", "pytorch_half_pixel"):
            raise UnsupportedOpError(f"Resize mode={mode}, coordinate mode={coord} is not supported (nearest only)",
                                     node.where)
        if any(_source_index(o, factor, coord, nearest) != o // factor for o in range(l_out[time])):
            raise UnsupportedOpError(f"Resize with nearest_mode={nearest} and {coord} coordinates does not repeat "
                                     "samples; not supported", node.where)
        ctx.add_node(Node(node.name, self.op, [ctx.tensor(node.inputs[0], axes)], [ctx.tensor(node.outputs[0], axes)],
                          attrs={"factor": factor}, origin=node.op_type))

    def output_shapes(self, node: Node, input_shapes: list[tuple[int, ...]]) -> list[tuple[int, ...]]:
        w, c = input_shapes[0]
        return [(w * node.attrs["factor"], c)]

    def quantize(self, node: Node, graph: Graph, ranges: dict[str, tuple[float, float]]) -> None:
        graph.tensors[node.output].quant = graph.tensors[node.inputs[0]].quant

    def reference_batch(self, node: Node, graph: Graph, inputs: list[np.ndarray]) -> list[np.ndarray]:
        return [np.repeat(inputs[0], node.attrs["factor"], axis=1)]

    def emit(self, node: Node, graph: Graph) -> KernelCall:
        w, c = graph.tensors[node.inputs[0]].shape
        return KernelCall(template="upsample1d.c.j2", kernel="own loop",
                          context={"w_in": w, "c": c, "factor": node.attrs["factor"]})

    def export_tflite(self, ex: TfliteContext, node: Node) -> None:
        fb = ex.fb
        w_out = ex.graph.tensors[node.output].shape[0]
        size = ex.const(np.array([1, w_out], np.int32), fb.TensorType.INT32, f"{node.output}_size")
        opts = fb.ResizeNearestNeighborOptionsT()
        opts.alignCorners, opts.halfPixelCenters = False, True  # floor((t + 0.5) / f) == t // f, free of float error
        ex.op(fb.BuiltinOperator.RESIZE_NEAREST_NEIGHBOR, [ex.activation(node.inputs[0]), size],
              [ex.activation(node.output)], fb.BuiltinOptions.ResizeNearestNeighborOptions, opts)
