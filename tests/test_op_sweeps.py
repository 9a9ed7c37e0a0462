"""Per-op sweeps over random shapes and parameters.

For each op family, >= 200 random one-op models are converted; then
  1. the generated C (all cases in one gcc build) == the numpy integer reference, byte for byte;
  2. the numpy reference == the tflite-micro runtime on the same quantized op written as .tflite,
     the independent check of the quantization arithmetic itself.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnx2cmsis.api import convert
from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.oracle.tflite_export import NotExportable, export_tflite
from onnx2cmsis.targets.host import build_conversions
from tests.bit_exact import batch_mismatches
from tests.needs import oracle_runtime
from tests.onnx_builders import BUILDERS

CASES = 200
INPUTS_PER_CASE = 6


def _random_inputs(rng: np.random.Generator, conv, n: int) -> np.ndarray:
    size = conv.graph.tensors[conv.graph.inputs[0]].size
    x = rng.integers(-128, 128, (n, size)).astype(np.int8)
    x[0] = -128  # the extremes exercise saturation and padding offsets
    x[1] = 127
    return x


# Families whose generated C differs between CMSIS-NN API levels (conv call, grouped convs, MVE
# scratch, MVE dense kernel sums): CI sweeps them against every tree.
LEVEL_FAMILIES = {"conv", "depthwise", "dense"}


@pytest.fixture(scope="module", params=[pytest.param(op, marks=pytest.mark.level) if op in LEVEL_FAMILIES else op
                                        for op in sorted(BUILDERS)])
def sweep(request, tmp_path_factory):
    op = request.param
    folder = tmp_path_factory.mktemp(f"sweep_{op}")
    rng = np.random.default_rng(1000 + sorted(BUILDERS).index(op))
    conversions, rejected, i = [], 0, 0
    while len(conversions) < CASES:
        case = BUILDERS[op](rng, i)
        i += 1
        try:
            conversions.append(convert(case.save(folder), case.calibration, name=case.name, **case.options))
        except UnsupportedOpError as exc:
            # only the MaxPool ceil_mode windows that start in the padding are refused on purpose
            assert "covers only padding" in str(exc), str(exc)
            rejected += 1
    assert rejected < CASES // 4
    inputs = {c.name: _random_inputs(rng, c, INPUTS_PER_CASE) for c in conversions}
    return op, folder, conversions, inputs


@pytest.mark.slow
def test_generated_c_matches_reference(sweep):
    op, folder, conversions, inputs = sweep
    models = build_conversions(conversions, folder / "build", library=op)
    bad = []
    for c in conversions:
        for x in inputs[c.name]:
            if not np.array_equal(models[c.name](x), c.reference(x)):
                bad.append(c.name)
                break
    assert not bad, f"{len(bad)}/{len(conversions)} {op} cases differ from the reference: {bad[:5]}"


@pytest.mark.slow
def test_reference_on_a_batch_equals_one_sample_at_a_time(sweep):
    op, _, conversions, inputs = sweep
    bad = batch_mismatches(conversions, inputs)
    assert not bad, f"{len(bad)}/{len(conversions)} {op} cases differ between batch and single samples: {bad[:5]}"


@pytest.mark.parametrize("precision", ["int8", "int16"])
def test_reference_on_a_batch_equals_one_sample_at_a_time_quick(precision, tmp_path):
    """The same on a few cases of every family, for the quick subset."""
    from tests.zoo import make_op_zoo

    convs = make_op_zoo(tmp_path, per_family=2, seed=23, prefix="b_", precision=precision)
    info = np.iinfo(np.int8 if precision == "int8" else np.int16)
    rng = np.random.default_rng(24)
    inputs = {c.name: rng.integers(info.min, info.max + 1, (5, c.graph.tensors[c.graph.inputs[0]].size))
              .astype(info.dtype) for c in convs}
    assert len(convs) >= 24 and not batch_mismatches(convs, inputs)


@pytest.mark.slow
@pytest.mark.oracle
def test_reference_matches_tflite_micro(sweep):
    runtime = oracle_runtime()
    op, _, conversions, inputs = sweep
    checked, bad = 0, []
    for c in conversions:
        try:
            tflite = export_tflite(c.graph, c.registry)
        except NotExportable:
            continue  # e.g. a max-pool padding TFLite cannot express; the C sweep still covers it
        interp = runtime.Interpreter.from_bytes(tflite, arena_size=1 << 20)
        shape = interp.get_input_details(0)["shape"]
        for x in inputs[c.name]:
            interp.set_input(x.reshape(shape), 0)
            interp.invoke()
            if not np.array_equal(np.asarray(interp.get_output(0)).reshape(-1), c.reference(x)):
                bad.append(c.name)
                break
        checked += 1
    assert checked >= 150, f"only {checked} {op} cases were expressible in TFLite"
    assert not bad, f"{len(bad)}/{checked} {op} cases differ from tflite-micro: {bad[:5]}"
