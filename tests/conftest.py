"""Suite-wide set-up: which CMSIS-NN tree every test converts for and builds with.

The suite runs at the API level of $CMSIS_NN_PATH when it is set (e.g. a CMSIS-NN v7.0.0 or main
checkout), else at the level of the pinned PyPI snapshot, which it fetches. `python -m tests.run_levels`
runs it against every tree (what CI does). Setting the variable for
the whole session keeps `convert` (which would otherwise emit for level 7 without a tree) and every
build on one tree, in-process and in the CLI subprocesses alike.
"""

from __future__ import annotations

import os
from pathlib import Path


def pytest_configure(config) -> None:
    if not os.environ.get("CMSIS_NN_PATH"):
        from onnx2cmsis.cmsis_nn.fetch import fetch_snapshot

        os.environ["CMSIS_NN_PATH"] = str(fetch_snapshot())


def pytest_report_header(config) -> str:
    from onnx2cmsis.cmsis_nn.source import detect_api

    root = Path(os.environ["CMSIS_NN_PATH"])
    level_7 = os.environ.get("ONNX2CMSIS_LEVEL7_CMSIS_NN")
    return (f"CMSIS-NN: {root} (API level {detect_api(root).level})"
            + (f"; level-7 tests also use {level_7}" if level_7 else ""))
