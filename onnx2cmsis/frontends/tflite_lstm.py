"""TFLite's UNIDIRECTIONAL_SEQUENCE_LSTM (TensorFlow's converter fuses a Keras 2 LSTM into it) as an ONNX
LSTM node with the file's quantization (frontends/tflite.py calls `translate_lstm`).

The 24 inputs: the sequence; input-to-gate weights for the input, forget, cell and output gates (1-4);
recurrent weights (5-8); peepholes (9-11); gate biases (12-15); projection (16-17); the hidden and cell
state variables (18-19); layer-norm coefficients (20-23). Only the plain LSTM (no peepholes,
projection, layer norm or coupled input gate) converts: it is the one TFLite-Micro and CMSIS-NN run.

Each gate has its own int8 weight scale, which one ONNX weight tensor carries as per-row scales (one
repeated over each gate's rows) on a DequantizeLinear along axis 1; the biases likewise (int32, zero
for ONNX's separate recurrent bias). The cell state's power-of-two int16 scale, which no ONNX value
holds, rides on a Q/DQ pair hung on the LSTM's last-cell output Y_c (ops/lstm.py reads it from there).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx

from onnx2cmsis.errors import UnsupportedOpError

TANH = 4  # TFLite's ActivationFunctionType
CELL_CLIP_KEY = "onnx2cmsis.tflite_cell_clip"  # metadata: {Y_c value: TFLite's cell clip}
# TFLite input indices of the input, output, forget and cell gates (ONNX's gate order i, o, f, c)
INPUT_WEIGHTS, RECURRENT_WEIGHTS, BIASES = (1, 4, 2, 3), (5, 8, 6, 7), (12, 15, 13, 14)
ABSENT = {9: "peephole weights", 10: "peephole weights", 11: "peephole weights", 16: "a projection",
          17: "a projection", 20: "layer normalization", 21: "layer normalization", 22: "layer normalization",
          23: "layer normalization"}


def lstm_problems(op: Any, inputs: list[int]) -> list[str]:
    o = op.options
    found = []
    if int(o.get("FusedActivationFunction", TANH)) != TANH:
        found.append(f"cell activation {o.get('FusedActivationFunction')} (TANH expected)")
    if float(o.get("ProjClip", 0.0)):
        found.append("projection clipping")
    if inputs[1] < 0:
        found.append("no input gate (coupled input and forget gates)")
    found += sorted({what for k, what in ABSENT.items() if inputs[k] >= 0})
    return found


def translate_lstm(b: Any, op: Any) -> None:
    inputs = list(op.inputs) + [-1] * (24 - len(op.inputs))
    problems = lstm_problems(op, inputs)
    if problems:
        raise UnsupportedOpError(f"an LSTM with {', '.join(problems)} is not supported", "")
    tensors = b.model.tensors
    hidden = tensors[inputs[1]].shape[0]
    time_major = bool(op.options.get("TimeMajor", False))
    x = b.read(inputs[0])
    if not time_major:  # (1, T, C) -> ONNX's (T, 1, C)
        x = b.node("Transpose", [x], perm=[1, 0, 2])
    w = _stacked(b, [inputs[k] for k in INPUT_WEIGHTS], hidden, "W")
    r = _stacked(b, [inputs[k] for k in RECURRENT_WEIGHTS], hidden, "R")
    bias = _biases(b, [inputs[k] for k in BIASES], hidden)
    y, y_c = b.temp("lstm_y"), b.temp("lstm_cell")
    b.node("LSTM", [x, w, r, bias], [y, "", y_c], hidden_size=hidden)
    clip = float(op.options.get("CellClip", 0.0))
    if clip > 0:  # TensorFlow's converter writes 10 for a Keras LSTM
        b.metadata.setdefault(CELL_CLIP_KEY, {})[y_c] = clip
    cell = tensors[inputs[19]]
    if cell.quantized and cell.dtype != np.float32:  # the cell's scale, for ops/lstm.py to read
        params = b._params(cell, None)
        b.node("DequantizeLinear", [b.node("QuantizeLinear", [y_c, *params], [b.temp("cell_q")]), *params],
               [b.temp("cell_dq")])
    y = b.node("Transpose", [y], perm=[0, 2, 1, 3] if time_major else [2, 0, 1, 3])  # (T|1, 1|T, 1, H)
    out_shape = list(tensors[op.outputs[0]].shape)
    b.write(op.outputs[0], b.node("Reshape", [y, b.const(np.array(out_shape, np.int64), "shape")]))


def _stacked(b: Any, indices: list[int], hidden: int, what: str) -> str:
    """The four gates' (H, K) matrices as ONNX's (1, 4H, K) weight: a DequantizeLinear of their int8
    codes with each gate's scale on its rows, or the float values."""
    parts = [b.model.tensors[i] for i in indices]
    data = np.concatenate([t.data for t in parts])[None]
    if not parts[0].quantized or parts[0].dtype == np.float32:
        return b.const(data.astype(np.float32), what)
    if any(t.scales.size != 1 or np.any(t.zero_points != 0) or t.dtype != np.int8 for t in parts):
        raise UnsupportedOpError(f"LSTM {what} weights not int8 per tensor with zero point 0", "")
    scales = np.repeat([t.scales[0] for t in parts], hidden).astype(np.float32)
    return b.node("DequantizeLinear", [b.const(data.astype(np.int8), f"{what}_codes"), b.const(scales, f"{what}_scale"),
                                       b.const(np.zeros(4 * hidden, np.int8), f"{what}_zero_point")],
                  [b.temp(what)], axis=1)


def _biases(b: Any, indices: list[int], hidden: int) -> str:
    """ONNX's (1, 8H) bias: the gates' biases, then zeros for the recurrent bias TFLite does not have."""
    parts = [b.model.tensors[i] for i in indices]
    data = np.concatenate([t.data for t in parts] + [np.zeros(4 * hidden, parts[0].dtype)])[None]
    if not parts[0].quantized or parts[0].dtype == np.float32:
        return b.const(data.astype(np.float32), "B")
    if parts[0].dtype != np.int32:
        raise UnsupportedOpError("LSTM biases not int32 (16x8 LSTMs are not read yet)", "")
    scales = np.repeat([t.scales[0] for t in parts] * 2, hidden).astype(np.float32)
    return b.node("DequantizeLinear", [b.const(data, "B_codes"), b.const(scales, "B_scale"),
                                       b.const(np.zeros(8 * hidden, np.int32), "B_zero_point")],
                  [b.temp("B")], axis=1)


def cell_clips(model: onnx.ModelProto) -> dict[str, float]:
    """The TFLite cell clips translate_lstm wrote into the model's metadata, by Y_c value."""
    for prop in model.metadata_props:
        if prop.key == CELL_CLIP_KEY:
            return {str(k): float(v) for k, v in json.loads(prop.value).items()}
    return {}
