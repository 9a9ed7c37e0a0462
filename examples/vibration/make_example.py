"""Train the bundled example (a small 1D CNN on synthetic vibration data) and export it to ONNX.

Writes vibration_cnn.onnx (PyTorch's default exporter, weights inline), calibration.npy (256
training windows) and test_x.npy / test_y.npy (held-out windows and labels). Needs torch and onnxscript; run from anywhere:
    python examples/vibration/make_example.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from data import AXES, CLASSES, make_dataset, write_test_set  # noqa: E402


def build_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv1d(AXES, 8, kernel_size=5, padding=2),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(8, 16, kernel_size=3, stride=2, padding=1),
        nn.ReLU(),
        nn.MaxPool1d(2),
        nn.Conv1d(16, 16, kernel_size=3, dilation=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(16 * 12, 16),
        nn.ReLU(),
        nn.Linear(16, len(CLASSES)),
        nn.Softmax(dim=1),
    )


def main() -> None:
    torch.manual_seed(0)
    x, y = make_dataset(4000, seed=1)
    model = build_model()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    for epoch in range(30):
        perm = torch.randperm(len(xt))
        for i in range(0, len(xt), 64):
            idx = perm[i : i + 64]
            logits = torch.log(model(xt[idx]) + 1e-9)
            loss = nn.functional.nll_loss(logits, yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    xv, yv = make_dataset(1000, seed=2)
    with torch.no_grad():
        acc = (model(torch.from_numpy(xv)).argmax(1).numpy() == yv).mean()
    print(f"validation accuracy {acc:.3f}")
    torch.onnx.export(model, (torch.from_numpy(x[:1]),), str(HERE / "vibration_cnn.onnx"),
                      input_names=["accel"], output_names=["probabilities"], dynamo=True, external_data=False)
    np.save(HERE / "calibration.npy", x[:256])
    write_test_set(HERE, time_major=False)


if __name__ == "__main__":
    main()
