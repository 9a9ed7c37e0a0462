"""Quantize a canonical graph in topological order, and run its integer reference."""

from __future__ import annotations

import numpy as np

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.quant.rules import activation_quant, dequantize_tensor, quantize_tensor


def calibration_values(graph: Graph) -> list[str]:
    """The model values whose float ranges quantization needs."""
    return sorted({t.calib_name for t in graph.tensors.values() if t.calib_name})


def quantize_graph(graph: Graph, registry: Registry, ranges: dict[str, tuple[float, float]]) -> None:
    default = graph.quant_options.activation_bits
    lacking = [(n, b) for n in graph.nodes
               if (b := graph.tensors[n.output].bits or default) not in registry.for_op(n.op).activation_bits]
    if lacking:
        raise ConversionError("; ".join(f"{n.where}: its handler ({n.op}) supports "
                                        f"{' and '.join(f'int{b}' for b in registry.for_op(n.op).activation_bits)}"
                                        f" activations only" for n, _ in lacking)
                              + f" (convert with {{opt:precision=int8}}, or give the op a handler for "
                                f"int{lacking[0][1]})")
    for name in graph.inputs:
        t = graph.tensors[name]
        t.quant = activation_quant(*ranges[t.calib_name or name], t.bits or default)
    for node in graph.nodes:
        registry.for_op(node.op).quantize(node, graph, ranges)


def run_reference(graph: Graph, registry: Registry, x: np.ndarray, keep_all: bool = False) -> dict[str, np.ndarray]:
    """The integer reference: the input's codes (int8 or int16) in the model's layout -> every (or the
    output) tensor."""
    inp = graph.inputs[0]
    values = {inp: np.asarray(x, graph.tensors[inp].quant.dtype).reshape(graph.tensors[inp].shape)}
    for node in graph.nodes:
        outs = registry.for_op(node.op).reference(node, graph, [values[t] for t in node.inputs])
        for name, arr in zip(node.outputs, outs, strict=True):  # a handler returns one array per output
            assert arr.shape == graph.tensors[name].shape, (node.name, arr.shape, graph.tensors[name].shape)
            values[name] = arr
    return values if keep_all else {o: values[o] for o in graph.outputs}


def dequantized_outputs(graph: Graph, registry: Registry, x: np.ndarray) -> np.ndarray:
    """The quantized graph on float samples, as its float outputs: quantize each sample with the
    input's parameters, run the integer reference, dequantize the output. (N, output size), float64:
    what every accuracy measurement of a candidate quantization compares with the float model."""
    q_in, out = graph.tensors[graph.inputs[0]].quant, graph.outputs[0]
    q_out = graph.tensors[out].quant
    return np.stack([dequantize_tensor(run_reference(graph, registry, quantize_tensor(s, q_in))[out], q_out)
                     .reshape(-1) for s in x]).astype(np.float64)
