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
    def nbytes(self) -> int:
        """Bytes the tensor takes in C (elements x their width; 1 each before quantization)."""
        return self.size * (1 if self.quant is None else self.quant.bits // 8)
