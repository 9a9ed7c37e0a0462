"""Build generated C for the host with gcc and call it from Python (ctypes).

CMSIS-NN is compiled once per tree and flag set into a cached static library; generated model files
are compiled with the strict flags a user's firmware build would use.
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from onnx2cmsis.cmsis_nn.fetch import cache_dir
from onnx2cmsis.cmsis_nn.source import CmsisTree
from onnx2cmsis.errors import ToolchainError
from onnx2cmsis.data.samples import sample_inputs
from onnx2cmsis.targets.interface import Counts, Ran

STRICT_FLAGS = ("-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic")
CMSIS_FLAGS = ("-O2", "-fPIC", "-w")


def _cc() -> str:
    cc = os.environ.get("CC", "gcc")
    if shutil.which(cc) is None:
        raise ToolchainError(f"C compiler '{cc}' not found (install gcc or set CC)")
    return cc


def _run(cmd: list[str], what: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ToolchainError(f"{what} failed:\n{proc.stderr[-4000:]}")


def cmsis_static_library(tree: CmsisTree, compiler: str, archiver: str, flags: tuple[str, ...],
                         cache_name: str) -> Path:
    """libcmsisnn.a: every integer source of the tree compiled with `flags`, built once and cached
    under a key of the compiler, the flags and every source and header."""
    root = tree.buildable_root()
    sources = sorted(p for p in (root / "Source").rglob("*.c") if not p.name.endswith(("_f32.c", "_f16.c")))
    key = hashlib.sha256(" ".join((compiler, *flags)).encode())
    for p in sources + sorted(tree.include.rglob("*.h")):
        key.update(p.relative_to(root).as_posix().encode())
        key.update(p.read_bytes())
    lib = cache_dir() / cache_name / key.hexdigest()[:16] / "libcmsisnn.a"
    if lib.is_file():
        return lib
    lib.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=lib.parent) as tmp:
        objs = [Path(tmp) / f"{i:03d}_{p.stem}.o" for i, p in enumerate(sources)]

        def compile_one(pair: tuple[Path, Path]) -> None:
            src, obj = pair
            _run([compiler, *flags, "-I", str(tree.include), "-c", str(src), "-o", str(obj)],
                 f"compiling {src.name} ({cache_name})")

        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            list(pool.map(compile_one, zip(sources, objs)))
        staged = Path(tmp) / "libcmsisnn.a"
        _run([archiver, "rcs", str(staged), *map(str, objs)], "archiving CMSIS-NN")
        os.replace(staged, lib)
    return lib


def cmsis_library(tree: CmsisTree) -> Path:
    """libcmsisnn.a for the host."""
    return cmsis_static_library(tree, _cc(), "ar", CMSIS_FLAGS, "host-lib")


def one_translation_unit(c_files: list[Path], out: Path) -> list[Path]:
    """Several generated models as one C file that includes each (their file-scope names all begin
    with the model's name, so they cannot collide): the compiler then reads CMSIS-NN's headers once,
    not once per model (arm_mve.h alone is two thirds of a small model's compile for the M55). One
    file stays as it is."""
    if len(c_files) < 2:
        return c_files
    out.write_text("/* every model of this build, compiled as one translation unit */\n"
                   + "".join(f'#include "{f.name}"\n' for f in c_files))
    return [out]


def build_shared_library(c_files: list[Path], include_dirs: list[Path], tree: CmsisTree, out: Path,
                         extra_flags: tuple[str, ...] = ()) -> Path:
    """Compile generated C (strict warnings as errors) and link it with CMSIS-NN into a .so."""
    cmd = [_cc(), *STRICT_FLAGS, "-O2", "-fPIC", "-shared", *extra_flags, "-I", str(tree.include)]
    for d in include_dirs:
        cmd += ["-I", str(d)]
    cmd += [str(f) for f in c_files] + [str(cmsis_library(tree)), "-o", str(out)]
    _run(cmd, "building generated C")
    return out


class _LinkMap(ctypes.Structure):
    _fields_ = [("l_addr", ctypes.c_void_p), ("l_name", ctypes.c_char_p)]  # glibc's struct link_map, its head


RTLD_DI_LINKMAP = 2
LOAD_ATTEMPTS = 4


def load_library(library: Path) -> ctypes.CDLL:
    """dlopen `library` itself. glibc recognises an object it has loaded by device and inode, not by
    path: a library built where an earlier one was deleted (a temporary folder removed while its
    models stay loaded) can get that one's inode, and dlopen then returns the earlier library, whose
    functions have the same names when the models do: the wrong model runs, silently. Where glibc can
    say which file it loaded (dlinfo), a mismatch loads a fresh copy (a new inode) instead."""
    try:
        dlinfo = ctypes.CDLL(None).dlinfo
    except AttributeError:  # not glibc: nothing to check with
        return ctypes.CDLL(str(library))
    lib, loaded = _opened(library, dlinfo)
    if loaded in (None, os.path.realpath(library)):
        return lib
    # a copy named by its content: one made earlier (maybe loaded, so never rewritten) is the same bytes
    digest = hashlib.sha256(library.read_bytes()).hexdigest()[:12]
    for attempt in range(1, LOAD_ATTEMPTS):
        path = library.with_name(f"{library.stem}.{digest}.{attempt}{library.suffix}")
        if not path.exists():
            shutil.copyfile(library, path)
        lib, loaded = _opened(path, dlinfo)
        if loaded in (None, os.path.realpath(path)):
            return lib
    raise ToolchainError(f"{library}: the dynamic loader keeps returning another library ({loaded}) for it")


def _opened(path: Path, dlinfo) -> tuple[ctypes.CDLL, str | None]:
    """dlopen `path`: the library and the file glibc says it is (None: it cannot say)."""
    lib = ctypes.CDLL(str(path))
    link = ctypes.POINTER(_LinkMap)()
    if dlinfo(ctypes.c_void_p(lib._handle), RTLD_DI_LINKMAP, ctypes.byref(link)) != 0:
        return lib, None
    return lib, os.path.realpath(link.contents.l_name.decode())


class HostModel:
    """NAME_invoke from a shared library, as a numpy function. A model with several inputs or outputs
    (the pointer-array invoke of docs/c-interface.md) takes a tuple of input codes and returns its
    outputs side by side (quant.quantize.output_codes)."""

    def __init__(self, library: Path, name: str, input_size: int, output_size: int,
                 input_dtype: type = np.int8, output_dtype: type = np.int8,
                 inputs: list[tuple[int, type]] | None = None, outputs: list[tuple[int, type]] | None = None) -> None:
        self._lib = load_library(library)
        self._invoke = getattr(self._lib, f"{name}_invoke")
        self._invoke.restype = ctypes.c_int
        self._invoke.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        # (size, dtype) of each input and output; None for a one-input, one-output model
        self.inputs, self.outputs = inputs, outputs
        self.several = inputs is not None
        self.input_size, self.output_size = input_size, output_size
        self.input_dtype, self.output_dtype = input_dtype, output_dtype  # NAME_input_t, NAME_output_t
        self.name = name
        # set by `of` for a model converted with streaming: state bytes, values per push, arena bytes
        self._stream_state_size = self._stream_values = self._arena_size = 0
        self._stream_output_size = output_size  # a push's output (a stateful stream's new steps)

    @classmethod
    def of(cls, library: Path, conv) -> HostModel:
        """The model of an api.Conversion compiled into `library`."""
        g = conv.graph
        ins = [(g.tensors[t].size, g.tensors[t].quant.dtype) for t in g.inputs]
        outs = [(g.tensors[t].size, g.tensors[t].quant.dtype) for t in g.outputs]
        several = not g.single_io
        model = cls(library, conv.name, ins[0][0], sum(n for n, _ in outs), ins[0][1],
                    np.result_type(*(d for _, d in outs)), inputs=ins if several else None,
                    outputs=outs if several else None)
        stream = conv.report.get("stream")
        if stream is not None:
            model._stream_state_size = stream["state_bytes"]
            model._stream_values = stream["hop"] * stream["channels"]
            model._stream_output_size = stream.get("output_size_per_push") or model.output_size
            model._arena_size = conv.plan.arena_bytes
        return model

    def quantize_input(self, x: np.ndarray, k: int = 0) -> np.ndarray:
        """NAME_quantize_input (input k's NAME_quantize_input<k> for several inputs)."""
        size, dtype = self.inputs[k] if self.several else (self.input_size, self.input_dtype)
        x = np.ascontiguousarray(np.asarray(x, np.float32).reshape(-1))
        q = np.zeros(size, dtype)
        self._fn(f"quantize_input{k if self.several else ''}", None, [ctypes.c_void_p] * 2)(x.ctypes.data,
                                                                                           q.ctypes.data)
        return q

    def dequantize_output(self, q: np.ndarray, k: int = 0) -> np.ndarray:
        """NAME_dequantize_output (output k's NAME_dequantize_output<k> for several outputs)."""
        size, dtype = self.outputs[k] if self.several else (self.output_size, self.output_dtype)
        q = np.ascontiguousarray(np.asarray(q, dtype).reshape(-1))
        y = np.zeros(size, np.float32)
        self._fn(f"dequantize_output{k if self.several else ''}", None, [ctypes.c_void_p] * 2)(q.ctypes.data,
                                                                                              y.ctypes.data)
        return y

    # --- streaming (a model converted with a hop): NAME_stream_* of docs/c-interface.md
    def new_stream_state(self) -> np.ndarray:
        """A zeroed, reset state the application owns (int32 words: the alignment it needs)."""
        state = np.zeros(-(-self._stream_state_size // 4), np.int32)
        self._fn("stream_reset_state", None, [ctypes.c_void_p])(state.ctypes.data)
        return state

    def new_arena(self) -> np.ndarray:
        return np.zeros(max(-(-self._arena_size // 4), 1), np.int32)

    def stream_reset(self) -> None:
        self._fn("stream_reset", None, [])()

    def stream_push(self, samples: np.ndarray, state: np.ndarray | None = None,
                    arena: np.ndarray | None = None, output: np.ndarray | None = None) -> tuple[int, np.ndarray]:
        """Push one hop of time-major codes: (status, output). With `state`/`arena` (or None for a NULL
        pointer when the other is given) the app-owned-state form, else the static one. `output`: the
        buffer the push writes (zeros by default), to see what a push leaves alone."""
        x = np.ascontiguousarray(np.asarray(samples, self.input_dtype).reshape(-1))
        if x.size != self._stream_values:
            raise ValueError(f"a push takes {self._stream_values} values, got {x.size}")
        y = np.zeros(self._stream_output_size, self.output_dtype) if output is None else \
            np.ascontiguousarray(output, self.output_dtype).copy()
        if state is None and arena is None:
            status = self._fn("stream_push", ctypes.c_int, [ctypes.c_void_p] * 2)(x.ctypes.data, y.ctypes.data)
        else:
            pointer = (lambda a: None if a is None else a.ctypes.data)
            status = self._fn("stream_push_with_state", ctypes.c_int, [ctypes.c_void_p] * 4)(
                pointer(state), pointer(arena), x.ctypes.data, y.ctypes.data)
        return int(status), y

    def quantize_stream_input(self, x: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(np.asarray(x, np.float32).reshape(-1))
        q = np.zeros(self._stream_values, self.input_dtype)
        self._fn("quantize_stream_input", None, [ctypes.c_void_p] * 2)(x.ctypes.data, q.ctypes.data)
        return q

    def _fn(self, suffix: str, restype, argtypes):
        fn = getattr(self._lib, f"{self.name}_{suffix}")
        fn.restype, fn.argtypes = restype, argtypes
        return fn

    def __call__(self, x) -> np.ndarray:
        if self.several:
            return self._call_several(x)
        x = np.ascontiguousarray(np.asarray(x, self.input_dtype).reshape(-1))
        if x.size != self.input_size:
            raise ValueError(f"input has {x.size} values, the model takes {self.input_size}")
        y = np.zeros(self.output_size, self.output_dtype)
        status = self._invoke(x.ctypes.data, y.ctypes.data)
        if status != 0:
            raise RuntimeError(f"invoke returned CMSIS-NN status {status}")
        return y

    def _call_several(self, x) -> np.ndarray:
        parts = sample_inputs(x)
        if len(parts) != len(self.inputs):
            raise ValueError(f"{len(parts)} inputs given, the model takes {len(self.inputs)}")
        xs = [np.ascontiguousarray(np.asarray(p, d).reshape(-1)) for p, (_, d) in zip(parts, self.inputs)]
        for k, (arr, (size, _)) in enumerate(zip(xs, self.inputs)):
            if arr.size != size:
                raise ValueError(f"input {k} has {arr.size} values, the model takes {size}")
        ys = [np.zeros(size, d) for size, d in self.outputs]
        ins = (ctypes.c_void_p * len(xs))(*(a.ctypes.data for a in xs))
        outs = (ctypes.c_void_p * len(ys))(*(a.ctypes.data for a in ys))
        status = self._invoke(ctypes.addressof(ins), ctypes.addressof(outs))
        if status != 0:
            raise RuntimeError(f"invoke returned CMSIS-NN status {status}")
        return np.concatenate([y.astype(self.output_dtype) for y in ys])


def build_conversions(conversions: list, workdir: Path, library: str = "models") -> dict[str, HostModel]:
    """Write and compile many conversions into one shared library (one gcc run); name -> HostModel.

    `conversions` are api.Conversion objects with distinct names and one CMSIS-NN tree.
    """
    trees = {c.cmsis for c in conversions}
    if len(trees) != 1:
        raise ValueError("all conversions must use the same CMSIS-NN tree")
    workdir.mkdir(parents=True, exist_ok=True)
    c_files = []
    for c in conversions:
        (workdir / f"{c.name}.c").write_text(c.source)
        (workdir / f"{c.name}.h").write_text(c.header)
        c_files.append(workdir / f"{c.name}.c")
    c_files = one_translation_unit(c_files, workdir / f"{library}_all_models.c")
    so = build_shared_library(c_files, [workdir], trees.pop(), workdir / f"lib{library}.so")
    return {c.name: HostModel.of(so, c) for c in conversions}


@dataclass(frozen=True)
class HostTarget:
    """The host as a target (targets.interface.Target): gcc and ctypes; it measures no instructions,
    stack or image sizes (those are the Cortex-M boards')."""

    name: str = "host"
    machine: str = "the host"
    building: str = "building"

    def build(self, conv, workdir: Path, stream: bool = False) -> HostBuilt:
        # the library carries NAME_stream_push whenever the conversion streams: nothing more to build
        return HostBuilt(build_conversions([conv], workdir)[conv.name])


@dataclass(frozen=True)
class HostBuilt:
    model: HostModel

    def run(self, samples, pushes: np.ndarray | None = None) -> Ran:
        outputs = np.stack([self.model(x) for x in samples])
        if pushes is None:
            return Ran(outputs, Counts())
        self.model.stream_reset()
        statuses, pushed = [], []
        for hop in pushes:
            status, out = self.model.stream_push(hop)
            statuses.append(status)
            if status == 1:
                pushed.append(out)
        empty = np.zeros((0, self.model.output_size), self.model.output_dtype)
        return Ran(outputs, Counts(), statuses, np.stack(pushed) if pushed else empty)


HOOK_SOURCE = """/* Debug build: every layer's output goes to a callback the host sets (its bytes, its element width). */
#include <stdint.h>
typedef void (*onnx2cmsis_hook_fn)(int layer, const void *data, int32_t size, int32_t bits);
static onnx2cmsis_hook_fn hook;
void onnx2cmsis_set_layer_hook(onnx2cmsis_hook_fn fn) { hook = fn; }
void onnx2cmsis_layer_hook(int layer, const int8_t *data, int32_t size)
{
    if (hook) {
        hook(layer, data, size, 8);
    }
}
void onnx2cmsis_layer_hook16(int layer, const int16_t *data, int32_t size)
{
    if (hook) {
        hook(layer, data, size, 16);
    }
}
"""

_HOOK_TYPE = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32)


def layer_outputs(conv, x: np.ndarray, workdir: Path) -> list[np.ndarray]:
    """Every layer's output codes for one input, from a debug build of the generated C (the
    NAME_LAYER_HOOK the template provides): how `verify` names the first layer that goes wrong."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / f"{conv.name}.c").write_text(conv.source)
    (workdir / f"{conv.name}.h").write_text(conv.header)
    (workdir / "layer_hook.c").write_text(HOOK_SOURCE)
    so = build_shared_library([workdir / f"{conv.name}.c", workdir / "layer_hook.c"], [workdir], conv.cmsis,
                              # dlopen caches by path: a changed source must get a new file
                              workdir / f"lib{conv.name}_debug_{hashlib.sha256(conv.source.encode()).hexdigest()[:12]}.so",
                              extra_flags=(f"-D{conv.name.upper()}_LAYER_HOOK=onnx2cmsis_layer_hook",
                                           f"-D{conv.name.upper()}_LAYER_HOOK16=onnx2cmsis_layer_hook16"))
    model = HostModel.of(so, conv)
    seen: list[np.ndarray] = []

    def record(layer: int, data: int, size: int, bits: int) -> None:
        ctype = ctypes.c_int8 if bits == 8 else ctypes.c_int16
        seen.append(np.ctypeslib.as_array(ctypes.cast(data, ctypes.POINTER(ctype)), shape=(size,)).copy())

    callback = _HOOK_TYPE(record)
    model._lib.onnx2cmsis_set_layer_hook(callback)
    try:
        model(x)
    except RuntimeError:
        pass  # a failing status still leaves the layers before it
    finally:
        model._lib.onnx2cmsis_set_layer_hook(None)
    return seen
