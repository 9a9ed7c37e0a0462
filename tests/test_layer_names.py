"""Every row a user reads names the model's own layer: the Keras layer for a Keras file (inspect, NAME.json,
NAME.md, NAME.h, the C's comments), the ONNX node for an ONNX file.

tf2onnx names a Keras layer's ops after TensorFlow's uniquified name scope, so `conv1d`'s ops came out
as `conv1d_1/...`, the next layer's name: every per-layer figure pointed at a neighbour. The expected
names and channel counts here come from the .h5 file's own layer list (read with h5py), never from
the code under test."""

from __future__ import annotations

from pathlib import Path

import pytest

from onnx2cmsis.api import convert
from onnx2cmsis.drivers.inspect_model import inspect as inspect_model
from tests.keras_models import model_config
from tests.needs import module

ROOT = Path(__file__).resolve().parents[1]
KERAS_MODELS = {
    "sequential": ROOT / "examples" / "vibration_keras" / "vibration_cnn.h5",
    "functional_conv_zoo": ROOT / "tests" / "keras_models" / "conv_zoo.h5",
    "functional_separable_residual": ROOT / "tests" / "keras_models" / "separable_residual.h5",
    "functional_dense_heads": ROOT / "tests" / "keras_models" / "dense_heads.h5",
}
# which Keras layer classes may compute a row of each canonical op
MAY_COMPUTE = {
    "conv1d": {"Conv1D", "SeparableConv1D", "Dense"},  # a Dense on (W, C) is a pointwise conv
    "dwconv1d": {"DepthwiseConv1D", "SeparableConv1D", "BatchNormalization"},
    "maxpool1d": {"MaxPooling1D", "GlobalMaxPooling1D"},
    "avgpool1d": {"AveragePooling1D"},
    "mean1d": {"GlobalAveragePooling1D"},
    "dense": {"Dense"},
    "softmax": {"Dense", "Softmax", "Activation"},
    "add": {"Add"},
    "concat": {"Concatenate"},
    "pad1d": {"ZeroPadding1D"},
    "upsample1d": {"UpSampling1D"},
}
# layers that always make at least one row of their own
COMPUTING = {"Conv1D", "SeparableConv1D", "DepthwiseConv1D", "Dense", "MaxPooling1D", "AveragePooling1D",
             "GlobalMaxPooling1D", "GlobalAveragePooling1D", "Add", "Concatenate", "ZeroPadding1D", "Cropping1D",
             "UpSampling1D"}


def keras_layers(path: Path) -> dict[str, dict]:
    """name -> {"class": ..., "config": ...} from the file's model_config, without Keras."""
    config = model_config(path)
    return {layer["config"]["name"]: {"class": layer["class_name"], "config": layer["config"]}
            for layer in config["config"]["layers"] if layer["class_name"] != "InputLayer"}


def check_rows(rows: list[dict], layers: dict[str, dict]) -> None:
    for row in rows:
        where = f"row {row['index']} '{row['name']}' ({row['op']})"
        assert row["name"] in layers, f"{where} names no layer of the model ({sorted(layers)})"
        layer = layers[row["name"]]
        if row["op"] in MAY_COMPUTE:
            assert layer["class"] in MAY_COMPUTE[row["op"]], f"{where} is computed by a {layer['class']}"
        width = layer["config"].get("filters") or layer["config"].get("units")
        if row["op"] in ("conv1d", "dense") and width is not None:
            assert row["output_shape"][-1] == width, f"{where}: {row['output_shape']}, the layer has {width}"
    named = {row["name"] for row in rows}
    for name, layer in layers.items():
        if layer["class"] in COMPUTING:
            assert name in named, f"layer '{name}' ({layer['class']}) has no row"
    gap = [row for row in rows if layers[row["name"]]["class"] == "GlobalAveragePooling1D"]
    assert all(len([r for r in gap if r["name"] == g["name"]]) == 1 for g in gap), "a global average is one row"


@pytest.mark.keras
@pytest.mark.parametrize("model", sorted(KERAS_MODELS))
def test_inspect_rows_name_the_keras_layers(model):
    module("keras", 'the [keras] extra: pip install -e ".[keras]"')
    path = KERAS_MODELS[model]
    check_rows(inspect_model(path).layers, keras_layers(path))


@pytest.mark.keras
def test_every_output_file_names_the_keras_layers():
    """NAME.json, NAME.md, NAME.h and the C's per-layer comments of the Sequential example."""
    module("keras", 'the [keras] extra: pip install -e ".[keras]"')
    import numpy as np

    path = KERAS_MODELS["sequential"]
    layers = keras_layers(path)
    calibration = np.load(path.parent / "calibration.npy")[:64]
    conv = convert(path, calibration, name="vibration_cnn")
    rows = conv.report["layers"]
    check_rows(rows, layers)
    assert [r["name"] for r in rows][:3] == ["conv1d", "max_pooling1d", "conv1d_1"]
    assert rows[0]["output_shape"] == [128, 8] and rows[2]["output_shape"] == [32, 16]  # 8 filters, then 16
    page = conv.pages["vibration_cnn.md"]
    for row in rows:
        assert f"| {row['index']} | {row['name']} |" in page
        assert f"Layer {row['index']}: {row['name']} (" in conv.source
        assert f"l{row['index']:02d}_{row['name']}" in conv.header
    # the global average's literals say what they are
    assert "input zero point" in conv.source and "output zero point" in conv.source


def test_onnx_rows_keep_the_node_names(tmp_path):
    """An ONNX file's rows are its nodes' names; the layout steps take the names of the nodes that
    moved the bytes (the PyTorch example's flatten is `node_view`)."""
    import onnx

    path = ROOT / "examples" / "vibration" / "vibration_cnn.onnx"
    nodes = {n.name for n in onnx.load(str(path)).graph.node}
    rows = inspect_model(path).layers
    inputs = {i.name for i in onnx.load(str(path)).graph.input}
    for row in rows:
        assert row["name"] in nodes or row["name"].removesuffix("_transposed") in inputs, row
    assert any(row["name"] == "node_view" and row["from"] == "layout" for row in rows)
