"""Regenerate the quantized (QDQ) ONNX fixtures of issue 32 (committed, small): ONNX Runtime's
`quantize_static` of trained float models already in the repository, so that the tests read files
made as users make them.

    python tests/qdq_models/make_qdq.py

- torch_ae_s8.onnx, torch_ae_u8.onnx, torch_ae_s16.onnx: the PyTorch denoising autoencoder
  (tests/decoder_models/torch_ae_legacy.onnx: Conv1d x2, ConvTranspose1d x2) with per-channel int8
  weights and int8, uint8 or symmetric int16 activations, calibrated on 64 noisy windows.
- torch_qat.onnx: a PyTorch classifier (Conv1d x2, max pool, global average, Linear) trained
  briefly with fake quantization (torch.ao.quantization.FakeQuantize: per-tensor int8 activations,
  per-channel symmetric int8 weights) on the Keras fixtures' four-tone signals, exported by the
  TorchScript exporter, which writes each FakeQuantize as a QuantizeLinear/DequantizeLinear pair.
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


QAT_STEPS, QAT_CHANNELS = 64, 3


def make_qat() -> None:
    import torch
    from torch.ao.quantization import (FakeQuantize, MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver,
                                       disable_observer)

    from tests.keras_models.data import signals

    nn, F = torch.nn, torch.nn.functional

    def activation() -> FakeQuantize:
        return FakeQuantize(observer=MovingAverageMinMaxObserver, quant_min=-128, quant_max=127, dtype=torch.qint8,
                            qscheme=torch.per_tensor_affine)

    def weights() -> FakeQuantize:
        # [-128, 127]: the only signed range torch's exporter writes as Q/DQ (weight codes may be -128)
        return FakeQuantize(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                            dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)

    class Classifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1, self.conv2 = nn.Conv1d(QAT_CHANNELS, 16, 5, padding=2), nn.Conv1d(16, 24, 3, padding=1)
            self.fc = nn.Linear(24, 4)
            self.q_in, self.q1, self.q2, self.q3, self.q_out = (activation() for _ in range(5))
            self.w1, self.w2, self.w3 = weights(), weights(), weights()

        def forward(self, x):
            x = self.q_in(x)
            x = self.q1(F.relu(F.conv1d(x, self.w1(self.conv1.weight), self.conv1.bias, padding=2)))
            x = F.max_pool1d(x, 2)
            x = self.q2(F.relu(F.conv1d(x, self.w2(self.conv2.weight), self.conv2.bias, padding=1)))
            x = self.q3(x.mean(dim=2))
            return self.q_out(F.linear(x, self.w3(self.fc.weight), self.fc.bias))

    torch.manual_seed(32)
    model = Classifier()
    x, y = signals(2000, QAT_STEPS, QAT_CHANNELS, seed=10)
    xt, yt = (torch.from_numpy(a) for a in (x.transpose(0, 2, 1).copy(), y))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(12):
        for start in range(0, len(xt), 64):
            optimizer.zero_grad()
            F.cross_entropy(model(xt[start:start + 64]), yt[start:start + 64]).backward()
            optimizer.step()
    model.eval()
    model.apply(disable_observer)  # the scales stay as trained (an observer would write into them: aten::copy)
    x_test, y_test = signals(500, QAT_STEPS, QAT_CHANNELS, seed=11)
    with torch.no_grad():
        predicted = model(torch.from_numpy(x_test.transpose(0, 2, 1).copy())).argmax(dim=1).numpy()
    print(f"torch_qat: accuracy {np.mean(predicted == y_test):.3f} held out")
    torch.onnx.export(model, (xt[:1],), str(HERE / "torch_qat.onnx"), dynamo=False, opset_version=13,
                      input_names=["signal"], output_names=["logits"])
    print(f"torch_qat.onnx: {(HERE / 'torch_qat.onnx').stat().st_size} bytes")


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
    make_qat()
    make_keras()
