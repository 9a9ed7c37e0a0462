"""Keras .h5 / .keras -> ONNX through tf2onnx, then the ONNX loader's checks and shape inference.

The file's layer list is read as JSON and checked *before* Keras deserializes anything: a Lambda
layer (Python bytecode) or any class outside the supported list is refused with its name, so no code
from the file ever runs, and `load_model` runs with `safe_mode=True` on top. TensorFlow, Keras and
tf2onnx are the `[keras]` extra and are imported only here, only when a Keras file is converted.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import onnx

from onnx2cmsis.errors import ConversionError, OptionError, UnsupportedOpError
from onnx2cmsis.frontends.keras_names import mark_layers, onnx_input_names, renumber_internal_names, unmark
from onnx2cmsis.frontends.keras_recurrent import (RECURRENT_LAYERS, insert_recurrent_layers, recurrent_problems,
                                                  stand_in_recurrent_layers)
from onnx2cmsis.frontends.onnx_model import normalize, short_error

ONNX_OPSET = 15  # tf2onnx 1.17 supports 13..18
CONTAINERS = {"Functional", "Sequential", "Model"}
# 2-D layers, taken when the model is 1D written over a unit axis: an input (T, 1, C) or (1, T, C) and
# every kernel, stride, dilation, pool, pad, crop and upsampling 1 (or 0) along that axis.
TWO_D_LAYERS = {
    "Conv2D", "DepthwiseConv2D", "SeparableConv2D", "MaxPooling2D", "AveragePooling2D", "GlobalAveragePooling2D",
    "GlobalMaxPooling2D", "ZeroPadding2D", "Cropping2D", "UpSampling2D",
}
SUPPORTED_LAYERS = {
    "InputLayer", "Conv1D", "Conv1DTranspose", "SeparableConv1D", "DepthwiseConv1D", "MaxPooling1D", "AveragePooling1D",
    "GlobalMaxPooling1D", "GlobalAveragePooling1D", "UpSampling1D", "ZeroPadding1D", "Cropping1D", "Dense",
    "Flatten", "Reshape", "Dropout", "SpatialDropout1D", "GaussianNoise", "GaussianDropout", "BatchNormalization",
    "Activation", "ReLU", "LeakyReLU", "Softmax", "Add", "Concatenate", *TWO_D_LAYERS, *RECURRENT_LAYERS,
}
SUPPORTED_ACTIVATIONS = {"linear", "relu", "relu6", "tanh", "sigmoid", "softmax", "leaky_relu", None}
KERAS_EXTRA_HINT = "reading Keras files needs the [keras] extra: pip install 'onnx2cmsis[keras]'"


def _read_config(path: Path) -> dict[str, Any]:
    """The model's architecture JSON, read without deserializing anything."""
    try:
        if zipfile.is_zipfile(path):  # Keras 3 native .keras: config.json inside a zip
            with zipfile.ZipFile(path) as z:
                return json.loads(z.read("config.json"))
        try:
            import h5py
        except ImportError as exc:  # h5py comes with the [keras] extra
            raise ConversionError(KERAS_EXTRA_HINT, str(path)) from exc

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            if raw is None:
                raise ConversionError("an HDF5 file without a Keras model (weights only?)", str(path))
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    except ConversionError:
        raise
    except Exception as exc:
        raise ConversionError(f"not a readable Keras model ({short_error(exc)})", str(path)) from exc


def modern_sequential(config: dict[str, Any]) -> bool:
    """Keras 2.0/2.1 saved a Sequential model's config as a bare list of layers, the first carrying
    `batch_input_shape` and no InputLayer; Keras 3 cannot read that (nor, wrapping the list alone,
    build the right input). Rewrite it in place as later Keras 2 wrote it: a named layer list
    starting with an InputLayer that holds the batch shape. True when it changed anything."""
    layers = config.get("config")
    if config.get("class_name") != "Sequential" or not isinstance(layers, list) or not layers:
        return False
    first = layers[0].get("config", {})
    shape = first.pop("batch_input_shape", None)
    entries = list(layers)
    if shape is not None:
        entries.insert(0, {"class_name": "InputLayer", "config": {
            "batch_input_shape": shape, "dtype": first.get("dtype", "float32"), "sparse": False,
            "name": f"{first.get('name', 'layer')}_input"}})
    config["config"] = {"name": "sequential", "layers": entries}
    return True


def _layers(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Every layer in the architecture, with nested models flattened."""
    out = []
    inner = config.get("config", {})
    layers = inner.get("layers", []) if isinstance(inner, dict) else []
    for layer in layers:
        if layer.get("class_name") in CONTAINERS:
            out.extend(_layers(layer))
        else:
            out.append(layer)
    return out


def check_layers(config: dict[str, Any], where: str) -> None:
    if config.get("class_name") not in CONTAINERS:
        raise ConversionError(f"top-level object is a {config.get('class_name')!r}, not a Keras model", where)
    for layer in _layers(config):
        cls, cfg = layer.get("class_name"), layer.get("config", {})
        name = cfg.get("name", "?")
        if cls == "Lambda":
            raise UnsupportedOpError(f"layer '{name}' (Lambda) holds Python code; refused without running it "
                                     "(rewrite it with built-in layers)", where)
        if cls not in SUPPORTED_LAYERS:
            raise UnsupportedOpError(f"layer '{name}' ({cls}) is not supported (supported: "
                                     f"{', '.join(sorted(SUPPORTED_LAYERS - {'InputLayer'}))})", where)
        activation = cfg.get("activation")
        if isinstance(activation, dict):  # Keras 3 may serialize it as an object
            activation = activation.get("config", {}).get("name", activation.get("class_name"))
        if activation not in SUPPORTED_ACTIVATIONS:
            raise UnsupportedOpError(f"layer '{name}' ({cls}) uses activation '{activation}' (supported: "
                                     f"{', '.join(sorted(a for a in SUPPORTED_ACTIVATIONS if a))})", where)
        if cls == "Conv1D" and int(cfg.get("groups", 1)) != 1:
            raise UnsupportedOpError(f"layer '{name}' (Conv1D) has groups={cfg['groups']}: tf2onnx cannot export "
                                     "grouped Keras convolutions (a PyTorch/ONNX grouped Conv converts)", where)
    problems = two_d_problems(_layers(config)) + recurrent_problems(_layers(config))
    if problems:
        raise UnsupportedOpError("; ".join(problems), where)


def two_d_problems(layers: list[dict[str, Any]]) -> list[str]:
    """Every 2-D layer that is not 1D along its input's unit axis, each naming what makes it 2-D (empty
    when the model has no 2-D layer, or all are 1D in disguise). The unit axis is where the 4-D map was
    made: a model input (T, 1, C) or (1, T, C), or a Reshape to such a shape (a 1D model that reshapes
    its (T, C) map for 2-D layers and back); the layers in between keep it at size 1 or are refused."""
    two_d = [layer for layer in layers if layer.get("class_name") in TWO_D_LAYERS]
    if not two_d:
        return []
    origin = _map_origins(layers)
    problems = []
    for layer in two_d:
        inbound, cfg = _inbound(layer, layers), layer.get("config", {})
        first = tuple(cfg.get("batch_shape") or cfg.get("batch_input_shape") or ())[1:]  # a Keras 2 Sequential's
        what, shape = origin.get(inbound[0], ("the input", ())) if inbound else ("the input", first)
        unit = next((a for a in (0, 1) if len(shape) == 3 and shape[a] == 1), None)
        if unit is None:
            problems.append(f"layer '{layer['config'].get('name', '?')}' ({layer['class_name']}) is 2-D: {what} "
                            f"{[list(shape)] if what == 'the input' else list(shape)} has no spatial axis of size 1 "
                            "(only 1D models written with 2-D layers, (T, 1, C) or (1, T, C), are supported)")
        else:
            problems.append(_two_d_problem(layer, unit, what, shape))
    return [p for p in problems if p]


def _map_origins(layers: list[dict[str, Any]]) -> dict[str, tuple[str, tuple]]:
    """Per layer name: where its output's shape was set (a model input or a Reshape: its description
    and shape without the batch), passed on through the layers that keep a map's rank."""
    origin: dict[str, tuple[str, tuple]] = {}
    for layer in layers:
        cls, cfg = layer.get("class_name"), layer.get("config", {})
        name = cfg.get("name", "?")
        if cls == "InputLayer":
            origin[name] = ("the input", tuple(cfg.get("batch_shape") or cfg.get("batch_input_shape") or ())[1:])
        elif cls == "Reshape":
            origin[name] = (f"the output of Reshape '{name}'", tuple(cfg.get("target_shape") or ()))
        elif cls not in ("Flatten", "Dense", "GlobalAveragePooling2D", "GlobalMaxPooling2D"):
            inbound = _inbound(layer, layers)
            if inbound and inbound[0] in origin:
                origin[name] = origin[inbound[0]]
    return origin


def _inbound(layer: dict[str, Any], layers: list[dict[str, Any]]) -> list[str]:
    """The names of the layers feeding `layer`: from its inbound nodes (Keras 3 keras_history, Keras 2
    [name, node, tensor, kwargs] lists), else (a Sequential) the layer before it."""
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            history = value.get("config", {}).get("keras_history") if isinstance(value.get("config"), dict) else None
            if history:
                found.append(str(history[0]))
                return
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            if len(value) >= 3 and isinstance(value[0], str) and isinstance(value[1], int):
                found.append(value[0])
                return
            for item in value:
                walk(item)

    walk(layer.get("inbound_nodes") or [])
    if found:
        return found
    index = next(i for i, candidate in enumerate(layers) if candidate is layer)
    return [layers[index - 1].get("config", {}).get("name", "?")] if index > 0 else []


def _pair(value: Any) -> tuple[Any, Any]:
    """Keras's int-or-pair arguments as a pair."""
    if isinstance(value, (list, tuple)):
        return tuple(value) if len(value) == 2 else (value[0], value[0])
    return value, value


def _two_d_problem(layer: dict[str, Any], unit: int, what: str, shape: tuple) -> str | None:
    cls, cfg = layer["class_name"], layer.get("config", {})
    if cfg.get("data_format") == "channels_first":
        return f"layer '{cfg.get('name', '?')}' ({cls}) is channels_first: only channels_last 2-D layers are supported"
    keys = {"Conv2D": ("kernel_size", "strides", "dilation_rate"), "DepthwiseConv2D": ("kernel_size", "strides",
            "dilation_rate"), "SeparableConv2D": ("kernel_size", "strides", "dilation_rate"),
            "MaxPooling2D": ("pool_size", "strides"), "AveragePooling2D": ("pool_size", "strides"),
            "UpSampling2D": ("size",)}.get(cls, ())
    wrong = [f"{key} {list(_pair(cfg[key]))}" for key in keys
             if cfg.get(key) is not None and _pair(cfg[key])[unit] != 1]
    if cls in ("ZeroPadding2D", "Cropping2D"):
        key = "padding" if cls == "ZeroPadding2D" else "cropping"
        along = _pair(cfg.get(key, 0))[unit]
        if any(_pair(along)):
            wrong.append(f"{key} {along} along it")
    if not wrong:
        return None
    axis = "second" if unit == 1 else "first"
    return (f"layer '{cfg.get('name', '?')}' ({cls}) is 2-D: {', '.join(wrong)} along the {axis} spatial axis, "
            f"which has size 1 in {what} {list(shape)}")


def _import_keras() -> tuple[Any, Any, Any]:
    # TensorFlow only deserializes and traces here (ONNX Runtime is the float reference), so its
    # oneDNN kernels and start-up chatter on stderr serve no purpose. It reads these at import; the
    # caller's environment is restored afterwards.
    quiet = {"TF_CPP_MIN_LOG_LEVEL": "3", "TF_ENABLE_ONEDNN_OPTS": "0"}
    saved = {key: os.environ.get(key) for key in quiet}
    for key, value in quiet.items():
        os.environ.setdefault(key, value)
    try:
        import tensorflow as tf
        import tf2onnx
        import keras
    except ImportError as exc:
        raise ConversionError(KERAS_EXTRA_HINT) from exc
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    for noisy in ("tensorflow", "tf2onnx", "absl"):  # their failures reach the user as our one-line error
        logging.getLogger(noisy).setLevel(logging.CRITICAL)
    return tf, tf2onnx, keras


# Keys tf_keras (Keras 2) writes that Keras 3 refuses, with the only value that means nothing (ANY: a
# setting the layer never uses, e.g. the unused `kernel_*` arguments of a separable convolution).
ANY = object()
KERAS2_EXTRA_KEYS: dict[str, dict[str, Any]] = {
    "DepthwiseConv1D": {"groups": 1},
    "SeparableConv1D": {"groups": 1, "kernel_initializer": ANY, "kernel_regularizer": ANY, "kernel_constraint": ANY},
}


def _load_with_keras2_config_fixed(keras: Any, path: Path, config: dict[str, Any], error: Exception,
                                   fixed: bool = False) -> Any:
    """Keras 3 cannot read some Keras 2 layer configs (DepthwiseConv1D carries groups=1; a Keras 2.1
    Sequential's bare layer list, which `config` already has in the later form when `fixed`): drop
    those no-op keys and load again, from a temporary copy of the file through Keras' own loader (safe
    mode). Any other failure is reported as it is."""
    first = short_error(error)
    for layer in _layers(config):
        for key, neutral in KERAS2_EXTRA_KEYS.get(layer.get("class_name"), {}).items():
            if key in layer.get("config", {}) and (neutral is ANY or layer["config"][key] == neutral):
                del layer["config"][key]
                fixed = True
    if not fixed or zipfile.is_zipfile(path):
        raise ConversionError(f"Keras cannot load the model ({first})", str(path)) from error
    import h5py

    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / path.name  # the user's file is never written to
        shutil.copyfile(path, copy)
        with h5py.File(copy, "r+") as f:
            f.attrs["model_config"] = json.dumps(config)
        try:
            return keras.models.load_model(str(copy), compile=False, safe_mode=True)
        except Exception as exc:
            raise ConversionError(f"Keras cannot load the model ({first})", str(path)) from exc


def load_keras_model(path: Path) -> Any:
    """The Keras model in the file, loaded safely: layer list checked first, safe_mode, Keras 2
    configs made readable. Fresh layer names on every call (clear_session)."""
    where = str(path)
    if not path.is_file():
        raise ConversionError("file not found", where)
    config = _read_config(path)
    legacy = modern_sequential(config)  # checked and loaded in the form Keras 3 reads
    check_layers(config, where)
    _, _, keras = _import_keras()
    keras.backend.clear_session()  # layer names (and so C identifiers) must not depend on earlier loads
    try:
        return keras.models.load_model(str(path), compile=False, safe_mode=True)
    except Exception as exc:
        return _load_with_keras2_config_fixed(keras, path, config, exc, fixed=legacy)


def keras_to_onnx(path: Path, input_shape: tuple[int, ...] | None = None) -> onnx.ModelProto:
    """The Keras model as an opset-15 ONNX graph with batch 1 (not yet checked or shape-inferred); a
    free time axis takes its length from `input_shape` (without the batch)."""
    where = str(path)
    model = load_keras_model(path)
    tf, tf2onnx, keras = _import_keras()
    input_names = onnx_input_names([i.name for i in model.inputs])
    layer_names = mark_layers(model)
    stand_ins = stand_in_recurrent_layers(model)  # LSTMs: put back as ONNX LSTM nodes after the export
    functional = keras.Model(model.inputs, model.outputs)  # a Keras 3 Sequential does not export otherwise
    if input_shape is not None and len(model.inputs) > 1:
        raise OptionError(f"{{opt:input_shape}} fixes the input of a one-input model; this one has "
                          f"{len(model.inputs)}: give the Keras inputs fixed shapes")
    signature = []
    for k, (declared, name) in enumerate(zip((tuple(i.shape[1:]) for i in model.inputs), input_names)):
        if input_shape is not None:
            if len(input_shape) != len(declared) or any(d is not None and d != g for d, g in zip(declared, input_shape)):
                raise OptionError(f"{{opt:input_shape={','.join(map(str, input_shape))}}} does not fit the Keras "
                                  f"input of shape {['N', *declared]} (give every dimension after the batch)")
            declared = tuple(int(g) for g in input_shape)
        if any(d is None for d in declared):
            example = ",".join("LENGTH" if d is None else str(d) for d in declared)
            which = "the input" if len(model.inputs) == 1 else f"input {k} ('{name}')"
            fix = f"give it with {{opt:input_shape={example}}}" if len(model.inputs) == 1 else \
                "give every Keras input a fixed shape"
            raise ConversionError(f"{which} shape {['N', *declared]} has a free dimension besides the batch: the C "
                                  f"needs a fixed window; {fix}", where)
        signature.append(tf.TensorSpec((1, *declared), tf.float32, name=name))
    try:
        proto, _ = tf2onnx.convert.from_keras(functional, input_signature=signature, opset=ONNX_OPSET)
    except Exception as exc:
        raise ConversionError(f"tf2onnx cannot export the model ({short_error(exc)})", where) from exc
    insert_recurrent_layers(proto, stand_ins, where)
    renumber_internal_names(proto)
    unmark(proto, layer_names)
    return proto


def load_keras(path: Path, input_shape: tuple[int, ...] | None = None) -> onnx.ModelProto:
    if not path.is_file():
        raise ConversionError("file not found", str(path))
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    return onnx.load_from_string(_exported(str(path), digest, input_shape))


@functools.lru_cache(maxsize=8)
def _exported(path: str, digest: str, input_shape: tuple[int, ...] | None) -> bytes:
    """The normalized ONNX of one file's bytes (`digest`), serialized: tf2onnx's export is most of a
    Keras conversion, and a script or notebook that converts one model with several options, or
    `inspect` then `convert`, pays it once per process. Bytes, so that every caller parses its
    own copy; a failure is not kept, so a bad file is refused (and checked) every time."""
    return normalize(keras_to_onnx(Path(path), input_shape), path).SerializeToString()
