"""CMSIS-NN API levels: which level the C is emitted for, detection from a tree, refusals.

The whole suite runs at the level of $CMSIS_NN_PATH (see conftest.py): the snapshot's 2024.01 in CI,
level 7 when it points at a CMSIS-NN v7.0.0+/main checkout. These tests pin down the choice itself.
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
from onnx2cmsis.cmsis_nn.source import SNAPSHOT_API, detect_api, fetch_snapshot
from onnx2cmsis.errors import ToolchainError
from onnx2cmsis.ops.dense import mve_kernel_sums

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "vibration" / "vibration_cnn.onnx"  # conv (k=5), pools, dense
CALIB = ROOT / "examples" / "vibration" / "calibration.npy"


def run_cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx2cmsis.cli", *args], capture_output=True, text=True,
                          env={**env, "PYTHONPATH": str(ROOT)})


@pytest.fixture
def no_tree_env(monkeypatch) -> dict[str, str]:
    monkeypatch.delenv("CMSIS_NN_PATH", raising=False)
    return dict(os.environ)


def test_default_is_level_7_and_needs_no_tree(no_tree_env):
    conv = convert(MODEL, CALIB)
    assert conv.cmsis.api == "7" and conv.cmsis.root is None
    assert conv.report["cmsis_nn"]["api"] == "7" and conv.report["cmsis_nn"]["sources"] is None
    assert "CMSIS-NN API level: 7" in conv.header
    # v6.0.0+ arm_convolve_s8 takes upscale_dims before output_dims
    assert conv.source.count("NULL /* no upscaling */") == sum(
        1 for layer in conv.report["layers"] if layer["kernel"] == "arm_convolve_s8")
    with pytest.raises(ToolchainError, match="needs a CMSIS-NN tree of API level 7"):
        conv.cmsis.include


def test_snapshot_level_on_request(no_tree_env):
    conv = convert(MODEL, CALIB, cmsis_api=SNAPSHOT_API)
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

    old = conv_layer(convert(tmp_path / "grouped.onnx", calib, cmsis_api=SNAPSHOT_API))
    new_conv = convert(tmp_path / "grouped.onnx", calib)
    new = conv_layer(new_conv)
    assert old["kernel"] == new["kernel"] == "arm_convolve_s8"
    assert old["weight_bytes"] - new["weight_bytes"] == 8 * 3 * (8 - 2)  # int8 weights: 8x3x8 -> 8x3x2
    assert old["macs"] == 4 * new["macs"]
    assert "const cmsis_nn_dims filter_dims = {8, 1, 3, 2};" in new_conv.source


@pytest.mark.parametrize("cols, lanes8, lanes16", [(15, 64, 64), (17, 96, 128), (33, 160, 192), (48, 192, 192)])
def test_conv_scratch_bytes_per_level(cols, lanes8, lanes16):
    """The largest of the DSP buffer (4 * cols rounded up to 4) and the MVE im2col buffer (4 rows of
    cols rounded up to 8 lanes in the snapshot, to 16 from v6.0.0 on), worked out by hand."""
    from onnx2cmsis.ops.conv import conv_scratch_bytes

    assert conv_scratch_bytes(1, cols, SNAPSHOT_API) == lanes8
    assert conv_scratch_bytes(1, cols, "7") == lanes16


def test_dense_mve_kernel_sums_per_level():
    """Each level's MVE kernel turns its kernel sums into bias + sum((x + offset) * w) its own way."""
    rng = np.random.default_rng(0)
    w = rng.integers(-127, 128, (8, 40), dtype=np.int64).astype(np.int8)
    bias = rng.integers(-2**20, 2**20, 8).astype(np.int32)
    x = rng.integers(-128, 128, 40).astype(np.int64)
    offset = 37
    want = bias.astype(np.int64) + (w.astype(np.int64) @ (x + offset))
    dot = w.astype(np.int64) @ x
    old = mve_kernel_sums(w, bias, offset, SNAPSHOT_API).astype(np.int64)
    assert np.array_equal(bias + dot + offset * old, want)  # snapshot: acc = bias + dot; acc += offset * sum
    new = mve_kernel_sums(w, bias, offset, "7").astype(np.int64)
    assert np.array_equal(new + dot, want)  # v6.0.0+: acc starts at the kernel sum


def test_detect_level_from_the_conv_prototype(tmp_path):
    assert detect_api(fetch_snapshot()) == SNAPSHOT_API
    include = tmp_path / "Include"
    include.mkdir()
    header = (fetch_snapshot() / "Include" / "arm_nnfunctions.h").read_text()
    start = header.index("arm_cmsis_nn_status arm_convolve_s8(")
    at = header.index("const cmsis_nn_dims *output_dims", start)  # v6.0.0 inserted upscale_dims here
    (include / "arm_nnfunctions.h").write_text(header[:at] + "const cmsis_nn_dims *upscale_dims, " + header[at:])
    assert detect_api(tmp_path) == "7"


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
    assert r.returncode == 1 and "'6' is not one of 2024.01, 7" in r.stderr and len(r.stderr.splitlines()) == 1


def test_cli_default_json_says_level_7(tmp_path, no_tree_env):
    r = run_cli("convert", str(MODEL), "-c", str(CALIB), "--out", str(tmp_path), env=no_tree_env)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "vibration_cnn.json").read_text())
    assert report["cmsis_nn"]["api"] == "7" and report["cmsis_nn"]["sources"] is None


def test_verify_builds_with_the_snapshot_by_default_and_refuses_level_7_without_a_tree(tmp_path, no_tree_env):
    data = tmp_path / "x.npy"
    np.save(data, np.load(CALIB)[:2])
    r = run_cli("verify", str(MODEL), "-c", str(CALIB), "-d", str(data), "--cmsis-nn-api", "7", env=no_tree_env)
    assert r.returncode == 1 and "building needs a CMSIS-NN tree of API level 7" in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run_cli("verify", str(MODEL), "-c", str(CALIB), "-d", str(data), env=no_tree_env)
    assert r.returncode == 0, r.stdout + r.stderr


def _level_7_tree() -> Path | None:
    root = os.environ.get("CMSIS_NN_PATH")
    return Path(root) if root and detect_api(Path(root)) == "7" else None


@pytest.mark.skipif(_level_7_tree() is None, reason="needs a level-7 CMSIS-NN tree: set CMSIS_NN_PATH to a "
                    "CMSIS-NN v6.0.0+ checkout (v7.0.0, main); CI has only the 2024.01 snapshot")
def test_level_7_code_runs_bit_exact_on_every_target(tmp_path):
    """The level-7 specifics in one model each: conv (upscale_dims, 16-lane MVE scratch), grouped conv
    (native groups) and dense (MVE kernel sums), on the host and on QEMU M0+/M4/M55."""
    from onnx2cmsis.targets.host import build_conversions
    from onnx2cmsis.targets.qemu import build_firmware, missing_tools, run_firmware
    from tests.onnx_builders import dense_case, depthwise_case

    rng = np.random.default_rng(11)
    convs = [convert(MODEL, CALIB)]
    i = 0
    while len(convs) < 3:
        case = depthwise_case(rng, i)
        if case.params["kind"] == "grouped":
            convs.append(convert(case.save(tmp_path), case.calibration, name=case.name))
        i += 1
    case = dense_case(rng, 0)
    convs.append(convert(case.save(tmp_path), case.calibration, name=case.name))
    assert all(c.cmsis.api == "7" for c in convs)
    inputs = {c.name: rng.integers(-128, 128, (4, c.graph.tensors[c.graph.inputs[0]].size)).astype(np.int8)
              for c in convs}
    want = {c.name: np.stack([c.reference(x) for x in inputs[c.name]]) for c in convs}
    host = build_conversions(convs, tmp_path / "host")
    for c in convs:
        assert np.array_equal(np.stack([host[c.name](x) for x in inputs[c.name]]), want[c.name]), c.name
    if missing_tools():
        return
    for target in ("m0plus", "m4", "m55"):
        out = run_firmware(build_firmware(convs, target, tmp_path / target), inputs)
        for c in convs:
            assert np.array_equal(out[c.name], want[c.name]), f"{target}: {c.name}"
