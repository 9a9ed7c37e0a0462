"""Synthetic multi-channel signals for the Keras fixtures (numpy only, deterministic by seed).

Four classes told apart by the tone that rides on the noise: 2, 5, 9 or 14 cycles per window, in
(N, W, C) — Keras' layout. The classifiers are trained on it so that argmax agreement means something
(an untrained softmax is near-uniform and its argmax a coin toss)."""

from __future__ import annotations

import numpy as np

TONES = (2.0, 5.0, 9.0, 14.0)


def signals(n: int, steps: int, channels: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, len(TONES), n)
    t = np.arange(steps) / steps
    phase = rng.uniform(0, 2 * np.pi, (n, 1, channels))
    gain = rng.uniform(0.5, 1.5, (n, 1, channels))
    tone = np.sin(2 * np.pi * np.asarray(TONES)[y][:, None, None] * t[None, :, None] + phase)
    x = gain * tone + 0.5 * rng.standard_normal((n, steps, channels))
    return x.astype(np.float32), y.astype(np.int64)


def regression_targets(x: np.ndarray, y: np.ndarray, kind: str) -> np.ndarray:
    """What the regressors learn from the same signals: the autoencoder the clean tone (a denoiser),
    the dense head the tone frequency and the first two channels' RMS."""
    if kind == "autoencoder":
        steps = x.shape[1]
        spectrum = np.fft.rfft(x, axis=1)
        keep = np.zeros(spectrum.shape[1], bool)
        keep[[int(t) for t in TONES]] = True
        return np.fft.irfft(spectrum * keep[None, :, None], n=steps, axis=1).astype(np.float32)
    rms = np.sqrt(np.mean(x[:, :, :2] ** 2, axis=1))
    return np.concatenate([(np.asarray(TONES)[y] / TONES[-1])[:, None], rms], axis=1).astype(np.float32)
