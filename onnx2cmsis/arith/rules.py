"""The TFLite int8 and 16x8 quantization rules and the integer arithmetic CMSIS-NN performs.

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
INT16_MIN, INT16_MAX = -(2**15), 2**15 - 1
INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MAX = 2**63 - 1
PRECISIONS = {"int8": 8, "int16": 16}  # --precision: the activation width (weights stay int8)


def int_range(bits: int) -> tuple[int, int]:
    """The codes a `bits`-wide signed tensor holds."""
    return -(1 << (bits - 1)), (1 << (bits - 1)) - 1


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
    # round_half_away on one Python float, without numpy's per-call cost (a quantization computes
    # thousands of per-channel multipliers): the same IEEE double arithmetic
    scaled = q * (1 << 31)
    qf = int(math.copysign(math.floor(abs(scaled) + 0.5), scaled))
    if qf == 1 << 31:
        qf //= 2
        e += 1
    if e < -31:
        return 0, 0
    if e > 30:
        raise ConversionError(f"requantization factor {real:.3g} is too large for CMSIS-NN's 32-bit multiplier")
    return qf, e


def activation_quant(lo: float, hi: float, bits: int = 8) -> QuantParams:
    """Parameters for a calibrated range, as the TFLite converter chooses them: asymmetric int8, or
    (bits=16, TFLite 16x8) symmetric int16 with zero point 0 and scale max|range| / 32767.

    The range is widened to contain 0 so that zero (padding, ReLU) is exact.
    """
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    if hi - lo < 1e-6:  # a constant (all-zero) tensor: any scale is exact; keep multipliers sane
        hi = lo + 1.0
    if bits == 16:
        return QuantParams(f32(max(-lo, hi) / INT16_MAX), 0, 16)
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


def quantize_weights(w: np.ndarray, scales: np.ndarray, axis: int | None, lowest: int = -127) -> np.ndarray:
    """int8 weights in [lowest, 127]: TFLite's symmetric range, or -128 too where a model file's own
    codes (a QDQ model's, multiplied out to floats) are recovered."""
    shape = [1] * w.ndim
    if axis is not None:
        shape[axis] = -1
    s = scales.astype(np.float64).reshape(shape)
    return np.clip(round_half_away(w.astype(np.float64) / s), lowest, 127).astype(np.int8)


def quantize_bias(b: np.ndarray, input_scale: float, weight_scales: np.ndarray, where: str,
                  bits: int = 32) -> np.ndarray:
    """int32 (int8 layers) or int64 (16x8 layers) bias with scale s_in * s_w[c]; refuses values the
    type cannot hold."""
    s = np.float64(np.float32(input_scale)) * weight_scales.astype(np.float64)
    q = round_half_away(b.astype(np.float64) / s)
    top = INT32_MAX if bits == 32 else 2.0**62  # an int64 far from its float64-rounded limit
    if np.any(np.abs(q) > top):
        raise ConversionError(f"bias does not fit int{bits} after quantization (scale too small)", where)
    return q.astype(np.int32 if bits == 32 else np.int64)


def _abs_row_sums(weight: np.ndarray) -> np.ndarray:
    """sum |w| per output channel (axis 0) of integer weights."""
    return np.abs(weight.astype(np.int64).reshape(weight.shape[0], -1)).sum(axis=1)


def check_accumulator_headroom(weight: np.ndarray, bias: np.ndarray, input_zero_point: int,
                               shift: np.ndarray | int, where: str) -> None:
    """Refuse a layer whose int32 accumulator can overflow for some int8 input.

    Per output row c: |acc| <= |bias_c| + max|q - zp_in| * sum|w_c|, and the requantization first
    shifts the accumulator left by max(shift_c, 0) in 32 bits. CMSIS-NN and TFLite-Micro would both
    wrap silently past 2^31 (signed overflow), so this is an error, not a clamp."""
    rows = _abs_row_sums(weight)
    x_max = max(abs(INT8_MIN - input_zero_point), abs(INT8_MAX - input_zero_point))
    left = np.broadcast_to(np.maximum(np.asarray(shift, np.int64), 0), rows.shape)
    worst = (np.abs(bias.astype(np.int64)) + x_max * rows) << left
    c = _overflowing_row(worst)
    if c is not None:
        raise ConversionError(
            f"the int32 accumulator of output channel {c} can overflow: worst case {float(worst[c]):.3g} "
            f"(fan-in {weight[c].size}, sum|w| {int(rows[c])}, requantization left shift {int(left[c])}); "
            "CMSIS-NN would wrap silently. Split the layer or lower its fan-in", where)


def _overflowing_row(worst: np.ndarray) -> int | None:
    """The output channel whose worst-case sum passes INT32_MAX by the most (None: none does)."""
    return int(np.argmax(worst)) if np.any(worst > INT32_MAX) else None


def check_accumulator_headroom_s16(weight: np.ndarray, where: str) -> None:
    """Refuse a 16x8 convolution whose int32 partial sum can overflow for some int16 input.

    arm_convolve_s16 and arm_depthwise_conv_fast_s16 sum the products in 32 bits and add the int64
    bias afterwards, while TFLite-Micro's reference sums in 64 bits: for the two to agree on every
    input, 32768 * sum|w_c| must fit an int32 (sum|w_c| <= 65535)."""
    rows = _abs_row_sums(weight)
    worst = -INT16_MIN * rows
    c = _overflowing_row(worst)
    if c is not None:
        raise ConversionError(
            f"the int32 partial sum of output channel {c} can overflow at int16: worst case {float(worst[c]):.3g} "
            f"(fan-in {weight[c].size}, sum|w| {int(rows[c])}); CMSIS-NN's s16 convolution sums in 32 bits. "
            "Split the layer or lower its fan-in, or use {opt:precision=int8}", where)


def check_s16_vector_sums(weight: np.ndarray, bias: np.ndarray | int, where: str, what: str) -> None:
    """Refuse a matrix product CMSIS-NN's arm_nn_vec_mat_mul_result_acc_s16 (int16 vector, int8 matrix,
    int64 bias: the recurrent layers' state products, and their input products at 16x8) could compute
    otherwise than its reference: its MVE path starts each row from the bias truncated to 32 bits and
    sums in 32 bits, so |bias_c| + 32768 * sum|w_c| must fit an int32 for every input."""
    rows = _abs_row_sums(weight)
    worst = np.abs(np.broadcast_to(np.asarray(bias, np.int64), rows.shape)) - INT16_MIN * rows
    c = _overflowing_row(worst)
    if c is not None:
        raise ConversionError(
            f"the {what} of row {c} can pass 32 bits: worst case {float(worst[c]):.3g} (bias {int(np.asarray(bias).reshape(-1)[c] if np.ndim(bias) else bias)}, "
            f"sum|w| {int(rows[c])}); CMSIS-NN's MVE s16 kernel sums in 32 bits. Use {{opt:precision=int8}} or "
            "smaller biases", where)


def reduce_multiplier(multiplier: np.ndarray | int) -> np.ndarray:
    """CMSIS-NN REDUCE_MULTIPLIER (TFLite's 64-bit MultiplyByQuantizedMultiplier): a Q31 multiplier
    rounded to Q15."""
    m = np.asarray(multiplier, dtype=np.int64)
    return np.where(m < 0x7FFF0000, (m + (1 << 15)) >> 16, 0x7FFF)


def requantize_s64(acc: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """arm_nn_requantize_s64 with REDUCE_MULTIPLIER, as the 16x8 kernels requantize their int64
    accumulators: (acc * M15 + 2^(14 - shift)) >> (15 - shift), halves up (TFLite's int64 rounding)."""
    acc = np.asarray(acc, dtype=np.int64)
    total = 15 - np.asarray(shift, dtype=np.int64)
    prod = acc * reduce_multiplier(multiplier)  # |acc| < 2^47, |M15| < 2^15: exact in int64
    return wrap32(((prod >> (total - 1)) + 1) >> 1)


def quantize_tensor(x: np.ndarray, q: QuantParams) -> np.ndarray:
    """float -> int8/int16 exactly as the generated NAME_quantize_input() does (float32 division)."""
    v = np.asarray(x, dtype=np.float32) / np.float32(q.scale)
    v = np.nan_to_num(v, nan=0.0, posinf=1e9, neginf=-1e9)
    lo, hi = int_range(q.bits)
    return np.clip(round_half_away(v) + q.zero_point, lo, hi).astype(np.int8 if q.bits == 8 else np.int16)


def dequantize_tensor(x: np.ndarray, q: QuantParams) -> np.ndarray:
    return (x.astype(np.float32) - np.float32(q.zero_point)) * np.float32(q.scale)


def activation_range(q: QuantParams, lo: float | None, hi: float | None) -> tuple[int, int]:
    """Fused activation clamp in the output's quantization (TFLite CalculateActivationRange).

    TFLite divides in float32 (`TfLiteRound(f / scale)` on floats), so this does too.
    """
    amin, amax = int_range(q.bits)
    if lo is not None and math.isfinite(lo):
        amin = max(amin, q.zero_point + int(round_half_away(np.float32(lo) / np.float32(q.scale))))
    if hi is not None and math.isfinite(hi):
        amax = min(amax, q.zero_point + int(round_half_away(np.float32(hi) / np.float32(q.scale))))
    return amin, amax


# ---------------------------------------------------------------- CMSIS-NN integer arithmetic


def wrap32(x: np.ndarray) -> np.ndarray:
    """Two's-complement wrap of int64 values to int32 range (what the C does on overflow)."""
    y = np.asarray(x, dtype=np.int64) + 2**31  # a mask, not %, and in place: a fifth of the time
    y &= 0xFFFFFFFF
    y -= 2**31
    return y


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
    # CMSIS-NN adds 1 when the remainder exceeds half the divisor (half less one for negatives): the
    # same as adding half (half less one) before the arithmetic shift. In place on one new array:
    # five times faster than a temporary per step, and most of the integer reference's time before.
    y = x + (((np.int64(1) << e) - 1) >> 1)
    y += (x >= 0) & (e > 0)
    y >>= e
    return y


def requantize(acc: np.ndarray, multiplier: np.ndarray | int, shift: np.ndarray | int) -> np.ndarray:
    """arm_nn_requantize (double rounding, the CMSIS-NN and TFLite-Micro default)."""
    acc = np.asarray(acc, dtype=np.int64)
    shift = np.asarray(shift, dtype=np.int64)
    left = np.maximum(shift, 0)
    right = np.maximum(-shift, 0)
    scaled = wrap32(acc << left if left.any() else acc)
    # no_sat variant: floor((x*M + 2^30) / 2^31); equal to the saturating one for M > 0.
    hi = scaled * np.asarray(multiplier, dtype=np.int64)
    hi += 1 << 30
    hi >>= 31
    return divide_by_power_of_two(hi, right)


def saturate_int8(x: np.ndarray, lo: int = INT8_MIN, hi: int = INT8_MAX) -> np.ndarray:
    return np.clip(x, lo, hi).astype(np.int8)


def integer_matmul(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """x @ w of integer arrays, exactly, as int64. numpy's integer matmul has no BLAS and was most of a
    conversion's time. A float holds every integer below 2^24 (float32) or 2^53 (float64) exactly,
    and no partial sum of a product row can exceed K * max|x| * max|w|, so below that bound the float
    product is exact whatever order BLAS adds in; int8 layers with K below about 500 take float32,
    at half float64's time and memory."""
    bound = _magnitude(x) * _magnitude(w) * x.shape[-1]
    if bound >= 2.0**53:
        return x.astype(np.int64) @ w.astype(np.int64)
    exact = np.float32 if bound < 2.0**24 else np.float64
    return (x.astype(exact) @ w.astype(exact)).astype(np.int64)


def _magnitude(a: np.ndarray) -> float:
    """max |a| as a Python number: np.abs wraps at a narrow type's minimum (abs(int8 -128) == -128)."""
    return float(max(-int(a.min(initial=0)), int(a.max(initial=0))))


def saturate(x: np.ndarray, bits: int, lo: int | None = None, hi: int | None = None) -> np.ndarray:
    """Clamp to [lo, hi] (default: the type's range) and store as int8 or int16."""
    tlo, thi = int_range(bits)
    lo, hi = tlo if lo is None else max(lo, tlo), thi if hi is None else min(hi, thi)
    return np.clip(x, lo, hi).astype(np.int8 if bits == 8 else np.int16)


ADD_LEFT_SHIFT = {8: 20, 16: 15}  # headroom bits by activation width, as TFLite-Micro's ADD Prepare sets them


def add_params(s1: float, s2: float, s_out: float, bits: int = 8) -> dict[str, int]:
    """TFLite ADD's parameters: both inputs brought to twice the larger input scale (the larger taken
    in float32 before widening to double) with ADD_LEFT_SHIFT bits of headroom, then the output's."""
    twice = 2.0 * float(max(np.float32(s1), np.float32(s2)))
    m1, sh1 = quantize_multiplier(float(np.float32(s1)) / twice)
    m2, sh2 = quantize_multiplier(float(np.float32(s2)) / twice)
    mo, sho = quantize_multiplier(twice / ((1 << ADD_LEFT_SHIFT[bits]) * float(np.float32(s_out))))
    return {"mult1": m1, "shift1": sh1, "mult2": m2, "shift2": sh2, "mult_out": mo, "shift_out": sho,
            "left_shift": ADD_LEFT_SHIFT[bits]}


def at_common_scale(x: np.ndarray, params: dict[str, int], operand: int) -> np.ndarray:
    """ADD/SUB's operand `operand` (1 or 2), zero point taken off (int64), shifted up by the headroom
    and rescaled to the common scale (add_params)."""
    return requantize(x << params["left_shift"], params[f"mult{operand}"], params[f"shift{operand}"])


def tflite_add(x1: np.ndarray, x2: np.ndarray, params: dict[str, int]) -> np.ndarray:
    """TFLite ADD on two operands with their zero points taken off (int64, broadcasting): each at the
    common scale, summed, rescaled to the output's (add_params); the output zero point and the clamp
    are the caller's."""
    total = at_common_scale(x1, params, 1) + at_common_scale(x2, params, 2)
    return requantize(total, params["mult_out"], params["shift_out"])
