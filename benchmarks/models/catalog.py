"""The benchmark models: the five architectures of ../shared/docs/peers.md ("numbers to beat") and an
upsampling autoencoder, each with the synthetic data set it is trained and scored on.

make_models.py trains and saves them (committed .h5 files, so the benchmark needs no training run);
benchmarks/accuracy.py reads `MODELS` for each model's data.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from data import denoise_targets, heartbeat, motion


@dataclass(frozen=True)
class BenchModel:
    name: str
    build: Callable[[Any], Any]  # keras module -> model
    task: str  # "softmax", "logits" or "regression"
    data: Callable[[int, int], tuple[np.ndarray, np.ndarray]]  # (n, seed) -> (x, target)
    summary: str


def pool_cnn(keras) -> Any:
    L = keras.layers
    i = keras.Input((100, 6))
    x = L.Conv1D(16, 5, activation="relu")(i)
    x = L.MaxPooling1D(2)(x)
    x = L.Conv1D(32, 3, padding="same", activation="relu")(x)
    x = L.AveragePooling1D(2)(x)
    x = L.Flatten()(x)
    return keras.Model(i, L.Dense(4, activation="softmax")(x), name="pool_cnn")


def tanh_bn_gap(keras) -> Any:
    L = keras.layers
    i = keras.Input((150, 1))
    x = L.Conv1D(16, 7, activation="tanh")(i)
    x = L.BatchNormalization()(x)
    x = L.MaxPooling1D(2)(x)
    x = L.Conv1D(32, 5, activation="sigmoid")(x)
    x = L.GlobalAveragePooling1D()(x)
    x = L.Dense(2)(x)
    return keras.Model(i, L.Softmax()(x), name="tanh_bn_gap")


def strided_dense(keras) -> Any:
    L = keras.layers
    i = keras.Input((150, 1))
    x = L.Conv1D(16, 7, strides=2, activation="relu")(i)
    x = L.BatchNormalization()(x)
    x = L.Dropout(0.2)(x)
    x = L.Conv1D(32, 5, strides=2, padding="same", activation="relu")(x)
    x = L.MaxPooling1D(2)(x)
    x = L.Flatten()(x)
    x = L.Dense(16, activation="relu")(x)
    return keras.Model(i, L.Dense(2)(x), name="strided_dense")


def residual_relu6(keras) -> Any:
    L = keras.layers
    i = keras.Input((100, 6))
    a = L.Conv1D(16, 3, padding="same", use_bias=False)(i)
    a = L.BatchNormalization()(a)
    a = L.ReLU(6.0)(a)
    b = L.Conv1D(16, 3, padding="same", use_bias=False)(a)
    b = L.BatchNormalization()(b)
    b = L.ReLU(6.0)(b)
    x = L.Add()([a, b])
    x = L.Conv1D(16, 3, strides=2, activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(i, L.Dense(4, activation="softmax")(x), name="residual_relu6")


def causal_dilated(keras) -> Any:
    L = keras.layers
    i = keras.Input((97, 5))
    x = L.Conv1D(8, 3, padding="causal", dilation_rate=2, activation="relu")(i)
    x = L.Conv1D(8, 5, strides=2, activation="tanh")(x)
    x = L.MaxPooling1D(2, padding="same")(x)
    x = L.Conv1D(8, 3, activation="sigmoid")(x)
    x = L.AveragePooling1D(2, padding="same")(x)
    x = L.Dense(4, activation="relu")(x)
    x = L.Flatten()(x)
    return keras.Model(i, L.Dense(3, activation="softmax")(x), name="causal_dilated")


def upsampling_autoencoder(keras) -> Any:
    L = keras.layers
    i = keras.Input((128, 3))
    x = L.Conv1D(16, 5, padding="same", activation="relu")(i)
    x = L.MaxPooling1D(2)(x)
    x = L.Conv1D(8, 5, padding="same", activation="relu")(x)
    x = L.MaxPooling1D(2)(x)
    x = L.Conv1D(8, 3, padding="same", activation="relu")(x)
    x = L.UpSampling1D(2)(x)
    x = L.Conv1D(16, 3, padding="same", activation="relu")(x)
    x = L.UpSampling1D(2)(x)
    return keras.Model(i, L.Conv1D(3, 5, padding="same")(x), name="upsampling_autoencoder")


def _motion(steps: int, channels: int, classes: int):
    return lambda n, seed: motion(n, steps, channels, classes, seed)


def _denoise(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    x, _ = motion(n, 128, 3, 4, seed)
    return x, denoise_targets(x)


MODELS = {m.name: m for m in (
    BenchModel("pool_cnn", pool_cnn, "softmax", _motion(100, 6, 4),
               "100x6: conv / max pool / conv / avg pool / dense / softmax"),
    BenchModel("tanh_bn_gap", tanh_bn_gap, "softmax", lambda n, seed: heartbeat(n, 150, seed),
               "150x1: tanh conv / BN / max pool / sigmoid conv / global average / dense / softmax"),
    BenchModel("strided_dense", strided_dense, "logits", lambda n, seed: heartbeat(n, 150, seed),
               "150x1: strided conv / BN / strided conv / max pool / dense / dense (logits)"),
    BenchModel("residual_relu6", residual_relu6, "softmax", _motion(100, 6, 4),
               "100x6: residual ReLU6 block (no-bias conv + BN) / strided conv / global average / dense"),
    BenchModel("causal_dilated", causal_dilated, "softmax", _motion(97, 5, 3),
               "97x5: causal dilated conv / strided tanh conv / pools 'same' / sigmoid conv / dense on 3D"),
    BenchModel("upsampling_autoencoder", upsampling_autoencoder, "regression", _denoise,
               "128x3: conv/pool encoder, upsampling decoder (regression: low-pass denoiser)"),
)}

TRAIN_SEED, CALIBRATION_SEED, TEST_SEED = 100, 101, 102
