"""Frontend plugins through the real entry-point machinery: a distribution on sys.path whose
entry_points.txt adds a file suffix."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from onnx2cmsis.api import convert
from onnx2cmsis.errors import ConversionError
from onnx2cmsis.frontends import loaders

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "vibration"


@pytest.fixture
def fake_distribution(tmp_path, monkeypatch):
    (tmp_path / "renamed_onnx_frontend.py").write_text(
        "from onnx2cmsis.frontends.onnx_model import load_onnx\n"
        "def load(path):\n"
        "    return load_onnx(path)  # an .onnx file under another name\n")
    info = tmp_path / "renamed_onnx_frontend-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: renamed-onnx-frontend\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[onnx2cmsis.frontends]\n.myonnx = renamed_onnx_frontend:load\n"
                                           ".onnx = renamed_onnx_frontend:load\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("renamed_onnx_frontend", None)


def test_a_frontend_plugin_adds_a_suffix_but_cannot_replace_a_built_in(fake_distribution):
    table = loaders()
    assert table[".myonnx"].__module__ == "renamed_onnx_frontend"
    assert table[".onnx"].__module__ == "onnx2cmsis.frontends.onnx_model"
    model = fake_distribution / "example.myonnx"
    model.write_bytes((EXAMPLE / "vibration_cnn.onnx").read_bytes())
    conv = convert(model, np.load(EXAMPLE / "calibration.npy")[:32], name="via_plugin")
    assert conv.report["layers"]


def test_unknown_suffix_lists_what_is_supported(tmp_path):
    path = tmp_path / "model.xyz"
    path.write_bytes(b"x")
    with pytest.raises(ConversionError, match=r"unknown model type '\.xyz' \(supported: .*\.h5.*\.onnx"):
        convert(path, np.zeros((2, 3), np.float32))
