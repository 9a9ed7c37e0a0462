"""Synthetic 3-axis vibration windows for the bundled example (numpy only, deterministic by seed).

Four machine states a vibration sensor tells apart: 0 normal, 1 imbalance (strong 1x shaft tone),
2 misalignment (strong 2x harmonic, axial), 3 bearing fault (periodic impacts that ring down).
"""

from __future__ import annotations

import numpy as np

CLASSES = ("normal", "imbalance", "misalignment", "bearing")
AXES, STEPS = 3, 128


def make_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(x, y): x float32 of shape (n, 3, 128) in PyTorch's (N, C, W) layout, y int64 labels."""
    rng = np.random.default_rng(seed)
    t = np.arange(STEPS) / STEPS
    y = rng.integers(0, len(CLASSES), n)
    x = np.empty((n, AXES, STEPS), np.float32)
    for i, label in enumerate(y):
        f = rng.uniform(3.0, 6.0)  # shaft frequency, cycles per window
        phase = rng.uniform(0, 2 * np.pi, AXES)
        gain = rng.uniform(0.8, 1.2, AXES)
        base = 0.3 * np.sin(2 * np.pi * f * t[None] + phase[:, None])
        sig = base + 0.35 * rng.standard_normal((AXES, STEPS))
        if label == 1:
            sig += 0.35 * np.sin(2 * np.pi * f * t[None] + phase[:, None])
        elif label == 2:
            sig[2] += 0.35 * np.sin(2 * np.pi * 2 * f * t + phase[2])
            sig[:2] += 0.15 * np.sin(2 * np.pi * 2 * f * t[None] + phase[:2, None])
        elif label == 3:
            period = int(rng.integers(12, 20))
            start = int(rng.integers(0, period))
            ring = np.exp(-np.arange(8) / 2.0) * np.cos(np.arange(8) * 2.5)
            for p in range(start, STEPS, period):
                seg = ring[: STEPS - p]
                sig[:, p : p + len(seg)] += 0.7 * seg[None] * gain[:, None]
        x[i] = sig * gain[:, None]
    return x, y.astype(np.int64)


def write_test_set(folder, time_major: bool, n: int = 128) -> None:
    """test_x.npy / test_y.npy: held-out windows (a seed no training or calibration used) and their
    labels, for `onnx2cmsis verify --data test_x.npy --labels test_y.npy`. time_major: Keras' (N, W, C)."""
    from pathlib import Path

    x, y = make_dataset(n, seed=3)
    if time_major:
        x = np.ascontiguousarray(x.transpose(0, 2, 1))
    np.save(Path(folder) / "test_x.npy", x)
    np.save(Path(folder) / "test_y.npy", y)
