"""Train and save the benchmark models (committed .h5 files; run again only to change them).

    python benchmarks/models/make_models.py

Training is seeded but TensorFlow does not promise the same weights on another machine, which is
why the trained files are committed rather than rebuilt by the benchmark.
"""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import keras  # noqa: E402

from catalog import MODELS, TEST_SEED, TRAIN_SEED  # noqa: E402

HERE = Path(__file__).parent


def main() -> None:
    for m in MODELS.values():
        keras.utils.set_random_seed(0)
        model = m.build(keras)
        x, y = m.data(6000, TRAIN_SEED)
        x_test, y_test = m.data(1000, TEST_SEED)
        if m.task == "regression":
            model.compile(optimizer=keras.optimizers.Adam(2e-3), loss="mse")
        else:
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=m.task == "logits")
            model.compile(optimizer=keras.optimizers.Adam(2e-3), loss=loss, metrics=["accuracy"])
        model.fit(x, y, epochs=30, batch_size=64, verbose=0, validation_split=0.1)
        score = model.evaluate(x_test, y_test, verbose=0)
        what = f"mse {score:.4f}" if m.task == "regression" else f"accuracy {score[1]:.3f}"
        print(f"{m.name}: {model.count_params()} parameters, {what} held out")
        model.save(HERE / f"{m.name}.h5")


if __name__ == "__main__":
    main()
