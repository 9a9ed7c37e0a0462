"""TFLite's integer LSTM (UNIDIRECTIONAL_SEQUENCE_LSTM: int8 or, at 16x8, int16 activations; int8
weights; int16 gates and cell state), as CMSIS-NN's `arm_lstm_unidirectional_s8` / `_s16` compute it
step by step.

Scales, as TFLite-Micro's Prepare derives them (lstm_eval_common.cc):
  - each gate's two fully-connected parts write int16 at 2^-12 (Q3.12, the sigmoid/tanh input):
    input part s_in * s_w[g] / 2^-12 (with the gate's int32 bias at s_in * s_w[g]), recurrent part
    s_h * s_r[g] / 2^-12, where s_h is the hidden state's (= the output's) scale;
  - gate outputs are Q0.15 (2^-15): 16-bit sigmoid for input, forget and output gates, tanh for the
    cell gate (arith/sigmoid16.py);
  - the cell state is int16 at a power-of-two scale 2^p: forget * cell at 2^-15 * 2^p / 2^p, input *
    cell gate at 2^-30 / 2^p, and tanh(cell) reads it shifted by p + 12 to Q3.12;
  - hidden = output gate * tanh(cell) at 2^-30 / s_h, plus the output zero point, saturated to int8.
At 16x8 the gates' matrix products sum in 64 bits (int64 biases) and requantize with the 16-bit
multiplier of every 16x8 kernel (arm_nn_requantize_s64); the rest is the same, the hidden state int16
with zero point 0.

Where CMSIS-NN and TFLite-Micro's reference kernel could part (each saturating at a different point),
this follows CMSIS-NN (the C that ships): the recurrent part is added to the saturated input part
before saturating, and input gate * cell gate is added to the cell before the clamp. Both saturate
only at the int16 range's ends, which trained gates rarely reach; the oracle tests compare the two.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from onnx2cmsis.arith.rules import INT16_MAX, int_range, integer_matmul, quantize_multiplier, requantize, requantize_s64
from onnx2cmsis.arith.sigmoid16 import sigmoid_s16, tanh_s16

GATES = ("input", "forget", "cell", "output")  # TFLite's (and these arrays') gate order
GATE_INPUT_SCALE = 2.0**-12  # Q3.12
GATE_OUTPUT_SCALE = 2.0**-15  # Q0.15
Q15_MIN, Q15_MAX = -32768, 32767


def cell_scale_power(max_abs: float) -> int:
    """p of the cell state's scale 2^p: the smallest power of two whose int16 range holds max_abs
    (TFLite's power-of-two scale for the cell, 2^ceil(log2 max|c|) / 32768)."""
    top = max(float(max_abs), 2.0**-8)  # a cell that never moves still gets a sane scale
    return math.ceil(math.log2(top)) - 15


@dataclass(frozen=True)
class LstmMultipliers:
    """Every requantization of one LSTM layer: (multiplier, shift) pairs, shift > 0 left."""

    input_parts: tuple[tuple[int, int], ...]  # per gate: the input fully-connected part
    recurrent_parts: tuple[tuple[int, int], ...]  # per gate: the recurrent part
    forget_cell: tuple[int, int]
    input_cell: tuple[int, int]
    hidden: tuple[int, int]


def lstm_multipliers(s_in: float, s_h: float, s_w: np.ndarray, s_r: np.ndarray, p: int) -> LstmMultipliers:
    """The multipliers from float32 scales, in double as TFLite-Micro computes them."""
    f = lambda s: float(np.float32(s))  # noqa: E731 - the float32 every .tflite scale is
    cell = 2.0**p
    return LstmMultipliers(
        tuple(quantize_multiplier(f(s_in) * f(w) / GATE_INPUT_SCALE) for w in s_w),
        tuple(quantize_multiplier(f(s_h) * f(r) / GATE_INPUT_SCALE) for r in s_r),
        quantize_multiplier(GATE_OUTPUT_SCALE * cell / cell),
        quantize_multiplier(GATE_OUTPUT_SCALE * GATE_OUTPUT_SCALE / cell),
        quantize_multiplier(GATE_OUTPUT_SCALE * GATE_OUTPUT_SCALE / f(s_h)),
    )


def tanh_of_cell(p: int) -> tuple[int, int]:
    """(multiplier, right shift) that bring a cell at 2^p to the 16-bit tanh's Q3.12 input (CMSIS-NN's
    arm_nn_activation_s16 with left shift p + 12; TFLite-Micro's Tanh with the same)."""
    left = p + 12
    return (3, -left) if left < 0 else (3 << left, 0)


def _clamp16(x: np.ndarray, lo: int = Q15_MIN, hi: int = Q15_MAX) -> np.ndarray:
    return np.clip(x, lo, hi)


def lstm_integer(x: np.ndarray, weights: np.ndarray, recurrent: np.ndarray, effective_bias: np.ndarray,
                 m: LstmMultipliers, p: int, cell_clip: int, zp_h: int, bits: int = 8) -> np.ndarray:
    """The integer LSTM over N sequences at once: x (N, T, C) codes -> hidden states (N, T, H) codes,
    int8 (bits 8) or int16 (bits 16, TFLite 16x8).

    weights (4, H, C) and recurrent (4, H, H) int8 per gate in GATES order; effective_bias (4, H) the
    gate bias less the input zero point times each weight row's sum (what CMSIS-NN adds); the hidden
    state starts at the output zero point (real 0) and the cell at 0, as on every call of v7.0.0."""
    n, steps, _ = x.shape
    hidden = weights.shape[1]
    h = np.full((n, hidden), zp_h, np.int64)
    c = np.zeros((n, hidden), np.int64)
    lo, hi = (-cell_clip, cell_clip) if cell_clip > 0 else (Q15_MIN, Q15_MAX)
    tanh_m, tanh_s = tanh_of_cell(p)
    # every step's input parts at once: they do not depend on the recurrence
    xs = x.astype(np.int64)
    rescale = requantize if bits == 8 else requantize_s64  # 16x8: 64-bit sums, the 16-bit multiplier
    input_parts = []
    for g in range(4):
        acc = integer_matmul(xs, weights[g].T) + effective_bias[g].astype(np.int64)
        input_parts.append(_clamp16(rescale(acc, *m.input_parts[g])))
    h_lo, h_hi = int_range(bits)
    out = np.empty((n, steps, hidden), np.int8 if bits == 8 else np.int16)
    for t in range(steps):
        gates = []
        for g in range(4):
            pre = input_parts[g][:, t]
            if t > 0:  # at the first step the hidden state is the zero point: its part is 0
                acc = integer_matmul(h - zp_h, recurrent[g].T)
                pre = _clamp16(pre + rescale(acc, *m.recurrent_parts[g]))
            gates.append(tanh_s16(pre, 3, 0) if GATES[g] == "cell" else sigmoid_s16(pre, 3, 0))
        i_gate, f_gate, g_gate, o_gate = (g.astype(np.int64) for g in gates)
        c = _clamp16(requantize(f_gate * c, *m.forget_cell))
        c = np.clip(requantize(i_gate * g_gate, *m.input_cell) + c, lo, hi)
        t_cell = tanh_s16(c, tanh_m, tanh_s).astype(np.int64)
        h = np.clip(requantize(o_gate * t_cell, *m.hidden) + zp_h, h_lo, h_hi)
        out[:, t] = h
    return out


def effective_bias(bias: np.ndarray, weights: np.ndarray, zp_in: int) -> np.ndarray:
    """bias - zp_in * row sums (what CMSIS-NN's gate kernels start each accumulator from): int32 for an
    int32 bias (int8), int64 for an int64 one (16x8, where zero points are 0)."""
    sums = weights.astype(np.int64).sum(axis=-1)
    eff = bias.astype(np.int64) - zp_in * sums
    return eff.astype(np.int64 if bias.dtype == np.int64 else np.int32)


def recurrent_effective_bias(recurrent: np.ndarray, zp_h: int) -> np.ndarray:
    """-zp_h * row sums of the recurrent weights, int32 (CMSIS-NN's hidden_effective_bias)."""
    return (-zp_h * recurrent.astype(np.int64).sum(axis=-1)).astype(np.int32)


def quantized_cell_clip(clip: float, p: int) -> int:
    """TFLite's int16 cell clip (0: none)."""
    if clip <= 0:
        return 0
    return int(min(max(clip / 2.0**p, -32768.0), float(INT16_MAX)))
