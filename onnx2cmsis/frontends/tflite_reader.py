"""A .tflite flatbuffer as plain data: tensors, constants, operators and their options.

Read with the `tflite` package (the TFLite schema compiled to pure Python; the [tflite] extra,
imported lazily): never TensorFlow, never the tflite-micro wheel. frontends/tflite.py translates
what is read here into ONNX.

One trap: the package's `OperatorCode.BuiltinCode()` answers `deprecated_builtin_code` for every
code below 127, and a writer that leaves that field at 0 (tflite-micro's model_editor, which writes
this project's own --tflite export) would read as ADD throughout. TFLite's own rule is the larger of
the two fields, read here from the raw table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from onnx2cmsis.errors import ConversionError

# TFLite TensorType -> numpy
_TYPES = {0: np.float32, 1: np.float16, 2: np.int32, 3: np.uint8, 4: np.int64, 6: np.bool_, 7: np.int16,
          9: np.int8, 10: np.float64}


@dataclass(frozen=True, eq=False)
class TfliteTensor:
    index: int
    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    data: np.ndarray | None  # a constant's values (its buffer), else None
    scales: np.ndarray | None  # float32 quantization scales (None: a float tensor)
    zero_points: np.ndarray | None
    axis: int  # TFLite's quantized_dimension (per-channel scales along it)

    @property
    def quantized(self) -> bool:
        return self.scales is not None and self.scales.size > 0


@dataclass(frozen=True, eq=False)
class TfliteOperator:
    index: int
    code: str  # BuiltinOperator name, e.g. "CONV_2D"
    inputs: tuple[int, ...]  # tensor indices; -1: an optional input left out
    outputs: tuple[int, ...]
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, eq=False)
class TfliteModel:
    tensors: list[TfliteTensor]
    operators: list[TfliteOperator]
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]


def _package():
    try:
        import tflite
    except ImportError as exc:
        raise ConversionError("reading .tflite files needs the [tflite] extra: pip install 'onnx2cmsis[tflite]'") \
            from exc
    return tflite


def _builtin_code(opcode) -> int:
    """max(builtin_code, deprecated_builtin_code), as TFLite reads an operator code."""
    import flatbuffers

    offset = opcode._tab.Offset(10)  # the builtin_code field (the package's accessor falls back below 127)
    code = opcode._tab.Get(flatbuffers.number_types.Int32Flags, offset + opcode._tab.Pos) if offset else 0
    return max(int(code), int(opcode.DeprecatedBuiltinCode()))


def _options(tfl, op) -> dict[str, Any]:
    """The operator's builtin options as {field: value}, whatever their table type."""
    kind = op.BuiltinOptionsType()
    if kind == 0 or op.BuiltinOptions() is None:
        return {}
    names = {v: k for k, v in vars(tfl.BuiltinOptions).items() if isinstance(v, int)}
    cls = getattr(tfl, names[kind], None)
    if cls is None:
        return {}
    table = cls()
    table.Init(op.BuiltinOptions().Bytes, op.BuiltinOptions().Pos)
    found: dict[str, Any] = {}
    for attr in dir(cls):
        if attr.startswith("_") or attr[0].islower() or attr.startswith(("GetRootAs", "Init")) \
                or attr.endswith(("IsNone", "Length", "BufferHasIdentifier")):
            continue
        getter = getattr(table, attr)
        if attr.endswith("AsNumpy"):
            value = getter()
            found[attr[: -len("AsNumpy")]] = [int(v) for v in np.asarray(value).reshape(-1)] \
                if not isinstance(value, int) else []
        elif f"{attr}AsNumpy" not in dir(cls) and f"{attr}Length" not in dir(cls):
            found[attr] = getter()
    return found


def read_tflite(path: Path) -> TfliteModel:
    """The file's first subgraph (a model with several subgraphs is refused)."""
    where = str(path)
    if not path.is_file():
        raise ConversionError("file not found", where)
    tfl = _package()
    data = path.read_bytes()
    try:
        model = tfl.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() != 1:
            raise ConversionError(f"{model.SubgraphsLength()} subgraphs: only single-subgraph models are supported",
                                  where)
        graph = model.Subgraphs(0)
        operator_names = {v: k for k, v in vars(tfl.BuiltinOperator).items() if isinstance(v, int)}
        tensors = [_tensor(model, graph.Tensors(i), i) for i in range(graph.TensorsLength())]
        codes = [_builtin_code(model.OperatorCodes(i)) for i in range(model.OperatorCodesLength())]
        operators = []
        for i in range(graph.OperatorsLength()):
            op = graph.Operators(i)
            code = codes[op.OpcodeIndex()]
            operators.append(TfliteOperator(i, operator_names.get(code, f"builtin {code}"),
                                            tuple(int(v) for v in op.InputsAsNumpy()),
                                            tuple(int(v) for v in op.OutputsAsNumpy()), _options(tfl, op)))
        return TfliteModel(tensors, operators, tuple(int(v) for v in graph.InputsAsNumpy()),
                           tuple(int(v) for v in graph.OutputsAsNumpy()))
    except ConversionError:
        raise
    except Exception as exc:  # a truncated or foreign file fails deep inside the accessors
        raise ConversionError(f"not a readable .tflite model ({type(exc).__name__}: {str(exc)[:120]})", where) from exc


def _tensor(model, t, index: int) -> TfliteTensor:
    dtype = np.dtype(_TYPES.get(t.Type(), np.float32))
    shape = tuple(int(v) for v in t.ShapeAsNumpy()) if t.ShapeLength() else ()
    buffer = model.Buffers(t.Buffer())
    data = None
    if buffer is not None and buffer.DataLength():
        data = np.frombuffer(buffer.DataAsNumpy().tobytes(), dtype).reshape(shape).copy()
    q = t.Quantization()
    scales = zero_points = None
    axis = 0
    if q is not None and q.ScaleLength():
        scales = np.asarray(q.ScaleAsNumpy(), np.float32).reshape(-1)
        zero_points = np.asarray(q.ZeroPointAsNumpy(), np.int64).reshape(-1) if q.ZeroPointLength() \
            else np.zeros(scales.size, np.int64)
        axis = int(q.QuantizedDimension())
    name = t.Name().decode("utf-8", "replace") if t.Name() else f"tensor_{index}"
    return TfliteTensor(index, name, shape, dtype, data, scales, zero_points, axis)
