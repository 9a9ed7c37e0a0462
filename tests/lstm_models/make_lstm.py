"""Regenerate the LSTM fixtures of issue 34 (committed, small): PyTorch CNN-LSTMs trained briefly on the
Keras fixtures' four-tone signals (tests/keras_models/data.py, 64 steps, 3 channels), exported as users
export them.

    python tests/lstm_models/make_lstm.py            # all of them (PyTorch and TensorFlow)
    python tests/lstm_models/make_lstm.py stateful   # only the stateful stream's four Keras models

- torch_cnn_lstm.onnx: Conv1d(3, 16, 5) + ReLU, MaxPool1d(2), LSTM(16, 24, batch_first=True), the
  last step's hidden state, Linear(24, 4); the TorchScript exporter (opset 17), whose zero initial
  states are Shape/Gather/Expand subgraphs.
- torch_cnn_lstm_dynamo.onnx: the same trained module through the dynamo exporter.
- torch_lstm_stack.onnx: Conv1d + ReLU, then a two-layer LSTM(16, 20) with batch_first=False whose
  last layer's h_n feeds Linear(20, 4) (two LSTM nodes; h_n is their Y_h outputs concatenated).
- torch_bilstm.onnx: Conv1d + ReLU, MaxPool1d(2), a bidirectional LSTM(16, 12, batch_first=True) whose
  h_n (the forward direction's last step and the backward one's first) feeds Linear(24, 4).
- torch_cnn_gru.onnx: Conv1d + ReLU, MaxPool1d(2), GRU(16, 24, batch_first=True) (PyTorch's GRU is
  ONNX's linear_before_reset=1), the last step, Linear(24, 4).
- torch_cnn_rnn.onnx: Conv1d + ReLU, MaxPool1d(2), RNN(16, 20, batch_first=True, tanh), h_n[-1],
  Linear(20, 4).
- keras_cnn_lstm.keras: Conv1D(16, 5, relu), MaxPooling1D(2), LSTM(24, return_sequences=True),
  LSTM(16), Dense(4, softmax) (Keras 3).
- keras_bilstm.keras: Conv1D, MaxPooling1D, Bidirectional(LSTM(12, return_sequences=True)) merged by
  concatenation, Bidirectional(LSTM(8)) merged by sum, Dense(4, softmax).
- keras_backwards.keras: Conv1D, MaxPooling1D, LSTM(12, return_sequences=True, go_backwards=True),
  Flatten, Dense(4, softmax).
- keras_cnn_gru.keras: Conv1D, MaxPooling1D, GRU(24, return_sequences=True) (reset_after, Keras 3's
  default), GRU(16, reset_after=False), Dense(4, softmax).
- keras_cnn_rnn.keras: Conv1D, MaxPooling1D, Bidirectional(SimpleRNN(12)), Dense(4, softmax).
- keras_causal_cnn_lstm.keras, keras_causal_cnn_gru.keras: Conv1D(16, 5, causal, relu), MaxPooling1D(2),
  Conv1D(16, 3, causal, dilation 2, relu), LSTM(24) or GRU(24), Dense(4, softmax): every layer before
  the recurrence causal, so they stream statefully (`--streaming HOP --stateful`).
- keras_valid_cnn_lstm.keras: Conv1D(16, 3, relu), Conv1D(16, 3, relu) (Keras' default 'valid' padding:
  each lags its input by 2 steps), MaxPooling1D(2), LSTM(20), Dense(4, softmax).
- keras_lstm_first.keras: LSTM(16, return_sequences=True), Dense(12, relu) on every step, LSTM(12),
  Dense(4, softmax): only pointwise layers around the recurrences, so tflite-micro (which keeps an
  LSTM's state across invokes) checks its stateful stream.
- tfkeras_cnn_lstm_int8.tflite: keras_cnn_lstm's architecture written with `tf_keras` (the Keras 2 API,
  `pip install tf-keras`: Keras 3's conversion gives a float loop) and converted by TensorFlow's
  converter to full int8 on 64 calibration windows: two fused UNIDIRECTIONAL_SEQUENCE_LSTM operators
  (cell clip 10, int16 cell states at 2^-13 and 2^-12).

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

    class CnnGru(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(CHANNELS, 16, 5, padding=2)
            self.pool = torch.nn.MaxPool1d(2)
            self.gru = torch.nn.GRU(16, 24, batch_first=True)
            self.head = torch.nn.Linear(24, 4)

        def forward(self, x):
            y = self.pool(torch.relu(self.conv(x))).permute(0, 2, 1)
            out, _ = self.gru(y)
            return self.head(out[:, -1, :])

    class CnnRnn(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(CHANNELS, 16, 5, padding=2)
            self.pool = torch.nn.MaxPool1d(2)
            self.rnn = torch.nn.RNN(16, 20, batch_first=True)
            self.head = torch.nn.Linear(20, 4)

        def forward(self, x):
            y = self.pool(torch.relu(self.conv(x))).permute(0, 2, 1)
            _, h = self.rnn(y)
            return self.head(h[-1])

    return CnnLstm, LstmStack, BiLstm, CnnGru, CnnRnn


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


def keras_models(kinds: tuple[str, ...] = ("cnn_lstm", "bilstm", "backwards", "cnn_gru", "cnn_rnn", "causal_cnn_lstm",
                                           "causal_cnn_gru", "lstm_first", "valid_cnn_lstm")) -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import keras
    from keras import layers

    def build(kind: str):
        inp = keras.Input((STEPS, CHANNELS))
        if kind == "lstm_first":  # the recurrence first: tflite-micro is the stateful stream's oracle
            y = layers.LSTM(16, return_sequences=True)(inp)
            y = layers.LSTM(12)(layers.Dense(12, activation="relu")(y))
            return keras.Model(inp, layers.Dense(4, activation="softmax")(y))
        if kind == "valid_cnn_lstm":  # Keras' default padding: each conv lags its input (streams statefully)
            y = layers.Conv1D(16, 3, activation="relu")(inp)
            y = layers.MaxPooling1D(2)(layers.Conv1D(16, 3, activation="relu")(y))
            return keras.Model(inp, layers.Dense(4, activation="softmax")(layers.LSTM(20)(y)))
        causal = kind.startswith("causal_")
        y = layers.Conv1D(16, 5, padding="causal" if causal else "same", activation="relu")(inp)
        y = layers.MaxPooling1D(2)(y)
        if causal:  # streams statefully: every layer before the recurrence is causal
            y = layers.Conv1D(16, 3, padding="causal", dilation_rate=2, activation="relu")(y)
            recurrent = layers.LSTM(24) if kind == "causal_cnn_lstm" else layers.GRU(24)
            return keras.Model(inp, layers.Dense(4, activation="softmax")(recurrent(y)))
        if kind == "cnn_gru":
            y = layers.GRU(16, reset_after=False)(layers.GRU(24, return_sequences=True)(y))
        elif kind == "cnn_rnn":
            y = layers.Bidirectional(layers.SimpleRNN(12))(y)
        elif kind == "cnn_lstm":
            y = layers.LSTM(16)(layers.LSTM(24, return_sequences=True)(y))
        elif kind == "bilstm":
            y = layers.Bidirectional(layers.LSTM(12, return_sequences=True))(y)
            y = layers.Bidirectional(layers.LSTM(8), merge_mode="sum")(y)
        else:
            y = layers.Flatten()(layers.LSTM(12, return_sequences=True, go_backwards=True)(y))
        return keras.Model(inp, layers.Dense(4, activation="softmax")(y))

    x, y = signals(3000, STEPS, CHANNELS, seed=4)
    xt, yt = signals(500, STEPS, CHANNELS, seed=104)
    for kind in kinds:
        keras.utils.set_random_seed(4)
        model = build(kind)
        model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, epochs=4, batch_size=50, verbose=0)
        path = HERE / f"keras_{kind}.keras"
        model.save(path)
        print(f"{path.name}: held-out accuracy {model.evaluate(xt, yt, verbose=0)[1]:.3f}, {path.stat().st_size} bytes")


def tf_keras_tflite() -> None:
    import os

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf
    import tf_keras as keras

    keras.utils.set_random_seed(5)
    inp = keras.Input((STEPS, CHANNELS), batch_size=1)
    y = keras.layers.MaxPooling1D(2)(keras.layers.Conv1D(16, 5, padding="same", activation="relu")(inp))
    y = keras.layers.LSTM(16)(keras.layers.LSTM(24, return_sequences=True)(y))
    model = keras.Model(inp, keras.layers.Dense(4, activation="softmax")(y))
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    x, labels = signals(3000, STEPS, CHANNELS, seed=5)
    model.fit(x, labels, epochs=4, batch_size=50, verbose=0)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    calibration = signals(64, STEPS, CHANNELS, seed=35)[0]
    converter.representative_dataset = lambda: ([row[None]] for row in calibration)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    path = HERE / "tfkeras_cnn_lstm_int8.tflite"
    path.write_bytes(converter.convert())
    xt, yt = signals(500, STEPS, CHANNELS, seed=105)
    print(f"{path.name}: float held-out accuracy {model.evaluate(xt, yt, verbose=0)[1]:.3f}, "
          f"{path.stat().st_size} bytes")


def main() -> None:
    import torch

    torch.set_num_threads(2)
    CnnLstm, LstmStack, BiLstm, CnnGru, CnnRnn = modules()
    cnn_lstm = train(CnnLstm(), seed=1)
    export(cnn_lstm, HERE / "torch_cnn_lstm.onnx", dynamo=False)
    export(cnn_lstm, HERE / "torch_cnn_lstm_dynamo.onnx", dynamo=True)
    export(train(LstmStack(), seed=2), HERE / "torch_lstm_stack.onnx", dynamo=False)
    export(train(BiLstm(), seed=3), HERE / "torch_bilstm.onnx", dynamo=False)
    export(train(CnnGru(), seed=6), HERE / "torch_cnn_gru.onnx", dynamo=False)
    export(train(CnnRnn(), seed=7), HERE / "torch_cnn_rnn.onnx", dynamo=False)
    keras_models()
    tf_keras_tflite()


if __name__ == "__main__":
    if sys.argv[1:] == ["stateful"]:  # only the stateful stream's Keras fixtures (no PyTorch needed)
        keras_models(("causal_cnn_lstm", "causal_cnn_gru", "lstm_first", "valid_cnn_lstm"))
    else:
        main()
