"""TFLite-Micro + CMSIS-NN itself on QEMU Cortex-M4, next to our C, for the same `.tflite` files:
instructions per inference, `arena_used_bytes()` of a Cortex-M build against the x86-64 wheel's figure,
and the firmware's flash, every output checked against the tflite-micro wheel (the reference kernels).

TFLite-Micro is built here from a source tree (`--tflm PATH`, e.g. a clone of
github.com/tensorflow/tflite-micro or a `git archive` of one; never vendored) with Debian's toolchain, not its make system
(which downloads its dependencies): arm-none-eabi-g++ with libstdc++-arm-none-eabi-newlib, flatbuffers
2.0.8 from libflatbuffers-dev (the schema regenerated with that flatc: TFLite-Micro pins 25.x),
gemmlowp's fixedpoint from libgemmlowp-dev, a no-op stand-in for ruy's profiler labels, and the
CMSIS-NN tree of $CMSIS_NN_PATH (its `kernels/cmsis_nn` variants replace the reference ones, as
`OPTIMIZED_KERNEL_DIR=cmsis_nn` does). -O2, Cortex-M4 with FPU, like our firmware. The library is
compiled once per checkout and tree (about 8 minutes on 2 cores) and cached.

    apt-get install libstdc++-arm-none-eabi-newlib libflatbuffers-dev flatbuffers-compiler libgemmlowp-dev
    CMSIS_NN_PATH=... python benchmarks/tflm_cortex_m.py --tflm PATH [--samples 8]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.tflite_files import FILES  # noqa: E402
from onnx2cmsis.api import convert  # noqa: E402
from onnx2cmsis.cmsis_nn.fetch import cache_dir  # noqa: E402
from onnx2cmsis.cmsis_nn.source import CmsisTree, locate_cmsis_nn  # noqa: E402
from onnx2cmsis.drivers.evaluate import quantize_inputs  # noqa: E402
from onnx2cmsis.frontends.tflite_reader import read_tflite  # noqa: E402
from onnx2cmsis.oracle.tflite_export import run_tflite_micro, tflite_micro_arena  # noqa: E402
from onnx2cmsis.targets.qemu import RUNTIME, TARGETS, CUnit, build_firmware, image_sizes, run_firmware  # noqa: E402
from tests.keras_models.data import signals  # noqa: E402

TARGET = "m4"
ARENA = 64 * 1024
FLAGS = ("-mthumb", "-O2", "-std=c++17", "-fno-rtti", "-fno-exceptions", "-fno-threadsafe-statics",
         "-fno-unwind-tables", "-ffunction-sections", "-fdata-sections", "-DTF_LITE_STATIC_MEMORY",
         "-DTF_LITE_MCU_DEBUG_LOG", "-DCMSIS_NN", "-DNDEBUG", "-w")
SKIP = re.compile(r"_test\.cc$|test_helper|fake_micro_context|mock_micro_graph|_benchmark|test_util")
RUY_STANDIN = """/* No-op stand-in for ruy's profiler labels (TFLite-Micro builds without the profiler). */
#ifndef RUY_PROFILER_INSTRUMENTATION_STANDIN_H
#define RUY_PROFILER_INSTRUMENTATION_STANDIN_H
namespace ruy {
namespace profiler {
class ScopeLabel {
 public:
  template <typename... Args>
  explicit ScopeLabel(Args...) {}
};
}  // namespace profiler
}  // namespace ruy
#endif
"""
# TFLite BuiltinOperator name -> MicroMutableOpResolver method
RESOLVER = {"CONV_2D": "AddConv2D", "DEPTHWISE_CONV_2D": "AddDepthwiseConv2D", "FULLY_CONNECTED": "AddFullyConnected",
            "MAX_POOL_2D": "AddMaxPool2D", "AVERAGE_POOL_2D": "AddAveragePool2D", "MEAN": "AddMean",
            "ADD": "AddAdd", "SUB": "AddSub", "MUL": "AddMul", "PAD": "AddPad", "PADV2": "AddPadV2",
            "CONCATENATION": "AddConcatenation", "RESHAPE": "AddReshape", "SQUEEZE": "AddSqueeze",
            "EXPAND_DIMS": "AddExpandDims", "TRANSPOSE": "AddTranspose",
            "RESIZE_NEAREST_NEIGHBOR": "AddResizeNearestNeighbor", "SOFTMAX": "AddSoftmax", "TANH": "AddTanh",
            "LOGISTIC": "AddLogistic", "RELU": "AddRelu", "RELU6": "AddRelu6", "LEAKY_RELU": "AddLeakyRelu",
            "HARD_SWISH": "AddHardSwish", "REDUCE_MAX": "AddReduceMax", "QUANTIZE": "AddQuantize",
            "DEQUANTIZE": "AddDequantize", "SHAPE": "AddShape", "STRIDED_SLICE": "AddStridedSlice",
            "PACK": "AddPack", "GATHER": "AddGather", "REDUCE_PROD": "AddReduceProd",
            "UNIDIRECTIONAL_SEQUENCE_LSTM": "AddUnidirectionalSequenceLSTM",
            "SPACE_TO_BATCH_ND": "AddSpaceToBatchNd", "BATCH_TO_SPACE_ND": "AddBatchToSpaceNd", "TILE": "AddTile"}


def _run(cmd: list[str], cwd: Path | None = None) -> None:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd[:3])} ... failed:\n{proc.stderr[-3000:]}")


def _includes(work: Path, tflm: Path) -> list[str]:
    """The schema regenerated for Debian's flatbuffers, its headers, gemmlowp's fixedpoint, ruy's stand-in."""
    inc = work / "include"
    if (inc / "tensorflow/lite/schema/schema_generated.h").is_file():  # made by an earlier build
        return ["-I", str(inc), "-I", str(tflm)]
    schema = (tflm / "tensorflow/compiler/mlir/lite/schema/schema.fbs").read_text()
    # flatc 2.0.8 takes (deprecated) on fields only, not on enum values or tables
    schema = re.sub(r" = (\d+) \(deprecated\),", r" = \1,", schema)
    schema = re.sub(r"^(  \w+) \(deprecated\),", r"\1,", schema, flags=re.M)
    schema = re.sub(r"^table (\w+) \(deprecated\) \{", r"table \1 {", schema, flags=re.M)
    (work / "schema.fbs").write_text(schema)
    _run(["flatc", "--cpp", "--gen-object-api", "--gen-mutable", "-o", str(work / "gen"), str(work / "schema.fbs")])
    for where in ("tensorflow/lite/schema", "tensorflow/compiler/mlir/lite/schema"):
        (inc / where).mkdir(parents=True, exist_ok=True)
        (inc / where / "schema_generated.h").write_bytes((work / "gen" / "schema_generated.h").read_bytes())
    (inc / "ruy/profiler").mkdir(parents=True, exist_ok=True)
    (inc / "ruy/profiler/instrumentation.h").write_text(RUY_STANDIN)
    for name, target in (("flatbuffers", "/usr/include/flatbuffers"), ("fixedpoint", "/usr/include/gemmlowp/fixedpoint")):
        if not (inc / name).exists():
            (inc / name).symlink_to(target)
    return ["-I", str(inc), "-I", str(tflm)]


def _sources(tflm: Path) -> list[Path]:
    micro = tflm / "tensorflow/lite/micro"
    optimized = {p.name for p in (micro / "kernels/cmsis_nn").glob("*.cc")}
    found = [*micro.glob("*.cc"), *(micro / "arena_allocator").glob("*.cc"), *(micro / "memory_planner").glob("*.cc"),
             *(micro / "tflite_bridge").glob("*.cc"), *(tflm / "tensorflow/lite/core/api").glob("*.cc"),
             *(tflm / "tensorflow/lite/kernels").glob("*.cc"), *(tflm / "tensorflow/lite/kernels/internal").glob("*.cc"),
             tflm / "tensorflow/lite/core/c/common.cc", tflm / "tensorflow/lite/array.cc",
             tflm / "tensorflow/compiler/mlir/lite/schema/schema_utils.cc",
             tflm / "tensorflow/compiler/mlir/lite/core/api/error_reporter.cc",
             *(p for p in (micro / "kernels").glob("*.cc") if p.name not in optimized),
             *(micro / "kernels/cmsis_nn").glob("*.cc")]
    # the unit defines DebugLog (no printf: the firmware has no heap for newlib's)
    return sorted(p for p in found if not SKIP.search(p.name) and p != micro / "debug_log.cc")


def tflm_library(tflm: Path, tree: CmsisTree) -> tuple[Path, list[str]]:
    """libtflm.a for TARGET, its objects cached per source tree and CMSIS-NN tree (each source's object
    compiled once), and the flags it was compiled with (a model's unit takes the same)."""
    sources = _sources(tflm)
    content = hashlib.sha256(b"".join(p.read_bytes() for p in sorted(sources)[:8])).hexdigest()  # the tree's version
    key = hashlib.sha256(f"{content}|{tree.root.resolve()}|{TARGET}|{FLAGS}".encode()).hexdigest()[:16]
    work = cache_dir() / "tflm" / key
    lib = work / f"libtflm-{hashlib.sha256(str(sources).encode()).hexdigest()[:8]}.a"
    (work / "obj").mkdir(parents=True, exist_ok=True)
    flags = [*TARGETS[TARGET].cpu_flags, *FLAGS, *_includes(work, tflm), "-I", str(tree.root), "-I", str(tree.include)]
    if lib.is_file():
        return lib, flags

    def compile_one(src: Path) -> Path:
        obj = work / "obj" / (src.relative_to(tflm).as_posix().replace("/", "_")[:-3] + ".o")
        if not obj.is_file():
            _run(["arm-none-eabi-g++", *flags, "-c", str(src), "-o", str(obj)])
        return obj

    with ThreadPoolExecutor(os.cpu_count() or 2) as pool:
        objects = list(pool.map(compile_one, sources))
    _run(["arm-none-eabi-ar", "rcs", str(lib), *map(str, objects)])
    return lib, flags


def tflm_unit(path: Path, name: str, tree: CmsisTree, work: Path, flags: list[str]) -> tuple[CUnit, Path]:
    """The runner's view of TFLite-Micro running the file: C `NAME_invoke` declared, C++ defining it;
    its output is the model's, then arena_used_bytes() as four bytes (or two int16 elements)."""
    model = read_tflite(path)
    t_in, t_out = (model.tensors[i] for i in (model.inputs[0], model.outputs[0]))
    bits_in, bits_out = (8 if t.dtype == np.int8 else 16 for t in (t_in, t_out))
    n_in, n_out = int(np.prod(t_in.shape)), int(np.prod(t_out.shape))
    extra = 4 * 8 // bits_out
    ops = sorted({op.code for op in model.operators})
    data = path.read_bytes()
    rows = ",\n".join(", ".join(f"0x{b:02x}" for b in data[i:i + 16]) for i in range(0, len(data), 16))
    cc = f"""#include <cstring>
#include <new>
#include "tensorflow/lite/micro/micro_interpreter.h"
#include "tensorflow/lite/micro/micro_mutable_op_resolver.h"
#include "tensorflow/lite/schema/schema_generated.h"

#include "tensorflow/lite/micro/debug_log.h"

#include <cstdio>
#include "semihost.h"

// newlib's vsnprintf takes a little heap: a fixed one here (the runner's image has none)
extern "C" void *_sbrk(ptrdiff_t increment)
{{
    alignas(8) static char heap[8192];
    static size_t used;
    if (increment < 0 || used + (size_t)increment > sizeof(heap)) {{
        return (void *)-1;
    }}
    used += (size_t)increment;
    return heap + used - increment;
}}

// TFLite-Micro's messages to QEMU's console through semihosting
extern "C" int DebugVsnprintf(char *buffer, size_t buf_size, const char *format, va_list args)
{{
    return vsnprintf(buffer, buf_size, format, args);
}}
extern "C" void DebugLog(const char *format, va_list args)
{{
    static char line[256];
    vsnprintf(line, sizeof(line), format, args);
    sh_puts(line);
}}

alignas(16) static const unsigned char model_data[] = {{
{rows}
}};
alignas(16) static uint8_t arena[{ARENA}];
alignas(8) static uint8_t interpreter_bytes[sizeof(tflite::MicroInterpreter)];
static tflite::MicroInterpreter *interpreter;
alignas(8) static uint8_t resolver_bytes[sizeof(tflite::MicroMutableOpResolver<{len(ops)}>)];
extern "C" {{
void *__dso_handle = nullptr;  // no static object here is ever destroyed: a bare-metal image never exits
}}

extern "C" int {name}_invoke(const int{bits_in}_t *input, int{bits_out}_t *output)
{{
    if (interpreter == nullptr) {{
        auto &resolver = *new (resolver_bytes) tflite::MicroMutableOpResolver<{len(ops)}>();
{chr(10).join(f"        resolver.{RESOLVER[op]}();" for op in ops)}
        interpreter = new (interpreter_bytes) tflite::MicroInterpreter(tflite::GetModel(model_data), resolver, arena,
                                                                     sizeof(arena));
        if (interpreter->AllocateTensors() != kTfLiteOk) {{
            return -100;
        }}
    }}
    std::memcpy(interpreter->input(0)->data.raw, input, {n_in * bits_in // 8});
    if (interpreter->Invoke() != kTfLiteOk) {{
        return -101;
    }}
    std::memcpy(output, interpreter->output(0)->data.raw, {n_out * bits_out // 8});
    const uint32_t used = (uint32_t)interpreter->arena_used_bytes();
    std::memcpy(output + {n_out}, &used, 4);
    return 0;
}}
"""
    work.mkdir(parents=True, exist_ok=True)
    (work / f"{name}_tflm.cc").write_text(cc)
    obj = work / f"{name}_tflm.o"
    _run(["arm-none-eabi-g++", *flags, "-I", str(RUNTIME), "-c", str(work / f"{name}_tflm.cc"), "-o", str(obj)])
    upper = name.upper()
    header = (f"#ifndef {upper}_H\n#define {upper}_H\n#include <stdint.h>\n#define {upper}_INPUT_SIZE {n_in}\n"
              f"#define {upper}_OUTPUT_SIZE {n_out + extra}\n"
              f"int {name}_invoke(const int{bits_in}_t *input, int{bits_out}_t *output);\n#endif\n")
    source = f"/* {name}_invoke is TFLite-Micro's, compiled as C++ ({name}_tflm.cc) */\ntypedef int {name}_unit;\n"
    return CUnit(name, source, header, tree, n_in, n_out + extra, bits_in, bits_out), obj


def measure(path: Path, tflm: Path, samples: int, work: Path) -> dict:
    conv = convert(path, name="ours")
    tree = conv.cmsis
    shape = conv.graph.model_input_shapes[0][1:]
    steps, channels = (96, 4) if "zoo" in path.stem else (64, 3)
    x = signals(samples, steps, channels, seed=11)[0].reshape(samples, *shape)
    codes = quantize_inputs(conv, x)
    wheel = run_tflite_micro(path.read_bytes(), codes)
    lib, flags = tflm_library(tflm, tree)
    unit, obj = tflm_unit(path, "tflm", tree, work, flags)
    tflm_link = (str(obj), str(lib), "-lsupc++", "-lm")  # C++ support (pure virtuals) and libm for its kernels
    fw = build_firmware([conv, unit], TARGET, work / "fw", extra_link=tflm_link)
    counts: dict[str, np.ndarray] = {}
    flat = codes.reshape(samples, -1)
    out = run_firmware(fw, {"ours": flat, "tflm": flat}, timeout=600, instructions=counts)
    n_out = wheel.shape[1]
    tflm_out = out["tflm"][:, :n_out]
    used = int(out["tflm"][0, n_out:].astype(f"<i{unit.output_bits // 8}").view("<u4")[0])
    alone = build_firmware([unit], TARGET, work / "alone", extra_link=tflm_link)
    ours_alone = build_firmware([conv], TARGET, work / "ours_alone")
    io_bytes = sum(conv.graph.tensors[t].nbytes for t in (*conv.graph.inputs, *conv.graph.outputs))
    return {"file": path.name, "ours_equal_wheel": bool(np.array_equal(out["ours"], wheel)),
            "tflm_m4_equal_wheel": bool(np.array_equal(tflm_out, wheel)),
            "ours_instructions": int(np.median(counts["ours"])),
            "tflm_instructions": int(np.median(counts["tflm"][1:])),  # the first also allocates
            "ours_arena_io": conv.plan.arena_bytes + io_bytes, "tflm_arena_m4": used,
            "tflm_arena_wheel": tflite_micro_arena(path.read_bytes(), codes[0]).get("total"),
            "ours_flash": image_sizes(ours_alone.elf)[0], "tflm_flash": image_sizes(alone.elf)[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tflm", type=Path, required=True, help="a tflite-micro source checkout")
    ap.add_argument("--samples", type=int, default=8)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "out" / "tflm_cortex_m.json")
    args = ap.parse_args()
    locate_cmsis_nn(None, None, "7")  # fails early without a level-7 tree
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for path in FILES:
            if args.only and path.stem not in args.only:
                continue
            try:
                r = measure(path, args.tflm, args.samples, Path(tmp) / path.stem)
            except Exception as exc:  # noqa: BLE001 - a file TFLite-Micro cannot run is reported, not fatal
                rows.append({"file": path.name, "error": str(exc).splitlines()[0][:200]})
                print(f"{path.name:<30} {rows[-1]['error']}", flush=True)
                continue
            rows.append(r)
            print(f"{r['file']:<30} instr. ours {r['ours_instructions']:>9,} TFLM {r['tflm_instructions']:>9,} "
                  f"(x{r['ours_instructions'] / r['tflm_instructions']:.2f})  arena+I/O {r['ours_arena_io']:>6,} "
                  f"TFLM M4 {r['tflm_arena_m4']:>6,} wheel {r['tflm_arena_wheel']:>6,} "
                  f"(x{r['tflm_arena_wheel'] / r['tflm_arena_m4']:.2f})  flash ours {r['ours_flash']:>7,} "
                  f"TFLM {r['tflm_flash']:>7,}  exact {r['ours_equal_wheel']}/{r['tflm_m4_equal_wheel']}", flush=True)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
