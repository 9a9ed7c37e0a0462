"""Calibration: run the float model in ONNX Runtime and record every value's min/max.

Samples are read from disk a block at a time (data/sample_file.py), so a large calibration set
costs no more memory than one block and the running min/max.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.quant.ranges import ValueHistogram, new_histograms
from onnx2cmsis.data.sample_file import SampleFile, open_samples
from onnx2cmsis.data.samples import MultiSamples, checked_samples, open_input_samples, sample_inputs, wrong_shape


def load_calibration(path: Path, input_shapes: list[tuple[int, ...]], names: list[str],
                     what: str = "calibration data") -> SampleFile | MultiSamples:
    """The samples of a .npy/.npz, read from disk a block at a time (a file of any size costs a few MiB
    of memory): for one input an (N, *input_shape[1:]) SampleFile; for several, MultiSamples of one
    such array per input from a .npz (by input name, or arr_0, arr_1, ...; data/samples.py). A
    single sample without the N axis, and an (N, 1, ...) batch axis, are accepted."""
    where = str(path)
    if not path.is_file():
        raise ConversionError(f"{what.removesuffix(' data')} file not found", where)
    if len(input_shapes) == 1:
        return _shaped(open_samples(path), input_shapes[0], what, where)
    parts = [_shaped(data, shape, f"{what} for input '{name}'", data.where)
             for data, shape, name in zip(open_input_samples(path, names), input_shapes, names)]
    return checked_samples(MultiSamples(tuple(parts)), input_shapes, names, where, what)


def _shaped(data: SampleFile, input_shape: tuple[int, ...], what: str, where: str) -> SampleFile:
    sample = tuple(input_shape[1:])
    one_sample = data.shape == sample
    batch_axis = data.ndim == len(sample) + 2 and data.shape[1] == 1 and data.shape[2:] == sample
    if one_sample or batch_axis:
        data = data.reshaped(sample)
    if data.shape[1:] != sample or len(data) == 0:
        raise wrong_shape(what, data.shape, sample, where)
    return data


def _session(model: onnx.ModelProto, extra_outputs: list[str]):  # -> onnxruntime.InferenceSession
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    for name in extra_outputs:
        if name not in have:
            m.graph.output.append(onnx.ValueInfoProto(name=name))
            have.add(name)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    opts.log_severity_level = 3
    # One sample at a time through a small model: a pool of threads only spins (ONNX Runtime's
    # default is one per core, which doubled the CPU time and took it from whatever else runs).
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])


def run_float(model: onnx.ModelProto, samples: Iterable[np.ndarray], outputs: list[str] | None = None) -> Iterator[dict[str, np.ndarray]]:
    """Yield {value name: float array} for each sample (batch 1; a tuple of arrays for several inputs)."""
    names = outputs or [o.name for o in model.graph.output]
    try:
        sess = _session(model, names)
    except Exception as exc:
        raise ConversionError(f"ONNX Runtime cannot load the model ({_first_line(exc)})") from exc
    in_names = [i.name for i in sess.get_inputs()]  # the graph's inputs, in its order
    for x in samples:
        try:
            res = sess.run(names, {n: np.asarray(part, np.float32)[None]
                                   for n, part in zip(in_names, sample_inputs(x), strict=True)})
        except Exception as exc:
            raise ConversionError(f"ONNX Runtime cannot run the model ({_first_line(exc)})") from exc
        yield dict(zip(names, res))


# A recording larger than this is not kept: the values are computed again instead. (The float64 stacks
# bias correction reads from it, RecordedFloats.stacked, add up to twice the values they stack.)
RECORD_BYTES = 128 << 20


@dataclass(frozen=True, eq=False)
class RecordedFloats:
    """The float model's values on a fixed list of samples, one {value name: array} per sample, run
    once, with each value's per-sample min and max. The recipe choice fits up to nine quantizations
    on subsets of the same few samples; running ONNX Runtime for each fit (ranges, histograms, bias
    correction, outputs) was a fifth of a conversion's time."""

    per_sample: tuple[dict[str, np.ndarray], ...]
    lows: dict[str, np.ndarray]  # value name -> (samples,) minima
    highs: dict[str, np.ndarray]
    _stacked: dict[str, np.ndarray] = field(default_factory=dict, compare=False, repr=False)  # a memo

    def subset(self, indices: Iterable[int]) -> RecordedFloats:
        rows = np.asarray(list(indices), dtype=np.int64)
        return RecordedFloats(tuple(self.per_sample[int(i)] for i in rows),
                              {v: a[rows] for v, a in self.lows.items()}, {v: a[rows] for v, a in self.highs.items()})

    def holds(self, names: Iterable[str]) -> bool:
        return not self.per_sample or all(n in self.per_sample[0] for n in names)

    def stacked(self, name: str) -> np.ndarray:
        """One value over every sample, (samples, *shape), float64 (made once: each fit reads it)."""
        if name not in self._stacked:
            self._stacked[name] = np.stack([np.asarray(s[name], np.float64) for s in self.per_sample])
        return self._stacked[name]

    def extremes(self, names: list[str]) -> dict[str, tuple[float, float]] | None:
        """Each value's min and max over the samples (None where a sample's are not finite: the
        sample-by-sample path decides what that means)."""
        if not self.holds(names) or not all(np.isfinite(self.lows[v]).all() and np.isfinite(self.highs[v]).all()
                                            for v in names):
            return None
        return {v: (float(self.lows[v].min(initial=np.inf)), float(self.highs[v].max(initial=-np.inf)))
                for v in names}


def record_floats(model: onnx.ModelProto, samples: Iterable[np.ndarray], names: list[str],
                  budget: float = RECORD_BYTES) -> RecordedFloats | None:
    """run_float's values of `names` for every sample, kept (None once they would exceed `budget` bytes)."""
    kept, size = [], 0
    for values in run_float(model, samples, names):
        size += sum(v.nbytes for v in values.values())
        if size > budget:
            return None
        kept.append(values)

    def per_value(reduce) -> dict[str, np.ndarray]:
        return {v: np.array([float(reduce(s[v])) if s[v].size else np.nan for s in kept]) for v in names}
    return RecordedFloats(tuple(kept), per_value(np.min), per_value(np.max))


def holding(model: onnx.ModelProto, samples: Iterable[np.ndarray], names: list[str],
            recorded: RecordedFloats | None) -> RecordedFloats:
    """`recorded` (the same samples' values) where it holds every name, else the values of `names` run
    once and kept whatever their size: for a pass that reads them all at once."""
    if recorded is not None and recorded.holds(names):
        return recorded
    return record_floats(model, samples, names, budget=math.inf)


def float_values(model: onnx.ModelProto, samples: Iterable[np.ndarray], names: list[str],
                 recorded: RecordedFloats | None = None) -> Iterator[dict[str, np.ndarray]]:
    """run_float, read from `recorded` (the same samples' values) when it holds every name."""
    if recorded is None or not recorded.holds(names):
        yield from run_float(model, samples, names)
        return
    for values in recorded.per_sample:
        yield {n: values[n] for n in names}


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:200] if lines else type(exc).__name__


def collect_histograms(model: onnx.ModelProto, samples: Iterable[np.ndarray],
                       extremes: dict[str, tuple[float, float]],
                       recorded: RecordedFloats | None = None) -> dict[str, ValueHistogram]:
    """A second pass over the samples: each value's histogram over its [min, max] (quant/ranges.py)."""
    histograms = new_histograms(extremes)
    for block in value_blocks(model, samples, list(extremes), recorded):
        for v, arrays in block.items():  # one histogram call per value per block (the counts add up)
            histograms[v].add(np.concatenate([a.reshape(-1) for a in arrays]))
    return histograms


RANGE_BLOCK = 64  # samples per reduction


def value_blocks(model: onnx.ModelProto, samples: Iterable[np.ndarray], values: list[str],
                 recorded: RecordedFloats | None = None) -> Iterator[dict[str, list[np.ndarray]]]:
    """run_float's values RANGE_BLOCK samples at a time: {value: one array per sample of the block}. A
    reduction per block, not per sample: one per value per sample was most of a 10^5-sample
    calibration."""
    pending: dict[str, list[np.ndarray]] = {v: [] for v in values}
    for k, outs in enumerate(float_values(model, samples, values, recorded)):
        for v, arr in outs.items():
            pending[v].append(arr)
        if k % RANGE_BLOCK == RANGE_BLOCK - 1:
            yield pending
            pending = {v: [] for v in values}
    if any(pending.values()):
        yield pending


def collect_ranges(model: onnx.ModelProto, samples: Iterable[np.ndarray], values: list[str],
                   recorded: RecordedFloats | None = None) -> dict[str, tuple[float, float]]:
    found = None if recorded is None else recorded.extremes(values)
    if found is not None:
        return found
    lo = {v: np.inf for v in values}
    hi = {v: -np.inf for v in values}
    for block in value_blocks(model, samples, values, recorded):
        for v, arrays in block.items():
            flat = np.concatenate([a.reshape(-1) for a in arrays])
            if flat.size and not np.isnan(block_lo := float(np.min(flat))):
                lo[v], hi[v] = min(lo[v], block_lo), max(hi[v], float(np.max(flat)))
                continue
            for arr in arrays:  # a block holding a NaN goes sample by sample, as it always did
                if arr.size:
                    lo[v] = min(lo[v], float(np.min(arr)))
                    hi[v] = max(hi[v], float(np.max(arr)))
    bad = [v for v in values if not (np.isfinite(lo[v]) and np.isfinite(hi[v]))]
    if bad:
        raise ConversionError(f"calibration produced non-finite values in '{bad[0]}' (NaN/Inf in data or weights?)")
    return {v: (lo[v], hi[v]) for v in values}
