"""Write sample.h: one window of the bundled vibration data (Keras' time-major layout) whose class the
float Keras model and the label agree on, for the firmware example to classify.

    python examples/firmware/make_sample.py
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE.parent


def main() -> None:
    import keras

    spec = importlib.util.spec_from_file_location("vibration_data", EXAMPLES / "vibration" / "data.py")
    data = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(data)
    x, y = data.make_dataset(32, seed=21)
    x = np.ascontiguousarray(x.transpose(0, 2, 1))  # (N, W, C): the Keras model's layout
    model = keras.models.load_model(EXAMPLES / "vibration_keras" / "vibration_cnn.h5", compile=False)
    predicted = model.predict(x, verbose=0).argmax(axis=1)
    i = next(k for k in range(len(y)) if predicted[k] == y[k] == 2)  # a misalignment window
    values = ",\n".join("    " + ", ".join(f"{v:.6g}f" for v in row) for row in x[i])
    steps, channels = x[i].shape
    (HERE / "sample.h").write_text(
        "/* sample.h - written by make_sample.py: one vibration window, time-major (steps x axes). */\n"
        "#ifndef SAMPLE_H\n#define SAMPLE_H\n\n"
        f"#define SAMPLE_STEPS {steps}\n#define SAMPLE_CHANNELS {channels}\n"
        f"#define SAMPLE_CLASS {int(y[i])} /* {data.CLASSES[int(y[i])]} */\n\n"
        f"static const float sample_window[SAMPLE_STEPS * SAMPLE_CHANNELS] = {{\n{values}\n}};\n\n#endif\n")


if __name__ == "__main__":
    main()
