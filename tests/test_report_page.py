"""NAME.md and NAME_memory.svg: every layer in the table, the arena drawn as the plan placed it, and
model text (untrusted) unable to break either file."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from onnx2cmsis.api import convert
from onnx2cmsis.output_files import write_outputs
from onnx2cmsis.codegen.report_page import md_cell
from tests.onnx_models import make_model

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vibration"


def test_page_lists_every_layer_and_the_plan(tmp_path):
    conv = convert(EXAMPLE / "vibration_cnn.onnx", EXAMPLE / "calibration.npy")
    written = {p.name for p in write_outputs(conv, tmp_path)}
    assert {"vibration_cnn.md", "vibration_cnn_memory.svg"} <= written
    page = (tmp_path / "vibration_cnn.md").read_text()
    layers_section = page.split("## Layers, in execution order")[1].split("\n## ")[0]
    rows = [line for line in layers_section.splitlines()
            if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    assert len(rows) == len(conv.report["layers"])
    for row, layer in zip(rows, conv.report["layers"]):
        assert layer["kernel"] in row and f"{layer['macs']:,}" in row
    assert f"{conv.plan.arena_bytes:,} B" in page and "(view)" in page and "caller's output" in page
    svg = ET.parse(tmp_path / "vibration_cnn_memory.svg").getroot()
    boxes = [e for e in svg.iter("{http://www.w3.org/2000/svg}rect") if e.find("{http://www.w3.org/2000/svg}title") is not None]
    assert len(boxes) == len(conv.plan.buffers)
    # each box sits at its buffer's offset, scaled to the drawing's height
    top, scale = 48.0, (280 - 2 * 48) / conv.plan.arena_bytes
    for box, buffer in zip(boxes, conv.plan.buffers):
        assert abs(float(box.get("y")) - (top + buffer.offset * scale)) < 0.06


def test_model_text_is_escaped(tmp_path):
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 2, 3)).astype(np.float32), "w")
    nasty = "a|b</title><script>x</script>&\nnext"
    node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3], name=nasty)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 16])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    path = tmp_path / "n.onnx"
    onnx.save(make_model([node], [x], [y], [w]), str(path))
    conv = convert(path, rng.standard_normal((16, 2, 16)).astype(np.float32), name="n")
    page, svg = conv.pages["n.md"], conv.pages["n_memory.svg"]
    ET.fromstring(svg)  # still well-formed XML
    row = next(line for line in page.splitlines() if line.startswith("| ") and "(Conv)" in line)
    assert not re.search(r"(?<!\\)<script>", page) and "a\\|b\\</title>\\<script>x\\</script>\\& next" in row
    assert row.count(" | ") == 9  # ten cells


def test_markdown_cells_keep_arrows_readable():
    """NAME.md is read raw in editors: an auto-precision requantize row said `int8 -&gt; int16`."""
    assert md_cell("requantize int8 -> int16") == "requantize int8 -> int16"
    assert md_cell("a<b & c") == "a\\<b \\& c"
