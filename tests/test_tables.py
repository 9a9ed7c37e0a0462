"""Every entry of the tanh / sigmoid / leaky-relu tables equals what tflite-micro computes for that code."""

from __future__ import annotations

import numpy as np
import pytest

from onnx2cmsis.ir.graph import Graph, Node, Tensor
from onnx2cmsis.ops.table import SIGMOID_QUANT, TANH_QUANT, leaky_relu_table, sigmoid_table, tanh_table
from onnx2cmsis.arith.rules import QuantParams, activation_quant
from tests.needs import oracle_runtime

pytestmark = pytest.mark.oracle


def _tflite_table(fn: str, q_in: QuantParams, q_out: QuantParams, alpha: float = 0.0) -> np.ndarray:
    """Run all 256 input codes through a one-op .tflite in the tflite-micro runtime."""
    oracle_runtime()
    from onnx2cmsis.oracle.tflite_export import export_tflite, run_tflite_micro

    g = Graph(
        tensors={"x": Tensor("x", (256,), q_in), "y": Tensor("y", (256,), q_out)},
        nodes=[Node("f", "lut", ["x"], ["y"], attrs={"fn": fn, "alpha": alpha})],
        inputs=["x"], outputs=["y"], model_input_shapes=[(1, 256)], model_output_shapes=[(1, 256)],
    )
    return run_tflite_micro(export_tflite(g), np.arange(-128, 128, dtype=np.int8)[None])[0]


def _random_quants(seed: int, n: int) -> list[QuantParams]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        span = float(np.exp(rng.uniform(np.log(0.05), np.log(200.0))))  # very fine to very coarse scales
        lo = -span * rng.uniform(0.0, 1.0)
        out.append(activation_quant(lo, lo + span))
    return out


@pytest.mark.parametrize("q_in", _random_quants(1, 40), ids=lambda q: f"s{q.scale:.3g}_z{q.zero_point}")
def test_tanh_and_sigmoid_tables_match_tflite_micro(q_in):
    assert np.array_equal(tanh_table(q_in), _tflite_table("tanh", q_in, TANH_QUANT))
    assert np.array_equal(sigmoid_table(q_in), _tflite_table("sigmoid", q_in, SIGMOID_QUANT))


@pytest.mark.parametrize("alpha", [0.01, 0.1, 0.3, 0.5])
def test_leaky_relu_table_matches_tflite_micro(alpha):
    for q_in, q_out in zip(_random_quants(2, 8), _random_quants(3, 8)):
        assert np.array_equal(leaky_relu_table(q_in, q_out, alpha), _tflite_table("leaky_relu", q_in, q_out, alpha))


def test_tables_are_monotonic_and_centred():
    q = QuantParams(0.05, 3)
    t, s = tanh_table(q).astype(int), sigmoid_table(q).astype(int)
    assert np.all(np.diff(t) >= 0) and np.all(np.diff(s) >= 0)
    assert t[3 + 128] == 0  # tanh(0) = 0
    assert s[3 + 128] == 0  # sigmoid(0) = 0.5 -> code 0 at scale 1/256, zero point -128
