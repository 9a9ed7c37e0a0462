"""Random one-op (or op + activation) ONNX models for the per-op sweeps, built with onnx.helper."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.onnx_models import make_model

@dataclass
class Case:
    name: str
    model: onnx.ModelProto
    calibration: np.ndarray  # (N, *input shape without batch)
    params: dict = field(default_factory=dict)
    options: dict = field(default_factory=dict)  # convert() options the case is meant for

    def save(self, folder: Path) -> Path:
        path = folder / f"{self.name}.onnx"
        onnx.save(self.model, str(path))
        return path


# The sweeps check C == reference == oracle, which no recipe changes, and choosing one (up to 9 fits,
# 17 with the int16 weight rounding challenge) on random weights and noise says nothing: they pin it.
# The choice has its own tests (test_recipe.py, test_weight_rounding.py); trained-model tests run it.
PINNED_RECIPE = {"calibration_method": "minmax", "dense_weights": "per-channel", "bias_correction": False,
                 "weight_rounding": "nearest"}


def _case(name: str, nodes: list, shape: list[int], inits: list, calibration: np.ndarray, params: dict) -> Case:
    """A one-input model x -> ... -> y (y's shape left to inference)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return Case(name, make_model(nodes, [x], [y], inits), calibration, params, dict(PINNED_RECIPE))


def _calibration(rng: np.random.Generator, shape: tuple[int, ...], n: int = 32) -> np.ndarray:
    scale = rng.uniform(0.2, 4.0)
    offset = rng.uniform(-1.0, 1.0) * scale
    return (rng.standard_normal((n, *shape)) * scale + offset).astype(np.float32)


def _activation(rng: np.random.Generator, nodes: list, inits: list, x: str, out: str) -> str:
    """Append nothing, Relu or Clip(0, 6) after `x`; returns the kind."""
    kind = str(rng.choice(["none", "relu", "relu6"]))
    if kind == "relu":
        nodes.append(helper.make_node("Relu", [x], [out]))
    elif kind == "relu6":
        inits += [numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
                  numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
        nodes.append(helper.make_node("Clip", [x, "lo", "hi"], [out]))
    else:
        nodes.append(helper.make_node("Identity", [x], [out]))
    return kind


def conv_case(rng: np.random.Generator, i: int, tflite_padding: bool = False) -> Case:
    c_in, c_out = int(rng.integers(1, 9)), int(rng.integers(1, 17))
    k, stride, dil = int(rng.integers(1, 8)), int(rng.integers(1, 4)), int(rng.integers(1, 4))
    eff_k = (k - 1) * dil + 1
    attrs = {"kernel_shape": [k], "strides": [stride], "dilations": [dil]}
    mode = str(rng.choice(["explicit", "SAME_UPPER", "VALID"]))
    if mode == "explicit":
        pads = [int(rng.integers(0, eff_k)), int(rng.integers(0, eff_k))]
        attrs["pads"] = pads
    else:
        attrs["auto_pad"] = mode
        pads = [0, 0]
        if mode == "SAME_UPPER":  # ONNX Runtime rejects dilation with auto_pad SAME
            dil = attrs["dilations"][0] = 1
            eff_k = k
    w = int(rng.integers(max(1, eff_k - sum(pads)), eff_k + 40))
    if mode == "VALID":
        w = max(w, eff_k)
    weight = (rng.standard_normal((c_out, c_in, k)) / np.sqrt(c_in * k)).astype(np.float32)
    if rng.random() < 0.1:
        weight[0] = 0.0  # an all-zero output channel must not break the per-channel scales
    bias = (rng.standard_normal(c_out) * 0.3).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    inputs = ["x", "w"]
    if rng.random() < 0.8:
        inits.append(numpy_helper.from_array(bias, "b"))
        inputs.append("b")
    nodes = [helper.make_node("Conv", inputs, ["conv"], **attrs)]
    act = _activation(rng, nodes, inits, "conv", "y")
    return _case(f"conv{i}", nodes, [1, c_in, w], inits, _calibration(rng, (c_in, w)),
                 {"mode": mode, "act": act, "k": k, "stride": stride, "dilation": dil, "pads": pads})


def maxpool_case(rng: np.random.Generator, i: int) -> Case:
    c = int(rng.integers(1, 17))
    k, stride = int(rng.integers(1, 6)), int(rng.integers(1, 4))
    attrs: dict = {"kernel_shape": [k], "strides": [stride]}
    mode = str(rng.choice(["explicit", "SAME_UPPER", "VALID"]))
    if mode == "explicit":
        attrs["pads"] = [int(rng.integers(0, k)), int(rng.integers(0, k))]
        attrs["ceil_mode"] = int(rng.integers(0, 2))
        if rng.random() < 0.25:  # CMSIS-NN has none: the own loop (and no TFLite equivalent)
            attrs["dilations"] = [int(rng.integers(2, 4))]
            attrs["ceil_mode"] = 0
    else:
        attrs["auto_pad"] = mode
        if mode == "SAME_UPPER" and stride > k:  # ONNX Runtime computes a negative pad there
            attrs["strides"] = [k]
    eff_k = (k - 1) * attrs.get("dilations", [1])[0] + 1
    w = int(rng.integers(eff_k, eff_k + 40))
    nodes = [helper.make_node("MaxPool", ["x"], ["pool"], **attrs)]
    inits: list = []
    act = _activation(rng, nodes, inits, "pool", "y")
    return _case(f"maxpool{i}", nodes, [1, c, w], inits, _calibration(rng, (c, w)), {"mode": mode, "act": act})


def dense_case(rng: np.random.Generator, i: int) -> Case:
    f_in, f_out = int(rng.integers(1, 97)), int(rng.integers(1, 33))
    w = (rng.standard_normal((f_in, f_out)) / np.sqrt(f_in)).astype(np.float32)
    b = (rng.standard_normal(f_out) * 0.3).astype(np.float32)
    form = str(rng.choice(["gemm", "gemm_transB", "matmul_add"]))
    if form == "gemm":
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["fc"])]
    elif form == "gemm_transB":
        inits = [numpy_helper.from_array(np.ascontiguousarray(w.T), "w"), numpy_helper.from_array(b, "b")]
        nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["fc"], transB=1)]
    else:
        inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")]
        nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["fc"])]
    act = _activation(rng, nodes, inits, "fc", "y")
    weights = str(rng.choice(["per-tensor", "per-channel"]))
    case = _case(f"dense{i}", nodes, [1, f_in], inits, _calibration(rng, (f_in,)),
                 {"form": form, "act": act, "dense_weights": weights})
    case.options["dense_weights"] = weights
    return case


def softmax_case(rng: np.random.Generator, i: int) -> Case:
    if rng.random() < 0.7:
        shape = [1, int(rng.integers(2, 65))]
        axis = int(rng.choice([1, -1]))
    else:
        shape = [1, int(rng.integers(2, 17)), int(rng.integers(1, 9))]  # (N, C, W): softmax over channels
        axis = 1
    nodes = [helper.make_node("Softmax", ["x"], ["y"], axis=axis)]
    calib = _calibration(rng, tuple(shape[1:])) * rng.uniform(0.5, 4.0)
    return _case(f"softmax{i}", nodes, shape, [], calib.astype(np.float32), {"shape": shape})


def table_case(rng: np.random.Generator, i: int) -> Case:
    """A standalone elementwise function: Tanh, Sigmoid, LeakyRelu, or a Relu/Clip with no producer."""
    shape = [1, int(rng.integers(1, 9)), int(rng.integers(1, 33))] if rng.random() < 0.6 else [1, int(rng.integers(1, 65))]
    kind = str(rng.choice(["Tanh", "Sigmoid", "LeakyRelu", "Relu", "Clip6", "Clip1"]))
    inits: list = []
    if kind == "LeakyRelu":
        node = helper.make_node("LeakyRelu", ["x"], ["y"], alpha=float(rng.choice([0.01, 0.1, 0.2, 0.3, 0.5])))
    elif kind.startswith("Clip"):
        bound = 6.0 if kind == "Clip6" else 1.0
        inits = [numpy_helper.from_array(np.array(0.0 if bound == 6.0 else -1.0, np.float32), "lo"),
                 numpy_helper.from_array(np.array(bound, np.float32), "hi")]
        node = helper.make_node("Clip", ["x", "lo", "hi"], ["y"])
    else:
        node = helper.make_node(kind, ["x"], ["y"])
    return _case(f"table{i}", [node], shape, inits, _calibration(rng, tuple(shape[1:])), {"kind": kind})


def avgpool_case(rng: np.random.Generator, i: int) -> Case:
    """AveragePool (both count_include_pad), GlobalAveragePool/GlobalMaxPool, ReduceMean/ReduceMax over time."""
    c, w = int(rng.integers(1, 17)), int(rng.integers(1, 48))
    kind = str(rng.choice(["avg", "avg", "avg", "global_avg", "global_max", "reduce_mean", "reduce_max"]))
    inits: list = []
    if kind == "avg":
        k = int(rng.integers(1, min(w, 6) + 1))
        stride = int(rng.integers(1, k + 1))
        attrs: dict = {"kernel_shape": [k], "strides": [stride], "count_include_pad": int(rng.integers(0, 2))}
        mode = str(rng.choice(["explicit", "SAME_UPPER", "VALID"]))
        if mode == "explicit":
            attrs["pads"] = [int(rng.integers(0, k)), int(rng.integers(0, k))]
        else:
            attrs["auto_pad"] = mode
        nodes = [helper.make_node("AveragePool", ["x"], ["pool"], **attrs)]
    elif kind.startswith("global"):
        nodes = [helper.make_node("GlobalAveragePool" if kind == "global_avg" else "GlobalMaxPool", ["x"], ["pool"])]
    else:
        op = "ReduceMean" if kind == "reduce_mean" else "ReduceMax"
        keep = int(rng.integers(0, 2))
        if op == "ReduceMean":  # opset 17: axes attribute; ReduceMax also takes it at 17
            nodes = [helper.make_node(op, ["x"], ["pool"], axes=[-1], keepdims=keep)]
        else:
            nodes = [helper.make_node(op, ["x"], ["pool"], axes=[2], keepdims=keep)]
    act = _activation(rng, nodes, inits, "pool", "y")
    return _case(f"avgpool{i}", nodes, [1, c, w], inits, _calibration(rng, (c, w)), {"kind": kind, "act": act})


def pad_case(rng: np.random.Generator, i: int) -> Case:
    """Pad along time, alone, before a max pool (kept) or before a conv (folded into its padding)."""
    c, w = int(rng.integers(1, 9)), int(rng.integers(1, 40))
    left, right = int(rng.integers(0, 5)), int(rng.integers(0, 5))
    pads = numpy_helper.from_array(np.array([0, 0, left, 0, 0, right], np.int64), "pads")
    after = str(rng.choice(["none", "maxpool", "conv"]))
    nodes = [helper.make_node("Pad", ["x", "pads"], ["padded" if after != "none" else "y"], mode="constant")]
    inits = [pads]
    if after == "maxpool":
        nodes.append(helper.make_node("MaxPool", ["padded"], ["y"], kernel_shape=[1]))
    elif after == "conv":
        k = int(rng.integers(1, 4))
        w = max(w, k)
        inits.append(numpy_helper.from_array((rng.standard_normal((4, c, k)) / np.sqrt(c * k)).astype(np.float32), "w"))
        nodes.append(helper.make_node("Conv", ["padded", "w"], ["y"], kernel_shape=[k]))
    return _case(f"pad{i}", nodes, [1, c, w], inits, _calibration(rng, (c, w)), {"after": after})


def add_case(rng: np.random.Generator, i: int) -> Case:
    """A residual block: x -> conv -> (+ x) [-> Relu], or two branches with different ranges added."""
    c, w = int(rng.integers(1, 9)), int(rng.integers(1, 40))
    k = int(rng.choice([1, 3]))
    gain = float(rng.uniform(0.2, 5.0))  # the branch range differs from the skip's: different scales
    inits = [numpy_helper.from_array((rng.standard_normal((c, c, k)) * gain / np.sqrt(c * k)).astype(np.float32), "w")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["branch"], kernel_shape=[k], pads=[k // 2, k // 2])]
    order = ["x", "branch"] if rng.random() < 0.5 else ["branch", "x"]
    nodes.append(helper.make_node("Add", order, ["sum"]))
    act = _activation(rng, nodes, inits, "sum", "y")
    return _case(f"add{i}", nodes, [1, c, w], inits, _calibration(rng, (c, w)), {"act": act})


def upsample_case(rng: np.random.Generator, i: int) -> Case:
    """Resize (PyTorch's asymmetric/floor, ONNX's default half_pixel) by an integer factor, then a conv."""
    c, w, f = int(rng.integers(1, 9)), int(rng.integers(1, 30)), int(rng.integers(2, 5))
    scales = numpy_helper.from_array(np.array([1.0, 1.0, float(f)], np.float32), "scales")
    style = str(rng.choice(["pytorch", "default"]))
    attrs = {"mode": "nearest"}
    if style == "pytorch":
        attrs.update(coordinate_transformation_mode="asymmetric", nearest_mode="floor")
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["up"], **attrs)]
    inits = [scales, numpy_helper.from_array((rng.standard_normal((3, c, 3)) / np.sqrt(3 * c)).astype(np.float32), "w")]
    nodes.append(helper.make_node("Conv", ["up", "w"], ["y"], kernel_shape=[3], pads=[1, 1]))
    return _case(f"upsample{i}", nodes, [1, c, w], inits, _calibration(rng, (c, w)), {"style": style})


def concat_case(rng: np.random.Generator, i: int) -> Case:
    """Concat of 2-3 branches over channels or time: free convs, the raw input, a tanh, a max pool."""
    c, w = int(rng.integers(1, 7)), int(rng.integers(1, 30))
    axis = int(rng.choice([1, 2]))
    nodes, inits, branches = [], [], []
    for b in range(int(rng.integers(2, 4))):
        kind = str(rng.choice(["conv", "input", "tanh", "maxpool"]))
        name = f"b{b}"
        if kind == "conv":
            c_out = int(rng.integers(1, 7)) if axis == 1 else c
            gain = float(rng.uniform(0.2, 4.0))
            inits.append(numpy_helper.from_array((rng.standard_normal((c_out, c, 1)) * gain).astype(np.float32), f"w{b}"))
            nodes.append(helper.make_node("Conv", ["x", f"w{b}"], [name], kernel_shape=[1]))
        elif kind == "input":
            name = "x"
        elif kind == "tanh":
            nodes.append(helper.make_node("Tanh", ["x"], [name]))
        else:
            nodes.append(helper.make_node("MaxPool", ["x"], [name], kernel_shape=[3], pads=[1, 1]))
        branches.append(name)
    nodes.append(helper.make_node("Concat", branches, ["y"], axis=axis))
    return _case(f"concat{i}", nodes, [1, c, w], inits, _calibration(rng, (c, w)), {"axis": axis})


def depthwise_case(rng: np.random.Generator, i: int) -> Case:
    """Conv with group == C_in (depth multiplier 1-3), a grouped conv (block-diagonal), or a BatchNorm
    after a ReLU that no producer can absorb (a 1-tap depthwise conv)."""
    c_in, w = int(rng.integers(1, 9)), int(rng.integers(8, 48))
    kind = str(rng.choice(["depthwise", "depthwise", "grouped", "late_bn"]))
    nodes: list = []
    inits: list = []
    if kind == "late_bn":
        inits.append(numpy_helper.from_array((rng.standard_normal((c_in, c_in, 3)) / 2).astype(np.float32), "w"))
        nodes += [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3], pads=[1, 1]),
                  helper.make_node("Relu", ["c"], ["r"])]
        stats = [rng.uniform(0.5, 2.0, c_in), rng.standard_normal(c_in), rng.standard_normal(c_in) * 0.3,
                 rng.uniform(0.2, 3.0, c_in)]
        inits += [numpy_helper.from_array(v.astype(np.float32), f"bn{j}") for j, v in enumerate(stats)]
        nodes.append(helper.make_node("BatchNormalization", ["r", "bn0", "bn1", "bn2", "bn3"], ["dw"]))
    else:
        groups = c_in
        if kind == "grouped":
            c_in = int(rng.choice([4, 6, 8]))
            groups = int(rng.choice([g for g in (2, 3, 4) if c_in % g == 0]))
        mult = int(rng.integers(1, 4))
        c_out = groups * mult if kind == "depthwise" else groups * int(rng.integers(1, 3))
        k, stride, dil = int(rng.integers(1, 6)), int(rng.integers(1, 3)), int(rng.integers(1, 3))
        eff_k = (k - 1) * dil + 1
        pads = [int(rng.integers(0, eff_k)), int(rng.integers(0, eff_k))]
        w = max(w, eff_k)
        inits.append(numpy_helper.from_array(
            (rng.standard_normal((c_out, c_in // groups, k)) / np.sqrt(k)).astype(np.float32), "w"))
        inits.append(numpy_helper.from_array((rng.standard_normal(c_out) * 0.3).astype(np.float32), "b"))
        nodes.append(helper.make_node("Conv", ["x", "w", "b"], ["dw"], kernel_shape=[k], strides=[stride],
                                      dilations=[dil], pads=pads, group=groups))
    act = _activation(rng, nodes, inits, "dw", "y")
    return _case(f"depthwise{i}", nodes, [1, c_in, w], inits, _calibration(rng, (c_in, w)), {"kind": kind, "act": act})


def _const(inits: list, name: str, values) -> str:
    inits.append(numpy_helper.from_array(np.asarray(values), name))
    return name


def layout_case(rng: np.random.Generator, i: int) -> Case:
    """Exporter-style data movement around a conv: tf2onnx's Unsqueeze/Transpose/Conv2D/Squeeze,
    Keras 3 Tile and tf_keras Split+Concat upsampling, Slice cropping (time or channels), NWC
    Transpose + MatMul per time step, a Flatten of (C, W) into a dense layer."""
    c, w = int(rng.integers(1, 7)), int(rng.integers(4, 30))
    kind = str(rng.choice(["conv2d", "pool_p1", "tile", "split", "crop_time", "crop_channels", "nwc_matmul",
                           "flatten"]))
    nodes: list = []
    inits: list = []
    c_out = int(rng.integers(1, 7))
    if kind == "conv2d":
        k = int(rng.integers(1, 5))
        inits.append(numpy_helper.from_array((rng.standard_normal((c_out, c, 1, k)) / 2).astype(np.float32), "w"))
        nodes += [helper.make_node("Unsqueeze", ["x", _const(inits, "ax", [2])], ["x4"]),
                  helper.make_node("Conv", ["x4", "w"], ["c4"], kernel_shape=[1, k], pads=[0, k // 2, 0, k - 1 - k // 2]),
                  helper.make_node("Squeeze", ["c4", "ax"], ["y"])]
    elif kind == "pool_p1":  # tf_keras: pools as [p, 1] windows on an (N, C, W, 1) tensor
        p = int(rng.integers(2, 4))
        op = str(rng.choice(["MaxPool", "AveragePool"]))
        nodes += [helper.make_node("Unsqueeze", ["x", _const(inits, "ax", [3])], ["x4"]),
                  helper.make_node(op, ["x4"], ["p4"], kernel_shape=[p, 1], strides=[p, 1]),
                  helper.make_node("Squeeze", ["p4", "ax"], ["y"])]
    elif kind in ("tile", "split"):
        f = int(rng.integers(2, 4))
        nodes.append(helper.make_node("Transpose", ["x"], ["nwc"], perm=[0, 2, 1]))  # (1, W, C)
        if kind == "tile":
            nodes += [helper.make_node("Unsqueeze", ["nwc", _const(inits, "ax", [2])], ["u"]),
                      helper.make_node("Tile", ["u", _const(inits, "rep", [1, 1, f, 1])], ["t"]),
                      helper.make_node("Reshape", ["t", _const(inits, "shape", [1, w * f, c])], ["up"])]
        else:
            pieces = [f"p{j}" for j in range(w)]
            nodes.append(helper.make_node("Split", ["nwc", _const(inits, "sizes", [1] * w)], pieces, axis=1))
            nodes.append(helper.make_node("Concat", [p for p in pieces for _ in range(f)], ["up"], axis=1))
        nodes.append(helper.make_node("Transpose", ["up"], ["ncw"], perm=[0, 2, 1]))
        inits.append(numpy_helper.from_array((rng.standard_normal((c_out, c, 3)) / 2).astype(np.float32), "w"))
        nodes.append(helper.make_node("Conv", ["ncw", "w"], ["y"], kernel_shape=[3], pads=[1, 1]))
    elif kind in ("crop_time", "crop_channels"):
        axis = 2 if kind == "crop_time" else 1
        n = w if axis == 2 else c
        start = int(rng.integers(0, max(1, n // 2)))
        end = int(rng.integers(start + 1, n + 1))
        inits.append(numpy_helper.from_array(rng.standard_normal((c, c, 1)).astype(np.float32), "w0"))
        source = "x" if rng.random() < 0.5 else "c0"  # the (C, W) input, or a conv's time-major output
        if source == "c0":
            nodes.append(helper.make_node("Conv", ["x", "w0"], ["c0"], kernel_shape=[1]))
        nodes.append(helper.make_node("Slice", [source, _const(inits, "s", [start]), _const(inits, "e", [end]),
                                                _const(inits, "a", [axis])], ["cut"]))
        inits.append(numpy_helper.from_array((rng.standard_normal((c_out, c if axis == 2 else end - start, 1)))
                                             .astype(np.float32), "w"))
        nodes.append(helper.make_node("Conv", ["cut", "w"], ["y"], kernel_shape=[1]))
    elif kind == "nwc_matmul":
        inits.append(numpy_helper.from_array(rng.standard_normal((c, c_out)).astype(np.float32), "m"))
        nodes += [helper.make_node("Transpose", ["x"], ["nwc"], perm=[0, 2, 1]),
                  helper.make_node("MatMul", ["nwc", "m"], ["mm"]),
                  helper.make_node("Relu", ["mm"], ["y"])]
    else:
        inits.append(numpy_helper.from_array((rng.standard_normal((c * w, c_out)) / np.sqrt(c * w))
                                             .astype(np.float32), "m"))
        nodes += [helper.make_node("Flatten", ["x"], ["flat"]), helper.make_node("MatMul", ["flat", "m"], ["y"])]
    return _case(f"layout{i}", nodes, [1, c, w], inits, _calibration(rng, (c, w)), {"kind": kind})


def conv_transpose_case(rng: np.random.Generator, i: int) -> Case:
    """ConvTranspose: kernel shorter than, equal to and longer than the stride, explicit pads (a begin
    pad makes the TFLite form a TRANSPOSE_CONV + SLICE), output_padding, auto_pad, channel counts
    around 16, then nothing, Relu or Clip(0, 6) (fused)."""
    c_in, c_out = int(rng.choice([1, 3, 8, 15, 16, 17, 24])), int(rng.choice([1, 4, 16, 17]))
    k, stride = int(rng.integers(1, 7)), int(rng.integers(1, 5))
    attrs = {"kernel_shape": [k], "strides": [stride]}
    mode = str(rng.choice(["explicit", "explicit", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    out_pad = int(rng.integers(0, stride)) if rng.random() < 0.5 else 0
    if out_pad:
        attrs["output_padding"] = [out_pad]
    pads = [0, 0]
    if mode == "explicit":
        pads = attrs["pads"] = [int(rng.integers(0, k)), int(rng.integers(0, k))]
    else:
        attrs["auto_pad"] = mode
    # at least one output column: stride * (w - 1) + output_padding + k - pads >= 1
    w = int(rng.integers(max(1, -(-(sum(pads) - k - out_pad + 1) // stride) + 1), 24))
    weight = (rng.standard_normal((c_in, c_out, k)) / np.sqrt(c_in * max(1, k // stride))).astype(np.float32)
    inits = [numpy_helper.from_array(weight, "w")]
    inputs = ["x", "w"]
    if rng.random() < 0.8:
        inits.append(numpy_helper.from_array((rng.standard_normal(c_out) * 0.3).astype(np.float32), "b"))
        inputs.append("b")
    nodes = [helper.make_node("ConvTranspose", inputs, ["convtr"], **attrs)]
    act = _activation(rng, nodes, inits, "convtr", "y")
    return _case(f"convtr{i}", nodes, [1, c_in, w], inits, _calibration(rng, (c_in, w)),
                 {"mode": mode, "act": act, "k": k, "stride": stride, "output_padding": out_pad})


BUILDERS = {"conv": conv_case, "conv_transpose": conv_transpose_case, "maxpool": maxpool_case, "dense": dense_case, "softmax": softmax_case, "table": table_case, "avgpool": avgpool_case,
            "pad": pad_case, "add": add_case, "upsample": upsample_case,
            "concat": concat_case, "depthwise": depthwise_case, "layout": layout_case}
