"""What the suite needs from the machine, and what happens when it is missing.

Outside CI a missing tool skips the test with a message that says how to get it. Under CI=true it
fails the test: CI must never pass by checking less than README claims (the oracle, the cross
compiler, QEMU, a CMSIS-NN tree of API level 7).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

LEVEL_7_TREE_VARIABLE = "ONNX2CMSIS_LEVEL7_CMSIS_NN"
ARCHIVES_VARIABLE = "ONNX2CMSIS_CMSIS_ARCHIVES"  # the folder of CMSIS-NN source archives (../shared/cmsis-nn)
QEMU_APT = "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


def missing(what: str, how: str) -> NoReturn:
    """Skip, or under CI=true fail, naming what is missing and how to get it."""
    message = f"{what} is missing ({how})"
    if in_ci():
        pytest.fail(f"CI=true and {message}: CI must run this test, not skip it", pytrace=False)
    pytest.skip(message, allow_module_level=True)


def oracle_runtime() -> ModuleType:
    """tflite-micro's Python runtime, the independent oracle."""
    try:
        from tflite_micro.python.tflite_micro import runtime
    except ImportError:
        missing("the tflite-micro oracle", 'pip install -e ".[verify]"')
    return runtime


def module(name: str, extra: str) -> ModuleType:
    """An optional package README's test command installs (keras, torch, the example plugin)."""
    import importlib

    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python package {name}", extra)


def cross_compiler() -> str:
    cc = shutil.which("arm-none-eabi-gcc")
    if cc is None:
        missing("arm-none-eabi-gcc", "apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi")
    return cc


def qemu_tools() -> None:
    from onnx2cmsis.targets.qemu import missing_tools

    if missing_tools():
        missing(" and ".join(missing_tools()), QEMU_APT)


def level_7_tree() -> Path:
    """A CMSIS-NN tree of API level 7: $CMSIS_NN_PATH when the suite runs at level 7, else
    $ONNX2CMSIS_LEVEL7_CMSIS_NN (which `python -m tests.run_levels` sets from ../shared/cmsis-nn)."""
    from onnx2cmsis.ir.target import LEVEL_7
    from onnx2cmsis.cmsis_nn.source import detect_api

    for variable in ("CMSIS_NN_PATH", LEVEL_7_TREE_VARIABLE):
        root = os.environ.get(variable)
        if root and detect_api(Path(root)) == LEVEL_7:
            return Path(root)
    from onnx2cmsis.cmsis_nn.fetch import cached_tree

    fetched = cached_tree(LEVEL_7.level)  # `onnx2cmsis cmsis-nn fetch` put one in the cache: use it
    if fetched is not None:
        return fetched
    missing("a CMSIS-NN tree of API level 7", f"set {LEVEL_7_TREE_VARIABLE} or CMSIS_NN_PATH to a CMSIS-NN v7.0.0+ "
            "checkout, or run python -m tests.run_levels, which unpacks ../shared/cmsis-nn")


def cmsis_archive(name: str) -> Path:
    """A CMSIS-NN source archive (e.g. CMSIS-NN-v7.0.0.tar.gz) from $ONNX2CMSIS_CMSIS_ARCHIVES, else
    ../shared/cmsis-nn beside the checkout."""
    folder = os.environ.get(ARCHIVES_VARIABLE) or str(Path(__file__).resolve().parents[2] / "shared" / "cmsis-nn")
    path = Path(folder) / name
    if not path.is_file():
        missing(f"the CMSIS-NN archive {path}", f"set {ARCHIVES_VARIABLE} to the folder holding it")
    return path


def build_tool(name: str) -> str:
    """make or cmake, which the firmware example's builds need."""
    path = shutil.which(name)
    if path is None:
        missing(name, f"apt-get install {name}")
    return path


def cache_without_level_7(folder: Path) -> Path:
    """An XDG_CACHE_HOME for tests that must see no fetched level-7 tree, whatever the user's cache
    holds (getting-started fetches v7.0.0 into it): the pinned snapshot and the compiled libraries
    (keyed by their sources' hashes) are linked from the real cache, the level-7 trees are not."""
    from onnx2cmsis.cmsis_nn.fetch import cache_dir, fetch_snapshot

    fetch_snapshot()  # into the real cache first (the suite's tree; downloaded once)
    real = cache_dir()
    (folder / "onnx2cmsis").mkdir(parents=True, exist_ok=True)
    for entry in real.iterdir():
        if not entry.name.startswith("cmsis-nn-7-") and not entry.name.startswith("tmp"):
            (folder / "onnx2cmsis" / entry.name).symlink_to(entry)
    return folder
