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

from tests.needs import cache_without_level_7, cmsis_archive, level_7_tree, missing, module, qemu_tools

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


def _offline(command: str, archive: Path) -> str:
    """`cmsis-nn fetch` as written downloads from GitHub; CI has no network but has the same pinned
    archive, which `--from` reads instead (the same checks, the same cache folder)."""
    if command.startswith("onnx2cmsis cmsis-nn fetch") and "--from" not in command:
        return f"{command} --from {archive}"
    return command


def test_readme_and_getting_started_commands_run_as_written(tmp_path, monkeypatch):
    module("keras", 'pip install -e ".[keras]"')
    from onnx2cmsis.cmsis_nn.fetch import cached_tree
    from onnx2cmsis.cmsis_nn.source import locate_cmsis_nn
    from onnx2cmsis.targets import host, qemu

    qemu_tools()
    # A cache of its own without any level-7 tree, as a new user has: the page must fetch CMSIS-NN
    # before anything builds with it (it once ran verify first, which failed as written), and the
    # tree it fetches must not leak into the other tests' machine. What the page's verify compiles
    # from that tree (CMSIS-NN for the host and the M4, keyed by the sources' hashes: the fetched
    # v7.0.0 is the suite's v7.0.0) is built here first and linked in with the pinned snapshot, so
    # the page's run costs no compile of a whole CMSIS-NN; the tree itself is only what the fetch brings.
    tree = locate_cmsis_nn(level_7_tree())
    host.cmsis_library(tree)
    qemu.cmsis_library(tree, "m4")
    cache = cache_without_level_7(tmp_path / "cache")
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    assert cached_tree("7") is None
    for tool in ("make", "arm-none-eabi-gcc"):
        if shutil.which(tool) is None:
            missing(tool, "apt-get install make gcc-arm-none-eabi")
    archive = cmsis_archive("CMSIS-NN-v7.0.0.tar.gz")
    readme = sh_blocks(ROOT / "README.md")[:2]  # the two set-up commands
    guide = sh_blocks(ROOT / "docs" / "getting-started.md")
    commands = [_offline(c, archive) for block in readme + guide for c in runnable(block)]
    fetch = next(i for i, c in enumerate(commands) if c.startswith("onnx2cmsis cmsis-nn fetch"))
    assert not any(c.startswith(("onnx2cmsis verify", "make ")) for c in commands[:fetch]), \
        "the page builds before it fetches CMSIS-NN"
    assert any(c.startswith("mkdir -p out && onnx2cmsis convert") for c in commands)
    assert sum(c.startswith("onnx2cmsis ") for c in commands) >= 5
    work = tmp_path / "work"
    shutil.copytree(ROOT / "examples", work / "examples", ignore=shutil.ignore_patterns("build", "__pycache__"))
    # as a new user runs them: no CMSIS_NN_PATH (the suite's tree), so convert emits for the default level
    env = {k: v for k, v in os.environ.items() if k not in ("CMSIS_NN_PATH", "ONNX2CMSIS_LEVEL7_CMSIS_NN")}
    env.update(PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", PYTHON=sys.executable)
    for command in commands:
        proc = subprocess.run(["bash", "-c", f"set -e; {command}"], cwd=work, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, f"{command}\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
        if command.startswith("make -C examples/firmware"):
            said = proc.stdout + proc.stderr  # semihosting prints on the host's stderr
            assert "class 2 (misalignment), expected 2" in said, said
    # a user who followed the page has v7.0.0 in the cache; the quick tests must still pass there (the
    # suite's snapshot is linked in, so nothing is downloaded again)
    assert cached_tree("7") is not None
    quick = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                            "tests/test_cmsis_levels.py", "-k", "default_json or default_is_level_7"],
                           cwd=ROOT, env={**env, "XDG_CACHE_HOME": str(tmp_path / "cache")},
                           capture_output=True, text=True, timeout=600)
    assert quick.returncode == 0 and "2 passed" in quick.stdout, quick.stdout[-3000:] + quick.stderr[-2000:]
    for out in ("out", "out16"):
        assert (work / out / "vibration_cnn.c").is_file() and (work / out / "vibration_cnn.md").is_file()
    assert "typedef int16_t vibration_cnn_input_t;" in (work / "out16" / "vibration_cnn.h").read_text()
