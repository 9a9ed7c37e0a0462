"""An IR tensor and its quantization: leaf dataclasses the rest of the tool builds on."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

C_TYPES = {8: "int8_t", 16: "int16_t"}


@dataclass(frozen=True)
class QuantParams:
    """Affine quantization of one tensor: real = scale * (q - zero_point), q an integer of `bits` bits
    (8: TFLite int8, asymmetric; 16: TFLite 16x8 activations, symmetric with zero point 0)."""

    scale: float  # always a float32 value stored in a Python float
    zero_point: int
    bits: int = 8

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", float(np.float32(self.scale)))
        if self.bits not in C_TYPES:
            raise ValueError(f"{self.bits}-bit tensors are not supported (8 or 16)")

    @property
    def ctype(self) -> str:
        """The C element type of a tensor quantized this way."""
        return C_TYPES[self.bits]

    @property
    def dtype(self) -> type:
        """The numpy element type of a tensor quantized this way."""
        return np.int8 if self.bits == 8 else np.int16


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    quant: QuantParams | None = None
    calib_name: str | None = None  # model value whose calibrated float range this tensor takes
    # Its activation width where a mixed-precision assignment chose one (quant/precision.py); None:
    # the model's --precision.
    bits: int | None = None
    # Element i of that model value (flat, batch 1) is element calib_index[i] of this tensor: how
    # per-layer accuracy compares the two (None when the import did not record it).
    calib_index: np.ndarray | None = field(default=None, repr=False, compare=False)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def mirrors_model_value(self) -> bool:
        """Each element is one of its model value's: the float model's values stand beside it element
        for element (bias correction, weight rounding and per-layer accuracy compare the two)."""
        return bool(self.calib_name) and self.calib_index is not None and len(self.calib_index) == self.size

    def in_layout(self, values: np.ndarray) -> np.ndarray:
        """Its model value's float values, samples first in the model's layout, as this tensor holds
        them: (samples, *shape), float64. Only where mirrors_model_value."""
        n = len(values)
        out = np.empty((n, self.size))
        out[:, self.calib_index] = np.asarray(values).reshape(n, -1)
        return out.reshape(n, *self.shape)

    @property
    def nbytes(self) -> int:
        """Bytes the tensor takes in C (elements x their width; 1 each before quantization)."""
        return self.size * (1 if self.quant is None else self.quant.bits // 8)


@dataclass(frozen=True, eq=False)
class ConstQuant:
    """A quantized constant as a model file writes it (DequantizeLinear of an integer initializer):
    real = scale * (codes - zero_point), per tensor (axis None) or per slice along `axis`."""

    codes: np.ndarray  # the integers, in the model's own layout
    scale: np.ndarray  # float32: one value, or one per slice along `axis`
    zero_point: np.ndarray  # integers, shaped as `scale`
    axis: int | None
    bits: int  # of the codes' type: 8, 16 or 32
    signed: bool


@dataclass(frozen=True, eq=False)
class FileWeights:
    """A conv/dense layer's weight quantization as its model file gives it (a QDQ model): symmetric
    int8 weights with these scales, and (when the file quantized it) the bias as int32 codes. The
    layer's float weights are those codes times these scales, so rounding them again gives the codes
    back whatever layout the import moved them into."""

    scales: np.ndarray  # float32, one per output channel (a per-tensor scale repeated)
    per_channel: bool  # the file gave one scale per output channel (else one for the layer)
    bias: np.ndarray | None  # int32 codes, one per output channel
    bias_scale: np.ndarray | None  # float32, the file's scale of those codes (per channel)


@dataclass
class FileQuantization:
    """What a quantized model file (QDQ) fixes: each model value's quantization, by name, and its
    quantized constants (weights, biases), by the name of the float value they dequantize to."""

    activations: dict[str, QuantParams] = field(default_factory=dict)
    constants: dict[str, ConstQuant] = field(default_factory=dict)
    source: str = "QDQ"  # how the file wrote it, for the report
    # A .tflite LSTM's cell clip (TFLite clips the cell state; ONNX LSTM's `clip` clips the gate inputs,
    # so the ONNX graph cannot say it), by the name of the LSTM's last-cell output Y_c
    cell_clips: dict[str, float] = field(default_factory=dict)
