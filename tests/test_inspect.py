"""`onnx2cmsis inspect` and the Python API as the package docstring and README show it."""

from __future__ import annotations

import numpy as np
from onnx import helper

from tests.test_bad_inputs import GOOD_CALIB, _calib, _save
from tests.test_cli import CALIB, MODEL, run_cli


def test_inspect_predicts_what_convert_emits_without_samples():
    import onnx2cmsis

    info = onnx2cmsis.inspect(MODEL)
    conv = onnx2cmsis.convert(MODEL, CALIB, dense_weights="per-tensor")
    assert info.arena_bytes == conv.report["arena_bytes"] and info.weights_bytes == conv.report["weights_bytes"]
    assert [(r["op"], r["kernel"], r["output_shape"], r["macs"]) for r in info.layers] == [
        (r["op"], r["kernel"], r["output_shape"], r["macs"]) for r in conv.report["layers"]]
    assert info.macs == 15_360 + 12_288 + 9_216 + 3_072 + 64  # the example's three convs and two dense layers


def test_inspect_cli_prints_the_table(tmp_path):
    r = run_cli("inspect", str(MODEL), "--json", str(tmp_path / "i.json"))
    assert r.returncode == 0, r.stderr
    assert "arm_convolve_s8" in r.stdout and "flash for weights 4,968 B, arena 1,536 B" in r.stdout
    assert (tmp_path / "i.json").is_file()


def test_inspect_lists_every_unsupported_node_at_once(tmp_path):
    model = _save(tmp_path, [helper.make_node("Cos", ["x"], ["a"], name="c1"), helper.make_node("Erf", ["a"], ["b"], name="e1"),
                             helper.make_node("Relu", ["b"], ["d"]), helper.make_node("Sin", ["d"], ["y"], name="s1")],
                  [1, 2, 16], [])
    r = run_cli("inspect", model)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "3 nodes use operators no handler supports: node 'c1' (Cos), node 'e1' (Erf), node 's1' (Sin)" in lines[0]


def test_the_python_api_as_documented(tmp_path):
    from pathlib import Path

    import onnx2cmsis

    calib = _calib(tmp_path, GOOD_CALIB)
    model = _save(tmp_path, [helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3])], [1, 2, 16],
                  [__import__("onnx").numpy_helper.from_array(np.full((4, 2, 3), 0.1, np.float32), "w")])
    conv = onnx2cmsis.convert(model, calib)
    written = onnx2cmsis.write_outputs(conv, Path(tmp_path / "out"))
    assert sorted(p.name for p in written) == ["m.c", "m.cmake", "m.h", "m.json", "m.md", "m.mk", "m_memory.svg"]
    assert isinstance(conv, onnx2cmsis.Conversion)
    assert "arm_convolve_s8" in [layer["kernel"] for layer in conv.report["layers"]]
