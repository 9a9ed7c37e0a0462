"""The TFLite quantization rules and CMSIS-NN integer helpers, against facts measured elsewhere."""

from __future__ import annotations

import math

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from onnx2cmsis.ops.softmax import softmax_params
from onnx2cmsis.arith.rules import (
    activation_quant,
    activation_range,
    divide_by_power_of_two,
    doubling_high_mult,
    f32,
    integer_matmul,
    quantize_multiplier,
    quantize_tensor,
    requantize,
    round_half_away,
    wrap32,
    QuantParams,
)


def test_quantize_multiplier_uses_float32_scales():
    # Measured against TFLite-Micro (docs: cmsis-nn.md): a float64 scale gives a different multiplier.
    assert quantize_multiplier(f32(0.0313)) == (1075459840, -4)
    assert quantize_multiplier(0.0313) == (1075459811, -4)


def test_softmax_params_match_tflite_micro():
    assert softmax_params(f32(0.0313)) == (1075459840, 22, -496)


def test_quantize_multiplier_rounds_up_to_the_next_power_of_two():
    m, s = quantize_multiplier(math.nextafter(1.0, 0.0))
    assert (m, s) == (1 << 30, 1)
    assert quantize_multiplier(0.0) == (0, 0)


@settings(max_examples=300, deadline=None)
@given(st.floats(min_value=1e-9, max_value=1e4, allow_nan=False))
def test_quantize_multiplier_represents_the_real_value(real):
    m, s = quantize_multiplier(real)
    assert (1 << 30) <= m < (1 << 31)
    assert math.isclose(m * 2.0 ** (s - 31), real, rel_tol=2**-30)


def test_round_half_away_from_zero():
    assert list(round_half_away(np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.5]))) == [-3, -2, -1, 1, 2, 3]


def _c_divide(x: int, e: int) -> int:
    """arm_nn_divide_by_power_of_two written out the way the C does it, scalar."""
    mask = (1 << e) - 1
    remainder = x & mask
    result = x >> e
    threshold = (mask >> 1) + (1 if result < 0 else 0)
    return result + (1 if remainder > threshold else 0)


@settings(max_examples=500, deadline=None)
@given(st.integers(-(2**31), 2**31 - 1), st.integers(0, 31))
def test_divide_by_power_of_two_rounds_half_away(x, e):
    assert int(divide_by_power_of_two(np.array([x]), e)[0]) == _c_divide(x, e)
    exact = x / 2**e
    assert abs(int(divide_by_power_of_two(np.array([x]), e)[0]) - exact) <= 0.5


@settings(max_examples=500, deadline=None)
@given(st.integers(-(2**31), 2**31 - 1), st.integers(1, 2**31 - 1))
def test_doubling_high_mult_is_rounded_product(a, b):
    got = int(doubling_high_mult(np.array([a]), b)[0])
    exact = a * b / 2**31
    assert abs(got - exact) <= 0.5


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**20), 2**20), st.floats(min_value=1e-6, max_value=0.99))
def test_requantize_approximates_the_real_multiplication(acc, real):
    m, s = quantize_multiplier(real)
    got = int(requantize(np.array([acc]), m, s)[0])
    assert abs(got - acc * real) <= 1.0


def _c_requantize(acc: int, m: int, shift: int) -> int:
    """arm_nn_requantize in Python integers: wrap to int32 after the left shift, the doubling high
    multiply, then the rounding right shift."""
    x = ((acc << max(shift, 0)) + 2**31) % 2**32 - 2**31
    return _c_divide((x * m + 2**30) >> 31, max(-shift, 0))


@settings(max_examples=500, deadline=None)
@given(st.lists(st.integers(-(2**31), 2**31 - 1), min_size=1, max_size=6), st.integers(2**30, 2**31 - 1),
       st.integers(-31, 8))
def test_requantize_is_cmsis_nn_integer_arithmetic(accs, m, shift):
    # per-channel shifts too: one channel at `shift`, the next at zero
    got = requantize(np.array([accs, accs]).T, m, np.array([shift, 0]))
    assert got[:, 0].tolist() == [_c_requantize(a, m, shift) for a in accs]
    assert got[:, 1].tolist() == [_c_requantize(a, m, 0) for a in accs]


@settings(max_examples=300, deadline=None)
@given(st.integers(-(2**62), 2**62))
def test_wrap32_is_twos_complement(x):
    assert int(wrap32(np.array([x]))[0]) == (x + 2**31) % 2**32 - 2**31


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 3000), st.sampled_from([127, 255, 32767]), st.integers(0, 2**32 - 1))
def test_integer_matmul_is_exact_across_its_float_paths(k, top, seed):
    # k * top * 127 crosses float32's 2^24 (int8 layers), and with int16 values float64's 2^53 is not
    # reached: the extremes at both ends check that no rounding slips in on either path
    rng = np.random.default_rng(seed)
    x = rng.integers(-top, top + 1, size=(3, k))
    x[0] = top
    w = rng.integers(-127, 128, size=(k, 2))
    w[:, 0] = 127
    want = [[sum(int(a) * int(b) for a, b in zip(row, col)) for col in w.T] for row in x]
    assert integer_matmul(x.astype(np.int32), w.astype(np.int8)).tolist() == want


def test_integer_matmul_bounds_a_narrow_types_minimum_by_its_true_magnitude():
    # abs(int8 -128) wraps to -128 in numpy: a bound read from it would take float32 for a sum
    # (17,881,601, odd, above 2^24) that float32 cannot hold
    x = np.array([[-128] * 1100 + [1]], np.int8)
    w = np.array([[-127] * 1100 + [1]], np.int8).T
    assert integer_matmul(x, w).tolist() == [[128 * 127 * 1100 + 1]]


def test_activation_quant_contains_zero_exactly():
    q = activation_quant(0.5, 3.0)  # widened to [0, 3]
    assert q.zero_point == -128
    q = activation_quant(-1.0, 1.0)
    assert -1 <= q.zero_point <= 0
    assert np.float32(q.scale) == q.scale


def test_activation_range_relu6():
    q = QuantParams(6.0 / 255.0, -128)
    assert activation_range(q, 0.0, 6.0) == (-128, 127)
    q = QuantParams(0.1, -10)
    assert activation_range(q, 0.0, None) == (-10, 127)
    assert activation_range(q, 0.0, 6.0) == (-10, 50)


def test_quantize_tensor_saturates_and_handles_nan():
    q = QuantParams(0.5, 3)
    x = np.array([0.0, 0.25, -0.25, 1000.0, -1000.0, np.nan], np.float32)
    assert list(quantize_tensor(x, q)) == [3, 4, 2, 127, -128, 3]
