"""Quantize a canonical graph in topological order, and run its integer reference."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import numpy as np

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ops.base import calibrated_quant
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.arith.rules import dequantize_tensor, quantize_tensor
from onnx2cmsis.data.samples import MultiSamples, Sample, input_arrays, sample_inputs


def calibration_values(graph: Graph) -> list[str]:
    """The model values whose float ranges quantization needs."""
    return sorted({t.calib_name for t in graph.tensors.values() if t.calib_name} |
                  {v for n in graph.nodes for v in n.internal_values})


def quantize_graph(graph: Graph, registry: Registry, ranges: dict[str, tuple[float, float]],
                   after: Callable[[Node], None] | None = None) -> None:
    """Each input's and node's quantization in execution order (`after`, if given, sees each node once
    its handler quantized it, and may insert nodes after it)."""
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
        graph.tensors[name].quant = calibrated_quant(graph, name, ranges)
    for node in list(graph.nodes):
        registry.for_op(node.op).quantize(node, graph, ranges)
        if after is not None:
            after(node)


def run_reference(graph: Graph, registry: Registry, x: Sample, keep_all: bool = False,
                  upto: int | None = None) -> dict[str, np.ndarray]:
    """The integer reference: the inputs' codes (int8 or int16) in the model's layout (one array, or a
    tuple with one per input) -> every (or each output) tensor. With `upto`, only the nodes up to that
    index run (the nodes are in execution order) and every tensor they made is returned."""
    codes = [np.asarray(part)[np.newaxis] for part in sample_inputs(x)]
    return {name: value[0] for name, value in run_reference_batch(graph, registry, codes, keep_all, upto).items()}


def run_reference_batch(graph: Graph, registry: Registry, codes: Sequence[np.ndarray], keep_all: bool = False,
                        upto: int | None = None) -> dict[str, np.ndarray]:
    """run_reference on N samples at once: one (N, ...) array of codes per input -> (N, *shape) per tensor."""
    n = len(codes[0])
    values = {name: np.asarray(part, graph.tensors[name].quant.dtype).reshape(n, *graph.tensors[name].shape)
              for name, part in zip(graph.inputs, codes, strict=True)}
    for node in graph.nodes if upto is None else graph.nodes[:upto + 1]:
        run_node_batch(graph, registry, node, values)
    return values if keep_all or upto is not None else {o: values[o] for o in graph.outputs}


def run_node_batch(graph: Graph, registry: Registry, node: Node, values: dict[str, np.ndarray]) -> None:
    """One node of the integer reference on a batch: its outputs from its inputs in `values`, into `values`."""
    outs = registry.for_op(node.op).reference_batch(node, graph, [values[t] for t in node.inputs])
    n = len(next(iter(values.values())))  # every value holds the same batch
    for name, arr in zip(node.outputs, outs, strict=True):  # a handler returns one array per output
        assert arr.shape == (n, *graph.tensors[name].shape), (node.name, arr.shape, graph.tensors[name].shape)
        values[name] = arr


def batches(graph: Graph, n: int) -> Iterator[slice]:
    """Slices of N samples, each small enough that the reference's largest temporary (a conv's
    im2col, int64) stays within tens of MB."""
    largest = max(t.size for t in graph.tensors.values())
    step = max(1, min(256, (1 << 20) // max(largest, 1)))
    return (slice(start, min(start + step, n)) for start in range(0, n, step))


def input_slices(graph: Graph, x: np.ndarray | MultiSamples) -> list[dict[str, np.ndarray]]:
    """N float samples' input codes (quantize_samples) as one dict of values per slice of `batches`:
    what a pass that runs the integer reference node by node (run_node_batch) starts from."""
    codes = quantize_samples(graph, x)
    return [{name: np.asarray(c)[part].reshape(part.stop - part.start, *graph.tensors[name].shape)
             for name, c in zip(graph.inputs, codes, strict=True)} for part in batches(graph, len(codes[0]))]


def reference_by_sample(graph: Graph, registry: Registry, codes: Sequence[np.ndarray], keep_all: bool = False,
                        upto: int | None = None) -> Iterator[dict[str, np.ndarray]]:
    """run_reference of each of N samples in turn (one (N, ...) array of codes per input), computed a
    slice of `batches` at a time."""
    for part in batches(graph, len(codes[0])):
        values = run_reference_batch(graph, registry, [np.asarray(c)[part] for c in codes], keep_all, upto)
        for k in range(part.stop - part.start):
            yield {name: value[k] for name, value in values.items()}


def batch_values(graph: Graph, registry: Registry, codes: Sequence[np.ndarray]) -> list[dict[str, np.ndarray]]:
    """Every tensor of the integer reference on N samples' input codes, one dict per slice of
    `batches`: what rerun_from starts from."""
    return [run_reference_batch(graph, registry, [np.asarray(c)[part] for c in codes], keep_all=True)
            for part in batches(graph, len(codes[0]))]


def rerun_from(graph: Graph, registry: Registry, parts: list[dict[str, np.ndarray]],
               start: int) -> list[dict[str, np.ndarray]]:
    """batch_values of `graph` when it differs from the graph that made `parts` only in the nodes from
    index `start` on: the nodes before it are not run again (`parts` is left as it is)."""
    rerun = []
    for values in parts:
        values = dict(values)
        for node in graph.nodes[start:]:
            run_node_batch(graph, registry, node, values)
        rerun.append(values)
    return rerun


def batch_outputs(graph: Graph, parts: list[dict[str, np.ndarray]]) -> np.ndarray:
    """The output_codes rows of batch_values' samples, (N, output size)."""
    return np.concatenate([np.concatenate([v[o].reshape(len(v[o]), -1) for o in graph.outputs], axis=1)
                           for v in parts])


def quantize_samples(graph: Graph, x: np.ndarray | MultiSamples) -> list[np.ndarray]:
    """N float samples' codes, one (N, ...) array per input, each with its input's parameters."""
    return [quantize_tensor(np.asarray(part), graph.tensors[name].quant)
            for name, part in zip(graph.inputs, input_arrays(x), strict=True)]


def output_codes(graph: Graph, values: dict[str, np.ndarray]) -> np.ndarray:
    """A sample's output codes as one flat array: each output flattened (in the model's layout), side by
    side in output order; what the C writes, and what every comparison of integer outputs compares."""
    return np.concatenate([values[o].reshape(-1) for o in graph.outputs])


def output_slices(graph: Graph) -> list[slice]:
    """Where each output sits in output_codes' side-by-side row."""
    ends = np.cumsum([graph.tensors[o].size for o in graph.outputs])
    return [slice(int(end - graph.tensors[o].size), int(end)) for o, end in zip(graph.outputs, ends)]


def output_floats(graph: Graph, codes: np.ndarray) -> np.ndarray:
    """output_codes of one sample or of (N, ...) samples, dequantized each with its output's parameters."""
    codes = np.asarray(codes)
    flat = codes.reshape(-1, codes.shape[-1])
    parts = [dequantize_tensor(flat[:, where], graph.tensors[o].quant)
             for o, where in zip(graph.outputs, output_slices(graph))]
    return np.concatenate(parts, axis=1).reshape(codes.shape)


def output_grid_codes(graph: Graph, floats: np.ndarray) -> np.ndarray:
    """(N, output elements) floats (side by side as output_codes) on each output's integer grid:
    round(real / scale) + zero point, unclamped; exact for a quantized model's dequantized outputs."""
    floats = np.asarray(floats, np.float64).reshape(len(floats), -1)
    parts = [np.round(floats[:, where] / graph.tensors[o].quant.scale) + graph.tensors[o].quant.zero_point
             for o, where in zip(graph.outputs, output_slices(graph))]
    return np.concatenate(parts, axis=1).astype(np.int64)


def quantize_sample(graph: Graph, sample: Sample) -> Sample:
    """A float sample's codes, with each input's own parameters (a tuple for several inputs)."""
    codes = tuple(quantize_tensor(part, graph.tensors[name].quant)
                  for name, part in zip(graph.inputs, sample_inputs(sample), strict=True))
    return codes if isinstance(sample, tuple) else codes[0]


def reference_outputs(graph: Graph, registry: Registry, codes: Sequence[np.ndarray]) -> np.ndarray:
    """N samples' input codes (one (N, ...) array per input) -> their output_codes rows, (N, output size)."""
    return np.stack([output_codes(graph, values) for values in reference_by_sample(graph, registry, codes)])


def dequantized_outputs(graph: Graph, registry: Registry, x: np.ndarray | MultiSamples) -> np.ndarray:
    """The quantized graph on float samples, as its float outputs: quantize each sample with the
    inputs' parameters, run the integer reference, dequantize the outputs. (N, output size) (several
    outputs side by side, in output order), float64: what every accuracy measurement of a candidate
    quantization compares with the float model."""
    codes = reference_outputs(graph, registry, quantize_samples(graph, x))
    return output_floats(graph, codes).astype(np.float64)
