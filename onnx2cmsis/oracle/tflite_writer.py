"""The TFLite flatbuffer being written: tensors, constants, operators (see tflite_export.py).

Tensor shapes: a (W, C) IR tensor is [1, 1, W, C] (1D as an h=1 image), a vector (F,) is [1, F].
"""

from __future__ import annotations

from typing import Any

import numpy as np

from onnx2cmsis.errors import ConversionError, NotExportable
from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.arith.rules import QuantParams


def _modules() -> tuple[Any, Any]:
    try:
        from tflite_micro.tensorflow.lite.micro.compression import model_editor as me
        from tflite_micro.tensorflow.lite.micro.python import schema_py_generated as fb
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConversionError("the TFLite-Micro oracle needs the [verify] extra: pip install 'onnx2cmsis[verify]'") from exc
    return me, fb


def tflite_shape(shape: tuple[int, ...]) -> list[int]:
    return [1, 1, *shape] if len(shape) == 2 else [1, *shape]


__all__ = ["Exporter", "NotExportable", "tflite_shape"]


class Exporter:
    """What a handler's export_tflite writes with (ops.base.TfliteContext)."""

    def __init__(self, graph: Graph) -> None:
        self.me, self.fb = _modules()
        self.graph = graph
        self.sg = self.me.Subgraph()
        self.tensors: dict[str, Any] = {}
        self.pending_reshapes: list[tuple[Any, Any]] = []  # (4-D result, its vector view) after the op

    def quant(self, q: QuantParams) -> Any:
        return self.me.Quantization(scales=[q.scale], zero_points=[q.zero_point])

    def dtype(self, q: QuantParams) -> int:
        """The TFLite element type of a tensor quantized as q (INT8, or INT16 at 16x8)."""
        return self.fb.TensorType.INT8 if q.bits == 8 else self.fb.TensorType.INT16

    def activation(self, name: str, shape: list[int] | None = None) -> Any:
        if name not in self.tensors:
            t = self.graph.tensors[name]
            self.tensors[name] = self.me.Tensor(shape=shape or tflite_shape(t.shape), dtype=self.dtype(t.quant),
                                                quantization=self.quant(t.quant), name=name)
        return self.tensors[name]

    def const(self, values: np.ndarray, dtype: int, name: str, quant: Any = None) -> Any:
        return self.me.Tensor(shape=list(values.shape), dtype=dtype, data=np.ascontiguousarray(values),
                              quantization=quant, name=name)

    def op(self, code: int, inputs: list[Any], outputs: list[Any], options_type: int = 0, options: Any = None) -> None:
        o = self.me.Operator(opcode=code, inputs=inputs, outputs=outputs)
        if options is not None:
            o._fb.builtinOptionsType = options_type
            o._fb.builtinOptions = options
        self.sg.operators.append(o)

    def reshape(self, src: Any, dst: Any) -> None:
        opts = self.fb.ReshapeOptionsT()
        opts.newShape = list(dst.shape)
        shape = self.const(np.array(dst.shape, np.int32), self.fb.TensorType.INT32, f"{dst.name}_shape")
        self.op(self.fb.BuiltinOperator.RESHAPE, [src, shape], [dst], self.fb.BuiltinOptions.ReshapeOptions, opts)

    def as_feature_map(self, name: str, output: bool = False) -> Any:
        """The tensor as [1, 1, W, C]; a vector (F,) is reshaped from/to [1, 1, 1, F]."""
        t = self.activation(name)
        if len(t.shape) == 4:
            return t
        fm = self.me.Tensor(shape=[1, 1, 1, t.shape[-1]], dtype=t.dtype, quantization=t.quantization,
                            name=f"{name}_as_4d")
        if output:
            self.pending_reshapes.append((fm, t))
        else:
            self.reshape(t, fm)
        return fm

    def padded(self, src: Any, node: Node) -> Any:
        """A conv's input with its window's padding applied by PAD, for a VALID conv after it. PAD
        fills with the input zero point: the same as CMSIS-NN skipping the tap."""
        pad_l, pad_r = node.attrs["window"].pad
        if not (pad_l or pad_r):
            return src
        _, _, w_in, c = src.shape
        padded = self.me.Tensor(shape=[1, 1, w_in + pad_l + pad_r, c], dtype=src.dtype,
                                quantization=src.quantization, name=f"{node.output}_padded")
        pads = self.const(np.array([[0, 0], [0, 0], [pad_l, pad_r], [0, 0]], np.int32), self.fb.TensorType.INT32,
                          f"{node.output}_pads")
        self.op(self.fb.BuiltinOperator.PAD, [src, pads], [padded], self.fb.BuiltinOptions.PadOptions,
                self.fb.PadOptionsT())
        return padded

    def fused(self, node: Node) -> int:
        lo, hi = node.attrs.get("act", (None, None))
        A = self.fb.ActivationFunctionType
        if lo is None and hi is None:
            return A.NONE
        if lo == 0.0 and hi is None:
            return A.RELU
        if lo == 0.0 and hi == 6.0:
            return A.RELU6
        raise NotExportable(f"activation range [{lo}, {hi}] has no TFLite fused activation", node.name)


