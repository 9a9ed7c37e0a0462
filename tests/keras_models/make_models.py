"""Regenerate the Keras test models (small .h5 fixtures, committed so most tests need no TensorFlow).

    python tests/keras_models/make_models.py

Each model gets random (not initial) weights and BatchNorm statistics, so every bias Add and
BatchNorm Mul/Add that tf2onnx emits is really there; then each is trained briefly on data.signals
(the classifiers on its classes, the regressors on data.regression_targets). Saved in the legacy .h5 format with Keras 3 (here) and, when tf_keras is installed,
with Keras 2 (keras2/).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from data import regression_targets, signals  # noqa: E402

HERE = Path(__file__).parent


def original_tool_model(keras) -> Any:
    """The original tool's test model: Conv1D -> MaxPooling1D -> Conv1D -> UpSampling1D -> Conv1D."""
    L = keras.layers
    i = keras.Input((64, 3))
    x = L.Conv1D(8, 5, padding="same", activation="relu")(i)
    x = L.MaxPooling1D(2)(x)
    x = L.Conv1D(8, 3, padding="same", activation="relu")(x)
    x = L.UpSampling1D(2)(x)
    return keras.Model(i, L.Conv1D(3, 3, padding="same")(x), name="autoencoder")


def conv_zoo(keras) -> Any:
    """Causal/strided/dilated convs, no-bias conv, every supported activation, BatchNorm, pools."""
    L = keras.layers
    i = keras.Input((96, 4))
    x = L.Conv1D(8, 3, padding="causal", dilation_rate=2, activation="tanh")(i)
    x = L.Conv1D(8, 5, strides=2, padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU(max_value=6.0)(x)
    x = L.Conv1D(12, 3, padding="valid", activation="sigmoid")(x)
    x = L.AveragePooling1D(2, padding="same")(x)
    x = L.Conv1D(12, 3, activation="linear")(x)
    x = L.LeakyReLU(0.2)(x)  # positional: Keras 3's negative_slope is tf_keras' alpha
    x = L.MaxPooling1D(3, strides=2, padding="same")(x)
    x = L.Activation("relu")(x)
    x = L.BatchNormalization()(x)  # after a ReLU: cannot fold, a 1-tap depthwise conv
    x = L.GlobalAveragePooling1D()(x)
    x = L.Dense(16, activation="relu")(x)
    x = L.Dropout(0.3)(x)
    return keras.Model(i, L.Dense(5, activation="softmax")(x), name="conv_zoo")


def separable_residual(keras) -> Any:
    """DepthwiseConv1D, SeparableConv1D, residual Add, Concatenate, ZeroPadding1D, Cropping1D."""
    L = keras.layers
    i = keras.Input((64, 6))
    a = L.DepthwiseConv1D(3, padding="same", depth_multiplier=2)(i)
    a = L.SeparableConv1D(6, 3, padding="same", activation="relu")(a)
    r = L.Add()([a, i])
    b = L.Conv1D(4, 1)(r)
    c = L.Concatenate()([r, b])
    c = L.ZeroPadding1D((2, 1))(c)
    c = L.Cropping1D((1, 2))(c)
    c = L.Conv1D(8, 3, strides=2)(c)
    c = L.GlobalMaxPooling1D()(c)
    return keras.Model(i, L.Dense(4, activation="softmax")(c), name="separable_residual")


def dense_heads(keras) -> Any:
    """Dense on 3D input (per time step), Reshape, Flatten, AveragePooling1D valid."""
    L = keras.layers
    i = keras.Input((32, 2))
    x = L.Dense(6, activation="tanh")(i)
    x = L.AveragePooling1D(2)(x)
    x = L.Reshape((8, 12))(x)
    x = L.Conv1D(4, 3)(x)
    x = L.Flatten()(x)
    return keras.Model(i, L.Dense(3)(x), name="dense_heads")


CLASSIFIERS = ("conv_zoo", "separable_residual")  # trained on data.signals' classes
REGRESSORS = ("autoencoder", "dense_heads")  # trained on data.regression_targets

MODELS = {"autoencoder": original_tool_model, "conv_zoo": conv_zoo, "separable_residual": separable_residual,
          "dense_heads": dense_heads}


def randomize(model: Any, rng: np.random.Generator) -> None:
    for layer in model.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        new = []
        for w, v in zip(layer.weights, weights):
            path = getattr(w, "path", w.name)  # Keras 3 / tf_keras
            if "variance" in path:
                new.append(rng.uniform(0.5, 2.0, v.shape).astype(v.dtype))
            elif "gamma" in path:
                new.append(rng.uniform(0.5, 1.5, v.shape).astype(v.dtype))
            else:
                fan_in = max(1, int(np.prod(v.shape[:-1])))
                new.append((rng.standard_normal(v.shape) * (1.0 / np.sqrt(fan_in) if v.ndim > 1 else 0.2))
                           .astype(v.dtype))
        layer.set_weights(new)


def save_all(keras, folder: Path, seed: int) -> None:
    rng = np.random.default_rng(seed)
    folder.mkdir(exist_ok=True)
    for name, build in MODELS.items():
        model = build(keras)
        randomize(model, rng)
        steps, channels = model.inputs[0].shape[1:]
        x, y = signals(2000, steps, channels, seed=10)
        x_test, y_test = signals(500, steps, channels, seed=11)
        keras.utils.set_random_seed(0)
        if name in CLASSIFIERS:
            model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                          metrics=["accuracy"])
            model.fit(x, y, epochs=25, batch_size=64, verbose=0)
            print(f"{folder.name}/{name}: accuracy {model.evaluate(x_test, y_test, verbose=0)[1]:.3f} held out")
        else:
            model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="mse")
            model.fit(x, regression_targets(x, y, name), epochs=25, batch_size=64, verbose=0)
            loss = model.evaluate(x_test, regression_targets(x_test, y_test, name), verbose=0)
            print(f"{folder.name}/{name}: mse {loss:.4f} held out")
        model.save(folder / f"{name}.h5")
        print(f"{folder.name}/{name}: {model.count_params()} parameters")


def main() -> None:
    save_all(keras, HERE, seed=7)
    try:  # Keras 2 (tf_keras 2.21: pip install --no-deps tf_keras next to tensorflow-cpu)
        import tf_keras
    except ImportError:
        print("tf_keras not installed: Keras 2 fixtures not regenerated")
        return
    save_all(tf_keras, HERE / "keras2", seed=8)


if __name__ == "__main__":
    main()
