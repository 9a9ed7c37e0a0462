"""The whole test suite at every CMSIS-NN API level the tool emits for: what CI runs.

    python -m tests.run_levels [--archives DIR]

`convert` emits level 7 by default, so that is where the whole suite runs; the other trees get the
tests whose generated C or scratch sizes depend on the level (marker `level`):

| run | CMSIS-NN | level | tests |
|---|---|---|---|
| v7.0.0 | release v7.0.0 (what users have) | 7 | all, with the op sweeps and the QEMU runs |
| main | main 99f736a6 (fixes v7.0.0 defects) | 7 | `-m level`: conv, grouped conv, dense, scratch sizes, QEMU whole models |
| snapshot | the PyPI snapshot of January 2024 | 2024.01 | `-m "level or not slow or heavy"`: the level tests, the quick subset and the quick-kind tests too slow for it |

The level-7 trees come from source archives (DIR, default ../shared/cmsis-nn beside the checkout,
or $ONNX2CMSIS_CMSIS_ARCHIVES), checked against the SHA-256 pinned below and unpacked into a
temporary folder; CMSIS-NN is never copied into the repository. Without them the suite runs once,
at the snapshot's level, and says so; under CI=true that is a failure.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from onnx2cmsis.cmsis_nn.fetch import extract_tar
from tests.needs import ARCHIVES_VARIABLE, LEVEL_7_TREE_VARIABLE, in_ci

ROOT = Path(__file__).resolve().parents[1]

# archive -> (sha256, folder inside), as ../shared/cmsis-nn/README.md lists them
ARCHIVES = {
    "v7.0.0": ("CMSIS-NN-v7.0.0.tar.gz", "e26de6eddaae4e87bae43074bc31755e4f7b4bb7cd4260dadb8f4e6219086c74",
               "CMSIS-NN-v7.0.0"),
    "main": ("CMSIS-NN-main-99f736a6.tar.gz", "980b897f5e6e5ff9eef29a741c7732ba40b02a7355f3a3c2212986859838bad4",
             "CMSIS-NN-main-99f736a6"),
}
# Every core (pytest-xdist, the [test] extra); tests that share a module fixture stay on one worker
# (tests/conftest.py groups them), so each sweep or zoo is still built once.
PARALLEL = ["-n", "auto", "--dist", "loadgroup"]
SUMMARY_RE = re.compile(r"^=+ (.*\d+ (?:passed|failed|error|errors|skipped|deselected).*) in ([\d.]+)s", re.M)


@dataclass
class Run:
    label: str
    tree: Path
    selection: str  # a pytest -m expression, "" for everything
    status: int = -1
    counts: str = ""
    seconds: float = 0.0


def unpack(archives: Path, key: str, into: Path) -> Path:
    name, sha256, folder = ARCHIVES[key]
    path = archives / name
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != sha256:
        raise SystemExit(f"{path}: SHA-256 {digest} is not the pinned {sha256}")
    extract_tar(path, into)
    return into / folder


def run_pytest(run: Run, level_7: Path | None, archives: Path, extra: list[str]) -> None:
    env = {**os.environ, "CMSIS_NN_PATH": str(run.tree), ARCHIVES_VARIABLE: str(archives)}
    if level_7 is not None:
        env[LEVEL_7_TREE_VARIABLE] = str(level_7)
    cmd = [sys.executable, "-m", "pytest", *(["-m", run.selection] if run.selection else []), *PARALLEL, *extra]
    print(f"\n##### {run.label}: CMSIS_NN_PATH={run.tree} python -m pytest {' '.join(cmd[3:])}", flush=True)
    start = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
    run.status = proc.wait()
    run.seconds = time.monotonic() - start
    found = SUMMARY_RE.findall("".join(lines[-50:]))
    run.counts = found[-1][0] if found else "no pytest summary"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = os.environ.get(ARCHIVES_VARIABLE) or str(ROOT.parent / "shared" / "cmsis-nn")
    parser.add_argument("--archives", default=default, help="folder with the CMSIS-NN source archives")
    parser.add_argument("pytest_args", nargs="*", help="passed to every pytest run (after --)")
    args = parser.parse_args(argv)
    archives = Path(args.archives)

    from onnx2cmsis.cmsis_nn.fetch import fetch_snapshot

    snapshot = fetch_snapshot()
    have_archives = all((archives / name).is_file() for name, _, _ in ARCHIVES.values())
    with tempfile.TemporaryDirectory(prefix="onnx2cmsis-cmsis-nn-") as tmp:
        if have_archives:
            v7, main_tree = unpack(archives, "v7.0.0", Path(tmp)), unpack(archives, "main", Path(tmp))
            runs = [Run("v7.0.0 (level 7)", v7, ""), Run("main 99f736a6 (level 7)", main_tree, "level"),
                    Run("snapshot (level 2024.01)", snapshot, "level or not slow or heavy")]
        else:
            message = (f"no CMSIS-NN archives in {archives}: the level-7 runs (convert's default output) cannot "
                       "run; pass --archives DIR")
            if in_ci():
                print(f"error: CI=true and {message}", file=sys.stderr)
                return 1
            print(f"warning: {message}; running the whole suite at the snapshot's level 2024.01 only",
                  file=sys.stderr)
            v7 = None
            runs = [Run("snapshot (level 2024.01)", snapshot, "")]
        for run in runs:
            run_pytest(run, v7, archives, args.pytest_args)

    print("\n##### CMSIS-NN API levels")
    width = max(len(r.label) for r in runs)
    for r in runs:
        print(f"{r.label:<{width}}  {r.selection or 'all tests':<20}  exit {r.status}  {r.seconds:7.0f} s  {r.counts}")
    totals = {"passed": 0, "failed": 0, "skipped": 0, "errors": 0}
    for r in runs:
        for n, what in re.findall(r"(\d+) (passed|failed|skipped|errors?)", r.counts):
            totals["errors" if what.startswith("error") else what] += int(n)
    print(f"{len(runs)} runs in {sum(r.seconds for r in runs):.0f} s; {totals['errors']} errors")
    print(f"total: {totals['passed']} passed, {totals['failed'] + totals['errors']} failed, {totals['skipped']} skipped")
    return 0 if all(r.status == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
