"""Integer GRU and simple RNN: TFLite's LSTM rules carried over (TFLite-Micro and CMSIS-NN have no GRU).

The same quantities as the LSTM (arith/lstm.py), computed by the same CMSIS-NN pieces:
  - input x int8 (s_x, zp_x), weights int8 symmetric with one scale per gate and matrix, biases int32
    at s_x * s_w less zp_x times each row's sum;
  - each gate's input product to int16 at 2^-12 (Q3.12) with the 32-bit requantization
    (arm_nn_vec_mat_mul_result_acc_s8_s16);
  - the state h is int16 at 2^-15 (Q0.15): a GRU's state is a convex mix of tanh outputs and itself,
    an RNN's a tanh output, so |h| <= 1 always and no range is calibrated. Its products with the
    recurrent weights go to Q3.12 with the 16-bit multiplier of CMSIS-NN's s16 kernels
    (arm_nn_vec_mat_mul_result_acc_s16, int64 bias), added to the input part, saturated;
  - gates through the 16-bit sigmoid and tanh (arm_nn_activation_s16) to Q0.15;
  - GRU candidate, linear_before_reset=1 (PyTorch, Keras' reset_after): r * (R_h h + b_Rh) with
    arm_elementwise_mul_s16's rounding at 2^-15, then the input part added; linear_before_reset=0:
    R_h (r * h). New state (z h + (32768 - z) n + 2^14) >> 15: one rounding, exact in 32 bits;
  - output = the state requantized to the output's int8 scale and zero point.
At 16x8 (int16 input and output with zero point 0, int64 biases) the input products go through the
s16 kernel too (64-bit sums, the 16-bit multiplier), as every 16x8 kernel requantizes.

No independent oracle runs these: this reference is the oracle for the C, and the tests hold both to
the float model's accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from onnx2cmsis.arith.lstm import GATE_INPUT_SCALE, GATE_OUTPUT_SCALE, Q15_MAX, Q15_MIN
from onnx2cmsis.arith.rules import int_range, integer_matmul, quantize_multiplier, requantize, requantize_s64
from onnx2cmsis.arith.sigmoid16 import sigmoid_s16, tanh_s16

STATE_SCALE = GATE_OUTPUT_SCALE  # Q0.15
HALF_STATE = 1 << 14


@dataclass(frozen=True)
class RecurrentMultipliers:
    """(multiplier, shift) pairs, shift > 0 left: per gate the input and recurrent parts, the reset gate
    times the candidate's recurrent part (GRU), and the state to the output."""

    input_parts: tuple[tuple[int, int], ...]
    recurrent_parts: tuple[tuple[int, int], ...]
    reset: tuple[int, int]
    output: tuple[int, int]


def recurrent_multipliers(s_in: float, s_out: float, s_w: np.ndarray, s_r: np.ndarray) -> RecurrentMultipliers:
    f = lambda s: float(np.float32(s))  # noqa: E731 - scales are float32
    return RecurrentMultipliers(
        tuple(quantize_multiplier(f(s_in) * f(w) / GATE_INPUT_SCALE) for w in s_w),
        tuple(quantize_multiplier(STATE_SCALE * f(r) / GATE_INPUT_SCALE) for r in s_r),
        quantize_multiplier(GATE_OUTPUT_SCALE * GATE_INPUT_SCALE / GATE_INPUT_SCALE),
        quantize_multiplier(STATE_SCALE / f(s_out)),
    )


def _sat16(x: np.ndarray) -> np.ndarray:
    return np.clip(x, Q15_MIN, Q15_MAX)


def _input_parts(x: np.ndarray, weights: np.ndarray, bias: np.ndarray, m: RecurrentMultipliers,
                 bits: int) -> list[np.ndarray]:
    """Every step's input product per gate at once, requantized, not yet saturated (the C adds it to
    what its buffer holds, then saturates): (N, T, H) each. int8 inputs take the 32-bit
    requantization, int16 ones the 16x8 kernels' 64-bit one."""
    xs = x.astype(np.int64)
    rescale = requantize if bits == 8 else requantize_s64
    return [rescale(integer_matmul(xs, weights[g].T) + bias[g].astype(np.int64), *m.input_parts[g])
            for g in range(len(weights))]


def _recurrent(h: np.ndarray, recurrent: np.ndarray, bias: np.ndarray | int, m: tuple[int, int]) -> np.ndarray:
    return requantize_s64(integer_matmul(h, recurrent.T) + bias, *m)


def _output(h: np.ndarray, m: RecurrentMultipliers, zp_out: int, bits: int) -> np.ndarray:
    lo, hi = int_range(bits)
    return np.clip(requantize(h, *m.output) + zp_out, lo, hi).astype(np.int8 if bits == 8 else np.int16)


def gru_integer(x: np.ndarray, weights: np.ndarray, recurrent: np.ndarray, bias: np.ndarray,
                recurrent_bias: np.ndarray, m: RecurrentMultipliers, zp_out: int,
                linear_before_reset: bool, bits: int = 8) -> np.ndarray:
    """x (N, T, C) codes -> the output at every step (N, T, H), int8 (bits 8) or int16 (16x8). Gates in
    ONNX's order z, r, h:
    weights (3, H, C), recurrent (3, H, H) int8; bias (3, H) int32 (input parts, the z and r gates'
    recurrent biases folded in, less zp_x times the row sums); recurrent_bias (H,) int64, the
    candidate's recurrent bias at 2^-15 * s_r[h] (linear_before_reset only, else zeros)."""
    n, steps, _ = x.shape
    hidden = weights.shape[1]
    parts = _input_parts(x, weights, bias, m, bits)
    h = np.zeros((n, hidden), np.int64)
    out = np.empty((n, steps, hidden), np.int8 if bits == 8 else np.int16)
    for t in range(steps):
        # the C's order: each buffer starts at 0, a product is added to it and the sum saturated
        z_gate, r_gate = (sigmoid_s16(_sat16(_sat16(parts[g][:, t]) + _recurrent(h, recurrent[g], 0,
                                                                                 m.recurrent_parts[g])),
                                      3, 0).astype(np.int64) for g in (0, 1))
        if linear_before_reset:  # r * (R_h h + b), then the input part added
            rec = _sat16(_recurrent(h, recurrent[2], recurrent_bias.astype(np.int64), m.recurrent_parts[2]))
            pre = _sat16(parts[2][:, t] + _sat16(requantize(r_gate * rec, *m.reset)))
        else:  # the input part, then R_h (r * h) added
            reset_state = _sat16(requantize(r_gate * h, *m.reset))
            pre = _sat16(_sat16(parts[2][:, t]) + _recurrent(reset_state, recurrent[2], 0, m.recurrent_parts[2]))
        candidate = tanh_s16(pre, 3, 0).astype(np.int64)
        h = (z_gate * h + (32768 - z_gate) * candidate + HALF_STATE) >> 15
        out[:, t] = _output(h, m, zp_out, bits)
    return out


def rnn_integer(x: np.ndarray, weights: np.ndarray, recurrent: np.ndarray, bias: np.ndarray,
                m: RecurrentMultipliers, zp_out: int, bits: int = 8) -> np.ndarray:
    """A tanh RNN: weights (1, H, C), recurrent (1, H, H), bias (1, H) (both biases, less zp_x times the
    row sums) -> the output at every step (N, T, H)."""
    n, steps, _ = x.shape
    parts = _input_parts(x, weights, bias, m, bits)
    h = np.zeros((n, weights.shape[1]), np.int64)
    out = np.empty((n, steps, weights.shape[1]), np.int8 if bits == 8 else np.int16)
    for t in range(steps):
        pre = _sat16(_sat16(parts[0][:, t]) + _recurrent(h, recurrent[0], 0, m.recurrent_parts[0]))
        h = tanh_s16(pre, 3, 0).astype(np.int64)
        out[:, t] = _output(h, m, zp_out, bits)
    return out
