"""Synthetic sensor data for the benchmark models (numpy only, deterministic by seed).

Harder than the test fixtures' data on purpose: classes are close in frequency, channels carry
offsets (gravity on an accelerometer), noise is strong and a few samples hold spikes, so the float
models stop short of 100% and the tails of the value distributions are what real recordings have.
"""

from __future__ import annotations

import numpy as np


def motion(n: int, steps: int, channels: int, classes: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Activity-like windows: the class sets the dominant cadence (close tones), each channel sees
    it with its own gain, phase and offset, plus broadband noise and rare impact spikes."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, classes, n)
    cycles = 3.0 + 2.0 * y + rng.uniform(-0.4, 0.4, n)
    t = np.arange(steps) / steps
    phase = rng.uniform(0, 2 * np.pi, (n, 1, channels))
    gain = rng.uniform(0.6, 1.5, (n, 1, channels))
    offset = rng.uniform(-1.0, 1.0, (n, 1, channels))
    x = gain * np.sin(2 * np.pi * cycles[:, None, None] * t[None, :, None] + phase) + offset
    x += 0.6 * rng.standard_normal((n, steps, channels))
    spikes = rng.random((n, steps, channels)) < 0.002
    x += spikes * rng.choice([-1.0, 1.0], x.shape) * rng.uniform(3, 6, x.shape)
    return x.astype(np.float32), y.astype(np.int64)


def heartbeat(n: int, steps: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """ECG-like single-lead windows: narrow beats on a wandering baseline. Class 1 beats at
    irregular intervals (as in atrial fibrillation), class 0 regularly; both with noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, n)
    x = np.zeros((n, steps), np.float64)
    t = np.arange(steps)
    for i in range(n):
        period = rng.uniform(16, 24)
        pos = rng.uniform(0, period)
        while pos < steps + 10:
            width = rng.uniform(1.2, 2.2)
            x[i] += rng.uniform(0.8, 1.4) * np.exp(-0.5 * ((t - pos) / width) ** 2)
            x[i] -= 0.25 * np.exp(-0.5 * ((t - pos - 3 * width) / (2 * width)) ** 2)
            jitter = rng.uniform(-0.5, 0.5) if y[i] else rng.uniform(-0.05, 0.05)
            pos += period * (1 + jitter)
    drift = rng.uniform(-0.5, 0.5, (n, 1)) * np.sin(2 * np.pi * t[None] / rng.uniform(150, 400, (n, 1)))
    x += drift + 0.15 * rng.standard_normal((n, steps))
    return x[:, :, None].astype(np.float32), y.astype(np.int64)


def denoise_targets(x: np.ndarray, keep_bins: int = 12) -> np.ndarray:
    """The regression target of the autoencoder: the window's low-pass part."""
    spectrum = np.fft.rfft(x, axis=1)
    spectrum[:, keep_bins:] = 0
    return np.fft.irfft(spectrum, n=x.shape[1], axis=1).astype(np.float32)
