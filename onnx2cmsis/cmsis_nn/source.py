"""Find a CMSIS-NN source tree and its API level: --cmsis-nn PATH, $CMSIS_NN_PATH, or the pinned
PyPI snapshot.

CMSIS-NN has no version macro, and the functions we call changed between the snapshot (level
"2024.01") and v6.0.0+ (level "7": v7.0.0, v8.0.0, main), so the generator is told, or detects, which
level to emit.

CMSIS-NN is never copied into this repository. The snapshot is a pure-Python wheel on PyPI that
carries CMSIS-NN's sources (January 2024, between v5.0.0 and v6.0.0); it is downloaded once, checked
against its SHA-256 and unpacked into the user cache.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from onnx2cmsis.errors import ToolchainError

SNAPSHOT_WHEEL = "aidge_export_arm_cortexm-0.2.1-py3-none-any.whl"
SNAPSHOT_REQUIREMENT = "aidge-export-arm-cortexm==0.2.1"
SNAPSHOT_SHA256 = "0ea6a694b8c1397bf52158c27854bbd4ddfca433ed4cf06a4c92843b480acbf0"
SNAPSHOT_FOLDER = "aidge_export_arm_cortexm/_CMSIS-NN/CMSIS-NN/"
SNAPSHOT_API = "2024.01"
API_LEVELS = (SNAPSHOT_API, "7")
DEFAULT_API = "7"  # what users download from GitHub today

_DEF_RE = re.compile(r"^[A-Za-z_][\w \t\*]*?\b(arm_\w+)\s*\([^;{]*?\)\s*\{", re.M | re.S)
_CALL_RE = re.compile(r"\b(arm_\w+)\s*\(")


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "onnx2cmsis"


@dataclass(frozen=True)
class CmsisTree:
    """A CMSIS-NN tree and its API level. root is None when code is generated for a level with no
    tree at hand (the default level 7 without --cmsis-nn): enough to emit C, not to build or to list
    the source files."""

    root: Path | None  # holds Include/ and Source/
    api: str

    @property
    def include(self) -> Path:
        return self.buildable_root() / "Include"

    def buildable_root(self) -> Path:
        if self.root is None:
            raise ToolchainError(
                f"building needs a CMSIS-NN tree of API level {self.api}: pass --cmsis-nn PATH (a CMSIS-NN v7.0.0+ "
                f"checkout) or choose --cmsis-nn-api {SNAPSHOT_API}, which this tool can fetch"
            )
        return self.root

    @cached_property
    def _index(self) -> tuple[dict[str, str], dict[str, set[str]]]:
        """function -> defining source file, and source file -> functions it calls."""
        defines: dict[str, str] = {}
        calls: dict[str, set[str]] = {}
        root = self.buildable_root()
        for path in sorted((root / "Source").rglob("*.c")):
            rel = path.relative_to(root).as_posix()
            text = path.read_text(errors="replace")
            for name in _DEF_RE.findall(text):
                defines.setdefault(name, rel)
            calls[rel] = set(_CALL_RE.findall(text))
        return defines, calls

    def sources_for(self, functions: list[str]) -> list[str]:
        """The source files (relative to root) that define `functions` and everything they call."""
        defines, calls = self._index
        todo = [f for f in functions]
        files: set[str] = set()
        while todo:
            fn = todo.pop()
            src = defines.get(fn)
            if src is None or src in files:
                continue
            files.add(src)
            todo.extend(calls[src])
        missing = [f for f in functions if f not in defines]
        if missing:
            raise ToolchainError(f"CMSIS-NN at {self.root} does not define {', '.join(sorted(missing))}")
        return sorted(files)


def check_api_level(api: str | None) -> None:
    if api is not None and api not in API_LEVELS:
        raise ToolchainError(f"--cmsis-nn-api {api!r} is not one of {', '.join(API_LEVELS)}")


def locate_cmsis_nn(path: str | os.PathLike[str] | None = None, api: str | None = None,
                    default_api: str | None = DEFAULT_API) -> CmsisTree:
    """The tree the user named (else $CMSIS_NN_PATH) at its detected level, refusing a different
    `api`. Without a tree: `api` (else `default_api`); the snapshot is fetched for its own level, and
    any other level gets a tree-less CmsisTree. default_api=None means "the snapshot" (for building)."""
    check_api_level(api)
    chosen = path or os.environ.get("CMSIS_NN_PATH")
    if chosen:
        root = Path(chosen).expanduser().resolve()
        if not (root / "Include" / "arm_nnfunctions.h").is_file():
            raise ToolchainError(f"{root} is not a CMSIS-NN tree (no Include/arm_nnfunctions.h)")
        level = detect_api(root)
        if api is not None and api != level:
            raise ToolchainError(
                f"--cmsis-nn-api {api} does not match the CMSIS-NN tree at {root}, which is API level {level} "
                "(detected from the arm_convolve_s8 prototype)"
            )
        return CmsisTree(root, level)
    level = api or default_api or SNAPSHOT_API
    if level == SNAPSHOT_API:
        return CmsisTree(fetch_snapshot(), SNAPSHOT_API)
    return CmsisTree(None, level)


def detect_api(root: Path) -> str:
    """'7' when arm_convolve_s8 takes upscale_dims (v6.0.0 and later), else the snapshot's level."""
    header = (root / "Include" / "arm_nnfunctions.h").read_text(errors="replace")
    m = re.search(r"arm_cmsis_nn_status\s+arm_convolve_s8\s*\(([^;]*)\);", header)
    return "7" if m and "upscale_dims" in m.group(1) else SNAPSHOT_API


def fetch_snapshot() -> Path:
    target = cache_dir() / f"cmsis-nn-{SNAPSHOT_API}-{SNAPSHOT_SHA256[:12]}"
    if (target / "Include" / "arm_nnfunctions.h").is_file():
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
                "cannot download the CMSIS-NN snapshot from PyPI; pass --cmsis-nn PATH or set CMSIS_NN_PATH "
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
            if not (target / "Include" / "arm_nnfunctions.h").is_file():
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
    return target
