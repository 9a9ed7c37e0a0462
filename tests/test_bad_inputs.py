"""A corpus of bad inputs: each must end with exit code 1, one line naming what and where, no
traceback, and no file in the output folder."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from onnx2cmsis.cli import app

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "vibration" / "vibration_cnn.onnx"
CALIB = ROOT / "examples" / "vibration" / "calibration.npy"


def _save(tmp: Path, nodes: list, shape: list, inits: list, name: str = "m.onnx", out_shape=None,
          inputs: list | None = None, opset: int = 17) -> str:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, out_shape)
    graph = helper.make_graph(nodes, "g", inputs or [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.save(model, str(tmp / name))
    return str(tmp / name)


def _conv(tmp: Path, weights: np.ndarray, width: int = 16, name: str = "m.onnx") -> str:
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[weights.shape[2]], name="the_conv")
    return _save(tmp, [node], [1, weights.shape[1], width], [numpy_helper.from_array(weights, "w")], name)


def _calib(tmp: Path, array: np.ndarray, name: str = "c.npy") -> str:
    np.save(tmp / name, array)
    return str(tmp / name)


W = np.ones((4, 2, 3), np.float32) * 0.1
GOOD_CALIB = np.random.default_rng(0).standard_normal((8, 2, 16)).astype(np.float32)


def _external_data(tmp: Path, location: str) -> str:
    model = onnx.load(_conv(tmp, W))
    tensor = model.graph.initializer[0]
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    onnx.save(model, str(tmp / "ext.onnx"))
    return str(tmp / "ext.onnx")


def _two_inputs(tmp: Path) -> str:
    a = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 8])
    b = helper.make_tensor_value_info("x2", TensorProto.FLOAT, [1, 2, 8])
    return _save(tmp, [helper.make_node("Add", ["x", "x2"], ["y"])], [1, 2, 8], [], inputs=[a, b])


# case -> builder(tmp) returning (model, calibration, extra args), and the text the one line must hold
CASES: dict[str, tuple[Callable[[Path], tuple[str, str, list[str]]], str]] = {
    "empty_onnx": (lambda t: ((t / "e.onnx").write_bytes(b"") and "" or str(t / "e.onnx"), str(CALIB), []),
                   "the graph has no nodes"),
    "truncated_onnx": (lambda t: ((t / "t.onnx").write_bytes(MODEL.read_bytes()[:700]) and str(t / "t.onnx"),
                                  str(CALIB), []), "not a readable ONNX model"),
    "text_as_onnx": (lambda t: ((t / "x.onnx").write_text("hello, I am not a model\n") and str(t / "x.onnx"),
                                str(CALIB), []), "not a readable ONNX model"),
    "missing_model": (lambda t: (str(t / "nope.onnx"), str(CALIB), []), "file not found"),
    "unknown_suffix": (lambda t: ((t / "m.pb").write_bytes(b"TFL3") and str(t / "m.pb"), str(CALIB), []),
                       "unknown model type '.pb'"),
    "truncated_tflite": (lambda t: ((t / "m.tflite").write_bytes(b"TFL3") and str(t / "m.tflite"), str(CALIB), []),
                         "not a readable .tflite model"),
    "empty_h5": (lambda t: ((t / "e.h5").write_bytes(b"") or str(t / "e.h5"), str(CALIB), []),
                 "not a readable Keras model"),
    "truncated_h5": (lambda t: ((t / "t.h5").write_bytes(
        (ROOT / "tests" / "keras_models" / "autoencoder.h5").read_bytes()[:3000]) and str(t / "t.h5"), str(CALIB), []),
                     "not a readable Keras model"),
    "external_data_outside_folder": (lambda t: (_external_data(t, "../../etc/passwd"), _calib(t, GOOD_CALIB), []),
                                     "outside"),
    "external_data_absolute": (lambda t: (_external_data(t, "/etc/passwd"), _calib(t, GOOD_CALIB), []), "outside"),
    "external_data_missing": (lambda t: (_external_data(t, "weights.bin"), _calib(t, GOOD_CALIB), []),
                              "weights.bin"),
    "dynamic_dimension": (lambda t: (_save(t, [helper.make_node("Relu", ["x"], ["y"])], [1, 2, "time"], []),
                                     _calib(t, GOOD_CALIB), []), "dynamic dimension 'time'"),
    "zero_size_dimension": (lambda t: (_save(t, [helper.make_node("Relu", ["x"], ["y"])], [1, 2, 0], []),
                                       _calib(t, np.zeros((4, 2, 0), np.float32)), []), "zero-size"),
    "rank_5_input": (lambda t: (_save(t, [helper.make_node("MaxPool", ["x"], ["y"], kernel_shape=[2, 2, 2])],
                                      [1, 2, 3, 4, 5], []), _calib(t, np.zeros((4, 2, 3, 4, 5), np.float32)), []),
                     "only 1D MaxPool is supported, got input shape [2, 3, 4, 5]"),
    "nan_weights": (lambda t: (_conv(t, np.where(np.arange(24).reshape(4, 2, 3) == 5, np.nan, W).astype(np.float32)),
                               _calib(t, GOOD_CALIB), []), "node 'the_conv' (Conv): its weight holds NaN or Inf"),
    "inf_weights": (lambda t: (_conv(t, np.where(np.arange(24).reshape(4, 2, 3) == 0, np.inf, W).astype(np.float32)),
                               _calib(t, GOOD_CALIB), []), "holds NaN or Inf"),
    "nan_calibration": (lambda t: (_conv(t, W), _calib(t, np.where(np.arange(8)[:, None, None] == 3, np.nan,
                                                                    GOOD_CALIB).astype(np.float32)), []),
                        "calibration sample 3 holds NaN or Inf"),
    "calibration_wrong_shape": (lambda t: (_conv(t, W), _calib(t, np.zeros((8, 16, 2), np.float32)), []),
                                "calibration data has shape (8, 16, 2), expected (N, 2, 16): each sample is the "
                                "model's input transposed; give np.swapaxes(x, 1, 2)"),
    "calibration_other_shape": (lambda t: (_conv(t, W), _calib(t, np.zeros((8, 2, 15), np.float32)), []),
                                "calibration data has shape (8, 2, 15), expected (N, 2, 16)"),
    "calibration_strings": (lambda t: (_conv(t, W), _calib(t, np.array([["a", "b"]])), []), "dtype <U1"),
    "calibration_empty": (lambda t: (_conv(t, W), _calib(t, np.zeros((0, 2, 16), np.float32)), []),
                          "calibration data has shape (0, 2, 16)"),
    "calibration_missing": (lambda t: (_conv(t, W), str(t / "none.npy"), []), "calibration file not found"),
    "calibration_garbage": (lambda t: ((t / "g.npy").write_bytes(b"\x93NUMPY garbage") and _conv(t, W),
                                       str(t / "g.npy"), []), "not a readable .npy/.npz array"),
    "calibration_empty_npz": (lambda t: (np.savez(t / "e.npz") or _conv(t, W), str(t / "e.npz"), []),
                              "holds no array"),
    "two_inputs_npy": (lambda t: (_two_inputs(t), _calib(t, GOOD_CALIB), []),
                       "c.npy: a model with 2 inputs ('x', 'x2') takes a .npz with one array per input"),
    "two_inputs_npz_names": (lambda t: (_two_inputs(t), np.savez(t / "n.npz", x=GOOD_CALIB[:, :, :8],
                                                                 y=GOOD_CALIB[:, :, :8]) or str(t / "n.npz"), []),
                             "n.npz: a model with 2 inputs takes a .npz with one array per input, named after "
                             "them ('x', 'x2') or arr_0..arr_1 in input order; this one holds 'x', 'y'"),
    "two_inputs_npz_counts": (lambda t: (_two_inputs(t), np.savez(t / "k.npz", x=GOOD_CALIB[:, :, :8],
                                                                  x2=GOOD_CALIB[:5, :, :8]) or str(t / "k.npz"), []),
                              "k.npz: calibration data holds different numbers of samples per input (x: 8, x2: 5)"),
    "two_inputs_npz_shape": (lambda t: (_two_inputs(t), np.savez(t / "s.npz", GOOD_CALIB[:, :, :8],
                                                                 GOOD_CALIB) or str(t / "s.npz"), []),
                             "s.npz[arr_1]: calibration data for input 'x2' has shape (8, 2, 16), expected (N, 2, 8)"),
    "custom_domain_op": (lambda t: (_save(t, [helper.make_node("Foo", ["x"], ["y"], domain="com.example", name="exotic")],
                                          [1, 2, 16], []), _calib(t, GOOD_CALIB), []),
                         "node 'exotic' (com.example.Foo): operator from domain 'com.example' is not supported"),
    "unsupported_op": (lambda t: (_save(t, [helper.make_node("Cos", ["x"], ["y"], name="cosine")], [1, 2, 16], []),
                                  _calib(t, GOOD_CALIB), []), "node 'cosine' (Cos): operator Cos is not supported"),
    "three_unsupported_ops": (lambda t: (_save(t, [helper.make_node("Cos", ["x"], ["a"], name="c1"),
                                                   helper.make_node("Relu", ["a"], ["b"]),
                                                   helper.make_node("Erf", ["b"], ["d"], name="e1"),
                                                   helper.make_node("Sin", ["d"], ["y"], name="s1")], [1, 2, 16], []),
                                         _calib(t, GOOD_CALIB), []),
                             "m.onnx: 3 nodes use operators no handler supports: node 'c1' (Cos), node 'e1' (Erf), "
                             "node 's1' (Sin)"),
    "conv_2d_names_the_file": (lambda t: (_save(t, [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3],
                                                                     name="c2d")], [1, 2, 8, 8],
                                                [numpy_helper.from_array(np.ones((4, 2, 3, 3), np.float32), "w")]),
                                          _calib(t, np.zeros((2, 2, 8, 8), np.float32)), []),
                               "m.onnx: node 'c2d' (Conv): 2D Conv on [2, 8, 8]"),
    "computed_conv_weights": (lambda t: (_save(t, [helper.make_node("Conv", ["x", "x"], ["y"])], [1, 2, 2], []),
                                         _calib(t, np.ones((4, 2, 2), np.float32)), []), "weights must be constant"),
    "output_is_input": (lambda t: (_save(t, [helper.make_node("Identity", ["x"], ["y"])], [1, 2, 16], []),
                                   _calib(t, GOOD_CALIB), []), "nothing to compute"),
    "name_not_identifier": (lambda t: (str(MODEL), str(CALIB), ["--name", "my model"]), "not a valid C identifier"),
    "name_c_keyword": (lambda t: (str(MODEL), str(CALIB), ["--name", "switch"]), "not a valid C identifier"),
    # 2048 channels x 40 taps of weight 127 on an all-positive input (zero point -128):
    # 255 * 127 * 81920 > 2^31 for some input
    "accumulator_can_overflow": (lambda t: (_conv(t, np.ones((2, 2048, 40), np.float32), width=40),
                                            _calib(t, np.random.default_rng(0).uniform(0, 1, (4, 2048, 40))
                                                   .astype(np.float32)), []),
                                 "node 'the_conv' (Conv): the int32 accumulator of output channel 0 can overflow"),
    "bias_overflows_int32": (lambda t: (_save(t, [helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[3],
                                                                   name="huge_bias")], [1, 2, 16],
                                              [numpy_helper.from_array(np.full((4, 2, 3), 1e-30, np.float32), "w"),
                                               numpy_helper.from_array(np.full(4, 1e6, np.float32), "b")]),
                                        _calib(t, GOOD_CALIB), []), "bias does not fit int32"),
    "width_beyond_uint16": (lambda t: (_conv(t, W, width=70000), _calib(t, np.zeros((2, 2, 70000), np.float32)), []),
                            "exceeds the 65535"),
    "output_folder_is_a_file": (lambda t: ((t / "file").write_text("x") and str(MODEL), str(CALIB),
                                           ["--out", str(t / "file")]), "the output folder is a file"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case, tmp_path):
    build, expect = CASES[case]
    work = tmp_path / "work"
    work.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    model, calib, extra = build(work)
    args = ["convert", model, "-c", calib] + (extra if "--out" in extra else ["--out", str(out), *extra])
    r = CliRunner().invoke(app, args)
    lines = r.output.strip().splitlines()
    usage = case.startswith("name_")  # a bad option value: a usage error
    assert r.exit_code == (2 if usage else 1), (r.exit_code, r.output)
    assert len(lines) == 1 and expect in lines[0], r.output
    assert "Traceback" not in r.output and "internal error" not in r.output
    assert list(out.iterdir()) == []


def test_the_corpus_is_large():
    assert len(CASES) >= 30


def test_hostile_names_become_safe_unique_identifiers_and_comments(tmp_path):
    """Node and value names built to break C: they convert, compile with the strict flags and match."""
    from onnx2cmsis.api import convert
    from onnx2cmsis.targets.host import build_conversions

    rng = np.random.default_rng(0)
    names = ['a"b', "end */ int x; /*", "line\nbreak", "#include <stdio.h>", "änder", "int", "a\"b", "??/"]
    nodes, inits, value = [], [], "x"
    for i, name in enumerate(names):  # a chain of 1x1 convs, each named to hurt
        w = f"w{i}"
        inits.append(numpy_helper.from_array((rng.standard_normal((2, 2, 1)) / 2).astype(np.float32), w))
        out = "y" if i == len(names) - 1 else f"{name}_{i}"
        nodes.append(helper.make_node("Conv", [value, w], [out], kernel_shape=[1], name=name))
        value = out
    path = _save(tmp_path, nodes, [1, 2, 8], inits, name="hostile.onnx")
    conv = convert(path, rng.standard_normal((16, 2, 8)).astype(np.float32), name="hostile")
    idents = [layer["identifier"] for layer in conv.report["layers"]]
    assert len(set(idents)) == len(idents)
    assert all(i.isidentifier() and i.isascii() for i in idents)
    for bad in ("\n#include <stdio.h>", "*/ int x", "line\nbreak", "??/"):  # inside a comment is harmless
        assert bad not in conv.source, bad
    model = build_conversions([conv], tmp_path / "build")["hostile"]  # -Wall -Wextra -Werror -pedantic
    x = rng.integers(-128, 128, model.input_size).astype(np.int8)
    assert np.array_equal(model(x), conv.reference(x))


def test_constant_calibration_still_converts(tmp_path):
    """A zero-range tensor (here: the whole input) gets a valid scale instead of a division by zero."""
    from onnx2cmsis.api import convert

    conv = convert(_conv(tmp_path, W), np.zeros((8, 2, 16), np.float32), name="flat")
    q = conv.graph.tensors[conv.graph.inputs[0]].quant
    assert np.isfinite(q.scale) and q.scale > 0


def _unwritable_folder(tmp_path: Path) -> Path | None:
    """A folder this process cannot create files in. Root ignores permission bits, so as root use a
    kernel folder that refuses new files (sysfs), if the machine has one."""
    import os
    import tempfile

    if os.geteuid() != 0:
        folder = tmp_path / "read_only"
        folder.mkdir()
        folder.chmod(0o555)
        return folder
    for candidate in (Path("/sys/kernel"), Path("/sys")):
        try:
            fd, probe = tempfile.mkstemp(dir=candidate)
        except OSError:
            return candidate
        os.close(fd)
        os.unlink(probe)
    return None


def test_unwritable_output_folder_is_one_line_and_leaves_nothing(tmp_path):
    folder = _unwritable_folder(tmp_path)
    if folder is None:
        pytest.skip("no folder refuses new files to this (root) process")
    before = sorted(p.name for p in folder.iterdir())
    r = CliRunner().invoke(app, ["convert", str(MODEL), "-c", str(CALIB), "--out", str(folder)])
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert "cannot write output" in lines[0] and str(folder) in lines[0] and "Traceback" not in r.output
    assert sorted(p.name for p in folder.iterdir()) == before


def _million_parameter_model(tmp: Path) -> str:
    """expand (16 -> 512, 1x1) -> ReLU -> wide conv (512 -> 512, k=4, stride 2) -> ReLU -> global
    average -> dense 512 -> 4: 1,059,844 parameters."""
    rng = np.random.default_rng(0)

    def init(name: str, shape: tuple[int, ...], scale: float):
        return numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name)

    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], kernel_shape=[1], name="expand"),
             helper.make_node("Relu", ["c1"], ["r1"]),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], kernel_shape=[4], strides=[2], name="wide"),
             helper.make_node("Relu", ["c2"], ["r2"]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
             helper.make_node("Flatten", ["g"], ["f"]),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], transB=1, name="head")]
    inits = [init("w1", (512, 16, 1), 0.3), init("b1", (512,), 0.1), init("w2", (512, 512, 4), 0.03),
             init("b2", (512,), 0.1), init("w3", (4, 512), 0.05), init("b3", (4,), 0.1)]
    assert sum(int(np.prod(i.dims)) for i in inits) == 1_059_844
    return _save(tmp, nodes, [1, 16, 32], inits, name="million.onnx", out_shape=[1, 4], opset=13)


@pytest.mark.slow
@pytest.mark.heavy
def test_million_parameter_model_works_with_a_flash_warning(tmp_path):
    """Converts (exit 0) with one warning line about flash, and the C (1 MB of const weights) compiles
    with the strict flags and matches the reference."""
    import subprocess
    import sys

    from onnx2cmsis.api import convert
    from onnx2cmsis.targets.host import build_conversions

    model = _million_parameter_model(tmp_path)
    calib = _calib(tmp_path, np.random.default_rng(1).standard_normal((32, 16, 32)).astype(np.float32))
    out = tmp_path / "out"
    out.mkdir()
    r = subprocess.run([sys.executable, "-m", "onnx2cmsis.cli", "convert", model, "-c", calib, "--out", str(out)],
                       capture_output=True, text=True, env={**__import__("os").environ, "PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    warnings = r.stderr.strip().splitlines()
    assert len(warnings) == 1 and "warning" in warnings[0] and "B of flash, more than the 524,288 B budget" in warnings[0], r.stderr
    assert "with --flash-kb)" in warnings[0]  # the CLI names its flag; the library only the setting
    assert sorted(p.name for p in out.iterdir()) == ["million.c", "million.cmake", "million.h", "million.json", "million.md", "million.mk", "million_memory.svg"]
    conv = convert(model, calib)
    assert conv.report["weights_bytes"] > 1_000_000 and len(conv.report["warnings"]) == 1
    assert "with flash_bytes)" in conv.report["warnings"][0] and "--" not in conv.report["warnings"][0]
    built = build_conversions([conv], tmp_path / "build")["million"]
    rng = np.random.default_rng(2)
    for _ in range(3):
        x = rng.integers(-128, 128, built.input_size).astype(np.int8)
        assert np.array_equal(built(x), conv.reference(x))
