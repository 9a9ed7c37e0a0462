"""The set-up commands of README.md and every command of docs/getting-started.md, run as written (read
from the files, so they cannot drift), in a scratch copy of the examples. Installing is the test
environment's job: `pip install` lines are skipped, and README's test command is this suite itself."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.needs import missing, module, qemu_tools

pytestmark = [pytest.mark.slow, pytest.mark.qemu]
ROOT = Path(__file__).resolve().parents[1]
SKIPPED = ("pip install", "python -m tests.run_levels", "apt-get install")


def sh_blocks(path: Path) -> list[str]:
    return re.findall(r"```sh\n(.*?)```", path.read_text(), re.S)


def runnable(block: str) -> list[str]:
    """The block's commands, each `&&`-chain without its installing steps."""
    commands = []
    for line in block.strip().splitlines():
        steps = [s.strip() for s in line.split(" && ") if not s.strip().startswith(SKIPPED)]
        if steps:
            commands.append(" && ".join(steps))
    return commands


def _level_7_cached() -> None:
    """`cmsis-nn fetch --level 7` as written needs GitHub; CI has the source archive instead, so the
    (test's own) cache gets the same pinned tree from it first: fetch then finds it, as it would on a
    user's machine after the first time."""
    from onnx2cmsis.cmsis_nn.fetch import fetch_cmsis_nn

    archives = Path(os.environ.get("ONNX2CMSIS_CMSIS_ARCHIVES", ROOT.parent / "shared" / "cmsis-nn"))
    archive = archives / "CMSIS-NN-v7.0.0.tar.gz"
    if not archive.is_file():
        missing("the CMSIS-NN v7.0.0 source archive", f"put it at {archive} or set ONNX2CMSIS_CMSIS_ARCHIVES")
    fetch_cmsis_nn("7", str(archive))


def test_readme_and_getting_started_commands_run_as_written(tmp_path, monkeypatch):
    module("keras", 'pip install -e ".[keras]"')
    # a cache of its own: the trees a new user fetches must not leak into the other tests' machine
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    qemu_tools()
    for tool in ("make", "arm-none-eabi-gcc"):
        if shutil.which(tool) is None:
            missing(tool, "apt-get install make gcc-arm-none-eabi")
    _level_7_cached()
    readme = sh_blocks(ROOT / "README.md")[:2]  # the two set-up commands
    guide = sh_blocks(ROOT / "docs" / "getting-started.md")
    commands = [c for block in readme + guide for c in runnable(block)]
    assert any(c.startswith("mkdir -p out && onnx2cmsis convert") for c in commands)
    assert sum(c.startswith("onnx2cmsis ") for c in commands) >= 5
    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("build", "__pycache__"))
    # as a new user runs them: no CMSIS_NN_PATH (the suite's tree), so convert emits for the default level
    env = {k: v for k, v in os.environ.items() if k != "CMSIS_NN_PATH"}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable)
    for command in commands:
        proc = subprocess.run(["bash", "-c", f"set -e; {command}"], cwd=work, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        if command.startswith("make -C examples/firmware"):
            said = proc.stdout + proc.stderr  # semihosting prints on the host's stderr
            assert "class 2 (misalignment), expected 2" in said, said
    for out in ("out", "out16"):
        assert (work / out / "vibration_cnn.c").is_file() and (work / out / "vibration_cnn.md").is_file()
    assert "typedef int16_t vibration_cnn_input_t;" in (work / "out16" / "vibration_cnn.h").read_text()
