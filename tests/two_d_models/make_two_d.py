"""Regenerate the 1D-written-in-2-D fixtures of issue 30 (committed, small): trained briefly on
tests/keras_models/data.signals (four tones in noise), so their argmax means something.

    python tests/two_d_models/make_two_d.py

- kws_t1c.h5: a streaming wake-word benchmark's shape of model over (T, 1, C): DepthwiseConv2D
  (k, 1), k = 3, 5, 10, 15 (valid), each followed by a 1x1 Conv2D, BatchNormalization, ReLU and
  Dropout; Flatten, Dense softmax.
- conv_1tc.h5: Conv2D (1, k) and MaxPooling2D (1, 2) over (1, T, C), global average, Dense softmax.
- torch_unit_h.onnx: PyTorch Conv2d (1, k) over (N, C, 1, T), exported with the TorchScript exporter.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))  # the checkout, for tests.keras_models

import numpy as np  # noqa: E402

from tests.keras_models.data import signals  # noqa: E402

KWS = (49, 10)  # steps, channels
CONV = (64, 3)
TORCH = (64, 3)


def kws_t1c(keras):
    L = keras.layers
    steps, channels = KWS
    i = keras.Input((steps, 1, channels))
    x = i
    for k in (3, 5, 10, 15):
        x = L.DepthwiseConv2D((k, 1), name=f"dw{k}")(x)
        x = L.Conv2D(16, 1, name=f"pw{k}")(x)
        x = L.BatchNormalization(name=f"bn{k}")(x)
        x = L.Dropout(0.1, name=f"drop{k}")(L.ReLU(name=f"relu{k}")(x))
    return keras.Model(i, L.Dense(4, activation="softmax", name="head")(L.Flatten(name="flat")(x)), name="kws_t1c")


def conv_1tc(keras):
    L = keras.layers
    steps, channels = CONV
    i = keras.Input((1, steps, channels))
    x = L.Conv2D(8, (1, 5), padding="same", activation="relu")(i)
    x = L.MaxPooling2D((1, 2))(x)
    x = L.Conv2D(16, (1, 3), activation="relu")(x)
    x = L.MaxPooling2D((1, 2))(x)
    x = L.GlobalAveragePooling2D()(x)
    return keras.Model(i, L.Dense(4, activation="softmax")(x), name="conv_1tc")


def keras_data(name: str, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """The model's input layout of data.signals: (N, T, 1, C) or (N, 1, T, C)."""
    steps, channels = KWS if name == "kws_t1c" else CONV
    x, y = signals(n, steps, channels, seed)
    return (x[:, :, None, :] if name == "kws_t1c" else x[:, None, :, :]), y


def torch_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, C, 1, T): PyTorch's layout of data.signals."""
    x, y = signals(n, *TORCH, seed)
    return np.ascontiguousarray(x.transpose(0, 2, 1)[:, :, None, :]), y


def make_keras() -> None:
    import keras

    for name, build in (("kws_t1c", kws_t1c), ("conv_1tc", conv_1tc)):
        keras.utils.set_random_seed(11)
        model = build(keras)
        x, y = keras_data(name, 2000, seed=1)
        model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, epochs=12, batch_size=64, verbose=0)  # BatchNorm's moving statistics need the steps
        xt, yt = keras_data(name, 500, seed=2)
        print(name, "test accuracy", round(float(np.mean(model.predict(xt, verbose=0).argmax(1) == yt)), 3))
        model.save(HERE / f"{name}.h5")


def make_torch() -> None:
    import torch

    nn = torch.nn
    torch.manual_seed(11)
    channels = TORCH[1]
    model = nn.Sequential(
        nn.Conv2d(channels, 8, (1, 5), padding=(0, 2)), nn.ReLU(), nn.MaxPool2d((1, 2)),
        nn.Conv2d(8, 16, (1, 3)), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 4))
    x, y = (torch.from_numpy(a) for a in torch_data(2000, seed=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(6):
        for start in range(0, len(x), 64):
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x[start:start + 64]), y[start:start + 64]).backward()
            optimizer.step()
    model.eval()
    xt, yt = torch_data(500, seed=2)
    with torch.no_grad():
        print("torch_unit_h test accuracy", round(float(np.mean(model(torch.from_numpy(xt)).numpy().argmax(1) == yt)), 3))
    torch.onnx.export(model, (torch.from_numpy(xt[:1]),), str(HERE / "torch_unit_h.onnx"), dynamo=False,
                      opset_version=13, input_names=["x"], output_names=["logits"])


if __name__ == "__main__":
    make_keras()
    make_torch()
