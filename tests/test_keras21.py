"""Keras 2.1 files: a Sequential one (bare layer list, batch_input_shape on the first layer, no
InputLayer) and a functional `Model` (inbound_nodes as nested lists): converted without touching the
user's file, with their trained weights, bit-exact."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest

from onnx2cmsis.api import convert
from onnx2cmsis.drivers.evaluate import float_outputs
from onnx2cmsis.frontends.keras import modern_sequential
from tests.keras_models.data import signals
from tests.keras_models.make_keras21 import FUNCTIONAL_STEPS, LAYERS, beats
from tests.bit_exact import bit_exact_everywhere
from tests.needs import module

MODEL = Path(__file__).resolve().parent / "keras_models" / "keras21" / "ecg_sequential.h5"
FUNCTIONAL = MODEL.parent / "residual_functional.h5"


def test_the_fixture_is_in_the_old_form():
    import h5py

    with h5py.File(MODEL, "r") as f:
        config = json.loads(f.attrs["model_config"])
        assert f.attrs["keras_version"] in (b"2.1.5", "2.1.5")
    assert config["class_name"] == "Sequential" and isinstance(config["config"], list)
    assert config["config"][0]["config"]["batch_input_shape"] == [None, 650, 1]
    assert all(layer["class_name"] != "InputLayer" for layer in config["config"])


def test_old_sequential_config_is_rewritten_with_an_input_layer():
    config = {"class_name": "Sequential", "config": json.loads(json.dumps(LAYERS))}
    assert modern_sequential(config)
    layers = config["config"]["layers"]
    assert layers[0] == {"class_name": "InputLayer", "config": {"batch_input_shape": [None, 650, 1],
                                                                 "dtype": "float32", "sparse": False,
                                                                 "name": "conv1d_1_input"}}
    assert "batch_input_shape" not in layers[1]["config"] and len(layers) == len(LAYERS) + 1
    assert not modern_sequential(config)  # already modern: untouched


@pytest.mark.slow
@pytest.mark.level
def test_keras21_file_converts_with_its_weights_and_is_bit_exact(tmp_path):
    module("keras", 'pip install -e ".[keras]"')
    before = hashlib.sha256(MODEL.read_bytes()).hexdigest()
    x_cal, _ = beats(64, seed=3)
    x, y = beats(200, seed=2)
    conv = convert(MODEL, x_cal, name="ecg21")
    assert hashlib.sha256(MODEL.read_bytes()).hexdigest() == before  # the user's file is never written
    # the trained weights came through: the float model classifies held-out beats as trained (0.99)
    float_accuracy = float(np.mean((float_outputs(conv, x).reshape(-1) > 0.5) == y))
    assert float_accuracy >= 0.95, float_accuracy
    bit_exact_everywhere(conv, x[:64], tmp_path, oracle_samples=32, qemu_samples=4)


def test_the_functional_fixture_is_in_the_old_form():
    import h5py

    with h5py.File(FUNCTIONAL, "r") as f:
        config = json.loads(f.attrs["model_config"])
        assert f.attrs["keras_version"] in (b"2.1.5", "2.1.5")
    assert config["class_name"] == "Model" and config["config"]["output_layers"] == [["dense_1", 0, 0]]
    add = next(layer for layer in config["config"]["layers"] if layer["class_name"] == "Add")
    assert add["inbound_nodes"] == [[["conv1d_1", 0, 0, {}], ["conv1d_2", 0, 0, {}]]]


@pytest.mark.slow
@pytest.mark.level
def test_keras21_functional_model_converts_with_its_weights_and_is_bit_exact(tmp_path):
    """The residual Add reads both branches from the old node lists; the trained weights come through
    (the float model classifies held-out signals as trained), and the C is bit-exact."""
    module("keras", 'pip install -e ".[keras]"')
    before = hashlib.sha256(FUNCTIONAL.read_bytes()).hexdigest()
    x_cal, _ = signals(64, FUNCTIONAL_STEPS, 3, seed=13)
    x, y = signals(200, FUNCTIONAL_STEPS, 3, seed=12)
    conv = convert(FUNCTIONAL, x_cal, name="res21")
    assert hashlib.sha256(FUNCTIONAL.read_bytes()).hexdigest() == before
    assert [layer["op"] for layer in conv.report["layers"]].count("add") == 1
    float_accuracy = float(np.mean(float_outputs(conv, x).reshape(len(x), -1).argmax(1) == y))
    assert float_accuracy >= 0.95, float_accuracy
    bit_exact_everywhere(conv, x[:64], tmp_path, oracle_samples=32, qemu_samples=4)
