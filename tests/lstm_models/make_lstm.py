"""Regenerate the LSTM fixtures of issue 34 (committed, small): PyTorch CNN-LSTMs trained briefly on the
Keras fixtures' four-tone signals (tests/keras_models/data.py, 64 steps, 3 channels), exported as users
export them.

    python tests/lstm_models/make_lstm.py

- torch_cnn_lstm.onnx: Conv1d(3, 16, 5) + ReLU, MaxPool1d(2), LSTM(16, 24, batch_first=True), the
  last step's hidden state, Linear(24, 4); the TorchScript exporter (opset 17), whose zero initial
  states are Shape/Gather/Expand subgraphs.
- torch_cnn_lstm_dynamo.onnx: the same trained module through the dynamo exporter.
- torch_lstm_stack.onnx: Conv1d + ReLU, then a two-layer LSTM(16, 20) with batch_first=False whose
  last layer's h_n feeds Linear(20, 4) (two LSTM nodes; h_n is their Y_h outputs concatenated).
- torch_bilstm.onnx: Conv1d + ReLU, MaxPool1d(2), a bidirectional LSTM(16, 12, batch_first=True) whose
  h_n (the forward direction's last step and the backward one's first) feeds Linear(24, 4).

Training on two threads is not bit-reproducible: a regenerated file may differ in its last bits (the
tests read the committed files, never compare against a regeneration).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.keras_models.data import signals  # noqa: E402

STEPS, CHANNELS = 64, 3


def modules():
    import torch

    class CnnLstm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(CHANNELS, 16, 5, padding=2)
            self.pool = torch.nn.MaxPool1d(2)
            self.lstm = torch.nn.LSTM(16, 24, batch_first=True)
            self.head = torch.nn.Linear(24, 4)

        def forward(self, x):
            y = self.pool(torch.relu(self.conv(x))).permute(0, 2, 1)
            out, _ = self.lstm(y)
            return self.head(out[:, -1, :])

    class LstmStack(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(CHANNELS, 16, 3, padding=1)
            self.lstm = torch.nn.LSTM(16, 20, num_layers=2)
            self.head = torch.nn.Linear(20, 4)

        def forward(self, x):
            y = torch.relu(self.conv(x)).permute(2, 0, 1)  # (T, N, C): time first
            _, (h, _) = self.lstm(y)
            return self.head(h[-1])

    class BiLstm(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(CHANNELS, 16, 5, padding=2)
            self.pool = torch.nn.MaxPool1d(2)
            self.lstm = torch.nn.LSTM(16, 12, batch_first=True, bidirectional=True)
            self.head = torch.nn.Linear(24, 4)

        def forward(self, x):
            y = self.pool(torch.relu(self.conv(x))).permute(0, 2, 1)
            _, (h, _) = self.lstm(y)
            return self.head(torch.cat([h[-2], h[-1]], dim=1))

    return CnnLstm, LstmStack, BiLstm


def train(module, seed: int, epochs: int = 6):
    import torch

    torch.manual_seed(seed)
    x, y = signals(3000, STEPS, CHANNELS, seed=seed)
    x = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 2, 1)))
    y = torch.from_numpy(y)
    opt = torch.optim.Adam(module.parameters(), lr=3e-3)
    for _ in range(epochs):
        for i in range(0, len(x), 50):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(module(x[i:i + 50]), y[i:i + 50])
            loss.backward()
            opt.step()
    module.eval()
    xt, yt = signals(500, STEPS, CHANNELS, seed=seed + 100)
    with torch.no_grad():
        acc = (module(torch.from_numpy(np.ascontiguousarray(xt.transpose(0, 2, 1)))).argmax(1).numpy() == yt).mean()
    print(f"{type(module).__name__}: held-out accuracy {acc:.3f}")
    return module


def export(module, path: Path, dynamo: bool) -> None:
    import torch

    x = torch.zeros(1, CHANNELS, STEPS)
    torch.onnx.export(module, (x,), str(path), opset_version=17, dynamo=dynamo, input_names=["x"],
                      output_names=["y"], external_data=False) if dynamo else \
        torch.onnx.export(module, (x,), str(path), opset_version=17, dynamo=False, input_names=["x"],
                          output_names=["y"])
    print(f"{path.name}: {path.stat().st_size} bytes")


def main() -> None:
    import torch

    torch.set_num_threads(2)
    CnnLstm, LstmStack, BiLstm = modules()
    cnn_lstm = train(CnnLstm(), seed=1)
    export(cnn_lstm, HERE / "torch_cnn_lstm.onnx", dynamo=False)
    export(cnn_lstm, HERE / "torch_cnn_lstm_dynamo.onnx", dynamo=True)
    export(train(LstmStack(), seed=2), HERE / "torch_lstm_stack.onnx", dynamo=False)
    export(train(BiLstm(), seed=3), HERE / "torch_bilstm.onnx", dynamo=False)


if __name__ == "__main__":
    main()
