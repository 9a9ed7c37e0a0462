"""CMSIS-NN API levels: which level the C is emitted for, detection from a tree, refusals, and the
generated C refusing to compile against another generation.

The whole suite runs at the level of $CMSIS_NN_PATH (see conftest.py); `python -m tests.run_levels`
(what CI runs) runs it at v7.0.0 and these level tests also at main and at the 2024.01 snapshot.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from onnx2cmsis.api import convert
from onnx2cmsis.ir.target import LEVEL_7, SNAPSHOT_API
from onnx2cmsis.cmsis_nn.fetch import fetch_snapshot
from onnx2cmsis.cmsis_nn.source import detect_api, detect_capabilities
from onnx2cmsis.errors import ToolchainError
from tests.needs import LEVEL_7_TREE_VARIABLE, cache_without_level_7, level_7_tree

pytestmark = pytest.mark.level

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "vibration" / "vibration_cnn.onnx"  # conv (k=5), pools, dense
CALIB = ROOT / "examples" / "vibration" / "calibration.npy"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx2cmsis.cli", *args], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def no_tree_env(monkeypatch, tmp_path_factory) -> dict[str, str]:
    """No CMSIS_NN_PATH and a cache with no level-7 tree: what these tests assert must not depend on
    what the user fetched before."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache_without_level_7(tmp_path_factory.mktemp("cache"))))
    monkeypatch.delenv("CMSIS_NN_PATH", raising=False)
    monkeypatch.delenv(LEVEL_7_TREE_VARIABLE, raising=False)
    return dict(os.environ)


def test_default_is_level_7_and_needs_no_tree(no_tree_env, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))  # no fetched tree either
    conv = convert(MODEL, CALIB)
    assert conv.cmsis.api == LEVEL_7 and conv.cmsis.root is None
    assert conv.report["cmsis_nn"]["api"] == "7"
    assert conv.report["cmsis_nn"]["sources_from"] == "the file list of CMSIS-NN v7.0.0"
    assert "CMSIS-NN API level: 7" in conv.header
    # v7.0.0+ arm_convolve_s8 takes upscale_dims before output_dims
    assert conv.source.count("NULL /* no upscaling */") == sum(
        1 for layer in conv.report["layers"] if layer["kernel"] == "arm_convolve_s8")
    with pytest.raises(ToolchainError, match="needs a CMSIS-NN tree of API level 7"):
        conv.cmsis.include


def test_snapshot_level_on_request(no_tree_env):
    fetch_snapshot()  # a fetched tree is used
    conv = convert(MODEL, CALIB, cmsis_api=SNAPSHOT_API.level)
    assert conv.cmsis.api == SNAPSHOT_API and conv.cmsis.root == fetch_snapshot()
    assert "no upscaling" not in conv.source
    assert "Source/ConvolutionFunctions/arm_convolve_s8.c" in conv.report["cmsis_nn"]["sources"]


def test_grouped_conv_is_native_at_level_7_and_block_diagonal_before(tmp_path, no_tree_env):
    """Same bytes out (the sweeps and QEMU runs prove both builds), but level 7 stores and multiplies
    1/groups of the block-diagonal weights."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(3)
    w = numpy_helper.from_array((rng.standard_normal((8, 2, 3)) / 2).astype(np.float32), "w")
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3], pads=[1, 1], group=4, name="grouped")
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 20])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "grouped.onnx"))
    calib = rng.standard_normal((16, 8, 20)).astype(np.float32)
    def conv_layer(conv):
        (layer,) = [layer for layer in conv.report["layers"] if layer["op"] == "conv1d"]
        return layer

    old = conv_layer(convert(tmp_path / "grouped.onnx", calib, cmsis_api=SNAPSHOT_API.level))
    new_conv = convert(tmp_path / "grouped.onnx", calib)
    new = conv_layer(new_conv)
    assert old["kernel"] == new["kernel"] == "arm_convolve_s8"
    assert old["weight_bytes"] - new["weight_bytes"] == 8 * 3 * (8 - 2)  # int8 weights: 8x3x8 -> 8x3x2
    assert old["macs"] == 4 * new["macs"]
    assert "const cmsis_nn_dims filter_dims = {8, 1, 3, 2};" in new_conv.source


def _patched_snapshot(tmp_path: Path, upscale: bool, groups: bool, lanes16: bool, sums: bool,
                      per_channel_fc: bool, bias_struct: bool, transpose_wrapper: bool, lstm: bool) -> Path:
    """The snapshot's header and buffer-size source with some of level 7's capabilities written in, as
    CMSIS-NN's own changes wrote them (v6.0.0: groups, 16 lanes and the new kernel sums; v7.0.0: upscale_dims)."""
    snap = fetch_snapshot()
    header = (snap / "Include" / "arm_nnfunctions.h").read_text()
    start = header.index("arm_cmsis_nn_status arm_convolve_s8(")
    if upscale:
        at = header.index("const cmsis_nn_dims *output_dims", start)
        header = header[:at] + "const cmsis_nn_dims *upscale_dims, " + header[at:]
    if groups:
        doc = header.rindex("/**", 0, start)
        header = header[:doc] + "/**\n * CK != C_IN is used for grouped convolution" + header[doc + 3:]
    if sums:
        at = header.index("const int8_t *vector_data);")
        header = header[:at] + "const int8_t *vector_data, const int32_t lhs_offset, const int32_t *bias_data);" + \
            header[at + len("const int8_t *vector_data);"):]
    if per_channel_fc:
        header += ("\narm_cmsis_nn_status arm_fully_connected_per_channel_s8(const cmsis_nn_context *ctx, "
                   "const int8_t *input_data);\n")
    if bias_struct:
        start = header.index("arm_cmsis_nn_status arm_convolve_wrapper_s16(")
        at = header.index("const int64_t *bias_data", start)
        header = header[:at] + "const cmsis_nn_bias_data *bias_data" + header[at + len("const int64_t *bias_data"):]
    if transpose_wrapper:
        header += ("\narm_cmsis_nn_status arm_transpose_conv_wrapper_s8(const cmsis_nn_context *ctx, "
                   "const int8_t *input_data);\n")
    if lstm:
        header += ("\narm_cmsis_nn_status arm_lstm_unidirectional_s8(const int8_t *input, int8_t *output, "
                   "const cmsis_nn_lstm_params *params, cmsis_nn_lstm_context *buffers);\n")
    sizes = (snap / "Source" / "ConvolutionFunctions" / "arm_convolve_get_buffer_sizes_s8.c").read_text()
    if lanes16:
        sizes = sizes.replace("col_length = (col_length + 7) / 8;", "col_length = (col_length + 15) / 16;")
    flags = (upscale, groups, lanes16, sums, per_channel_fc, bias_struct, transpose_wrapper, lstm)
    tree = tmp_path / f"tree{''.join(str(int(f)) for f in flags)}"
    (tree / "Include").mkdir(parents=True)
    (tree / "Source" / "ConvolutionFunctions").mkdir(parents=True)
    (tree / "Include" / "arm_nnfunctions.h").write_text(header)
    (tree / "Include" / "arm_nnsupportfunctions.h").write_text((snap / "Include" / "arm_nnsupportfunctions.h").read_text())
    (tree / "Source" / "ConvolutionFunctions" / "arm_convolve_get_buffer_sizes_s8.c").write_text(sizes)
    return tree


def test_each_capability_is_read_from_the_tree(tmp_path):
    """Every capability flips on its own fact in the tree; a v6.0.0-like mix is refused by name."""
    assert detect_capabilities(fetch_snapshot()) == SNAPSHOT_API.capabilities()
    assert detect_api(fetch_snapshot()) == SNAPSHOT_API
    names = list(SNAPSHOT_API.capabilities())
    for i, name in enumerate(names):
        flags = [j == i for j in range(len(names))]
        found = detect_capabilities(_patched_snapshot(tmp_path, *flags))
        assert {k for k in names if found[k] != SNAPSHOT_API.capabilities()[k]} == {name}, (name, found)
    assert detect_api(_patched_snapshot(tmp_path, True, True, True, True, True, True, True, True)) == LEVEL_7
    with pytest.raises(ToolchainError, match=r"CMSIS-NN v6\.0\.0 .*use CMSIS-NN v7\.0\.0 or later"):
        detect_api(_patched_snapshot(tmp_path, False, True, True, True, False, False, False, False))


def test_level_7_trees_detected():
    tree = level_7_tree()
    assert detect_capabilities(tree) == LEVEL_7.capabilities() and detect_api(tree) == LEVEL_7


def _compile(source_dir: Path, name: str, tree: Path) -> subprocess.CompletedProcess:
    return subprocess.run(["gcc", "-std=c99", "-Wall", "-Wextra", "-Werror", "-pedantic", "-I", str(tree / "Include"),
                           "-I", str(source_dir), "-c", str(source_dir / f"{name}.c"), "-o", os.devnull],
                          capture_output=True, text=True)


def test_generated_c_refuses_another_generation_at_compile_time(tmp_path):
    """Level-7 C against the snapshot and 2024.01 C against a level-7 tree stop at an #error that names
    the level the C needs; each compiles against its own tree. A dense-only model is the case a
    signature change cannot catch (its MVE kernel sums differ silently between the levels)."""
    from tests.onnx_builders import dense_case

    case = dense_case(np.random.default_rng(1), 0)
    trees = {"7": level_7_tree(), SNAPSHOT_API.level: fetch_snapshot()}
    for model, calib, stem in ((MODEL, CALIB, "example"), (case.save(tmp_path), case.calibration, "dense_only")):
        for level, tree in trees.items():
            conv = convert(model, calib, name=f"{stem}_{level.replace('.', '_')}", cmsis_nn=tree)
            (tmp_path / f"{conv.name}.c").write_text(conv.source)
            (tmp_path / f"{conv.name}.h").write_text(conv.header)
            assert _compile(tmp_path, conv.name, tree).returncode == 0
            other = trees[SNAPSHOT_API.level if level == "7" else "7"]
            r = _compile(tmp_path, conv.name, other)
            first_error = next(line for line in r.stderr.splitlines() if "error" in line)
            assert r.returncode != 0 and "#error" in first_error, r.stderr
            assert f"{conv.name}.c was generated for CMSIS-NN API level {level}:" in first_error
            assert ("CMSIS-NN v7.0.0 or later" if level == "7" else "January 2024 CMSIS-NN snapshot") in first_error


@pytest.mark.slow
@pytest.mark.qemu
def test_dense_kernel_sums_on_m55(tmp_path):
    """The MVE fully-connected kernels (per-tensor, and per-channel at level 7) start from the
    precomputed kernel sums, whose form differs per level: dense layers with non-zero input offsets,
    run on QEMU's Cortex-M55 against the suite's tree, match the reference (which the sweeps tie to
    tflite-micro)."""
    from onnx2cmsis.targets.qemu import build_firmware, run_firmware
    from tests.needs import qemu_tools
    from tests.onnx_builders import dense_case

    qemu_tools()
    rng = np.random.default_rng(21)
    convs = []
    for i in range(12):
        case = dense_case(rng, i)
        convs.append(convert(case.save(tmp_path), case.calibration, name=case.name, **case.options))
    offsets = [c.graph.tensors[n.inputs[0]].quant.zero_point for c in convs for n in c.graph.nodes if n.op == "dense"]
    assert sum(o != 0 for o in offsets) >= 6, offsets
    assert {c.report["quantization"]["dense_weights"] for c in convs} == {"per-tensor", "per-channel"}
    inputs = {c.name: rng.integers(-128, 128, (4, c.graph.tensors[c.graph.inputs[0]].size)).astype(np.int8)
              for c in convs}
    out = run_firmware(build_firmware(convs, "m55", tmp_path / "m55"), inputs)
    for c in convs:
        assert np.array_equal(out[c.name], np.stack([c.reference(x) for x in inputs[c.name]])), c.name


def test_cli_refuses_a_level_that_does_not_match_the_tree(tmp_path, no_tree_env):
    r = run_cli("convert", str(MODEL), "-c", str(CALIB), "--out", str(tmp_path), "--cmsis-nn", str(fetch_snapshot()),
                "--cmsis-nn-api", "7", env=no_tree_env)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "--cmsis-nn-api 7 does not match" in lines[0] and "API level 2024.01" in lines[0]
    assert list(tmp_path.iterdir()) == []


def test_cli_refuses_an_unknown_level(tmp_path, no_tree_env):
    r = run_cli("convert", str(MODEL), "-c", str(CALIB), "--out", str(tmp_path), "--cmsis-nn-api", "6",
                env=no_tree_env)
    assert r.returncode == 2 and "'6' is not one of 2024.01, 7" in r.stderr and len(r.stderr.splitlines()) == 1


def test_cli_default_json_says_level_7(tmp_path, no_tree_env):
    fast = ("--dense-weights", "per-tensor", "--no-bias-correction")  # about the tree, not the quantization
    r = run_cli("convert", str(MODEL), "-c", str(CALIB), "--out", str(tmp_path), *fast, env=no_tree_env)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "vibration_cnn.json").read_text())
    assert report["cmsis_nn"]["api"] == "7"
    assert "Source/ConvolutionFunctions/arm_convolve_s8.c" in report["cmsis_nn"]["sources"]
    # where the source list came from, and how to get a tree to build with
    assert ("CMSIS-NN: API level 7 (CMSIS-NN v7.0.0 or later (v7.0.0, main)); no tree here, sources listed from "
            "the file list of CMSIS-NN v7.0.0. To build: onnx2cmsis cmsis-nn fetch --level 7") in r.stdout
    mk = (tmp_path / "vibration_cnn.mk").read_text()
    assert all(f"$(CMSIS_NN_PATH)/{source}" in mk for source in report["cmsis_nn"]["sources"])
    r = run_cli("convert", str(MODEL), "-c", str(CALIB), "--out", str(tmp_path), "--cmsis-nn", str(fetch_snapshot()),
                *fast, env=no_tree_env)
    assert f"CMSIS-NN: {fetch_snapshot().resolve()} (API level 2024.01)" in r.stdout


@pytest.mark.slow
@pytest.mark.heavy
def test_verify_builds_with_a_fetched_tree_and_refuses_a_level_without_one(tmp_path, no_tree_env):
    data = tmp_path / "x.npy"
    np.save(data, np.load(CALIB)[:2])
    fetch_snapshot()
    r = run_cli("verify", str(MODEL), "-c", str(CALIB), "-d", str(data), "--cmsis-nn-api", "7",
                env={**no_tree_env, "XDG_CACHE_HOME": str(tmp_path / "empty")})
    assert r.returncode == 1 and "building needs a CMSIS-NN tree of API level 7" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("verify", str(MODEL), "-c", str(CALIB), "-d", str(data), env=no_tree_env)
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.mark.slow
@pytest.mark.qemu
def test_level_7_code_runs_bit_exact_on_every_target(tmp_path):
    """The level-7 specifics in one model each: conv (upscale_dims, 16-lane MVE scratch), grouped conv
    (native groups) and dense (MVE kernel sums), on the host and on QEMU M0+/M4/M55."""
    from onnx2cmsis.targets.host import build_conversions
    from onnx2cmsis.targets.qemu import build_firmware, run_firmware
    from tests.needs import qemu_tools
    from tests.onnx_builders import dense_case, depthwise_case

    tree = level_7_tree()
    rng = np.random.default_rng(11)
    convs = [convert(MODEL, CALIB, cmsis_nn=tree)]
    i = 0
    while len(convs) < 3:
        case = depthwise_case(rng, i)
        if case.params["kind"] == "grouped":
            convs.append(convert(case.save(tmp_path), case.calibration, name=case.name, cmsis_nn=tree, **case.options))
        i += 1
    case = dense_case(rng, 0)
    convs.append(convert(case.save(tmp_path), case.calibration, name=case.name, cmsis_nn=tree, **case.options))
    assert all(c.cmsis.api == LEVEL_7 for c in convs)
    inputs = {c.name: rng.integers(-128, 128, (4, c.graph.tensors[c.graph.inputs[0]].size)).astype(np.int8)
              for c in convs}
    want = {c.name: np.stack([c.reference(x) for x in inputs[c.name]]) for c in convs}
    host = build_conversions(convs, tmp_path / "host")
    for c in convs:
        assert np.array_equal(np.stack([host[c.name](x) for x in inputs[c.name]]), want[c.name]), c.name
    qemu_tools()
    for target in ("m0plus", "m4", "m55"):
        out = run_firmware(build_firmware(convs, target, tmp_path / target), inputs)
        for c in convs:
            assert np.array_equal(out[c.name], want[c.name]), f"{target}: {c.name}"
