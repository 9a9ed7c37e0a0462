"""Train and save the held-out benchmark models (committed .h5 files; run again only to change them).

    python benchmarks/heldout/make_models.py [--models a,b]

Brief, seeded training (EPOCH_FACTOR x each entry's `epochs`, TRAIN_SAMPLES samples, batch 64,
Adam with a cosine-decayed learning rate so a few epochs settle) so the whole list trains in under
ten minutes on two cores. Writes models/<name>.h5 and models/float_scores.json (each model's float
test accuracy or MSE on the catalog's test set). TensorFlow does not promise the same weights on
another machine, which is why the trained files are committed rather than rebuilt by run.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import keras  # noqa: E402
import numpy as np  # noqa: E402

from catalog import HALF, MODELS, Entry, select  # noqa: E402

TRAIN_SAMPLES = 4000
EPOCH_FACTOR = 2
BATCH = 64


def train(entry: Entry) -> tuple[keras.Model, dict]:
    keras.utils.set_random_seed(entry.seed)
    model = entry.build(keras)
    x, y = entry.samples(TRAIN_SAMPLES, entry.seed)
    x_test, y_test = entry.test_set()
    epochs = EPOCH_FACTOR * entry.epochs
    rate = keras.optimizers.schedules.CosineDecay(3e-3, epochs * (TRAIN_SAMPLES // BATCH + 1), alpha=0.05)
    if entry.task == "regression":
        loss = "mse"
    else:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=entry.task == "logits")
    model.compile(optimizer=keras.optimizers.Adam(rate), loss=loss)
    model.fit(x, y, epochs=epochs, batch_size=BATCH, verbose=0)
    pred = model.predict(x_test, verbose=0, batch_size=256)
    if entry.task == "regression":
        result = {"mse": float(np.mean((pred - y_test) ** 2))}
    else:
        result = {"accuracy": float(np.mean(pred.argmax(1) == y_test))}
    return model, {"half": HALF[entry.name], "parameters": int(model.count_params()), **result}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", help="comma-separated names (default: all)")
    args = ap.parse_args()
    out = HERE / "models"
    out.mkdir(exist_ok=True)
    scores_path = out / "float_scores.json"
    scores = json.loads(scores_path.read_text()) if scores_path.exists() else {}
    start = time.time()
    for entry in select("all", args.models.split(",") if args.models else None):
        t0 = time.time()
        model, scores[entry.name] = train(entry)
        model.save(out / f"{entry.name}.h5")
        what = ", ".join(f"{k} {v:.4g}" for k, v in scores[entry.name].items() if k in ("accuracy", "mse"))
        print(f"{entry.name:30s} {scores[entry.name]['parameters']:6d} params  {what}  ({time.time() - t0:.0f} s)",
              flush=True)
    scores_path.write_text(json.dumps({k: scores[k] for k in MODELS if k in scores}, indent=2) + "\n")
    print(f"total {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
