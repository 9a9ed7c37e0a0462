"""Properties of the generated C beyond the numbers: its helpers, its portability, its memory plan."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from onnx2cmsis.api import convert
from onnx2cmsis.arith.rules import dequantize_tensor, quantize_tensor
from onnx2cmsis.targets.host import build_conversions, one_translation_unit
from tests.needs import cross_compiler, module

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vibration"

CORTEX_M = {
    "m0plus": ["-mcpu=cortex-m0plus", "-mfloat-abi=soft"],
    "m4": ["-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"],
    "m7": ["-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=hard"],
    "m55": ["-mcpu=cortex-m55", "-mfloat-abi=hard"],
}
ALONE_ON = "m0plus"  # where the op zoo's files are also compiled one by one (the cheapest headers)


@pytest.fixture(scope="module")
def example():
    return convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy")


@pytest.fixture(scope="module")
def example_lib(example, tmp_path_factory):
    return build_conversions([example], tmp_path_factory.mktemp("example"))[example.name]


def test_quantize_input_in_c_matches_numpy(example, example_lib):
    q = example.graph.tensors[example.graph.inputs[0]].quant
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(example_lib.input_size) * 2).astype(np.float32)
    # exact halves between codes, saturation, NaN and infinities
    x[:8] = np.array([0.5, -0.5, 1.5, -1.5, 2.5, -2.5, 100.5, -7.5], np.float32) * np.float32(q.scale)
    x[8:13] = [1e9, -1e9, np.nan, np.inf, -np.inf]
    assert np.array_equal(example_lib.quantize_input(x), quantize_tensor(x, q))


def test_dequantize_output_in_c_matches_numpy(example, example_lib):
    q = example.graph.tensors[example.graph.outputs[0]].quant
    codes = np.arange(-128, 128, dtype=np.int8)[: example_lib.output_size]
    assert np.array_equal(example_lib.dequantize_output(codes), dequantize_tensor(codes, q))


def test_no_dynamic_memory_and_const_weights(example):
    assert "malloc(" not in example.source and "free(" not in example.source
    for line in example.source.splitlines():
        if "_weights[" in line and "=" in line:
            assert line.startswith(f"{example.name.upper()}_WEIGHTS_ATTR static const int8_t")


@pytest.mark.level
@pytest.mark.parametrize("cpu", sorted(CORTEX_M))
def test_cross_compiles_warning_free(example, tmp_path, cpu):
    cc = cross_compiler()
    (tmp_path / f"{example.name}.c").write_text(example.source)
    (tmp_path / f"{example.name}.h").write_text(example.header)
    cmd = [cc, "-mthumb", *CORTEX_M[cpu], "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2",
           "-I", str(example.cmsis.include), "-I", str(tmp_path), "-c", str(tmp_path / f"{example.name}.c"),
           "-o", str(tmp_path / "model.o")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def op_zoo(tmp_path_factory):
    from tests.zoo import make_op_zoo

    return make_op_zoo(tmp_path_factory.mktemp("zoo"))


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.level
@pytest.mark.parametrize("cpu", sorted(CORTEX_M))
def test_every_op_template_cross_compiles_warning_free(op_zoo, tmp_path, cpu):
    cc = cross_compiler()
    sources = []
    for conv in op_zoo:
        (tmp_path / f"{conv.name}.c").write_text(conv.source)
        (tmp_path / f"{conv.name}.h").write_text(conv.header)
        sources.append(str(tmp_path / f"{conv.name}.c"))
    kernels = {layer["kernel"] for conv in op_zoo for layer in conv.report["layers"]}
    assert {"arm_depthwise_conv_s8_opt", "arm_depthwise_conv_s8", "own loop (index table)"} <= kernels, kernels
    # Every model's code on every core, all as one translation unit (CMSIS-NN's headers, two thirds of
    # a small model's compile, read once; a warning still names its model's file); and on one core each
    # file alone too (ALONE_ON), so that a file that leans on another's includes cannot pass.
    if cpu != ALONE_ON:
        sources = [str(p) for p in one_translation_unit([Path(s) for s in sources], tmp_path / "all_models.c")]
    cmd = [cc, "-mthumb", *CORTEX_M[cpu], "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2",
           "-I", str(op_zoo[0].cmsis.include), "-I", str(tmp_path), "-c", *sources]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(sources) == (len(op_zoo) if cpu == ALONE_ON else 1)


def test_memory_plan_never_overlaps_live_buffers(example):
    """Every pair of arena buffers alive at the same step occupies disjoint bytes."""
    plan, graph = example.plan, example.graph
    bufs = plan.buffers
    assert bufs
    for a in bufs:
        assert 0 <= a.offset and a.offset + a.size <= plan.arena_bytes and a.offset % 4 == 0
        for b in bufs:
            if a is not b and a.start <= b.end and b.start <= a.end:
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset, (a, b)
    # each tensor's lifetime lies inside its buffer's: producer .. last reader
    for t, p in plan.tensors.items():
        if p.storage == "arena":
            users = [i for i, n in enumerate(graph.nodes) if t in n.inputs or t in n.outputs]
            assert any(b.offset == p.offset and b.start <= min(users) and max(users) <= b.end for b in bufs), t
    assert plan.arena_bytes >= plan.lower_bound
    assert plan.arena_bytes == plan.lower_bound


def test_example_arena_is_the_live_set_bound_worked_out_from_the_report(example):
    """The example is a chain: at each layer its input, its output and its scratch are live at once
    (views are free; the model's input and output stay in the caller's buffers). The largest such sum,
    from the report's shapes alone (not the planner's code), is the arena: 1,536 B, at the first max pool
    (1,024 B in, 512 B out)."""
    layers = [layer for layer in example.report["layers"] if layer["kernel"] != "none (view)"]
    size = lambda shape: (int(np.prod(shape)) + 3) // 4 * 4  # noqa: E731 - int8 tensors in 4-byte slots
    live = []
    for i, layer in enumerate(layers):
        reads = 0 if i == 0 else size(layer["input_shape"])  # layer 0 reads the caller's input
        writes = 0 if i == len(layers) - 1 else size(layer["output_shape"])  # the last writes the caller's output
        live.append(reads + writes + (layer["scratch_bytes"] + 3) // 4 * 4)
    assert max(live) == 1536 == example.report["arena_bytes"] == example.report["arena_lower_bound_bytes"], live


def test_io_types_follow_the_tensor_width(example, tmp_path):
    """The type rule (docs/c-interface.md): typedefs and BITS macros for the input and output, used
    by every entry point; an int8 model's are int8_t, so int8_t buffers still compile with -Werror."""
    name, NAME = example.name, example.name.upper()
    assert f"typedef int8_t {name}_input_t;" in example.header and f"typedef int8_t {name}_output_t;" in example.header
    assert f"#define {NAME}_INPUT_BITS 8" in example.header and f"#define {NAME}_OUTPUT_BITS 8" in example.header
    for text in (example.header, example.source):
        assert f"int {name}_invoke(const {name}_input_t *input, {name}_output_t *output)" in text
        assert f"_quantize_input(const float *input, {name}_input_t *quantized)" in text
        assert f"_dequantize_output(const {name}_output_t *quantized, float *output)" in text
    assert f"{NAME}_LAYER_HOOK16" not in example.source  # no 16-bit layer
    (tmp_path / f"{name}.h").write_text(example.header)
    (tmp_path / "user.c").write_text(f'#include "{name}.h"\nint8_t in[{NAME}_INPUT_SIZE], out[{NAME}_OUTPUT_SIZE];\n'
                                     f"int run(void) {{ return {name}_invoke(in, out); }}\n")
    r = subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-c", str(tmp_path / "user.c"),
                        "-o", str(tmp_path / "user.o")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_a_16_bit_input_and_output_get_int16_types_and_saturation(example):
    """The same templates with the input and output quantized to 16 bits (as --precision int16 will):
    int16_t typedefs, BITS 16, quantize_input saturating to the int16 range, a 16-bit layer hook."""
    from dataclasses import replace

    from onnx2cmsis.codegen.emit_c import render

    g = example.graph
    for t in (g.inputs[0], g.outputs[0]):
        g.tensors[t].quant = replace(g.tensors[t].quant, zero_point=0, bits=16)
    try:
        summary = {k: example.report[k] for k in ("model_file", "model_sha256", "weights_bytes")}
        summary.update(input_shape=example.report["input"]["shape"], output_shape=example.report["output"]["shape"],
                       input_layout="flat", input_window=None, input_windows=[None], cmsis_api="7", cmsis_probe="1",
                       cmsis_versions="any", stream=None)
        source, header = render(example.name, g, example.layers, example.plan, summary)
    finally:
        for t, q in ((g.inputs[0], example.report["input"]), (g.outputs[0], example.report["output"])):
            g.tensors[t].quant = replace(g.tensors[t].quant, zero_point=q["zero_point"], bits=8)
    name, NAME = example.name, example.name.upper()
    assert f"typedef int16_t {name}_input_t;" in header and f"#define {NAME}_OUTPUT_BITS 16" in header
    assert "(int16_t)(q < -32768 ? -32768 : (q > 32767 ? 32767 : q))" in source and "v >= 65536.0f" in source
    assert f"#ifdef {NAME}_LAYER_HOOK16\n    {NAME}_LAYER_HOOK16(" in source  # the last layer writes the output


def test_the_application_can_own_the_arena(example, tmp_path):
    """NAME_invoke_with_arena: an app arena gives NAME_invoke's bytes; NULL or misaligned is -1; two
    models run one after another share one arena of the larger size."""
    import ctypes

    from tests.onnx_builders import dense_case

    case = dense_case(np.random.default_rng(3), 1)
    other = convert(case.save(tmp_path), case.calibration, name="other", **case.options)
    libs = build_conversions([example, other], tmp_path / "build")
    lib = libs[example.name]._lib
    shared = max(example.plan.arena_bytes, other.plan.arena_bytes)
    arena = (ctypes.c_int32 * ((shared + 8) // 4))()
    rng = np.random.default_rng(0)
    for model, conv in ((lib, example), (libs["other"]._lib, other)):
        fn = getattr(model, f"{conv.name}_invoke_with_arena")
        fn.restype, fn.argtypes = ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        for _ in range(3):
            x = rng.integers(-128, 128, conv.graph.tensors[conv.graph.inputs[0]].size).astype(np.int8)
            y = np.zeros(conv.graph.tensors[conv.graph.outputs[0]].size, np.int8)
            assert fn(ctypes.addressof(arena), x.ctypes.data, y.ctypes.data) == 0
            assert np.array_equal(y, conv.reference(x))
        if conv.plan.arena_bytes:  # a model without an arena accepts NULL
            assert fn(None, x.ctypes.data, y.ctypes.data) == -1
            assert fn(ctypes.addressof(arena) + 1, x.ctypes.data, y.ctypes.data) == -1
    assert example.plan.arena_bytes > 0


@pytest.mark.level
@pytest.mark.parametrize("compiler", ["gcc", "arm-none-eabi-gcc"])
def test_placement_macros_and_no_static_arena_compile_strictly(example, tmp_path, compiler):
    cc = cross_compiler() if compiler != "gcc" else "gcc"
    cpu = ["-mthumb", *CORTEX_M["m4"]] if compiler != "gcc" else []
    (tmp_path / f"{example.name}.c").write_text(example.source)
    (tmp_path / f"{example.name}.h").write_text(example.header)
    NAME = example.name.upper()
    defines = [f"-D{NAME}_NO_STATIC_ARENA", f"-D{NAME}_WEIGHTS_ATTR=__attribute__((section(\".rodata.model\")))",
               f"-D{NAME}_ARENA_ATTR=__attribute__((aligned(8)))"]
    cmd = [cc, *cpu, "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-O2", *defines, "-I",
           str(example.cmsis.include), "-I", str(tmp_path), "-c", str(tmp_path / f"{example.name}.c"), "-o",
           str(tmp_path / "model.o")]
    r = subprocess.run(cmd, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    nm = "nm" if compiler == "gcc" else "arm-none-eabi-nm"
    symbols = subprocess.run([nm, str(tmp_path / "model.o")], capture_output=True, text=True).stdout
    assert f"{example.name}_invoke_with_arena" in symbols and f" {example.name}_invoke\n" not in symbols
    assert f"{example.name}_arena" not in symbols.replace("_invoke_with_arena", "")
    sections = subprocess.run(["objdump" if compiler == "gcc" else "arm-none-eabi-objdump", "-h",
                               str(tmp_path / "model.o")], capture_output=True, text=True).stdout
    assert ".rodata.model" in sections


@pytest.mark.parametrize("model, steps, channels, time_major", [
    (EXAMPLE / "vibration_cnn.onnx", 128, 3, 0),  # PyTorch: (N, C, W)
    (EXAMPLE.parent / "vibration_keras" / "vibration_cnn.h5", 128, 3, 1),  # Keras: (N, W, C)
])
def test_the_header_says_how_the_input_window_is_laid_out(model, steps, channels, time_major):
    """NAME_INPUT_STEPS/CHANNELS/TIME_MAJOR and the header comment follow the model's own layout."""
    if model.suffix == ".h5":
        module("keras", 'pip install -e ".[keras]"')
    conv = convert(model, np.zeros((4, *([channels, steps] if not time_major else [steps, channels])), np.float32))
    NAME = conv.name.upper()
    assert (f"#define {NAME}_INPUT_STEPS {steps}\n#define {NAME}_INPUT_CHANNELS {channels}\n"
            f"#define {NAME}_INPUT_TIME_MAJOR {time_major}") in conv.header
    expect = "time-major (W, C): input[t * C + c]" if time_major else "channel-major (C, W): input[c * W + t]"
    assert f"zero point {conv.report['input']['zero_point']} ({expect})" in conv.header


def test_a_feature_vector_input_has_no_window_macros(tmp_path):
    from tests.onnx_builders import dense_case

    case = dense_case(np.random.default_rng(0), 0)
    conv = convert(case.save(tmp_path), case.calibration)
    assert "_INPUT_STEPS" not in conv.header and "(flat)" in conv.header


def test_layer_identifiers_keep_whole_words_without_the_exporters_scope():
    from onnx2cmsis.codegen.naming import c_identifier, layer_names

    names = ["functional_11_1/conv1d_1/convolution", "functional_11_1/max_pooling1d_1/MaxPool1d",
             "functional_11_1/dense_1_2/MatMul"]
    assert layer_names(names) == ["conv1d_1/convolution", "max_pooling1d_1/MaxPool1d", "dense_1_2/MatMul"]
    assert layer_names(["conv", "relu"]) == ["conv", "relu"]  # no shared scope: unchanged
    assert layer_names(["a/x", "a/y", "b/z"]) == ["a/x", "a/y", "b/z"]
    assert c_identifier("global_average_pooling1d_1/Mean_pooled_output") == "global_average_pooling1d_1_Mean"
    assert c_identifier("x" * 40) == "x" * 32  # no word boundary near: a hard cut


def test_the_keras_example_header_reads_well(tmp_path):
    module("keras", 'pip install -e ".[keras]"')
    keras_example = EXAMPLE.parent / "vibration_keras"
    conv = convert(keras_example / "vibration_cnn.h5", keras_example / "calibration.npy")
    assert " *    0 l00_conv1d                           Conv+Add+Relu -> arm_convolve_s8\n" in conv.header
    assert "_functional_" not in conv.source and ":  */" not in conv.source  # no scope in names, no empty comments
