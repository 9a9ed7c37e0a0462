"""Train the bundled Keras example (a small 1D CNN on the synthetic vibration data) and save it as .h5.

Writes vibration_cnn.h5 (Keras 3, legacy HDF5 format), calibration.npy (256 training windows in
Keras' (N, W, C) layout) and test_x.npy / test_y.npy (held-out windows and labels). Needs the [keras] extra; run from anywhere:
    python examples/vibration_keras/make_example.py
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402
import numpy as np  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "vibration"))
from data import AXES, CLASSES, STEPS, make_dataset, write_test_set  # noqa: E402

L = keras.layers


def build_model() -> keras.Model:
    return keras.Sequential([
        keras.Input((STEPS, AXES), name="accel"),
        L.Conv1D(8, 5, padding="same", activation="relu"),
        L.MaxPooling1D(2),
        L.Conv1D(16, 3, strides=2, padding="same"),
        L.BatchNormalization(),
        L.ReLU(),
        L.MaxPooling1D(2),
        L.Conv1D(16, 3, dilation_rate=2, activation="relu"),
        L.GlobalAveragePooling1D(),
        L.Dense(16, activation="relu"),
        L.Dropout(0.2),
        L.Dense(len(CLASSES), activation="softmax"),
    ], name="vibration_cnn")


def nwc(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(x.transpose(0, 2, 1))  # data.py makes PyTorch's (N, C, W)


def main() -> None:
    keras.utils.set_random_seed(0)
    x, y = make_dataset(4000, seed=1)
    model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(nwc(x), y, epochs=30, batch_size=64, verbose=0)
    xv, yv = make_dataset(1000, seed=2)
    print(f"validation accuracy {model.evaluate(nwc(xv), yv, verbose=0)[1]:.3f}")
    model.save(HERE / "vibration_cnn.h5")
    np.save(HERE / "calibration.npy", nwc(x[:256]))
    write_test_set(HERE, time_major=True)


if __name__ == "__main__":
    main()
