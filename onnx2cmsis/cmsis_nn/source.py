"""Find a CMSIS-NN source tree and its API level: --cmsis-nn PATH, $CMSIS_NN_PATH, or a tree fetched
earlier into the cache (cmsis_nn/fetch.py). Never downloads: without a tree, the C is still emitted
and the source files it needs are listed from the index shipped for its level.

A tree's level is detected capability by capability from its own text (ir/target.py lists them):
the snapshot is level "2024.01", v7.0.0 and later (main) level "7"; v6.0.0, which has some of level
7's capabilities and not others, is refused by name.
"""

from __future__ import annotations

import functools

import json
import os
import re
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

from onnx2cmsis.cmsis_nn.fetch import cached_tree, is_tree
from onnx2cmsis.errors import OptionError, ToolchainError
from onnx2cmsis.ir.target import API_LEVELS, DEFAULT_API, LEVEL_7, SNAPSHOT_API, CmsisApi, level_with

_DEF_RE = re.compile(r"^[A-Za-z_][\w \t\*]*?\b(arm_\w+)\s*\([^;{]*?\)\s*\{", re.M | re.S)
_CALL_RE = re.compile(r"\b(arm_\w+)\s*\(")
# The source index shipped per level (function -> file, file -> calls), made by index_of() from these trees.
SHIPPED_INDEX = {SNAPSHOT_API.level: ("index-2024.01.json", "the PyPI snapshot of January 2024"),
                 LEVEL_7.level: ("index-7.json", "CMSIS-NN v7.0.0")}


@functools.lru_cache(maxsize=8)
def index_of(root: Path) -> tuple[dict[str, str], dict[str, list[str]]]:
    """function -> the source file defining it, and source file -> the functions it calls (read once
    per tree and process: every conversion with a tree asks; callers do not modify the result)."""
    defines: dict[str, str] = {}
    calls: dict[str, list[str]] = {}
    for path in sorted((root / "Source").rglob("*.c")):
        rel = path.relative_to(root).as_posix()
        text = path.read_text(errors="replace")
        for name in _DEF_RE.findall(text):
            defines.setdefault(name, rel)
        calls[rel] = sorted(set(_CALL_RE.findall(text)))
    return defines, calls


@dataclass(frozen=True)
class CmsisTree:
    """A CMSIS-NN tree and its API level. root is None when code is generated for a level with no
    tree at hand (the default level 7 without --cmsis-nn): enough to emit C and list its source
    files (from the shipped index), not to build."""

    root: Path | None  # holds Include/ and Source/
    api: CmsisApi

    @property
    def include(self) -> Path:
        return self.buildable_root() / "Include"

    def buildable_root(self) -> Path:
        if self.root is None:
            raise ToolchainError(
                f"building needs a CMSIS-NN tree of API level {self.api.level} and none is here: get one with "
                f"{{opt:fetch_cmsis_nn={self.api.level}}}, or give {{opt:cmsis_nn=PATH}} (your own CMSIS-NN)"
            )
        return self.root

    @property
    def sources_from(self) -> str:
        """Where the source file list comes from: this tree, or the index shipped for its level."""
        return str(self.root) if self.root is not None else f"the file list of {SHIPPED_INDEX[self.api.level][1]}"

    @cached_property
    def _index(self) -> tuple[dict[str, str], dict[str, list[str]]]:
        if self.root is not None:
            return index_of(self.root)
        data = json.loads((resources.files("onnx2cmsis.cmsis_nn") / SHIPPED_INDEX[self.api.level][0]).read_text())
        return data["defines"], data["calls"]

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
            raise ToolchainError(f"CMSIS-NN ({self.sources_from}) does not define {', '.join(sorted(missing))}")
        return sorted(files)


def check_api_level(api: str | None) -> CmsisApi | None:
    if api is None:
        return None
    if api not in API_LEVELS:
        raise OptionError(f"{{opt:cmsis_api}} {api!r} is not one of {', '.join(API_LEVELS)}")
    return API_LEVELS[api]


def locate_cmsis_nn(path: str | os.PathLike[str] | None = None, api: str | None = None,
                    default_api: str | None = DEFAULT_API.level) -> CmsisTree:
    """The tree the user named (else $CMSIS_NN_PATH) at its detected level, refusing a different
    `api`. Without one: level `api` (else `default_api`) with the tree fetched for it earlier, if any
    (else a tree-less CmsisTree). default_api=None (building): whichever level has a fetched tree,
    level 7 first. Never downloads."""
    wanted = check_api_level(api)
    chosen = path or os.environ.get("CMSIS_NN_PATH")
    if chosen:
        root = Path(chosen).expanduser().resolve()
        if not is_tree(root):
            raise ToolchainError(f"{root} is not a CMSIS-NN tree (no Include/arm_nnfunctions.h)")
        level = detect_api(root)
        if wanted is not None and wanted != level:
            raise ToolchainError(
                f"{{opt:cmsis_api={wanted.level}}} does not match the CMSIS-NN tree at {root}, which is API level "
                f"{level.level} ({level.versions})"
            )
        return CmsisTree(root, level)
    if wanted is None and default_api is None:
        wanted = LEVEL_7 if cached_tree(LEVEL_7.level) or not cached_tree(SNAPSHOT_API.level) else SNAPSHOT_API
    level = wanted or check_api_level(default_api) or LEVEL_7
    fetched = cached_tree(level.level)
    return CmsisTree(fetched, level) if fetched is not None else CmsisTree(None, level)


_CONV_PROTO_RE = re.compile(r"/\*\*((?:(?!\*/).)*)\*/\s*arm_cmsis_nn_status\s+arm_convolve_s8\s*\(([^;]*)\);", re.S)
_CONV_S16_RE = re.compile(r"arm_cmsis_nn_status\s+arm_convolve_wrapper_s16\s*\(([^;]*)\);")
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
        "fc_per_channel": re.search(r"arm_cmsis_nn_status\s+arm_fully_connected_per_channel_s8\s*\(", header) is not None,
        "conv_s16_bias_struct": bool((s16 := _CONV_S16_RE.search(header)) and "cmsis_nn_bias_data" in s16.group(1)),
        "transpose_conv_wrapper": re.search(r"arm_cmsis_nn_status\s+arm_transpose_conv_wrapper_s8\s*\(", header) is not None,
        "lstm_s8": re.search(r"arm_cmsis_nn_status\s+arm_lstm_unidirectional_s8\s*\(", header) is not None,
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
