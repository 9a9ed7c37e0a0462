"""Find a CMSIS-NN source tree and its API level: --cmsis-nn PATH, $CMSIS_NN_PATH, or the pinned
PyPI snapshot.

A tree's level is detected capability by capability from its own text (ir/target.py lists them):
the snapshot is level "2024.01", v7.0.0 and later (main) level "7"; v6.0.0, which has some of level
7's capabilities and not others, is refused by name.

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

from onnx2cmsis.ir.target import API_LEVELS, DEFAULT_API, SNAPSHOT_API, CmsisApi, level_with
from onnx2cmsis.errors import ToolchainError

SNAPSHOT_WHEEL = "aidge_export_arm_cortexm-0.2.1-py3-none-any.whl"
SNAPSHOT_REQUIREMENT = "aidge-export-arm-cortexm==0.2.1"
SNAPSHOT_SHA256 = "0ea6a694b8c1397bf52158c27854bbd4ddfca433ed4cf06a4c92843b480acbf0"
SNAPSHOT_FOLDER = "aidge_export_arm_cortexm/_CMSIS-NN/CMSIS-NN/"
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
    api: CmsisApi

    @property
    def include(self) -> Path:
        return self.buildable_root() / "Include"

    def buildable_root(self) -> Path:
        if self.root is None:
            raise ToolchainError(
                f"building needs a CMSIS-NN tree of API level {self.api.level}: give {{opt:cmsis_nn=PATH}} (a CMSIS-NN "
                f"v7.0.0+ checkout) or choose {{opt:cmsis_api={SNAPSHOT_API.level}}}, which this tool can fetch"
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


def check_api_level(api: str | None) -> CmsisApi | None:
    if api is None:
        return None
    if api not in API_LEVELS:
        raise ToolchainError(f"{{opt:cmsis_api}} {api!r} is not one of {', '.join(API_LEVELS)}")
    return API_LEVELS[api]


def locate_cmsis_nn(path: str | os.PathLike[str] | None = None, api: str | None = None,
                    default_api: str | None = DEFAULT_API.level) -> CmsisTree:
    """The tree the user named (else $CMSIS_NN_PATH) at its detected level, refusing a different
    `api`. Without a tree: `api` (else `default_api`); the snapshot is fetched for its own level, and
    any other level gets a tree-less CmsisTree. default_api=None means "the snapshot" (for building)."""
    wanted = check_api_level(api)
    chosen = path or os.environ.get("CMSIS_NN_PATH")
    if chosen:
        root = Path(chosen).expanduser().resolve()
        if not (root / "Include" / "arm_nnfunctions.h").is_file():
            raise ToolchainError(f"{root} is not a CMSIS-NN tree (no Include/arm_nnfunctions.h)")
        level = detect_api(root)
        if wanted is not None and wanted != level:
            raise ToolchainError(
                f"{{opt:cmsis_api={wanted.level}}} does not match the CMSIS-NN tree at {root}, which is API level "
                f"{level.level} ({level.versions})"
            )
        return CmsisTree(root, level)
    level = wanted or check_api_level(default_api) or SNAPSHOT_API
    if level == SNAPSHOT_API:
        return CmsisTree(fetch_snapshot(), SNAPSHOT_API)
    return CmsisTree(None, level)


_CONV_PROTO_RE = re.compile(r"/\*\*((?:(?!\*/).)*)\*/\s*arm_cmsis_nn_status\s+arm_convolve_s8\s*\(([^;]*)\);", re.S)
_VECTOR_SUM_RE = re.compile(r"arm_cmsis_nn_status\s+arm_vector_sum_s8\s*\(([^;]*)\);")
_MVE_LANES_RE = re.compile(r"arm_convolve_s8_get_buffer_size_mve\s*\([^)]*\)\s*\{[^}]*?"
                           r"col_length\s*=\s*\(col_length\s*\+\s*(\d+)\)\s*/\s*(\d+)", re.S)


def detect_capabilities(root: Path) -> dict[str, bool | int]:
    """Each capability of ir.target.CmsisApi, read from the tree itself: the arm_convolve_s8 and
    arm_vector_sum_s8 prototypes and documentation in arm_nnfunctions.h, and the MVE im2col row
    padding in arm_convolve_s8_get_buffer_size_mve."""
    header = (root / "Include" / "arm_nnfunctions.h").read_text(errors="replace")
    conv = _CONV_PROTO_RE.search(header)
    vector_sum = _VECTOR_SUM_RE.search(header)
    sizes = root / "Source" / "ConvolutionFunctions" / "arm_convolve_get_buffer_sizes_s8.c"
    lanes = _MVE_LANES_RE.search(sizes.read_text(errors="replace")) if sizes.is_file() else None
    if conv is None or vector_sum is None or lanes is None or lanes.group(1) != str(int(lanes.group(2)) - 1):
        missing = [what for what, found in (("the arm_convolve_s8 prototype", conv),
                                            ("the arm_vector_sum_s8 prototype", vector_sum),
                                            ("arm_convolve_s8_get_buffer_size_mve", lanes)) if found is None]
        raise ToolchainError(f"{root} is not a CMSIS-NN tree this tool knows: cannot read "
                             f"{', '.join(missing) or 'the MVE im2col row padding'}")
    return {
        "conv_upscale_dims": "upscale_dims" in conv.group(2),
        "conv_native_groups": "grouped convolution" in conv.group(1),
        "mve_im2col_lanes": int(lanes.group(2)),
        "fc_kernel_sums_with_bias": "lhs_offset" in vector_sum.group(1),
    }


def detect_api(root: Path) -> CmsisApi:
    """The API level whose capabilities the tree has, or a one-line refusal that names them."""
    found = detect_capabilities(root)
    support = (root / "Include" / "arm_nnsupportfunctions.h")
    older = not support.is_file() or "#define ARM_NNSUPPORTFUNCTIONS_H" not in support.read_text(errors="replace")
    level = None if older else level_with(found)
    if level is not None:
        return level
    if older:
        what = "older than the January 2024 snapshot (v5.0.0 or before)"
    elif found["conv_native_groups"] and not found["conv_upscale_dims"]:
        what = "CMSIS-NN v6.0.0 (grouped convs and the new kernel sums, but no upscale_dims in arm_convolve_s8)"
    else:
        what = "of no known API level (" + ", ".join(f"{k}={v}" for k, v in found.items()) + ")"
    raise ToolchainError(f"the CMSIS-NN tree at {root} is {what}: use CMSIS-NN v7.0.0 or later (API level 7) or "
                         f"the PyPI snapshot ({{opt:cmsis_api={SNAPSHOT_API.level}}})")


def fetch_snapshot() -> Path:
    target = cache_dir() / f"cmsis-nn-{SNAPSHOT_API.level}-{SNAPSHOT_SHA256[:12]}"
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
            if not (target / "Include" / "arm_nnfunctions.h").is_file():
                shutil.rmtree(target, ignore_errors=True)
                staging.rename(target)
    return target
