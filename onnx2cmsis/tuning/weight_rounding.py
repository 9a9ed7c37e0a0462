"""Fitted weight rounding: int8 weight codes chosen for the inputs a layer sees, not each on its own.

Rounding each weight to its nearest int8 step (what TFLite's converter does) leaves every weight's
error independent of the others, and ignores that the layer's inputs are themselves rounded. What
the float model computes is W x_f; what the integer layer computes is Q s x_q, from inputs x_q that
the layers before it already rounded. With those on the calibration samples as the rows of X_f and
X_q, the error is ||X_f W^T - X_q (Q s)^T||^2. Its unconstrained minimum is the weights
W* = W H_fq H_qq^-1 (H_fq = X_f^T X_q, H_qq = X_q^T X_q): the float weights moved to undo what the
inputs' rounding does to the output, as far as it is linear in them. W* is then rounded one input
column at a time, each column's rounding error moved onto the columns not yet rounded in proportion
to how the inputs go together (the Optimal Brain Quantization update as GPTQ, Frantar et al. 2022,
runs it: the Cholesky factor of H_qq^-1 gives every column's update at once); fitting the inputs'
error as well as the weights' is the asymmetric form later work gave it (GPTAQ, Qronos). Where a
layer's input has no float counterpart element for element, X_f = X_q and W* = W. The scales (per
output channel, or per layer) and the int8 range stay as nearest rounding has them, so the kernels,
the C and TFLite's form do not change: only which codes.

Which inputs' error is fitted: only where it is int16 rounding, i.e. every tensor on the way from
the model's inputs is int16 and no range clips it (rounding_only_tensors); elsewhere a layer fits
its weights' own error (X_f = X_q). Which layers: only those reading int16 (FITTED_INPUT_BITS).
Measured on the held-out benchmark's development half (TFLite's recipe, every conv/dense layer
fitted, test sets; docs/benchmarks.md, issue 29 parts 7 and 8): at int16 the model's SQNR rose by a
median 9.33 dB (the weights' error alone: 6.77). At int8 fitting the inputs' error too rose it by a
median 1.16 dB on TFLite's recipe, but offered to the recipe choice it was taken on one model of
that half, which lost 0.59 dB on its test set, and on no other: int8 layers keep nearest codes, and
an int8 tensor upstream ends the inputs' fit. Whether a model keeps fitted codes is decided like
the rest of the recipe, on calibration samples held out from the fit (tuning/recipe.py): a fit to
32-64 samples must show on samples it did not see.

Each handler that can take it says which input columns each group of its output channels reads
(OpHandler.fits_weight_rounding, weight_columns). The layers are fitted in graph order, each on the
inputs the integer reference gives it with the layers before it already fitted.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from onnx2cmsis.arith.rules import dequantize_tensor, int_range, round_half_away
from onnx2cmsis.data.samples import MultiSamples
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ir.tensor import Tensor
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.quant.calibrate import RecordedFloats, float_values, holding
from onnx2cmsis.quant.quantize import input_slices, run_node_batch
from onnx2cmsis.tuning.search import quantized_copy

DAMPING = 0.01  # of H's mean diagonal, added to it: keeps H^-1 finite where inputs go together exactly
FITTED_INPUT_BITS = (16,)  # only layers reading int16 (16x8) activations: at int8 their rounding dominates
INPUT_ERROR_BITS = (16,)  # whose rounding a layer's fit takes out of its inputs: int16 tensors' alone
BLOCK = 64  # columns updated one by one before the rest of the row takes their errors in one product
SAMPLES_PER_SLICE = 32  # samples whose input columns are built at once
MAX_COLUMNS = 2048  # inputs per output channel; beyond, the factorization's cost (columns^3) outgrows a conversion


def fit_weight_rounding(model: onnx.ModelProto, graph: Graph, registry: Registry,
                        ranges: dict[str, tuple[float, float]], x: np.ndarray | MultiSamples,
                        recorded: RecordedFloats | None = None,
                        input_bits: tuple[int, ...] = FITTED_INPUT_BITS,
                        input_error_bits: tuple[int, ...] = INPUT_ERROR_BITS) -> list[int]:
    """Give each node whose handler fits_weight_rounding and whose input has one of `input_bits`
    fitted int8 codes (node.consts["weight"] set to codes x scales, node.attrs["fitted_weight_scales"]
    the scales, node.attrs["weight_rounding"] what it gained), fitted to its inputs on the samples
    `x` (their float values in `model`: `recorded`, if already run); returns the nodes' indices.
    `graph` is not quantized; its weight granularities and widths are set. (`input_bits` and
    `input_error_bits` other than int16 alone, () for the weights' own error alone: for measuring what
    they would give.)"""
    candidates = [i for i, n in enumerate(graph.nodes)
                  if registry.for_op(n.op).fits_weight_rounding and "file_weights" not in n.attrs]
    if not candidates:
        return []
    g = quantized_copy(graph, registry, ranges, {})  # the weight choices are on the nodes already
    targets = {i for i in candidates if g.tensors[g.nodes[i].inputs[0]].quant.bits in input_bits}
    if not targets:
        return []
    fine = rounding_only_tensors(g, model, x, recorded, input_error_bits) if input_error_bits else set()
    sources = [g.tensors[g.nodes[i].inputs[0]] for i in targets]
    names = sorted({t.calib_name for t in sources if t.mirrors_model_value and t.name in fine})
    if names:
        recorded = holding(model, x, names, recorded)
    parts = input_slices(g, x)
    fitted = []
    for index, node in enumerate(g.nodes):
        if index in targets:
            source = g.tensors[node.inputs[0]]
            seen = np.concatenate([values[source.name] for values in parts])
            real = dequantize_tensor(seen, source.quant).astype(np.float64)
            aim = _float_inputs(source, recorded, real) if source.name in fine else real
            original = graph.nodes[index]
            if _fit_node(original, registry, real, aim, node.qparams["weight_scales"]):
                node.consts = {k: v.copy() for k, v in original.consts.items()}
                node.attrs = dict(original.attrs)
                registry.for_op(node.op).quantize(node, g, ranges)
                fitted.append(index)
            if index == max(targets):
                break  # nothing after the last fitted layer feeds one
        for values in parts:
            run_node_batch(g, registry, node, values)
    return fitted


def rounding_only_tensors(g: Graph, model: onnx.ModelProto, x: np.ndarray | MultiSamples,
                          recorded: RecordedFloats | None,
                          bits: tuple[int, ...] = INPUT_ERROR_BITS) -> set[str]:
    """The tensors of the quantized copy `g` whose values on the samples `x` differ from the float
    model's by rounding alone, of int8 weights and int16 activations: every tensor on their way from the
    model's inputs is int16 (has one of `bits`) and none there loses more to its range's clipping than
    to its rounding. A layer fits its inputs' error only there (else its weights' alone). Where a range
    clips on purpose (MSE ranges trade a few clipped values for a finer step) the error downstream is
    mostly the clipping's, the same few samples' every time, and undoing it through the weights fits
    those samples: on the benchmark's development half a dense layer after a clipped global max pool
    moved its weights by 8 steps and lost 17 dB of output SQNR on the calibration samples themselves. An
    int8 tensor's rounding is as coarse: at int8 the fit the folds chose lost on its test set, and in
    --precision auto's mixed widths a held-back model's choice, made with its int8 layers' error fitted
    downstream, came 4 dB short of its budget on its test set, 6.6 dB below its held-out estimate;
    without, it met the budget (issue 29 part 8). (A tanh's or sigmoid's fixed int16 range cuts its
    extremes by a step or so: that is rounding's size, and does not count.)"""
    wide = {t.calib_name: t for t in g.tensors.values()
            if t.mirrors_model_value and t.quant is not None and t.quant.bits in bits}
    clipped = _clipping_values(model, x, recorded, wide)

    def fine(t: Tensor) -> bool:
        return t.quant is not None and t.quant.bits in bits and not (t.mirrors_model_value and t.calib_name in clipped)
    clean = {t for t in g.inputs if fine(g.tensors[t])}
    for node in g.nodes:
        if all(t in clean for t in node.inputs):
            clean |= {t for t in node.outputs if fine(g.tensors[t])}
    return clean


def _clipping_values(model: onnx.ModelProto, x: np.ndarray | MultiSamples, recorded: RecordedFloats | None,
                     tensors: dict[str, Tensor]) -> set[str]:
    """The model values (of `tensors`, by name) whose clipping to their tensor's integer range on the
    samples `x` costs more squared error than rounding them does (step^2 / 12 per value)."""
    if not tensors:  # nothing to read: no reason to run the float model
        return set()
    clip = dict.fromkeys(tensors, 0.0)
    count = dict.fromkeys(tensors, 0)
    edges = {name: [(code - t.quant.zero_point) * t.quant.scale for code in int_range(t.quant.bits)]
             for name, t in tensors.items()}
    for sample in float_values(model, x, sorted(tensors), recorded):
        for name, (low, high) in edges.items():
            values = np.asarray(sample[name], np.float64)
            beyond = np.maximum(values - high, 0.0) + np.maximum(low - values, 0.0)
            clip[name] += float(np.sum(beyond**2))
            count[name] += values.size
    return {name for name in tensors if clip[name] > count[name] * tensors[name].quant.scale ** 2 / 12}


def _float_inputs(source: Tensor, recorded: RecordedFloats, real: np.ndarray) -> np.ndarray:
    """What the float model feeds the layer where the integer layer gets `real` (the dequantized
    input `source`); `real` itself where the tensor has no float counterpart element for element."""
    if not source.mirrors_model_value:
        return real
    return source.in_layout(recorded.stacked(source.calib_name))


def _fit_node(node: Node, registry: Registry, real: np.ndarray, aim: np.ndarray, scales: np.ndarray) -> bool:
    """Fitted codes for one node from its real-valued inputs `real` and the float model's inputs
    `aim` at the same place (both samples first); False when it keeps nearest rounding (too many
    columns per channel, no input that varies, or no code that moved). A group of channels whose fit
    leaves more output error on these samples than nearest rounding keeps nearest codes (the update
    does not promise less)."""
    w = node.consts["weight"].astype(np.float64)
    c_out = w.shape[0]
    s = np.broadcast_to(np.asarray(scales, np.float64).reshape(-1), (c_out,))
    flat = w.reshape(c_out, -1)
    if flat.shape[1] > MAX_COLUMNS:  # every channel's columns are its weights, flattened
        return False
    nearest = nearest_codes(flat, s)
    codes = nearest.copy()
    nearest_error = fitted_error = 0.0
    for channels, products in _input_products(node, registry, real, aim):
        fit = error_compensated_codes(compensated_weights(flat[channels], products), s[channels], products.qq)
        before = output_error(flat[channels], nearest[channels], s[channels], products)
        after = output_error(flat[channels], fit, s[channels], products)
        if after < before:
            codes[channels] = fit
        nearest_error += before
        fitted_error += min(after, before)
    if nearest_error <= 0 or np.array_equal(codes, nearest):  # nothing fitted: the layer keeps nearest
        return False  # rounding, and a correction of the nearest-rounded layers takes it
    node.consts["weight"] = (codes * s[:, None]).reshape(w.shape).astype(np.float32)
    node.attrs["fitted_weight_scales"] = s.astype(np.float32)
    node.attrs["weight_rounding"] = {
        "codes_changed": int(np.count_nonzero(codes != nearest)), "of_codes": int(codes.size),
        "output_error_db": round(10 * float(np.log10(max(fitted_error, 1e-300) / nearest_error)), 2)}
    return True


@dataclass
class InputProducts:
    """A group of output channels' input columns on the samples, as sums of products: X_q the inputs
    the integer layer gets, X_f the float model's at the same place (rows: every sample's every output
    position)."""

    qq: np.ndarray  # X_q^T X_q
    fq: np.ndarray  # X_f^T X_q
    ff: np.ndarray  # X_f^T X_f

    def __add__(self, other: InputProducts) -> InputProducts:
        return InputProducts(self.qq + other.qq, self.fq + other.fq, self.ff + other.ff)


def _input_products(node: Node, registry: Registry, real: np.ndarray,
                    aim: np.ndarray) -> list[tuple[np.ndarray, InputProducts]]:
    """(channels, products) per group of weight_columns, summed over slices of SAMPLES_PER_SLICE
    samples: a layer's columns for all the samples at once (every output position's window, float64)
    can take hundreds of MB."""
    handler = registry.for_op(node.op)
    products: list[tuple[np.ndarray, InputProducts]] = []
    for start in range(0, len(real), SAMPLES_PER_SLICE):
        rows = slice(start, start + SAMPLES_PER_SLICE)
        quantized = handler.weight_columns(node, real[rows])
        floats = quantized if aim is real else handler.weight_columns(node, aim[rows])
        for k, ((channels, q), (_, f)) in enumerate(zip(quantized, floats)):
            qq = q.T @ q
            part = InputProducts(qq, qq, qq) if f is q else InputProducts(qq, f.T @ q, f.T @ f)
            if k == len(products):
                products.append((channels, part))
            else:
                products[k] = (channels, products[k][1] + part)
    return products


def compensated_weights(w: np.ndarray, p: InputProducts) -> np.ndarray:
    """(rows, columns) float weights -> the weights whose product with the integer layer's inputs is
    nearest the float layer's output: W H_fq H_qq^-1, both products damped alike (so that W* = W where
    the inputs are the float model's own, and H_qq stays invertible where inputs go together)."""
    damping = DAMPING * float(np.mean(np.diag(p.qq))) * np.eye(len(p.qq))
    try:  # H_qq + damping is symmetric positive definite wherever some input varies
        return np.linalg.solve(p.qq + damping, (w @ (p.fq + damping)).T).T
    except np.linalg.LinAlgError:  # no input that varies: nothing to compensate
        return w


def nearest_codes(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(rows, columns) weights -> the nearest int8 codes in [-127, 127] at each row's scale (ties away
    from zero, as quantize_weights rounds)."""
    return np.clip(round_half_away(w / s[:, None]), -127, 127)


def output_error(w: np.ndarray, codes: np.ndarray, s: np.ndarray, p: InputProducts) -> float:
    """The squared output error the codes leave over the samples' rows, against the float layer on the
    float model's inputs: ||X_f W^T - X_q (codes s)^T||^2."""
    wq = codes * s[:, None]
    return float(np.sum((w @ p.ff) * w) - 2 * np.sum((w @ p.fq) * wq) + np.sum((wq @ p.qq) * wq))


def error_compensated_codes(w: np.ndarray, s: np.ndarray, h: np.ndarray) -> np.ndarray:
    """(rows, columns) weights, each row's scale `s` and the inputs' H = X^T X -> int8 codes in
    [-127, 127] that usually leave a smaller tr(dW H dW^T) than nearest rounding. Columns are taken in
    order of decreasing input energy (the loudest inputs decide first, the quiet ones absorb the
    rest); a column no sample drives is rounded to nearest."""
    w = w.astype(np.float64).copy()
    codes = nearest_codes(w, s)
    energy = np.diag(h)
    live = np.flatnonzero(energy > 0)
    if live.size == 0:
        return codes
    order = live[np.argsort(-energy[live], kind="stable")]
    sub = h[np.ix_(order, order)] + DAMPING * float(np.mean(energy[live])) * np.eye(order.size)
    try:
        upper = np.linalg.cholesky(np.linalg.inv(sub)).T  # upper[i, j>i]: column j's share of column i's error
    except np.linalg.LinAlgError:
        return codes
    work = w[:, order]
    fitted = np.empty_like(work)
    for start in range(0, order.size, BLOCK):  # updates inside a block column by column, the rest at once
        stop = min(start + BLOCK, order.size)
        errors = np.empty((w.shape[0], stop - start))
        for i in range(start, stop):
            q = np.clip(round_half_away(work[:, i] / s), -127, 127)
            errors[:, i - start] = err = (work[:, i] - q * s) / upper[i, i]
            work[:, i + 1:stop] -= np.outer(err, upper[i, i + 1:stop])
            fitted[:, i] = q
        work[:, stop:] -= errors @ upper[start:stop, stop:]
    codes[:, order] = fitted
    return codes
