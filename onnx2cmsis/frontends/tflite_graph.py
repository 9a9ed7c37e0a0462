"""Whole-model steps on a read .tflite before its operators are translated (frontends/tflite.py):
the operators the outputs need, TensorFlow's dilated-convolution chain as one convolution, and what
the translation refuses because the C would not reproduce TFLite-Micro's arithmetic yet."""

from __future__ import annotations

import numpy as np

from onnx2cmsis.frontends.tflite_reader import TfliteModel, TfliteOperator, TfliteTensor


MOVES = ("EXPAND_DIMS", "RESHAPE", "SQUEEZE")


def fuse_space_to_batch(model: TfliteModel) -> TfliteModel:
    """TensorFlow writes a dilated convolution as SPACE_TO_BATCH_ND -> (reshapes) -> CONV_2D (VALID,
    dilation 1) -> (reshapes) -> BATCH_TO_SPACE_ND: the same sums as one convolution with dilation =
    the block and padding = the block padding less the crops (both pad with the zero point). The
    batch the middle ops see is the block's, which the file's static shapes do not show, so the
    chain becomes that one convolution before translation."""
    readers: dict[int, list[TfliteOperator]] = {}
    for op in model.operators:
        for i in op.inputs:
            readers.setdefault(i, []).append(op)
    replaced: dict[int, TfliteOperator] = {}
    dropped: set[int] = set()

    def sole_reader(tensor: int) -> TfliteOperator | None:
        found = readers.get(tensor, [])
        return found[0] if len(found) == 1 and tensor not in model.outputs else None

    for s2b in (op for op in model.operators if op.code == "SPACE_TO_BATCH_ND"):
        chain, op = [s2b], sole_reader(s2b.outputs[0])
        while op is not None and op.code in MOVES:
            chain.append(op)
            op = sole_reader(op.outputs[0])
        conv = op
        if conv is None or conv.code not in ("CONV_2D", "DEPTHWISE_CONV_2D") or int(conv.options.get("Padding", 0)) != 1:
            continue
        chain.append(conv)
        op = sole_reader(conv.outputs[0])
        while op is not None and op.code in MOVES:
            chain.append(op)
            op = sole_reader(op.outputs[0])
        block, pads = (np.asarray(model.tensors[i].data).reshape(-1, *s) for i, s in zip(s2b.inputs[1:3], ((), (2,))))
        if op is None or op.code != "BATCH_TO_SPACE_ND" or len(block.reshape(-1)) != 1:
            continue
        crops = np.asarray(model.tensors[op.inputs[2]].data).reshape(-1, 2)
        if not np.array_equal(np.asarray(model.tensors[op.inputs[1]].data).reshape(-1), block.reshape(-1)):
            continue
        left, right = int(pads[0][0] - crops[0][0]), int(pads[0][1] - crops[0][1])
        if min(left, right) < 0 or int(conv.options.get("DilationWFactor", 1)) != 1:
            continue
        options = {**conv.options, "DilationWFactor": int(block.reshape(-1)[0]), "Padding": "explicit",
                   "ExplicitPads": [0, left, 0, right]}
        replaced[conv.index] = TfliteOperator(conv.index, conv.code, (s2b.inputs[0], *conv.inputs[1:]),
                                              (op.outputs[0],), options)
        dropped.update(o.index for o in (*chain, op) if o is not conv)
    operators = [replaced.get(op.index, op) for op in model.operators if op.index not in dropped]
    return TfliteModel(model.tensors, operators, model.inputs, model.outputs)


def _integer(t: TfliteTensor) -> bool:
    return t.quantized and t.dtype != np.float32


def not_exact_yet(model: TfliteModel) -> list[str]:
    """Operators read, but whose TFLite arithmetic the C would not reproduce yet: refused (every one at
    once) rather than converted to something close."""
    found = []
    for op in model.operators:
        tensors = [model.tensors[i] for i in op.inputs if i >= 0]
        constant = [t for t in tensors if t.data is not None]
        exact = all(_integer(t) and t.scales.size == 1 and (t.dtype == np.int8 or (t.dtype == np.int16 and
                                                                             not np.any(t.zero_points)))
                    for t in constant)
        if op.code in ("ADD", "SUB", "MUL") and constant and not exact:  # an affine would round otherwise
            found.append(f"operator {op.index} ({op.code}): a constant operand ('{constant[0].name}') other than "
                         f"one int8 (or int16, zero point 0) tensor: TFLite-Micro's {op.code} with it is not reproduced yet")
        if op.code == "SOFTMAX" and float(op.options.get("Beta", 1.0)) != 1.0:
            found.append(f"operator {op.index} (SOFTMAX): beta {op.options['Beta']} (only 1 is supported)")
    return found


def needed_operators(model: TfliteModel) -> list[TfliteOperator]:
    """The operators the outputs depend on, in order (a converter may leave dead ones)."""
    producer = {out for op in model.operators for out in op.outputs}
    wanted = set(model.outputs)
    needed: set[int] = set()
    for op in reversed(model.operators):
        if not wanted & set(op.outputs):
            continue
        needed.add(op.index)
        wanted.update(i for i in op.inputs if i >= 0 and i in producer)
    return [op for op in model.operators if op.index in needed]
