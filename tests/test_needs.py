"""Under CI=true a missing oracle, cross compiler, QEMU or level-7 tree fails the test that needs it;
elsewhere it skips with a message that says how to get it (tests/needs.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Each case hides one thing from a child pytest run, then asks for it the way the suite does.
CASES = {
    "oracle": ('sys.modules["tflite_micro"] = None', "oracle_runtime()", "the tflite-micro oracle is missing"),
    "qemu": ('os.environ["PATH"] = "/nonexistent"', "qemu_tools()", "arm-none-eabi-gcc and qemu-system-arm is missing"),
    "cross compiler": ('os.environ["PATH"] = "/nonexistent"', "cross_compiler()", "arm-none-eabi-gcc is missing"),
    "level 7 tree": ('os.environ.pop("CMSIS_NN_PATH", None); os.environ.pop("ONNX2CMSIS_LEVEL7_CMSIS_NN", None)',
                     "level_7_tree()", "a CMSIS-NN tree of API level 7 is missing"),
}


def _child_run(tmp_path: Path, hide: str, ask: str, ci: str | None) -> subprocess.CompletedProcess:
    test = tmp_path / "test_child.py"
    test.write_text(f"import os, sys\n{hide}\nfrom tests.needs import *\n\n\ndef test_it():\n    {ask}\n")
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = str(ROOT)
    if ci is not None:
        env["CI"] = ci
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", str(test)],
                          cwd=tmp_path, env=env, capture_output=True, text=True)


@pytest.mark.parametrize("case", sorted(CASES))
def test_missing_tool_fails_under_ci_and_skips_elsewhere(case, tmp_path):
    hide, ask, message = CASES[case]
    failed = _child_run(tmp_path, hide, ask, "true")
    assert failed.returncode == 1 and "1 failed" in failed.stdout, failed.stdout
    assert f"CI=true and {message}" in failed.stdout, failed.stdout
    skipped = _child_run(tmp_path, hide, ask, None)
    assert skipped.returncode == 0 and "1 skipped" in skipped.stdout and message in skipped.stdout, skipped.stdout
