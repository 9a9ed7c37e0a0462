"""A zoo of small random one-op models: a few of every sweep family, so every template and kernel
branch is in it (both depthwise kernels, an index-table gather). Shared by the cross-compile and
QEMU tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnx2cmsis.api import convert
from tests.onnx_builders import BUILDERS


def _has_gather(convs: list) -> bool:
    return any(layer["kernel"] == "own loop (index table)" for c in convs for layer in c.report["layers"])


def make_op_zoo(folder: Path, per_family: int = 6, seed: int = 77, prefix: str = "", **options) -> list:
    """`options`: convert() settings for every case (e.g. precision="int16"); `prefix` keeps names unique."""
    rng, convs = np.random.default_rng(seed), []
    for family in sorted(BUILDERS):
        made, i = 0, 0
        while made < per_family or (family == "layout" and not _has_gather(convs)):
            case = BUILDERS[family](rng, i)
            i += 1
            try:
                convs.append(convert(case.save(folder), case.calibration, name=prefix + case.name,
                                     **{**case.options, **options}))
                made += 1
            except Exception as exc:  # the sweeps' deliberate refusals (windows over padding only)
                assert "covers only padding" in str(exc), exc
    return convs
