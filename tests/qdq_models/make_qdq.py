"""Regenerate the quantized (QDQ) ONNX fixtures of issue 32 (committed, small): ONNX Runtime's
`quantize_static` of trained float models already in the repository, so that the tests read files
made as users make them.

    python tests/qdq_models/make_qdq.py

- torch_ae_s8.onnx, torch_ae_u8.onnx, torch_ae_s16.onnx: the PyTorch denoising autoencoder
  (tests/decoder_models/torch_ae_legacy.onnx: Conv1d x2, ConvTranspose1d x2) with per-channel int8
  weights and int8, uint8 or symmetric int16 activations, calibrated on 64 noisy windows.
- keras_zoo_s8.onnx: the trained Keras classifier tests/keras_models/conv_zoo.h5 exported by tf2onnx
  (through the Keras frontend, which calls it) and quantized the same way, int8 (needs TensorFlow).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent

import numpy as np  # noqa: E402
import onnx  # noqa: E402

CALIBRATION_SAMPLES = 64


def quantize(float_path: Path, out: Path, samples: np.ndarray, activations: str) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    name = onnx.load(str(float_path)).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.rows = iter([{name: row[np.newaxis]} for row in samples])

        def get_next(self):
            return next(self.rows, None)

    kind = {"s8": QuantType.QInt8, "u8": QuantType.QUInt8, "s16": QuantType.QInt16}[activations]
    quantize_static(str(float_path), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=kind, weight_type=QuantType.QInt8,
                    extra_options={"ActivationSymmetric": activations == "s16"})
    print(f"{out.name}: {out.stat().st_size} bytes")


def make_torch() -> None:
    from tests.decoder_models.make_decoders import channel_major, denoising

    noisy, _ = denoising(CALIBRATION_SAMPLES, seed=3)
    for kind in ("s8", "u8", "s16"):
        quantize(HERE.parent / "decoder_models" / "torch_ae_legacy.onnx", HERE / f"torch_ae_{kind}.onnx",
                 channel_major(noisy), kind)


def make_keras() -> None:
    import tempfile

    from onnx2cmsis.frontends.keras import load_keras
    from tests.keras_models.data import signals

    path = HERE.parent / "keras_models" / "conv_zoo.h5"
    model = load_keras(path)
    steps, channels = (d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim[1:])
    x, _ = signals(CALIBRATION_SAMPLES, steps, channels, seed=20)
    with tempfile.TemporaryDirectory() as tmp:
        exported = Path(tmp) / "conv_zoo.onnx"
        onnx.save(model, str(exported))
        quantize(exported, HERE / "keras_zoo_s8.onnx", x, "s8")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    make_torch()
    make_keras()
