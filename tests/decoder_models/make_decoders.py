"""Regenerate the transposed-convolution fixtures of issue 31 (committed, small): denoisers trained
briefly on `denoising` (two correlated channels of tones and decaying transients in white noise), so
that their outputs mean something: the test checks the C removes as much noise as the float model.

    python tests/decoder_models/make_decoders.py

- torch_ae_legacy.onnx, torch_ae_dynamo.onnx: one PyTorch autoencoder, Conv1d stride 2 twice down,
  ConvTranspose1d (k3, stride 2, padding 1, output_padding 1) and (k5, stride 2, padding 2,
  output_padding 1) up, exported by TorchScript's exporter (opset 13) and by torch.export (dynamo).
- keras_unet.h5: a Keras U-Net, Conv1D and MaxPooling1D down, Conv1DTranspose (k4, stride 2, same) up,
  each concatenated with the encoder's feature map of its width (the skips), a pointwise output.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent

import numpy as np  # noqa: E402

STEPS, CHANNELS = 128, 2


def denoising(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) pairs, (N, STEPS, CHANNELS) time-major: per sample two tones (2-12 cycles per
    window) per channel, the second channel partly a delayed copy of the first, a decaying transient in
    half of them, and white noise of 0.2-0.5 (the clean signal's RMS is about 0.7)."""
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS) / STEPS
    clean = np.zeros((n, STEPS, CHANNELS))
    for c in range(CHANNELS):
        for _ in range(2):
            freq = rng.uniform(2, 12, (n, 1))
            clean[:, :, c] += rng.uniform(0.3, 1.0, (n, 1)) * np.sin(2 * np.pi * freq * t + rng.uniform(0, 2 * np.pi, (n, 1)))
    clean[:, :, 1] = 0.6 * np.roll(clean[:, :, 0], 5, axis=1) + 0.4 * clean[:, :, 1]
    start = rng.integers(0, STEPS - 16, n)
    burst = rng.random(n) < 0.5
    for k in np.flatnonzero(burst):
        tail = np.arange(STEPS - start[k])
        clean[k, start[k]:, :] += (1.5 * np.exp(-tail / 6.0) * np.sin(2 * np.pi * 0.23 * tail))[:, None] * [1.0, 0.7]
    noisy = clean + rng.uniform(0.2, 0.5, (n, 1, 1)) * rng.standard_normal(clean.shape)
    return noisy.astype(np.float32), clean.astype(np.float32)


def channel_major(x: np.ndarray) -> np.ndarray:
    """PyTorch's (N, C, T) layout of a (N, T, C) batch."""
    return np.ascontiguousarray(x.transpose(0, 2, 1))


def snr_db(got: np.ndarray, clean: np.ndarray) -> float:
    """How far `got` is from the clean signal: 10 log10(clean energy / error energy)."""
    got, clean = np.asarray(got, np.float64), np.asarray(clean, np.float64)
    return float(10 * np.log10(np.sum(clean**2) / np.sum((got - clean) ** 2)))


def make_torch() -> None:
    import torch

    nn = torch.nn
    torch.manual_seed(31)
    model = nn.Sequential(
        nn.Conv1d(CHANNELS, 16, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv1d(16, 32, 5, stride=2, padding=2), nn.ReLU(),
        nn.ConvTranspose1d(32, 16, 3, stride=2, padding=1, output_padding=1), nn.ReLU(),
        nn.ConvTranspose1d(16, CHANNELS, 5, stride=2, padding=2, output_padding=1))
    noisy, clean = (torch.from_numpy(channel_major(a)) for a in denoising(3000, seed=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(15):
        for start in range(0, len(noisy), 64):
            optimizer.zero_grad()
            nn.functional.mse_loss(model(noisy[start:start + 64]), clean[start:start + 64]).backward()
            optimizer.step()
    model.eval()
    xt, ct = denoising(500, seed=2)
    with torch.no_grad():
        out = model(torch.from_numpy(channel_major(xt))).numpy()
    print(f"torch_ae: input {snr_db(xt, ct):.1f} dB -> output {snr_db(out, channel_major(ct)):.1f} dB")
    example = (torch.from_numpy(channel_major(xt[:1])),)
    torch.onnx.export(model, example, str(HERE / "torch_ae_legacy.onnx"), dynamo=False, opset_version=13,
                      input_names=["noisy"], output_names=["denoised"])
    torch.onnx.export(model, example, str(HERE / "torch_ae_dynamo.onnx"), dynamo=True, external_data=False,
                      input_names=["noisy"], output_names=["denoised"])


def make_keras() -> None:
    import keras

    L = keras.layers
    keras.utils.set_random_seed(31)
    i = keras.Input((STEPS, CHANNELS), name="noisy")
    e1 = L.Conv1D(16, 5, padding="same", activation="relu", name="enc1")(i)
    e2 = L.Conv1D(32, 5, padding="same", activation="relu", name="enc2")(L.MaxPooling1D(2, name="down1")(e1))
    b = L.Conv1D(32, 3, padding="same", activation="relu", name="bottom")(L.MaxPooling1D(2, name="down2")(e2))
    u2 = L.Conv1DTranspose(32, 4, strides=2, padding="same", activation="relu", name="up2")(b)
    d2 = L.Conv1D(32, 3, padding="same", activation="relu", name="dec2")(L.Concatenate(name="skip2")([u2, e2]))
    u1 = L.Conv1DTranspose(16, 4, strides=2, padding="same", activation="relu", name="up1")(d2)
    d1 = L.Conv1D(16, 3, padding="same", activation="relu", name="dec1")(L.Concatenate(name="skip1")([u1, e1]))
    model = keras.Model(i, L.Conv1D(CHANNELS, 1, name="denoised")(d1), name="keras_unet")
    noisy, clean = denoising(3000, seed=1)
    model.compile(keras.optimizers.Adam(3e-3), "mse")
    model.fit(noisy, clean, epochs=15, batch_size=64, verbose=0)
    xt, ct = denoising(500, seed=2)
    print(f"keras_unet: input {snr_db(xt, ct):.1f} dB -> output {snr_db(model.predict(xt, verbose=0), ct):.1f} dB")
    model.save(HERE / "keras_unet.h5", include_optimizer=False)


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    make_torch()
    make_keras()
