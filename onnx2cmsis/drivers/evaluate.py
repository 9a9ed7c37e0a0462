"""Measure a conversion: C vs the integer reference vs tflite-micro, and the integer model vs the float model.

The shared core of the tests, the benchmark report and (later) `onnx2cmsis verify`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from onnx2cmsis.api import Conversion
from onnx2cmsis.quant.calibrate import run_float
from onnx2cmsis.quant.quantize import output_floats, output_grid_codes, output_slices, quantize_sample, reference_by_sample
from onnx2cmsis.arith.rules import dequantize_tensor
from onnx2cmsis.data.samples import MultiSamples, input_arrays, sample_inputs
from onnx2cmsis.tuning.search import float_outputs as search_float_outputs
from onnx2cmsis.targets.host import build_conversions


@dataclass
class Evaluation:
    name: str
    samples: int
    mismatches_vs_reference: int
    mismatches_vs_tflite_micro: int | None  # None: oracle not run (counted over the oracle samples)
    sqnr_db: float
    max_error_lsb: float
    max_abs_error: float
    argmax_agreement: float
    arena_bytes: int
    arena_lower_bound_bytes: int
    weights_bytes: int

    def as_dict(self) -> dict:
        return asdict(self)


def quantize_inputs(conv: Conversion, x_float):
    """Each sample's input codes, flattened: (N, input size), or MultiSamples of one such array per input."""
    codes = [sample_inputs(quantize_sample(conv.graph, s)) for s in x_float]
    parts = tuple(np.stack([c[k].reshape(-1) for c in codes]) for k in range(len(conv.graph.inputs)))
    return parts[0] if len(parts) == 1 else MultiSamples(parts)


def float_outputs(conv: Conversion, x_float) -> np.ndarray:
    """The float model's outputs per sample, side by side in output order: (N, output elements)."""
    return search_float_outputs(conv.model, x_float)


def file_model_codes(conv: Conversion, x_float) -> np.ndarray:
    """A quantized model file's outputs per sample as ONNX Runtime computes them (graph optimization
    off: its fused integer kernels round differently), on the C's output grid: (N, output elements)."""
    return output_grid_codes(conv.graph, search_float_outputs(conv.file_model, x_float))


def evaluate(conv: Conversion, x_float: np.ndarray, workdir: Path,
             oracle_samples: int | None = None) -> tuple[Evaluation, np.ndarray]:
    """Build the C on the host, run every sample; returns the figures and the C's integer outputs.

    The first `oracle_samples` samples (all when None, none when 0) also run in tflite-micro.
    """
    xq = quantize_inputs(conv, x_float)
    model = build_conversions([conv], workdir)[conv.name]
    c_outputs = np.stack([model(x) for x in xq])
    ref = conv.references(xq)
    tflm_bad = None
    if oracle_samples != 0:
        from onnx2cmsis.oracle.tflite_export import export_tflite, run_tflite_micro

        n = len(xq) if oracle_samples is None else oracle_samples
        tflm = run_tflite_micro(export_tflite(conv.graph, conv.registry), xq[:n])
        tflm_bad = int(np.sum(np.any(tflm != c_outputs[:n], axis=1)))
    want = float_outputs(conv, x_float).astype(np.float64)
    got = output_floats(conv.graph, c_outputs).astype(np.float64)
    err = got - want
    first = output_slices(conv.graph)[0]
    noise = max(float(np.sum(err**2)), 1e-30)
    ev = Evaluation(
        name=conv.name,
        samples=len(xq),
        mismatches_vs_reference=int(np.sum(np.any(c_outputs != ref, axis=1))),
        mismatches_vs_tflite_micro=tflm_bad,
        sqnr_db=float(10 * np.log10(float(np.sum(want**2)) / noise)),
        max_error_lsb=max(float(np.max(np.abs(err[:, where]))) / conv.graph.tensors[t].quant.scale
                          for t, where in zip(conv.graph.outputs, output_slices(conv.graph))),
        max_abs_error=float(np.max(np.abs(err))),
        # of the first output (a classifier's scores; several outputs are not one vector to rank)
        argmax_agreement=float(np.mean(got[:, first].argmax(1) == want[:, first].argmax(1))),
        arena_bytes=conv.plan.arena_bytes,
        arena_lower_bound_bytes=conv.plan.lower_bound,
        weights_bytes=conv.report["weights_bytes"],
    )
    return ev, c_outputs


@dataclass
class LayerAccuracy:
    index: int
    name: str
    op: str
    origin: str
    sqnr_db: float  # integer reference vs the float model at this layer's output, over the samples
    max_error_lsb: float  # largest |integer - float| in units of the layer's output scale
    saturated: int = 0  # float values clipped by more than one step at either end of the output's range
    values: int = 0  # float values compared

    @property
    def saturated_share(self) -> float:
        return self.saturated / self.values if self.values else 0.0


def layer_accuracy(conv: Conversion, x_float: np.ndarray) -> list[LayerAccuracy]:
    """Where quantization loses accuracy: each layer's integer output, dequantized, against the float model's
    value it stands for (ONNX Runtime), element by element through the importer's index map. Layers
    whose output is no model value (an inserted transpose, a split pool) are left out. A value whose
    range was floored for its reader (node.attrs["range_floor"]: a softmax's input, also where a
    requantize carries it to another width) is compared from the floor up, both sides raised to it:
    below it the reader tells nothing apart, so no difference there is a loss."""
    graph = conv.graph
    layers = [(i, n, graph.tensors[n.output]) for i, n in enumerate(graph.nodes)]
    layers = [(i, n, t) for i, n, t in layers if t.calib_name and t.calib_index is not None]
    floored = {graph.tensors[n.output].calib_name: n.attrs["range_floor"]["floor"]
               for n in graph.nodes if "range_floor" in n.attrs}
    floor = {t.name: floored.get(t.calib_name, -np.inf) for _, _, t in layers}
    values = sorted({t.calib_name for _, _, t in layers})
    signal = {t.name: 0.0 for _, _, t in layers}
    noise = dict(signal)
    worst = dict(signal)
    saturated = {t.name: 0 for _, _, t in layers}
    counted = dict(saturated)
    xq = quantize_inputs(conv, x_float)
    ints = reference_by_sample(graph, conv.registry, input_arrays(xq), keep_all=True)
    for every, floats in zip(ints, run_float(conv.model, x_float, values), strict=True):
        for _, _, t in layers:
            want = np.maximum(np.asarray(floats[t.calib_name], np.float64).reshape(-1), floor[t.name])
            got = np.maximum(dequantize_tensor(every[t.name].reshape(-1)[t.calib_index], t.quant).astype(np.float64),
                             floor[t.name])
            signal[t.name] += float(np.sum(want ** 2))
            noise[t.name] += float(np.sum((got - want) ** 2))
            worst[t.name] = max(worst[t.name], float(np.max(np.abs(got - want))) / float(t.quant.scale))
            q = t.quant
            top = (1 << (q.bits - 1)) - 1
            lowest, highest = (-top - 2 - q.zero_point) * q.scale, (top + 1 - q.zero_point) * q.scale
            saturated[t.name] += int(np.sum((want < lowest) | (want > highest)))
            counted[t.name] += want.size
    return [LayerAccuracy(i, n.name, n.op, n.origin,
                          float(10 * np.log10(signal[t.name] / noise[t.name])) if noise[t.name] > 0 else float("inf"),
                          worst[t.name], saturated[t.name], counted[t.name])
            for i, n, t in layers]
