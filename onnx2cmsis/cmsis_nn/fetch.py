"""Getting a CMSIS-NN tree onto this machine: the one place that uses the network, and only when asked
(`onnx2cmsis cmsis-nn fetch`); convert and verify never download.

- Level 2024.01: the PyPI wheel `aidge-export-arm-cortexm==0.2.1`, which carries CMSIS-NN's sources of
  January 2024, downloaded by pip with its pinned SHA-256.
- Level 7: CMSIS-NN v7.0.0 (or main 99f736a6) as a source archive, by default from Arm's GitHub
  repository, or from a local archive or URL given by the caller. GitHub's archives are made on
  demand, so their bytes are not stable: the unpacked Include/ and Source/ are checked against a
  tree hash pinned here instead (the SHA-256 of every file's SHA-256 and path).

Trees are unpacked into the user cache (see `cache_dir`), never into the repository.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from onnx2cmsis.errors import OptionError, ToolchainError
from onnx2cmsis.ir.target import API_LEVELS, LEVEL_7, SNAPSHOT_API

SNAPSHOT_WHEEL = "aidge_export_arm_cortexm-0.2.1-py3-none-any.whl"
SNAPSHOT_REQUIREMENT = "aidge-export-arm-cortexm==0.2.1"
SNAPSHOT_SHA256 = "0ea6a694b8c1397bf52158c27854bbd4ddfca433ed4cf06a4c92843b480acbf0"
SNAPSHOT_FOLDER = "aidge_export_arm_cortexm/_CMSIS-NN/CMSIS-NN/"


@dataclass(frozen=True)
class PinnedTree:
    name: str
    tree_sha256: str  # tree_hash() of its Include/ and Source/
    url: str


# Checked against ../shared/cmsis-nn's archives and the v7.0.0 tag's own files (the same tree hash).
LEVEL_7_TREES = (
    PinnedTree("v7.0.0", "ea1615c549c9cd252c0546f31671e6a14a0f70a6d707515f3514bf12e1e9c960",
               "https://github.com/ARM-software/CMSIS-NN/archive/refs/tags/v7.0.0.tar.gz"),
    PinnedTree("main-99f736a6", "400e80096795c640f1ca2d61633dd83332f5c95ea1bb3fd05154bfe9cb5e3eaf",
               "https://github.com/ARM-software/CMSIS-NN/archive/99f736a63036613032f9b70de36b493bcd7802d4.tar.gz"),
)


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnx2cmsis"


def tree_hash(root: Path) -> str:
    """SHA-256 over `<file sha256>  <path>` lines of every file in Include/ and Source/, sorted."""
    h = hashlib.sha256()
    files = sorted(p for d in ("Include", "Source") for p in (root / d).rglob("*") if p.is_file())
    for p in files:
        h.update(f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(root).as_posix()}\n".encode())
    return h.hexdigest()


def _snapshot_dir() -> Path:
    return cache_dir() / f"cmsis-nn-{SNAPSHOT_API.level}-{SNAPSHOT_SHA256[:12]}"


def _level_7_dir(pin: PinnedTree) -> Path:
    return cache_dir() / f"cmsis-nn-7-{pin.name}-{pin.tree_sha256[:12]}"


def is_tree(path: Path) -> bool:
    return (path / "Include" / "arm_nnfunctions.h").is_file()


def cached_tree(level: str) -> Path | None:
    """A tree of this API level already fetched into the cache (v7.0.0 before main), else None."""
    candidates = [_snapshot_dir()] if level == SNAPSHOT_API.level else [_level_7_dir(p) for p in LEVEL_7_TREES]
    return next((c for c in candidates if is_tree(c)), None)


def fetch_cmsis_nn(level: str = LEVEL_7.level, source: str | None = None) -> Path:
    """The cached tree of `level`, fetched first if needed. For level 7, `source` is a .tar.gz (path or
    URL) of CMSIS-NN v7.0.0 or main 99f736a6 instead of GitHub's."""
    if level not in API_LEVELS:
        raise OptionError(f"{{opt:cmsis_api}} {level!r} is not one of {', '.join(API_LEVELS)}")
    if level == SNAPSHOT_API.level:
        if source is not None:
            raise ToolchainError("the 2024.01 snapshot comes from PyPI only; a source archive is for level 7")
        return fetch_snapshot()
    if source is None:
        cached = cached_tree(level)
        if cached is not None:
            return cached
    return _fetch_level_7(source or LEVEL_7_TREES[0].url)


def _fetch_level_7(source: str) -> Path:
    cache_dir().mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
        archive = Path(tmp) / "cmsis-nn.tar.gz"
        try:
            if "://" in source:
                with urllib.request.urlopen(source, timeout=120) as response, open(archive, "wb") as out:
                    shutil.copyfileobj(response, out)
            else:
                shutil.copyfile(source, archive)
        except (OSError, ValueError) as exc:
            # offline (a firewall, no DNS) is the usual cause: say how to go on without the network
            hint = ("; without network access, download the archive elsewhere and give it with "
                    "`{opt:source=FILE.tar.gz}`" if "://" in source else "")
            raise ToolchainError(f"cannot read CMSIS-NN from {source} ({exc}){hint}") from exc
        staging = Path(tmp) / "unpacked"
        try:
            extract_tar(archive, staging, keep=_wanted)
        except (tarfile.TarError, OSError) as exc:
            raise ToolchainError(f"{source} is not a readable .tar.gz ({exc})") from exc
        roots = [p.parent.parent for p in staging.glob("*/Include/arm_nnfunctions.h")]
        if len(roots) != 1:
            raise ToolchainError(f"{source} does not hold one CMSIS-NN tree (a folder with Include/ and Source/)")
        digest = tree_hash(roots[0])
        pin = next((p for p in LEVEL_7_TREES if p.tree_sha256 == digest), None)
        if pin is None:
            raise ToolchainError(f"the CMSIS-NN in {source} is not one this tool pins (tree SHA-256 {digest[:16]}..., "
                                 f"expected {' or '.join(p.name for p in LEVEL_7_TREES)})")
        target = _level_7_dir(pin)
        if not is_tree(target):
            shutil.rmtree(target, ignore_errors=True)
            roots[0].rename(target)
    return target


def extract_tar(archive: Path, into: Path, keep: Callable[[str], bool] = lambda name: True) -> None:
    """Unpack the members whose names `keep` accepts, never outside `into` (tarfile's data filter;
    before Python 3.11.4, regular files and folders without absolute or parent paths)."""
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if keep(m.name)]
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, members=members, filter="data")
        else:
            tar.extractall(into, members=[m for m in members if (m.isfile() or m.isdir())
                                          and not m.name.startswith("/") and ".." not in m.name])


def _wanted(name: str) -> bool:
    parts = name.split("/")
    return len(parts) >= 2 and parts[1] in ("Include", "Source", "LICENSE")


def fetch_snapshot() -> Path:
    target = _snapshot_dir()
    if is_tree(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        wheel = Path(tmp) / SNAPSHOT_WHEEL
        req = Path(tmp) / "req.txt"
        req.write_text(f"{SNAPSHOT_REQUIREMENT} --hash=sha256:{SNAPSHOT_SHA256}\n")
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
               "--require-hashes", "-r", str(req), "-d", tmp]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0 or not wheel.is_file():
            raise ToolchainError(
                "cannot download the CMSIS-NN snapshot from PyPI; give {opt:cmsis_nn=PATH} or set CMSIS_NN_PATH "
                f"({(proc.stderr.strip().splitlines() or ['no output'])[-1][:160]})"
            )
        if hashlib.sha256(wheel.read_bytes()).hexdigest() != SNAPSHOT_SHA256:
            raise ToolchainError("the downloaded CMSIS-NN snapshot does not match its pinned SHA-256")
        staging = Path(tmp) / "tree"
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if info.filename.startswith(SNAPSHOT_FOLDER) and not info.is_dir():
                    rel = info.filename[len(SNAPSHOT_FOLDER):]
                    if rel.startswith(("Include/", "Source/")):
                        dest = staging / rel
                        dest.parent.mkdir(parents=True, exist_ok=True)
                        dest.write_bytes(zf.read(info))
        try:
            staging.rename(target)
        except OSError:  # another process won the race
            if not is_tree(target):
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
    return target
