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
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx2cmsis.cmsis_nn.fetch import cache_dir
from onnx2cmsis.cmsis_nn.source import CmsisTree
from onnx2cmsis.errors import ToolchainError
from onnx2cmsis.data.samples import MultiSamples
from onnx2cmsis.targets.host import STRICT_FLAGS, cmsis_static_library, one_translation_unit
from onnx2cmsis.targets.interface import Counts, DoesNotFit, Ran

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


def missing_tools() -> list[str]:
    return [t for t in (CROSS_CC, QEMU) if shutil.which(t) is None]


def _run(cmd: list[str], what: str, cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=cwd)
    if proc.returncode != 0:
        if "will not fit in region" in proc.stderr or "RAM overflow" in proc.stderr or "overflowed by" in proc.stderr:
            raise DoesNotFit(f"{what}: does not fit the board's memory:\n{proc.stderr[-1500:]}")
        raise ToolchainError(f"{what} failed:\n{proc.stderr[-4000:]}")


def cmsis_library(tree: CmsisTree, target: str) -> Path:
    """libcmsisnn.a for one Cortex-M target."""
    flags = (*TARGETS[target].cpu_flags, "-mthumb", "-O2", "-ffunction-sections", "-fdata-sections", "-w")
    return cmsis_static_library(tree, CROSS_CC, "arm-none-eabi-ar", flags, f"cortex-m-lib-{target}")


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


@dataclass(frozen=True)
class CUnit:
    """C code the runner can call: NAME.c/.h with `int NAME_invoke(const T_in *, T_out *)` and
    NAME_INPUT_SIZE / NAME_OUTPUT_SIZE (elements) in NAME.h (a conversion, or a probe a test writes);
    or, with `inputs`/`outputs` ((elements, bits) of each), the pointer-array invoke of a model with
    several inputs or outputs."""

    name: str
    source: str
    header: str
    cmsis: CmsisTree
    input_size: int
    output_size: int
    input_bits: int = 8  # 8: int8_t elements, 16: int16_t
    output_bits: int = 8
    inputs: tuple[tuple[int, int], ...] = ()
    outputs: tuple[tuple[int, int], ...] = ()

    @property
    def parts(self) -> tuple[tuple[tuple[int, int], ...], tuple[tuple[int, int], ...]]:
        """((elements, bits) of each input, of each output): one of each for the plain invoke."""
        return (self.inputs or ((self.input_size, self.input_bits),),
                self.outputs or ((self.output_size, self.output_bits),))

    @property
    def padded(self) -> bool:
        """The pointer-array form: each part of a runner buffer starts on a 4-byte boundary (so that
        every part is aligned for its element type)."""
        return bool(self.inputs)

    @property
    def io_bytes(self) -> tuple[int, int]:
        """Bytes of the runner's input and output buffers: the parts one after another."""
        return tuple(sum(_part_bytes(n, b, self.padded) for n, b in side) for side in self.parts)


def _part_bytes(elements: int, bits: int, padded: bool) -> int:
    size = elements * bits // 8
    return -(-size // 4) * 4 if padded else size


def as_unit(item) -> CUnit:
    """An api.Conversion (or a CUnit) as a CUnit."""
    if isinstance(item, CUnit):
        return item
    g = item.graph
    ins = tuple((g.tensors[t].size, g.tensors[t].quant.bits) for t in g.inputs)
    outs = tuple((g.tensors[t].size, g.tensors[t].quant.bits) for t in g.outputs)
    several = not g.single_io  # the pointer-array invoke
    return CUnit(item.name, item.source, item.header, item.cmsis, ins[0][0], outs[0][0], ins[0][1], outs[0][1],
                 inputs=ins if several else (), outputs=outs if several else ())


def stream_unit(conv) -> CUnit:
    """A runner 'model' that pushes one hop of a streaming conversion per sample: its output is the
    push's status (1: ready, 0: not yet), then the model's output (zero while not ready). The runner
    then counts instructions per push as it does per inference."""
    name = f"{conv.name}_push"
    upper = name.upper()
    g = conv.graph
    bits_in, bits_out = g.tensors[g.inputs[0]].quant.bits, g.tensors[g.outputs[0]].quant.bits
    t_in, t_out = f"int{bits_in}_t", f"int{bits_out}_t"
    hop, channels = conv.report["stream"]["hop"], conv.report["stream"]["channels"]
    out_size = conv.report["stream"].get("output_size_per_push") or g.tensors[g.outputs[0]].size
    header = (f"#ifndef {upper}_H\n#define {upper}_H\n#include <stdint.h>\n#include \"{conv.name}.h\"\n"
              f"#define {upper}_INPUT_SIZE {hop * channels}\n#define {upper}_OUTPUT_SIZE {out_size + 1}\n"
              f"int {name}_invoke(const {t_in} *input, {t_out} *output);\n#endif\n")
    source = (f"#include <string.h>\n#include \"{name}.h\"\n\n"
              f"int {name}_invoke(const {t_in} *input, {t_out} *output)\n{{\n"
              f"    int status;\n"
              f"    memset(output, 0, sizeof(*output) * {upper}_OUTPUT_SIZE);\n"
              f"    status = {conv.name}_stream_push(input, output + 1);\n"
              f"    output[0] = ({t_out})(status > 0 ? status : 0);\n"
              f"    return status < 0 ? status : 0;\n}}\n")
    return CUnit(name, source, header, conv.cmsis, hop * channels, out_size + 1, bits_in, bits_out)


@dataclass
class Firmware:
    target: str
    elf: Path
    index: dict[str, int]  # model name -> position in the runner's table
    units: dict[str, CUnit]  # model name -> what the runner calls (its buffers' layout: CUnit.parts)


def _models_table(conversions: list[CUnit]) -> str:
    lines = ["/* generated by onnx2cmsis.targets.qemu: the models this firmware runs */",
             "#ifndef MODELS_TABLE_H", "#define MODELS_TABLE_H", "#include <stdint.h>"]
    lines += [f'#include "{c.name}.h"' for c in conversions]
    lines += ["typedef struct {", "    int (*invoke)(const void *input, void *output);",
              "    uint32_t input_size; /* bytes */", "    uint32_t output_size;", "} runner_model;"]
    for c in conversions:  # the runner's buffers are bytes; each model takes its own element types
        if c.inputs:
            lines += [f"static int run_{c.name}(const void *input, void *output)", "{",
                      f"    const void *const inputs[{len(c.inputs)}] = {{{_offsets('input', c.inputs, 'const ')}}};",
                      f"    void *const outputs[{len(c.outputs)}] = {{{_offsets('output', c.outputs, '')}}};",
                      f"    return {c.name}_invoke(inputs, outputs);", "}"]
            continue
        t_in, t_out = (f"int{b}_t" for b in (c.input_bits, c.output_bits))
        lines += [f"static int run_{c.name}(const void *input, void *output)", "{",
                  f"    return {c.name}_invoke((const {t_in} *)input, ({t_out} *)output);", "}"]
    lines += [f"#define RUNNER_MODEL_COUNT {len(conversions)}u",
              "static const runner_model runner_models[RUNNER_MODEL_COUNT] = {"]
    lines += [f"    {{run_{c.name}, {c.io_bytes[0]}u, {c.io_bytes[1]}u}}," if c.inputs else
              f"    {{run_{c.name}, {c.name.upper()}_INPUT_SIZE * {c.input_bits // 8}u, "
              f"{c.name.upper()}_OUTPUT_SIZE * {c.output_bits // 8}u}},"
              for c in conversions]
    lines += ["};", "#endif", ""]
    return "\n".join(lines)


def _offsets(buffer: str, parts: tuple[tuple[int, int], ...], const: str) -> str:
    """Pointers to each part of a runner buffer (CUnit.io_bytes' layout)."""
    at, pointers = 0, []
    for elements, bits in parts:
        pointers.append(f"({const}uint8_t *){buffer} + {at}")
        at += _part_bytes(elements, bits, True)
    return ", ".join(pointers)


def build_firmware(items: list, target: str, workdir: Path, extra_link: tuple[str, ...] = ()) -> Firmware:
    """Models (api.Conversion or CUnit, compiled with the strict flags a user's build would use) +
    runner, linked for `target`; `extra_link`: objects and libraries linked in besides (what a
    benchmark's own build of another runtime, TFLite-Micro, adds)."""
    conversions = [as_unit(item) for item in items]
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
    sources = one_translation_unit([workdir / f"{c.name}.c" for c in conversions], workdir / "all_models.c")
    _run([CROSS_CC, *common, *STRICT_FLAGS, "-c", *[s.name for s in sources]],
         f"compiling the models for {target}", cwd=workdir)
    buffer = max(max(c.io_bytes) for c in conversions)
    elf = workdir / f"models_{target}.elf"
    _run([CROSS_CC, *common, "-std=gnu11", "-Wall", "-Wextra", "-Werror", f"-DRUNNER_BUFFER_BYTES={buffer}",
          str(RUNTIME / "runner.c"), str(RUNTIME / "startup.c"), *[f"{s.stem}.o" for s in sources], *extra_link,
          str(cmsis_library(tree, target)), "-nostartfiles", "-T", str(RUNTIME / spec.linker_script),
          "-L", str(RUNTIME), "-Wl,--gc-sections", "--specs=nano.specs", "--specs=nosys.specs", "-o", str(elf)],
         f"linking for {target}", cwd=workdir)
    return Firmware(target, elf, {c.name: i for i, c in enumerate(conversions)},
                    {c.name: c for c in conversions})


def run_firmware(fw: Firmware, inputs: dict[str, np.ndarray], timeout: float = 120.0,
                 instructions: dict[str, np.ndarray] | None = None,
                 stack: dict[str, np.ndarray] | None = None) -> dict[str, np.ndarray]:
    """Run every model on its samples (name -> (N, input elements) of its input type); name -> (N, output
    elements) of its output type.

    With `instructions` (a dict to fill), QEMU's count plugin also records the exact number of
    instructions each inference executed (the invoke call included), per model and sample. With
    `stack`, the stack bytes each inference used below the caller's frame: the high-water mark of a
    painted stack (the deepest word it wrote; at least the 64 B left unpainted below the caller)."""
    with tempfile.TemporaryDirectory() as tmp:
        job = bytearray()
        order = []
        for name, x in inputs.items():
            unit = fw.units[name]
            payload = _encode(x, unit.parts[0], unit.padded)
            if len(payload) != len(x) * unit.io_bytes[0]:
                raise ValueError(f"{name}: samples of {len(payload) // max(len(x), 1)} bytes, the model takes "
                                 f"{unit.io_bytes[0]}")
            job += np.array([fw.index[name], len(x)], "<u4").tobytes() + payload
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
        result = (Path(tmp) / "result.bin").read_bytes()
        stack_used = np.frombuffer((Path(tmp) / "stack.bin").read_bytes(), "<u4").astype(np.int64)
        counts = np.loadtxt(counts_file, dtype=np.int64, ndmin=1) if instructions is not None else None
    for per_sample, into in ((counts, instructions), (stack_used, stack)):
        if into is not None and per_sample is not None:
            at = 0
            for name, n in order:
                into[name] = per_sample[at:at + n]
                at += n
    out, pos = {}, 0
    for name, n in order:
        unit = fw.units[name]
        size = unit.io_bytes[1]
        out[name] = _decode(result[pos:pos + n * size], n, unit.parts[1], unit.padded)
        pos += n * size
    if pos != len(result):
        raise ToolchainError(f"{fw.target}: {len(result)} result bytes, expected {pos}")
    return out


def _encode(x, parts: tuple[tuple[int, int], ...], padded: bool) -> bytes:
    """Samples as the runner's input bytes: (N, elements) codes for one input; for several, one such
    array per input (MultiSamples or a sequence), each part padded to 4 bytes (CUnit.io_bytes)."""
    arrays = list(x.parts) if isinstance(x, MultiSamples) else [x]
    if len(arrays) != len(parts):
        raise ValueError(f"{len(arrays)} inputs given, the model takes {len(parts)}")
    n = len(arrays[0])
    columns = []
    for arr, (elements, bits) in zip(arrays, parts):
        codes = np.ascontiguousarray(np.asarray(arr, f"<i{bits // 8}").reshape(n, -1))
        if codes.shape[1] != elements:
            raise ValueError(f"samples of {codes.shape[1]} elements, the model takes {elements}")
        raw = codes.view(np.uint8).reshape(n, -1)
        columns.append(np.pad(raw, ((0, 0), (0, _part_bytes(elements, bits, padded) - raw.shape[1]))))
    return np.concatenate(columns, axis=1).tobytes()


def _decode(raw: bytes, n: int, parts: tuple[tuple[int, int], ...], padded: bool) -> np.ndarray:
    """The runner's output bytes as (N, elements): the parts side by side, in the widest part's type."""
    rows = np.frombuffer(raw, np.uint8).reshape(n, -1)
    wide = max(bits for _, bits in parts)
    columns, at = [], 0
    for elements, bits in parts:
        part = rows[:, at:at + elements * bits // 8].copy().view(f"<i{bits // 8}")
        columns.append(part.astype(f"int{wide}"))
        at += _part_bytes(elements, bits, padded)
    return np.concatenate(columns, axis=1)


def image_sizes(elf: Path) -> tuple[int, int]:
    """(flash, RAM) bytes of a firmware image: code + constants + initialised data's copy, and
    data + bss."""
    out = subprocess.run(["arm-none-eabi-size", "-A", "-d", str(elf)], capture_output=True, text=True,
                         check=True).stdout
    sections = {}
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sections[parts[0]] = int(parts[1])
    flash = sum(v for k, v in sections.items() if k in (".isr_vector", ".text", ".rodata", ".ARM.exidx",
                                                         ".init_array", ".fini_array", ".data"))
    ram = sections.get(".data", 0) + sections.get(".bss", 0)
    return flash, ram


@dataclass(frozen=True)
class QemuTarget:
    """A Cortex-M board on QEMU as a target (targets.interface.Target): every run also counts each
    inference's instructions and stack, and the image's flash and RAM."""

    name: str  # a key of TARGETS

    @property
    def machine(self) -> str:
        return TARGETS[self.name].machine

    @property
    def building(self) -> str:
        return f"building (and CMSIS-NN, once per tree) for {self.machine}, running on QEMU"

    def build(self, conv, workdir: Path, stream: bool = False) -> QemuBuilt:
        # the stream push is a second runner 'model' of the same image: its instructions count per push
        unit = stream_unit(conv) if stream else None
        fw = build_firmware([conv] + ([unit] if unit else []), self.name, workdir)
        return QemuBuilt(fw, conv.name, None if unit is None else unit.name)


@dataclass(frozen=True)
class QemuBuilt:
    firmware: Firmware
    model: str  # the conversion's name in the image
    push: str | None  # the stream push's, when built with one

    def run(self, samples, pushes: np.ndarray | None = None) -> Ran:
        if (pushes is None) != (self.push is None):
            raise ValueError("pushes go to a build made with stream=True, and such a build takes them")
        instructions: dict[str, np.ndarray] = {}
        depth: dict[str, np.ndarray] = {}
        jobs = {self.model: samples, **({} if pushes is None else {self.push: pushes})}
        ran = run_firmware(self.firmware, jobs, instructions=instructions, stack=depth)
        flash, ram = image_sizes(self.firmware.elf)
        counts = Counts(instructions[self.model], depth[self.model],
                        None if self.push is None else instructions[self.push], flash, ram)
        if self.push is None:
            return Ran(ran[self.model], counts)
        statuses = ran[self.push][:, 0]  # the push unit's first output element is its status
        return Ran(ran[self.model], counts, list(statuses), ran[self.push][statuses == 1, 1:])
