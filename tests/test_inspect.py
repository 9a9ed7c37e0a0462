"""`onnx2cmsis inspect` and the Python API as the package docstring and README show it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from tests.test_bad_inputs import GOOD_CALIB, _calib, _save
from tests.needs import oracle_runtime
from tests.test_cli import CALIB, MODEL, run_cli

ROOT = Path(__file__).resolve().parents[1]


def test_inspect_predicts_what_convert_emits_without_samples():
    import onnx2cmsis

    info = onnx2cmsis.inspect(MODEL)
    conv = onnx2cmsis.convert(MODEL, CALIB, dense_weights="per-tensor")
    assert info.arena_bytes == conv.report["arena_bytes"] and info.weights_bytes == conv.report["weights_bytes"]
    assert [(r["op"], r["kernel"], r["output_shape"], r["macs"]) for r in info.layers] == [
        (r["op"], r["kernel"], r["output_shape"], r["macs"]) for r in conv.report["layers"]]
    assert info.macs == 15_360 + 12_288 + 9_216 + 3_072 + 64  # the example's three convs and two dense layers
    # two stride-2 pools and a stride-2 conv before the flatten: --streaming takes multiples of 8
    assert info.stream_hop_multiple == 8 and "node_max_pool1d_1" in info.stream_hop_reason


def test_inspect_cli_prints_the_table(tmp_path):
    r = run_cli("inspect", str(MODEL), "--json", str(tmp_path / "i.json"))
    assert r.returncode == 0, r.stderr
    assert "arm_convolve_s8" in r.stdout and "flash for weights 4,968 B, arena 1,536 B" in r.stdout
    assert "--streaming HOP: a multiple of 8" in r.stdout
    from onnx2cmsis.drivers.inspect_model import format_inspection, inspect

    # the library names the API's parameter; only the CLI knows the flag
    api_text = format_inspection(inspect(MODEL))
    assert "streaming='HOP': a multiple of 8" in api_text
    assert not any("--" in line for line in api_text.splitlines()[2:])  # line 1 is the rule under the header
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


@pytest.mark.oracle
def test_the_readme_python_block_runs_as_written(tmp_path, monkeypatch):
    """README's Python example, read from the file and run in a scratch copy of the examples: inspect,
    convert, write, and verify on the host against tflite-micro."""
    import re
    import shutil

    oracle_runtime()
    block = re.search(r"```python\n(import onnx2cmsis\n.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    assert "onnx2cmsis.verify(" in block and "check.passed" in block
    shutil.copytree(ROOT / "examples" / "vibration", tmp_path / "examples" / "vibration",
                    ignore=shutil.ignore_patterns("__pycache__"))
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec(compile(block, "README.md", "exec"), scope)  # our own README, not a model: nothing untrusted
    check = scope["check"]
    assert [r.target for r in check.results] == ["host"] and check.results[0].bit_exact
    assert check.results[0].oracle == "tflite-micro" and check.results[0].accuracy >= 0.85
    assert (tmp_path / "out_onnx" / "vibration_cnn.c").is_file()


def test_verify_api_refuses_an_unknown_target_by_its_parameter_name():
    import onnx2cmsis

    conv = onnx2cmsis.convert(MODEL, CALIB)
    with pytest.raises(onnx2cmsis.ConversionError, match=r"unknown targets 'm3' \(choose from host, m0plus"):
        onnx2cmsis.verify(conv, np.zeros((1, 3, 128), np.float32), targets=["m3"])


def test_inspect_columns_never_run_into_each_other():
    """The "from" column of the PyTorch example (`Gemm+Relu (weights reordered for channel-last ...)`)
    ran into the kernel column: every cell now starts where its header does."""
    from onnx2cmsis.drivers.inspect_model import format_inspection, inspect

    result = inspect(MODEL)
    lines = format_inspection(result).splitlines()
    head = lines[0]
    starts = {name: head.index(name) for name in ("layer", "from", "kernel")}
    for row, line in zip(result.layers, lines[2:2 + len(result.layers)]):
        assert line[starts["kernel"]:].startswith(row["kernel"][:20]), line
        assert line[starts["from"] - 2:starts["from"]] == "  " and line[starts["kernel"] - 2:starts["kernel"]] == "  "
    assert any("..." in line for line in lines[2:])  # the long "from" text is cut, not spilled
