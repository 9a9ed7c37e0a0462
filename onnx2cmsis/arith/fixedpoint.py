"""gemmlowp fixed-point functions on numpy int64 arrays holding int32 values, wrapping like 32-bit C.

Both TFLite-Micro's int8 tanh/logistic and CMSIS-NN's softmax (arm_nn_exp_on_negative_values,
arm_nn_one_over_one_plus_x_for_x_in_0_1) evaluate these, bit for bit. A value with `integer_bits` I
is a Q(I).(31-I) number in an int32.
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.arith.rules import INT32_MAX, INT32_MIN, divide_by_power_of_two, doubling_high_mult, wrap32

_EXP_BARREL = ((-2, 1672461947), (-1, 1302514674), (0, 790015084), (1, 290630308), (2, 39332535), (3, 720401),
               (4, 242))  # exp(-2^e) in Q0.31


def saturating_left_shift(x: np.ndarray, exponent: int) -> np.ndarray:
    """SaturatingRoundingMultiplyByPOT<exponent> for exponent > 0 (arm_nn_mult_by_power_of_two)."""
    x = np.asarray(x, np.int64)
    threshold = (1 << (31 - exponent)) - 1
    return np.where(x > threshold, INT32_MAX, np.where(x < -threshold, INT32_MIN, wrap32(x << exponent)))


def _exp_on_quarter_interval(x: np.ndarray) -> np.ndarray:
    """exp(a) for a in [-1/4, 0) given x = a + 1/8, Q0.31 (a Taylor series around -1/8)."""
    x2 = doubling_high_mult(x, x)
    x3 = doubling_high_mult(x2, x)
    x4 = doubling_high_mult(x2, x2)
    poly = divide_by_power_of_two(wrap32(doubling_high_mult(wrap32(divide_by_power_of_two(x4, 2) + x3), 715827883) + x2), 1)
    return wrap32(1895147668 + doubling_high_mult(1895147668, wrap32(x + poly)))


def exp_on_negative_values(a: np.ndarray, integer_bits: int) -> np.ndarray:
    """exp(a) in Q0.31 for a <= 0 given with `integer_bits` integer bits."""
    a = np.asarray(a, np.int64)
    frac = 31 - integer_bits
    quarter = 1 << (frac - 2)
    a_mod = wrap32((a & (quarter - 1)) - quarter)
    result = _exp_on_quarter_interval(wrap32(saturating_left_shift(a_mod, integer_bits) + (1 << 28)))
    remainder = wrap32(a_mod - a)
    for exponent, multiplier in _EXP_BARREL:
        if integer_bits > exponent:
            result = np.where(remainder & (1 << (frac + exponent)), doubling_high_mult(result, multiplier), result)
    if integer_bits > 5:
        result = np.where(a < -(1 << (36 - integer_bits)), 0, result)
    return np.where(a == 0, INT32_MAX, result)


def _newton_reciprocal(a: np.ndarray) -> np.ndarray:
    """~ 1 / ((1 + a) / 2) in Q2.29 for a in Q0.31: three Newton-Raphson steps from 48/17 - 32/17 * d."""
    s = np.asarray(a, np.int64) + INT32_MAX
    num = s + np.where(s >= 0, 1, -1)  # RoundingHalfSum(a, One): (sum + sign) / 2, truncating like C
    half = np.where(num >= 0, num // 2, -((-num) // 2))
    x = wrap32(1515870810 + doubling_high_mult(half, -1010580540))
    for _ in range(3):
        x = wrap32(x + saturating_left_shift(doubling_high_mult(x, wrap32((1 << 29) - doubling_high_mult(half, x))), 2))
    return x


def one_over_one_plus_x(a: np.ndarray) -> np.ndarray:
    """1 / (1 + a) in Q0.31 for a in [0, 1) in Q0.31."""
    return saturating_left_shift(_newton_reciprocal(a), 1)


def one_minus_x_over_one_plus_x(a: np.ndarray) -> np.ndarray:
    """(1 - a) / (1 + a) in Q0.31 for a in [0, 1) in Q0.31."""
    return saturating_left_shift(wrap32(_newton_reciprocal(a) - (1 << 29)), 2)


def tanh_q0(a: np.ndarray, integer_bits: int) -> np.ndarray:
    """gemmlowp tanh: Q(integer_bits) in, Q0.31 out."""
    a = np.asarray(a, np.int64)
    negative = np.where(a < 0, a, wrap32(-a))
    t = one_minus_x_over_one_plus_x(exp_on_negative_values(negative, integer_bits + 1))  # exp(-2|a|)
    return np.where(a == 0, 0, np.where(a < 0, wrap32(-t), t))


def logistic_q0(a: np.ndarray, integer_bits: int) -> np.ndarray:
    """gemmlowp logistic: Q(integer_bits) in, Q0.31 out."""
    a = np.asarray(a, np.int64)
    positive = one_over_one_plus_x(exp_on_negative_values(np.where(a > 0, wrap32(-a), a), integer_bits))
    return np.where(a == 0, 1 << 30, np.where(a > 0, positive, wrap32(INT32_MAX - positive)))
