"""Cross-compile generated models for Cortex-M and run them on QEMU's emulated boards.

One firmware image holds many models plus a small runner (targets/cortex_m/runner.c) that reads a
job file over semihosting, calls each model's NAME_invoke and writes every output back; QEMU's exit
status is the runner's. CMSIS-NN is compiled once per target and tree into a cached static library.

| target | core (ISA)            | QEMU machine | memory            |
|--------|-----------------------|--------------|-------------------|
| m0plus | Cortex-M0 (Armv6-M)   | microbit     | 256 KB / 16 KB    |
| m4     | Cortex-M4F (DSP)      | mps2-an386   | 4 MB / 4 MB       |
| m7     | Cortex-M7 (DSP)       | mps2-an500   | 4 MB / 4 MB       |
| m55    | Cortex-M55 (MVE)      | mps3-an547   | 512 KB ITCM / DTCM|
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx2cmsis.cmsis_nn.source import CmsisTree, cache_dir
from onnx2cmsis.errors import ToolchainError
from onnx2cmsis.targets.host import STRICT_FLAGS

RUNTIME = Path(__file__).resolve().parent / "cortex_m"
CROSS_CC = "arm-none-eabi-gcc"
QEMU = "qemu-system-arm"


@dataclass(frozen=True)
class CortexM:
    cpu_flags: tuple[str, ...]
    machine: str
    linker_script: str


TARGETS: dict[str, CortexM] = {
    "m0plus": CortexM(("-mcpu=cortex-m0plus", "-mfloat-abi=soft"), "microbit", "microbit.ld"),
    "m4": CortexM(("-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"), "mps2-an386", "mps2-an386.ld"),
    "m7": CortexM(("-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=hard"), "mps2-an500", "mps2-an500.ld"),
    "m55": CortexM(("-mcpu=cortex-m55", "-mfloat-abi=hard"), "mps3-an547", "mps3-an547.ld"),
}


class DoesNotFit(ToolchainError):
    """The models do not fit the board's flash or RAM (e.g. the micro:bit's 16 KB)."""


def missing_tools() -> list[str]:
    return [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        if "will not fit in region" in proc.stderr or "RAM overflow" in proc.stderr or "overflowed by" in proc.stderr:
            raise DoesNotFit(f"{what}: does not fit the board's memory:\n{proc.stderr[-1500:]}")
        raise ToolchainError(f"{what} failed:\n{proc.stderr[-4000:]}")


def cmsis_library(tree: CmsisTree, target: str) -> Path:
    """libcmsisnn.a for one Cortex-M target: every integer source, built once and cached."""
    flags = (*TARGETS[target].cpu_flags, "-mthumb", "-O2", "-ffunction-sections", "-fdata-sections", "-w")
    sources = sorted(p for p in (tree.root / "Source").rglob("*.c") if not p.name.endswith(("_f32.c", "_f16.c")))
    key = hashlib.sha256(" ".join((CROSS_CC, *flags)).encode())
    for p in sources + sorted(tree.include.rglob("*.h")):
        key.update(p.relative_to(tree.root).as_posix().encode())
        key.update(p.read_bytes())
    lib = cache_dir() / f"cortex-m-lib-{target}" / key.hexdigest()[:16] / "libcmsisnn.a"
    if lib.is_file():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        objs = [Path(tmp) / f"{i:03d}_{p.stem}.o" for i, p in enumerate(sources)]

        def compile_one(pair: tuple[Path, Path]) -> None:
            _run([CROSS_CC, *flags, "-I", str(tree.include), "-c", str(pair[0]), "-o", str(pair[1])],
                 f"compiling {pair[0].name} for {target}")

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            list(pool.map(compile_one, zip(sources, objs)))
        staged = Path(tmp) / "libcmsisnn.a"
        _run(["arm-none-eabi-ar", "rcs", str(staged), *map(str, objs)], "archiving CMSIS-NN")
        os.replace(staged, lib)
    return lib


def count_plugin() -> Path:
    """The instruction-count TCG plugin (cortex_m/insncount.c), built with the host gcc and cached."""
    src = RUNTIME / "insncount.c"
    key = hashlib.sha256(src.read_bytes() + (RUNTIME / "qemu_plugin_api.h").read_bytes()).hexdigest()[:16]
    lib = cache_dir() / "qemu-plugin" / key / "libinsncount.so"
    if not lib.is_file():
        lib.parent.mkdir(parents=True, exist_ok=True)
        staged = lib.parent / f"tmp{os.getpid()}.so"
        _run([os.environ.get("CC", "gcc"), "-O2", "-fPIC", "-shared", "-fvisibility=hidden", "-Wall", "-Wextra",
              "-Werror", "-I", str(RUNTIME), str(src), "-o", str(staged)], "building the QEMU count plugin")
        os.replace(staged, lib)
    return lib


def _symbol(elf: Path, name: str) -> int:
    out = subprocess.run(["arm-none-eabi-nm", str(elf)], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[2] == name:
            return int(parts[0], 16)
    raise ToolchainError(f"symbol {name} not found in {elf.name}")


@dataclass
class Firmware:
    target: str
    elf: Path
    index: dict[str, int]  # model name -> position in the runner's table
    sizes: dict[str, tuple[int, int]]  # model name -> (input bytes, output bytes)


def _models_table(conversions: list) -> str:
    lines = ["/* generated by onnx2cmsis.targets.qemu: the models this firmware runs */",
             "#ifndef MODELS_TABLE_H", "#define MODELS_TABLE_H", "#include <stdint.h>"]
    lines += [f'#include "{c.name}.h"' for c in conversions]
    lines += ["typedef struct {", "    int (*invoke)(const int8_t *input, int8_t *output);",
              "    uint32_t input_size;", "    uint32_t output_size;", "} runner_model;",
              f"#define RUNNER_MODEL_COUNT {len(conversions)}u",
              "static const runner_model runner_models[RUNNER_MODEL_COUNT] = {"]
    lines += [f"    {{{c.name}_invoke, {c.name.upper()}_INPUT_SIZE, {c.name.upper()}_OUTPUT_SIZE}},"
              for c in conversions]
    lines += ["};", "#endif", ""]
    return "\n".join(lines)


def build_firmware(conversions: list, target: str, workdir: Path) -> Firmware:
    """Models (compiled with the strict flags a user's build would use) + runner, linked for `target`."""
    if missing_tools():
        raise ToolchainError(f"{' and '.join(missing_tools())} not found "
                             "(apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm)")
    trees = {c.cmsis for c in conversions}
    if len(trees) != 1:
        raise ValueError("all conversions must use the same CMSIS-NN tree")
    tree = trees.pop()
    spec = TARGETS[target]
    workdir.mkdir(parents=True, exist_ok=True)
    for c in conversions:
        (workdir / f"{c.name}.c").write_text(c.source)
        (workdir / f"{c.name}.h").write_text(c.header)
    (workdir / "models_table.h").write_text(_models_table(conversions))
    common = [*spec.cpu_flags, "-mthumb", "-O2", "-ffunction-sections", "-fdata-sections",
              "-I", str(tree.include), "-I", str(workdir), "-I", str(RUNTIME)]
    _run([CROSS_CC, *common, *STRICT_FLAGS, "-c", *[f"{c.name}.c" for c in conversions]],
         f"compiling the models for {target}", cwd=workdir)
    buffer = max(max(c.graph.tensors[c.graph.inputs[0]].size, c.graph.tensors[c.graph.outputs[0]].size)
                 for c in conversions)
    elf = workdir / f"models_{target}.elf"
    _run([CROSS_CC, *common, "-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-DRUNNER_BUFFER_BYTES={buffer}",
          str(RUNTIME / "runner.c"), str(RUNTIME / "startup.c"), *[f"{c.name}.o" for c in conversions],
          str(cmsis_library(tree, target)), "-nostartfiles", "-T", str(RUNTIME / spec.linker_script),
          "-L", str(RUNTIME), "-Wl,--gc-sections", "--specs=nano.specs", "--specs=nosys.specs", "-o", str(elf)],
         f"linking for {target}", cwd=workdir)
    return Firmware(target, elf, {c.name: i for i, c in enumerate(conversions)},
                    {c.name: (c.graph.tensors[c.graph.inputs[0]].size, c.graph.tensors[c.graph.outputs[0]].size)
                     for c in conversions})


def run_firmware(fw: Firmware, inputs: dict[str, np.ndarray], timeout: float = 120.0,
                 instructions: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Run every model on its int8 samples (name -> (N, input bytes)); name -> (N, output bytes).

    With `instructions` (a dict to fill), QEMU's count plugin also records the exact number of
    instructions each inference executed (the invoke call included), per model and sample."""
    with tempfile.TemporaryDirectory() as tmp:
        job = bytearray()
        order = []
        for name, x in inputs.items():
            x = np.ascontiguousarray(np.asarray(x, np.int8).reshape(len(x), -1))
            if x.shape[1] != fw.sizes[name][0]:
                raise ValueError(f"{name}: samples of {x.shape[1]} bytes, the model takes {fw.sizes[name][0]}")
            job += np.array([fw.index[name], len(x)], "<u4").tobytes() + x.tobytes()
            order.append((name, len(x)))
        (Path(tmp) / "job.bin").write_bytes(bytes(job))
        cmd = [QEMU, "-M", TARGETS[fw.target].machine, "-display", "none", "-monitor", "none", "-serial", "none",
               "-semihosting-config", "enable=on,target=native", "-kernel", str(fw.elf)]
        counts_file = Path(tmp) / "counts.txt"
        if instructions is not None:
            start, stop = _symbol(fw.elf, "region_start"), _symbol(fw.elf, "region_stop")
            cmd += ["-plugin", f"{count_plugin()},start={start:#x},stop={stop:#x},out={counts_file}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=tmp,
                                  stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as exc:
            raise ToolchainError(f"{fw.target}: QEMU did not finish within {timeout:.0f} s") from exc
        if proc.returncode != 0:
            raise ToolchainError(f"{fw.target}: the runner exited with status {proc.returncode} "
                                 f"({proc.stderr.strip()[-500:]})")
        result = np.frombuffer((Path(tmp) / "result.bin").read_bytes(), np.int8)
        counts = np.loadtxt(counts_file, dtype=np.int64, ndmin=1) if instructions is not None else None
    if counts is not None:
        at = 0
        for name, n in order:
            instructions[name] = counts[at:at + n]
            at += n
    out, pos = {}, 0
    for name, n in order:
        size = fw.sizes[name][1]
        out[name] = result[pos:pos + n * size].reshape(n, size)
        pos += n * size
    if pos != result.size:
        raise ToolchainError(f"{fw.target}: {result.size} result bytes, expected {pos}")
    return out
