"""A trained three-input Keras model, the fixture for models with several inputs.

A sensor-fusion classifier of the kind an IMU board runs: accelerometer, gyroscope and magnetometer
windows, (64, 9) each, go through their own Conv1D + MaxPooling1D branch, are concatenated on the
channel axis, batch-normalised, and classified by a shared Conv1D, global average pool and two Dense
layers (four classes, softmax). Inputs are named "accel", "gyro" and "mag", in that order in the
model, so a converter must keep their order and their names apart.

The data is data.signals with 27 channels cut into three groups of 9 (one per input): the class tone
rides on every channel, so each branch sees it, and the model learns the task (argmax agreement of
the converted C against Keras means something). `fusion_data` regenerates those arrays for the
tests; it needs numpy only, TensorFlow is imported by `main` alone. Saved in the legacy .h5 format
with Keras 3, like make_models.py, but without the optimizer state (it would double the file). Run
from the repository root:

    python -m tests.keras_models.make_multi_io
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from tests.keras_models.data import signals

HERE = Path(__file__).resolve().parent
PATH = HERE / "multi_io" / "sensor_fusion.h5"
INPUTS = ("accel", "gyro", "mag")
STEPS = 64
CHANNELS = 9  # per input


def fusion_data(n: int, seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """n windows of the three sensors, each (n, 64, 9) float32 in INPUTS order, and their labels."""
    x, y = signals(n, STEPS, CHANNELS * len(INPUTS), seed)
    return [np.ascontiguousarray(x[:, :, k * CHANNELS:(k + 1) * CHANNELS]) for k in range(len(INPUTS))], y


def sensor_fusion(keras: Any) -> Any:
    """Three Conv1D branches -> Concatenate -> BatchNorm -> Conv1D -> global pool -> Dense -> softmax."""
    L = keras.layers
    inputs = [keras.Input((STEPS, CHANNELS), name=name) for name in INPUTS]
    branches = [L.MaxPooling1D(2)(L.Conv1D(8, 5, padding="same", activation="relu")(i)) for i in inputs]
    x = L.BatchNormalization()(L.Concatenate()(branches))
    x = L.Conv1D(16, 3, activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    x = L.Dense(16, activation="relu")(x)
    return keras.Model(inputs=inputs, outputs=L.Dense(4, activation="softmax")(x), name="sensor_fusion")


def main() -> None:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras

    keras.utils.set_random_seed(0)
    model = sensor_fusion(keras)
    x, y = fusion_data(1500, seed=20)
    x_test, y_test = fusion_data(400, seed=21)
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x, y, epochs=15, batch_size=64, verbose=0)
    accuracy = model.evaluate(x_test, y_test, verbose=0)[1]
    print(f"sensor_fusion: accuracy {accuracy:.3f} held out, {model.count_params()} parameters")
    if accuracy < 0.9:
        raise SystemExit("held-out accuracy below 0.9: not saved")
    PATH.parent.mkdir(exist_ok=True)
    model.save(PATH, include_optimizer=False)  # the Adam slots would double the file
    print(f"wrote {PATH} ({PATH.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
