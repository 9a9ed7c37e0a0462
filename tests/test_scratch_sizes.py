"""The scratch the planner reserves, checked against CMSIS-NN itself on the cores it is sized for.

Each kernel's buffer size depends on the build (pure C, DSP, MVE) and on the CMSIS-NN generation, and
the planner computes it in Python. The evidence here is independent of that formula: a probe calls
CMSIS-NN's own `*_get_buffer_size()` functions for every layer of a few dozen random models, compiled
for Cortex-M0+ (pure C), M4 (DSP) and M55 (MVE) against the suite's tree and run on QEMU (on the host
they would only give the pure-C size). Runs against every tree (marker `level`).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from onnx2cmsis.api import convert
from onnx2cmsis.cmsis_nn.source import locate_cmsis_nn
from onnx2cmsis.targets.qemu import CUnit, build_firmware, run_firmware
from tests.needs import qemu_tools
from tests.onnx_builders import BUILDERS

pytestmark = [pytest.mark.slow, pytest.mark.qemu, pytest.mark.level]
CASES_PER_FAMILY = 30
TARGETS = ("m0plus", "m4", "m55")


def _size_call(layer) -> str | None:
    """The C expression CMSIS-NN answers for this layer's kernel, or None when it takes no scratch."""
    ctx, kernel = layer.call.context, layer.call.kernel
    if kernel == "arm_convolve_s8":
        return (f"arm_convolve_s8_get_buffer_size(&(const cmsis_nn_dims){{1, 1, {ctx['w_in']}, {ctx['c_in']}}}, "
                f"&(const cmsis_nn_dims){{{ctx['c_out']}, 1, {ctx['k']}, {ctx['filter_c']}}})")
    if kernel == "arm_depthwise_conv_s8_opt":
        return (f"arm_depthwise_conv_s8_opt_get_buffer_size(&(const cmsis_nn_dims){{1, 1, {ctx['w_in']}, "
                f"{ctx['c_in']}}}, &(const cmsis_nn_dims){{1, 1, {ctx['k']}, {ctx['c_out']}}})")
    if kernel == "arm_avgpool_s8":
        return f"arm_avgpool_s8_get_buffer_size({ctx['w_out']}, {ctx['c']})"
    return None


def _probe(layers: list, cmsis) -> CUnit:
    calls = [_size_call(layer) for layer in layers]
    body = "\n".join(f"    sizes[{i}] = {call};" for i, call in enumerate(calls))
    source = f"""#include <string.h>
#include "arm_nnfunctions.h"
#include "scratch_probe.h"

int scratch_probe_invoke(const int8_t *input, int8_t *output)
{{
    int32_t sizes[{len(calls)}];
    (void)input;
{body}
    memcpy(output, sizes, sizeof(sizes));
    return 0;
}}
"""
    header = f"""#include <stdint.h>
#define SCRATCH_PROBE_INPUT_SIZE 1
#define SCRATCH_PROBE_OUTPUT_SIZE {4 * len(calls)}
int scratch_probe_invoke(const int8_t *input, int8_t *output);
"""
    return CUnit("scratch_probe", source, header, cmsis, 1, 4 * len(calls))


@pytest.fixture(scope="module")
def scratch_layers(tmp_path_factory) -> list:
    folder = tmp_path_factory.mktemp("scratch")
    layers = []
    for family in ("conv", "depthwise", "avgpool"):
        rng = np.random.default_rng(4242 + len(family))
        made = i = 0
        while made < CASES_PER_FAMILY:
            case = BUILDERS[family](rng, i)
            i += 1
            try:
                conv = convert(case.save(folder), case.calibration, name=case.name, **case.options)
            except Exception as exc:  # the sweeps' deliberate refusals (windows over padding only)
                assert "covers only padding" in str(exc), exc
                continue
            layers += [layer for layer in conv.layers if _size_call(layer) is not None]
            made += 1
    kernels = {layer.call.kernel for layer in layers}
    assert kernels == {"arm_convolve_s8", "arm_depthwise_conv_s8_opt", "arm_avgpool_s8"}, kernels
    return layers


def test_planned_scratch_is_what_cmsis_nn_asks_for_on_each_core(scratch_layers, tmp_path):
    qemu_tools()
    cmsis = locate_cmsis_nn(os.environ["CMSIS_NN_PATH"])
    probe = _probe(scratch_layers, cmsis)
    asked = {}
    for target in TARGETS:
        fw = build_firmware([probe], target, tmp_path / target)
        out = run_firmware(fw, {probe.name: np.zeros((1, 1), np.int8)})[probe.name]
        asked[target] = np.frombuffer(out.tobytes(), "<i4")
    wrong = []
    for i, layer in enumerate(scratch_layers):
        planned, kernel = layer.call.scratch_bytes, layer.call.kernel
        m0, m4, m55 = (int(asked[t][i]) for t in TARGETS)
        if kernel == "arm_convolve_s8":
            ok = planned == max(m4, m55) >= m0  # the same call on every core: the largest of them
        else:
            # avgpool: only the DSP build uses scratch; depthwise _opt runs on pure C and DSP builds only
            # (MVE builds call the scratch-free arm_depthwise_conv_s8)
            ok = planned == m4 >= m0 and (kernel != "arm_avgpool_s8" or planned >= m55)
        if not ok:
            wrong.append(f"{layer.ident} ({kernel}): planned {planned}, CMSIS-NN asks M0+ {m0}, M4 {m4}, M55 {m55}")
    assert not wrong, "\n".join(wrong[:10])
    # the probe saw different sizes per core, so it measured each build (not one pure-C answer)
    assert any(asked["m4"] != asked["m55"]) and any(asked["m0plus"] != asked["m4"])
