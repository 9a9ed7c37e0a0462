"""The TFLite int8 quantization rules and the integer arithmetic CMSIS-NN performs.

Everything here is vectorised numpy that reproduces, bit for bit, what CMSIS-NN's C code computes
(`arm_nn_requantize`, `arm_nn_doubling_high_mult`, `arm_nn_divide_by_power_of_two`) and what
TFLite-Micro's Prepare steps compute (`QuantizeMultiplier`, activation ranges). Scales are float32
because a .tflite stores float32 scales; multipliers are derived from them in double precision.
"""

from __future__ import annotations

import math

import numpy as np

from onnx2cmsis.errors import ConversionError
from onnx2cmsis.ir.tensor import QuantParams  # noqa: F401 - handlers and plugins import it from here

INT8_MIN, INT8_MAX = -128, 127
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1


def f32(x: float) -> float:
    """Round a Python float to the nearest float32 value (what a .tflite stores)."""
    return float(np.float32(x))


def round_half_away(x: np.ndarray | float) -> np.ndarray:
    """C's round(): halves go away from zero (numpy's round goes to even)."""
    a = np.asarray(x, dtype=np.float64)
    return np.sign(a) * np.floor(np.abs(a) + 0.5)


def quantize_multiplier(real: float) -> tuple[int, int]:
    """TFLite QuantizeMultiplier: real = M * 2^(shift - 31), M in [2^30, 2^31). Positive = left."""
    if real == 0.0:
        return 0, 0
    q, e = math.frexp(real)
    qf = int(round_half_away(q * (1 << 31)))
    if qf == 1 << 31:
        qf //= 2
        e += 1
    if e < -31:
        return 0, 0
    if e > 30:
        raise ConversionError(f"requantization factor {real:.3g} is too large for CMSIS-NN's 32-bit multiplier")
    return qf, e


def activation_quant(lo: float, hi: float) -> QuantParams:
    """Asymmetric int8 parameters for a calibrated range, as the TFLite converter chooses them.

    The range is widened to contain 0 so that zero (padding, ReLU) is exact.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-6:  # a constant (all-zero) tensor: any scale is exact; keep multipliers sane
        hi = lo + 1.0
    scale = f32((hi - lo) / 255.0)
    zp = int(round_half_away(INT8_MIN - lo / scale))
    return QuantParams(scale, int(np.clip(zp, INT8_MIN, INT8_MAX)))


def symmetric_weight_scales(w: np.ndarray, axis: int | None) -> np.ndarray:
    """float32 scales for int8 symmetric weights in [-127, 127]; per channel along `axis`."""
    if axis is None:
        amax = np.array([np.max(np.abs(w))], dtype=np.float64)
    else:
        other = tuple(i for i in range(w.ndim) if i != axis)
        amax = np.max(np.abs(w), axis=other).astype(np.float64)
    scales = np.where(amax > 0, amax / 127.0, 1.0)
    return scales.astype(np.float32)


def quantize_weights(w: np.ndarray, scales: np.ndarray, axis: int | None) -> np.ndarray:
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    s = scales.astype(np.float64).reshape(shape)
    return np.clip(round_half_away(w.astype(np.float64) / s), -127, 127).astype(np.int8)


def quantize_bias(b: np.ndarray, input_scale: float, weight_scales: np.ndarray, where: str) -> np.ndarray:
    """int32 bias with scale s_in * s_w[c]; refuses values an int32 cannot hold."""
    s = np.float64(np.float32(input_scale)) * weight_scales.astype(np.float64)
    q = round_half_away(b.astype(np.float64) / s)
    if np.any(np.abs(q) > INT32_MAX):
        raise ConversionError("bias does not fit int32 after quantization (scale too small)", where)
    return q.astype(np.int32)


def check_accumulator_headroom(weight: np.ndarray, bias: np.ndarray, input_zero_point: int,
                               shift: np.ndarray | int, where: str) -> None:
    """Refuse a layer whose int32 accumulator can overflow for some int8 input.

    Per output row c: |acc| <= |bias_c| + max|q - zp_in| * sum|w_c|, and the requantization first
    shifts the accumulator left by max(shift_c, 0) in 32 bits. CMSIS-NN and TFLite-Micro would both
    wrap silently past 2^31 (signed overflow), so this is an error, not a clamp."""
    rows = np.abs(weight.astype(np.int64).reshape(weight.shape[0], -1)).sum(axis=1)
    x_max = max(abs(INT8_MIN - input_zero_point), abs(INT8_MAX - input_zero_point))
    left = np.broadcast_to(np.maximum(np.asarray(shift, np.int64), 0), rows.shape)
    worst = (np.abs(bias.astype(np.int64)) + x_max * rows) << left
    if np.any(worst > INT32_MAX):
        c = int(np.argmax(worst))
        raise ConversionError(
            f"the int32 accumulator of output channel {c} can overflow: worst case {float(worst[c]):.3g} "
            f"(fan-in {weight[c].size}, sum|w| {int(rows[c])}, requantization left shift {int(left[c])}); "
            "CMSIS-NN would wrap silently. Split the layer or lower its fan-in", where)


def quantize_tensor(x: np.ndarray, q: QuantParams) -> np.ndarray:
    """float -> int8 exactly as the generated NAME_quantize_input() does (float32 division)."""
    v = np.asarray(x, dtype=np.float32) / np.float32(q.scale)
    v = np.nan_to_num(v, nan=0.0, posinf=1e9, neginf=-1e9)
    return np.clip(round_half_away(v) + q.zero_point, INT8_MIN, INT8_MAX).astype(np.int8)


def dequantize_tensor(x: np.ndarray, q: QuantParams) -> np.ndarray:
    return (x.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)


def activation_range(q: QuantParams, lo: float | None, hi: float | None) -> tuple[int, int]:
    """Fused activation clamp in the output's quantization (TFLite CalculateActivationRange).

    TFLite divides in float32 (`TfLiteRound(f / scale)` on floats), so this does too.
    """
    amin, amax = INT8_MIN, INT8_MAX
    if lo is not None and math.isfinite(lo):
        amin = max(amin, q.zero_point + int(round_half_away(np.float32(lo) / np.float32(q.scale))))
    if hi is not None and math.isfinite(hi):
        amax = min(amax, q.zero_point + int(round_half_away(np.float32(hi) / np.float32(q.scale))))
    return amin, amax


# ---------------------------------------------------------------- CMSIS-NN integer arithmetic


def wrap32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values to int32 range (what the C does on overflow)."""
    return ((x + 2**31) % 2**32) - 2**31


def doubling_high_mult(a: np.ndarray, b: np.ndarray | int) -> np.ndarray:
    """arm_nn_doubling_high_mult: round((a*b) / 2^31), saturating INT32_MIN*INT32_MIN."""
    a = np.asarray(a, dtype=np.int64)
    b = np.asarray(b, dtype=np.int64)
    prod = a * b
    nudge = np.where((a < 0) ^ (b < 0), 1 - (1 << 30), 1 << 30)
    s = prod + nudge
    res = np.where(s >= 0, s >> 31, -((-s) >> 31))  # C division truncates toward zero
    return np.where((a == INT32_MIN) & (b == INT32_MIN), INT32_MAX, res)


def divide_by_power_of_two(x: np.ndarray, exponent: np.ndarray | int) -> np.ndarray:
    """arm_nn_divide_by_power_of_two: rounding right shift, halves away from zero."""
    x = np.asarray(x, dtype=np.int64)
    e = np.asarray(exponent, dtype=np.int64)
    mask = (np.int64(1) << e) - 1
    remainder = x & mask
    result = x >> e
    threshold = (mask >> 1) + (result < 0)
    return result + (remainder > threshold)


def requantize(acc: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """arm_nn_requantize (double rounding, the CMSIS-NN and TFLite-Micro default)."""
    acc = np.asarray(acc, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    scaled = wrap32(acc * (np.int64(1) << left))
    # no_sat variant: floor((x*M + 2^30) / 2^31); equal to the saturating one for M > 0.
    hi = (scaled * np.asarray(multiplier, dtype=np.int64) + (1 << 30)) >> 31
    return divide_by_power_of_two(hi, right)


def saturate_int8(x: np.ndarray, lo: int = INT8_MIN, hi: int = INT8_MAX) -> np.ndarray:
    return np.clip(x, lo, hi).astype(np.int8)
