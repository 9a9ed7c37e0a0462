"""TFLite's int8 HARD_SWISH (reference_ops::HardSwish, as TFLite-Micro runs it): x * relu6(x + 3) / 6 in
16-bit fixed point, for all 256 input codes (ops/table.py makes it a lookup table).

Prepare (hard_swish_common.cc): the input on a "hires" scale s_in / 128; two multipliers, hires /
output scale and hires / (3 / 32768), each from QuantizeMultiplier rounded to 16 bits
(DownScaleInt32ToInt16Multiplier). Eval: the input value times 128 (int16), rescaled to the output
scale before its final shift, and to a "relu-ish" fraction in [0, 1] (saturating left shifts by the
exponent in two parts, a rounding doubling high multiply, a rounding right shift, then (v + 2^15) >> 1);
their product by a truncating doubling high multiply; the output exponent's rounding right shift; the
zero point; the int8 clamp.
"""

from __future__ import annotations

import numpy as np

from onnx2cmsis.arith.rules import QuantParams, divide_by_power_of_two, quantize_multiplier

INT16_MIN, INT16_MAX = -32768, 32767


def _to_int16_multiplier(multiplier: int) -> int:
    """DownScaleInt32ToInt16Multiplier."""
    if multiplier >= INT16_MAX * 65536 + 65535 - (1 << 15):  # int32 max less the rounding offset
        return INT16_MAX
    return (multiplier + (1 << 15)) >> 16


def _truncating_div_2_15(ab: np.ndarray) -> np.ndarray:
    """C's integer division by 2^15 (toward zero)."""
    return np.where(ab >= 0, ab >> 15, -((-ab) >> 15))


def _rounding_doubling_high_mul(a: np.ndarray, b: int) -> np.ndarray:
    """gemmlowp's SaturatingRoundingDoublingHighMul on int16."""
    ab = a.astype(np.int64) * b
    nudge = np.where(ab >= 0, 1 << 14, 1 - (1 << 14))
    out = _truncating_div_2_15(ab + nudge)
    return np.where((a == INT16_MIN) & (b == INT16_MIN), INT16_MAX, out)


def _doubling_high_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """TFLite's SaturatingDoublingHighMul on int16: truncating, not rounding."""
    out = _truncating_div_2_15(a.astype(np.int64) * b.astype(np.int64))
    return np.where((a == INT16_MIN) & (b == INT16_MIN), INT16_MAX, out)


def _saturating_left_shift(x: np.ndarray, amount: int) -> np.ndarray:
    return np.clip(x.astype(np.int64) * (1 << amount), INT16_MIN, INT16_MAX)


def hard_swish_params(q_in: QuantParams, q_out: QuantParams) -> tuple[tuple[int, int], tuple[int, int]]:
    """((output multiplier int16, exponent), (relu-ish multiplier int16, exponent)) as Prepare computes
    them: float32 ratios widened to double, QuantizeMultiplier, then to 16 bits."""
    f = np.float32
    hires = f(1.0 / 128.0) * f(q_in.scale)
    out_m, out_e = quantize_multiplier(float(f(hires / f(q_out.scale))))
    relu_m, relu_e = quantize_multiplier(float(f(hires / f(3.0 / 32768.0))))
    return (_to_int16_multiplier(out_m), out_e), (_to_int16_multiplier(relu_m), relu_e)


def hard_swish_table(q_in: QuantParams, q_out: QuantParams) -> np.ndarray:
    (out_m, out_e), (relu_m, relu_e) = hard_swish_params(q_in, q_out)
    if out_e > 0:
        raise ValueError("HARD_SWISH needs an output scale above the input's / 128 (TFLite's Prepare refuses it)")
    hires = (np.arange(-128, 128, dtype=np.int64) - q_in.zero_point) * 128
    preshift = _rounding_doubling_high_mul(hires, out_m)
    reluish = hires
    if relu_e > 0:
        reluish = _saturating_left_shift(reluish, relu_e - 1)
    reluish = _rounding_doubling_high_mul(reluish, relu_m)
    if relu_e > 0:
        reluish = _saturating_left_shift(reluish, 1)
    if relu_e < 0:
        reluish = divide_by_power_of_two(reluish, -relu_e)  # gemmlowp's RoundingDivideByPOT
    reluish = (reluish + (1 << 15)) >> 1
    out = divide_by_power_of_two(_doubling_high_mul(reluish, preshift), -out_e) + q_out.zero_point
    return np.clip(out, -128, 127).astype(np.int8)
