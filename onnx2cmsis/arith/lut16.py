"""TFLite's int16 interpolated lookup tables: 513 entries over the int16 input range, read with linear
interpolation between neighbours (LUTPopulate<int16_t> and LUTLookup in TFLite's common.h).

TFLite-Micro's 16x8 softmax fills two of them in its Prepare, in float32 arithmetic; CMSIS-NN's
arm_softmax_s16 reads the same tables. They depend on nothing in the model, so they are computed once
per process here (float32 step by step, exp correctly rounded to float32) and the oracle tests pin
them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import numpy as np

from onnx2cmsis.arith.rules import round_half_away

STEPS = 512
_F = np.float32


def _round(x: np.float32) -> np.float32:
    return _F(round_half_away(float(x)))


def populate(fn: Callable[[np.float32], np.float32], input_scale: float, input_zero_point: int,
             output_scale: float, output_zero_point: int) -> np.ndarray:
    """LUTPopulate<int16_t>: fn sampled at 513 points of the input range; each of the first 512 values
    moved by half its interpolation error at the step's midpoint."""
    in_min = _F(input_scale) * _F(-32768 - input_zero_point)
    in_max = _F(input_scale) * _F(32767 - input_zero_point)
    out_min = _F(output_scale) * _F(-32768 - output_zero_point)
    out_max = _F(output_scale) * _F(32767 - output_zero_point)
    step = (in_max - in_min) / _F(STEPS)
    half = step / _F(2)
    inv = _F(65536) / (out_max - out_min)
    table = np.empty(STEPS + 1, np.int16)
    for i in range(STEPS):
        at = in_min + _F(i) * step
        val, mid, nxt = fn(at), fn(at + half), fn(in_min + _F(i + 1) * step)
        sample = _round(val * inv)
        interpolated = _round((nxt * inv + _round(val * inv)) / _F(2))
        bias = _round((interpolated - _round(mid * inv)) / _F(2))
        table[i] = int(min(max(sample - bias, _F(-32768)), _F(32767)))
    table[STEPS] = int(min(max(_round(fn(in_max) * inv), _F(-32768)), _F(32767)))
    return table


def lookup(value: np.ndarray, table: np.ndarray) -> np.ndarray:
    """LUTLookup(int16): the table entry for value's top 9 bits plus the slope times its low 7 bits."""
    v = np.asarray(value, np.int64)
    index = 256 + (v >> 7)
    offset = v & 0x7F
    t = table.astype(np.int64)
    base = t[index]
    slope = ((t[index + 1] - base + 32768) % 65536) - 32768  # an int16 difference
    return ((base + ((slope * offset + 64) >> 7) + 32768) % 65536 - 32768).astype(np.int16)


def _expf(x: np.float32) -> np.float32:
    return _F(np.exp(np.float64(x)))


@functools.cache
def softmax_tables() -> tuple[np.ndarray, np.ndarray]:
    """The exp table over [-10, 0] and the 1 / (1 + x) table over [0, 1] of TFLite's 16x8 softmax.
    Made on the first call and kept (read-only): a conversion quantizes the graph once per recipe fit,
    up to 20 times at int16, and filling both tables in float32 step by step took a third of an int16
    conversion of a small softmax classifier."""
    span = 65535  # int16 max - min
    exp = populate(_expf, float(_F(10.0) / _F(span)), 32767, float(_F(2.0) / _F(span)), 0)
    reciprocal = populate(lambda x: _F(1.0) / (_F(1.0) + x), float(_F(1.0) / _F(span)), -32768,
                          float(_F(2.0) / _F(span)), 0)
    exp.setflags(write=False)
    reciprocal.setflags(write=False)
    return exp, reciprocal
