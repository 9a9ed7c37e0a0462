"""Fitted weight rounding: int8 weight codes chosen for the inputs a layer sees, not each on its own.

Rounding each weight to its nearest int8 step (what TFLite's converter does) leaves every weight's
error independent of the others; what a layer's output feels is their sum over its input,
(W - Q s) x. With the layer's inputs on the calibration samples as columns X, that output error is
tr(dW H dW^T) with H = X^T X, and it can be made smaller than nearest rounding leaves it by rounding
the weights one input column at a time and moving each column's rounding error onto the columns
not yet rounded, in proportion to how those inputs go together (the Optimal Brain Quantization
update as GPTQ, Frantar et al. 2022, runs it: the Cholesky factor of H^-1 gives every column's
update at once). The scales (per output channel, or per layer) and the int8 range stay as nearest
rounding has them, so the kernels, the C and TFLite's form do not change: only which codes.

Only layers that read int16 activations (16x8) are fitted. There the int8 weights are most of a
layer's error: on the held-out benchmark's development half, with TFLite's recipe, fitting them
raised a fitted layer's own SQNR by a median 0.89 dB and the model's by 6.77 dB. A layer reading int8
activations is dominated by their rounding (+0.11 dB per layer, +0.09 dB per model, worst -0.66),
and at int8 the held-out folds chose fitted codes that lost on the test set as often as they won
(docs/benchmarks.md, issue 29 part 7). Whether a
model keeps them is decided like the rest of the recipe, on calibration samples held out from the
fit (tuning/recipe.py): a fit to 32-64 samples' inputs must show on samples it did not see.

Each handler that can take it says which input columns each group of its output channels reads
(OpHandler.fits_weight_rounding, weight_columns). The layers are fitted in graph order, each on the
inputs the integer reference gives it with the layers before it already fitted.
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.arith.rules import dequantize_tensor, round_half_away
from onnx2cmsis.ir.graph import Graph
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.quant.quantize import input_slices, run_node_batch
from onnx2cmsis.tuning.search import quantized_copy

DAMPING = 0.01  # of H's mean diagonal, added to it: keeps H^-1 finite where inputs go together exactly
FITTED_INPUT_BITS = (16,)  # only layers reading int16 (16x8) activations: at int8 their rounding dominates
BLOCK = 64  # columns updated one by one before the rest of the row takes their errors in one product
SAMPLES_PER_SLICE = 32  # samples whose input columns are built at once
MAX_COLUMNS = 2048  # inputs per output channel; beyond, the factorization's cost (columns^3) outgrows a conversion


def fit_weight_rounding(graph: Graph, registry: Registry, ranges: dict[str, tuple[float, float]], x,
                        input_bits: tuple[int, ...] = FITTED_INPUT_BITS) -> list[int]:
    """Give each node whose handler fits_weight_rounding and whose input has one of `input_bits`
    fitted int8 codes (node.consts["weight"] set to codes x scales, node.attrs["fitted_weight_scales"]
    the scales, node.attrs["weight_rounding"] what it gained), fitted to its inputs on the samples
    `x`; returns the nodes' indices. `graph` is not quantized; its weight granularities and
    widths are set. (`input_bits` other than int16 alone: for measuring what int8 layers would gain.)"""
    candidates = [i for i, n in enumerate(graph.nodes)
                  if registry.for_op(n.op).fits_weight_rounding and "file_weights" not in n.attrs]
    if not candidates:
        return []
    g = quantized_copy(graph, registry, ranges, {})  # the weight choices are on the nodes already
    targets = {i for i in candidates if g.tensors[g.nodes[i].inputs[0]].quant.bits in input_bits}
    if not targets:
        return []
    parts = input_slices(g, x)
    fitted = []
    for index, node in enumerate(g.nodes):
        if index in targets:
            source = node.inputs[0]
            seen = np.concatenate([values[source] for values in parts])
            real = dequantize_tensor(seen, g.tensors[source].quant).astype(np.float64)
            original = graph.nodes[index]
            if _fit_node(original, registry, real, node.qparams["weight_scales"]):
                node.consts = {k: v.copy() for k, v in original.consts.items()}
                node.attrs = dict(original.attrs)
                registry.for_op(node.op).quantize(node, g, ranges)
                fitted.append(index)
            if index == max(targets):
                break  # nothing after the last fitted layer feeds one
        for values in parts:
            run_node_batch(g, registry, node, values)
    return fitted


def _fit_node(node, registry: Registry, real: np.ndarray, scales: np.ndarray) -> bool:
    """Fitted codes for one node from its real-valued inputs (samples first); False when it keeps
    nearest rounding (too many columns per channel, or no input that varies). A group of channels
    whose fit leaves more output error on these samples than nearest rounding keeps nearest codes
    (the update does not promise less)."""
    w = node.consts["weight"].astype(np.float64)
    c_out = w.shape[0]
    s = np.broadcast_to(np.asarray(scales, np.float64).reshape(-1), (c_out,))
    flat = w.reshape(c_out, -1)
    if flat.shape[1] > MAX_COLUMNS:  # every channel's columns are its weights, flattened
        return False
    nearest = nearest_codes(flat, s)
    codes = nearest.copy()
    nearest_error = fitted_error = 0.0
    for channels, h in _input_products(node, registry, real):
        fit = error_compensated_codes(flat[channels], s[channels], h)
        before = output_error(flat[channels], nearest[channels], s[channels], h)
        after = output_error(flat[channels], fit, s[channels], h)
        if after < before:
            codes[channels] = fit
        nearest_error += before
        fitted_error += min(after, before)
    if nearest_error <= 0:
        return False
    node.consts["weight"] = (codes * s[:, None]).reshape(w.shape).astype(np.float32)
    node.attrs["fitted_weight_scales"] = s.astype(np.float32)
    node.attrs["weight_rounding"] = {
        "codes_changed": int(np.count_nonzero(codes != nearest)), "of_codes": int(codes.size),
        "output_error_db": round(10 * float(np.log10(max(fitted_error, 1e-300) / nearest_error)), 2)}
    return True


def _input_products(node, registry: Registry, real: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(channels, H = X^T X) per group of weight_columns, summed over slices of SAMPLES_PER_SLICE
    samples: a layer's columns for all the samples at once (every output position's window, float64)
    can take hundreds of MB."""
    handler = registry.for_op(node.op)
    products: list[tuple[np.ndarray, np.ndarray]] = []
    for start in range(0, len(real), SAMPLES_PER_SLICE):
        for k, (channels, cols) in enumerate(handler.weight_columns(node, real[start:start + SAMPLES_PER_SLICE])):
            h = cols.T @ cols
            if k == len(products):
                products.append((channels, h))
            else:
                products[k] = (channels, products[k][1] + h)
    return products


def nearest_codes(w: np.ndarray, s: np.ndarray) -> np.ndarray:
    """(rows, columns) weights -> the nearest int8 codes in [-127, 127] at each row's scale (ties away
    from zero, as quantize_weights rounds)."""
    return np.clip(round_half_away(w / s[:, None]), -127, 127)


def output_error(w: np.ndarray, codes: np.ndarray, s: np.ndarray, h: np.ndarray) -> float:
    """sum over the samples' columns of the squared output error the codes leave: tr(dW H dW^T)."""
    dw = w - codes * s[:, None]
    return float(np.sum((dw @ h) * dw))


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
