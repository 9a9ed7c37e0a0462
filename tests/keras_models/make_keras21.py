"""Keras 2.1-era .h5 files, written the way Keras 2.1.5 wrote them, with trained weights.

Keras 2.0/2.1 stored a Sequential model's config as a bare list of layers, the first carrying
`batch_input_shape` and no InputLayer, and `kernel_size`/`strides` as one-element lists: Keras 3
cannot read it. The architecture is that of a published ECG model (issue 20, anonymised): Conv1D
16x102 on a 650x1 window, max pools, Conv1D k24/k11/k9, dropout, flatten, dense 30 relu, dense 1
sigmoid. Trained with Keras 3 on the same layers (two classes of synthetic beats), then saved by hand
with h5py in the 2.1 layout: root attributes keras_version 2.1.5 and backend, `model_config` in the
old form, `model_weights/<layer>/<layer>/kernel:0` with `weight_names`. The second file is a functional
`Model` as 2.1 wrote it (class name `Model`, `inbound_nodes` as nested lists, `input_layers` /
`output_layers`): a residual block over a (64, 3) window, global average pool, softmax over the four
classes of tests/keras_models/data.py. Run from the repository root:

    python -m tests.keras_models.make_keras21
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
STEPS = 650


def beats(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class 1: a narrow spike train; class 0: a wider, slower one; both in noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    t = np.arange(STEPS)
    x = 0.3 * rng.standard_normal((n, STEPS))
    for i in range(n):
        period = 90 if y[i] else 140
        width = 3.0 if y[i] else 8.0
        for c in range(int(rng.integers(0, period)), STEPS, period):
            x[i] += np.exp(-0.5 * ((t - c) / width) ** 2)
    return x[:, :, None].astype(np.float32), y.astype(np.int64)


def _conv(name: str, filters: int, kernel: int, first: bool = False) -> dict:
    cfg = {"name": name, "trainable": True, "filters": filters, "kernel_size": [kernel], "strides": [1],
           "padding": "same", "dilation_rate": [1], "activation": "relu", "use_bias": True,
           "kernel_initializer": {"class_name": "VarianceScaling",
                                  "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None}},
           "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
           "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None}
    if first:
        cfg = {"name": name, "trainable": True, "batch_input_shape": [None, STEPS, 1], "dtype": "float32",
               **{k: v for k, v in cfg.items() if k not in ("name", "trainable")}}
    return {"class_name": "Conv1D", "config": cfg}


def _pool(name: str) -> dict:
    return {"class_name": "MaxPooling1D", "config": {"name": name, "trainable": True, "pool_size": [2],
                                                     "strides": [2], "padding": "valid"}}


def _dense(name: str, units: int, activation: str) -> dict:
    return {"class_name": "Dense", "config": {
        "name": name, "trainable": True, "units": units, "activation": activation, "use_bias": True,
        "kernel_initializer": {"class_name": "VarianceScaling",
                               "config": {"scale": 1.0, "mode": "fan_avg", "distribution": "uniform", "seed": None}},
        "bias_initializer": {"class_name": "Zeros", "config": {}}, "kernel_regularizer": None,
        "bias_regularizer": None, "activity_regularizer": None, "kernel_constraint": None, "bias_constraint": None}}


LAYERS = [
    _conv("conv1d_1", 16, 102, first=True), _pool("max_pooling1d_1"),
    _conv("conv1d_2", 16, 24), _pool("max_pooling1d_2"),
    _conv("conv1d_3", 16, 11), _pool("max_pooling1d_3"),
    _conv("conv1d_4", 16, 9), _pool("max_pooling1d_4"),
    {"class_name": "Dropout", "config": {"name": "dropout_1", "trainable": True, "rate": 0.5,
                                         "noise_shape": None, "seed": None}},
    {"class_name": "Flatten", "config": {"name": "flatten_1", "trainable": True}},
    _dense("dense_1", 30, "relu"), _dense("dense_2", 1, "sigmoid"),
]


FUNCTIONAL_STEPS = 64


def _node(*sources: str) -> list:
    return [[[source, 0, 0, {}] for source in sources]]


def _functional_layers() -> list[dict]:
    c1, c2 = _conv("conv1d_1", 8, 5)["config"], _conv("conv1d_2", 8, 3)["config"]
    c2["activation"] = "linear"
    return [
        {"name": "input_1", "class_name": "InputLayer", "config": {
            "batch_input_shape": [None, FUNCTIONAL_STEPS, 3], "dtype": "float32", "sparse": False, "name": "input_1"},
         "inbound_nodes": []},
        {"name": "conv1d_1", "class_name": "Conv1D", "config": c1, "inbound_nodes": _node("input_1")},
        {"name": "conv1d_2", "class_name": "Conv1D", "config": c2, "inbound_nodes": _node("conv1d_1")},
        {"name": "add_1", "class_name": "Add", "config": {"name": "add_1", "trainable": True},
         "inbound_nodes": _node("conv1d_1", "conv1d_2")},
        {"name": "global_average_pooling1d_1", "class_name": "GlobalAveragePooling1D",
         "config": {"name": "global_average_pooling1d_1", "trainable": True}, "inbound_nodes": _node("add_1")},
        {"name": "dense_1", "class_name": "Dense", "config": _dense("dense_1", 4, "softmax")["config"],
         "inbound_nodes": _node("global_average_pooling1d_1")},
    ]


FUNCTIONAL = {"class_name": "Model", "config": {"name": "model_1", "layers": _functional_layers(),
                                                "input_layers": [["input_1", 0, 0]],
                                                "output_layers": [["dense_1", 0, 0]]}}


def functional_twin(keras):
    """The functional model's layers (names too) in Keras 3, to train the weights."""
    L = keras.layers
    i = L.Input((FUNCTIONAL_STEPS, 3), name="input_1")
    a = L.Conv1D(8, 5, padding="same", activation="relu", name="conv1d_1")(i)
    b = L.Conv1D(8, 3, padding="same", name="conv1d_2")(a)
    x = L.GlobalAveragePooling1D(name="global_average_pooling1d_1")(L.Add(name="add_1")([a, b]))
    return keras.Model(i, L.Dense(4, activation="softmax", name="dense_1")(x))


def keras3_twin(keras):
    """The same layers (names too) in Keras 3, to train the weights."""
    L = keras.layers
    layers = [L.Input((STEPS, 1))]
    for spec in LAYERS:
        c = spec["config"]
        if spec["class_name"] == "Conv1D":
            layers.append(L.Conv1D(c["filters"], c["kernel_size"][0], padding="same", activation="relu", name=c["name"]))
        elif spec["class_name"] == "MaxPooling1D":
            layers.append(L.MaxPooling1D(2, name=c["name"]))
        elif spec["class_name"] == "Dropout":
            layers.append(L.Dropout(c["rate"], name=c["name"]))
        elif spec["class_name"] == "Flatten":
            layers.append(L.Flatten(name=c["name"]))
        else:
            layers.append(L.Dense(c["units"], activation=c["activation"], name=c["name"]))
    return keras.Sequential(layers)


def save_keras21(model, path: Path, config: dict | None = None) -> None:
    import h5py

    config = config or {"class_name": "Sequential", "config": LAYERS}
    layers = config["config"] if isinstance(config["config"], list) else config["config"]["layers"]
    with h5py.File(path, "w") as f:
        f.attrs["keras_version"] = b"2.1.5"
        f.attrs["backend"] = b"tensorflow"
        f.attrs["model_config"] = json.dumps(config).encode()
        weights = f.create_group("model_weights")
        names = [spec["config"]["name"] for spec in layers]
        weights.attrs["layer_names"] = [n.encode() for n in names]
        weights.attrs["backend"] = b"tensorflow"
        weights.attrs["keras_version"] = b"2.1.5"
        for name in names:
            g = weights.create_group(name)
            values = model.get_layer(name).get_weights()
            labels = [f"{name}/kernel:0", f"{name}/bias:0"][:len(values)]
            g.attrs["weight_names"] = [w.encode() for w in labels]
            for label, v in zip(labels, values):
                g.create_dataset(label, data=v)


def main() -> None:
    import keras

    keras.utils.set_random_seed(0)
    model = keras3_twin(keras)
    x, y = beats(1200, seed=1)
    x_test, y_test = beats(300, seed=2)
    model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="binary_crossentropy", metrics=["accuracy"])
    model.fit(x, y, epochs=6, batch_size=64, verbose=0)
    print(f"held-out accuracy {model.evaluate(x_test, y_test, verbose=0)[1]:.3f}, {model.count_params()} parameters")
    save_keras21(model, HERE / "keras21" / "ecg_sequential.h5")
    from tests.keras_models.data import signals

    model = functional_twin(keras)
    x, y = signals(1200, FUNCTIONAL_STEPS, 3, seed=11)
    x_test, y_test = signals(300, FUNCTIONAL_STEPS, 3, seed=12)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    print(f"functional: held-out accuracy {model.evaluate(x_test, y_test, verbose=0)[1]:.3f}")
    save_keras21(model, HERE / "keras21" / "residual_functional.h5", FUNCTIONAL)
    print(f"wrote {HERE / 'keras21'}")


if __name__ == "__main__":
    main()
