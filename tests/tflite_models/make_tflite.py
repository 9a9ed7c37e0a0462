"""Regenerate the .tflite fixtures of issue 33 (committed, small): Keras 1D classifiers trained briefly
on the Keras fixtures' four-tone signals and converted to int8 by TensorFlow's own converter (full
integer, int8 input and output), so that the tests read files made as users make them.

    python tests/tflite_models/make_tflite.py

- keras_cnn_int8.tflite: Conv1D (same, relu) > MaxPool > Conv1D (valid, tanh) > DepthwiseConv1D
  (same, relu6) > AveragePooling1D > GlobalAveragePooling1D > Dense (sigmoid) > Dense (softmax); the
  converter writes EXPAND_DIMS/RESHAPE around each 2-D op.
- keras_flat_int8.tflite: Conv1D (strided) > MaxPool > Flatten > Dense > Dense (softmax) with Keras'
  dynamic batch: the converter computes the Flatten's target with SHAPE -> STRIDED_SLICE -> PACK and
  writes 1 in the static shapes wherever the signature is dynamic.
- keras_zoo_int8.tflite: tests/keras_models/conv_zoo.h5 (a causal dilated conv, strided same conv,
  BatchNorms, ReLU6, sigmoid, average/max pools, LeakyReLU, dense, softmax) converted as it is; the
  converter writes the dilated conv as SPACE_TO_BATCH_ND -> CONV_2D -> BATCH_TO_SPACE_ND.
- keras_cnn_16x8.tflite, keras_flat_16x8.tflite: the cnn and flat classifiers converted 16x8 (int16
  activations, int8 weights, int64 biases; int16 input and output).
- keras_t1c_int8.tflite, keras_flatin_int8.tflite, keras_resize_int8.tflite: a (T, 1, C) model with
  Conv2D/MaxPooling2D over a unit axis, a flat (T*C,) input reshaped inside, an upsampling through
  Resizing(nearest) between Reshapes.
- keras_tile_int8.tflite: an upsampling through Keras' UpSampling1D, which the converter writes as
  EXPAND_DIMS -> TILE -> RESHAPE (tflite-micro cannot run TILE: TensorFlow's interpreter checks it).
- keras_gmax_int8.tflite: a GlobalMaxPooling1D head (REDUCE_MAX over time).
- keras_hswish_int8.tflite: hard_swish activations (the converter's HARD_SWISH) after two Conv1Ds.
- keras_sub_int8.tflite, keras_sub_16x8.tflite: a per-channel constant subtracted after a tanh (SUB of
  an int8, or int16, constant).
- keras_concat_int8.tflite: two conv branches concatenated; the converter requantizes the tanh branch
  to the concatenation's scale (QUANTIZE int8 -> int8).
- keras_bn_16x8.tflite: keras_bn's model converted 16x8 (MUL and ADD of int16 constants).
- keras_kws2d_int8.tflite: a really 2-D model (3x3 convs over a 49x10 map), untrained: refused by name.
- keras_cnn_float.tflite: the cnn classifier unquantized (converts with calibration samples).
- keras_bn_int8.tflite: the same with a BatchNormalization after the tanh, which the converter leaves
  as MUL and ADD of constants.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
HERE = Path(__file__).resolve().parent

import numpy as np  # noqa: E402

STEPS, CHANNELS = 64, 3


def flat_classifier(keras):
    L = keras.layers
    i = keras.Input((STEPS, CHANNELS), name="signal")
    x = L.MaxPooling1D(2)(L.Conv1D(8, 5, strides=2, activation="relu")(i))
    x = L.Dense(10, activation="relu")(L.Flatten()(x))
    return keras.Model(i, L.Dense(4, activation="softmax")(x))


def shaped_classifier(keras, kind: str):
    """The layouts users write a 1D model in: (T, 1, C) with 2-D layers, a flat input reshaped inside,
    and an upsampling through Resizing(nearest) between two Reshapes."""
    L = keras.layers
    if kind == "t1c":
        i = keras.Input((STEPS, 1, CHANNELS), name="signal")
        x = L.MaxPooling2D((2, 1))(L.Conv2D(12, (5, 1), padding="same", activation="relu")(i))
        x = L.Conv2D(16, (3, 1), activation="relu")(x)
        x = L.GlobalAveragePooling2D()(x)
    elif kind == "flatin":
        i = keras.Input((STEPS * CHANNELS,), name="signal")
        x = L.Reshape((STEPS, CHANNELS))(i)
        x = L.Conv1D(16, 5, strides=2, activation="relu")(L.Conv1D(12, 5, activation="relu")(x))
        x = L.GlobalAveragePooling1D()(x)
    elif kind == "gmax":  # GlobalMaxPooling1D: REDUCE_MAX over time
        i = keras.Input((STEPS, CHANNELS), name="signal")
        x = L.Conv1D(16, 3, activation="relu")(L.Conv1D(12, 5, activation="relu")(i))
        x = L.GlobalMaxPooling1D()(x)
    elif kind == "hswish":  # hard_swish: TFLite's HARD_SWISH
        i = keras.Input((STEPS, CHANNELS), name="signal")
        x = L.MaxPooling1D(2)(L.Conv1D(12, 5, padding="same", activation="hard_swish")(i))
        x = L.Activation("hard_swish")(L.Conv1D(16, 3, padding="same")(x))
        x = L.GlobalAveragePooling1D()(x)
    elif kind == "tile":  # Keras' UpSampling1D: EXPAND_DIMS -> TILE -> RESHAPE (tflite-micro has no TILE)
        i = keras.Input((STEPS, CHANNELS), name="signal")
        x = L.UpSampling1D(2)(L.Conv1D(12, 5, strides=2, padding="same", activation="relu")(i))
        x = L.GlobalAveragePooling1D()(L.Conv1D(16, 3, activation="relu")(x))
    elif kind == "sub":  # a per-channel constant subtracted after a tanh: SUB of a constant
        i = keras.Input((STEPS, CHANNELS), name="signal")
        x = L.Conv1D(12, 5, padding="same", activation="tanh")(i)
        x = x - keras.ops.convert_to_tensor(np.linspace(-0.5, 0.5, 12).astype(np.float32))
        x = L.GlobalAveragePooling1D()(L.Conv1D(16, 3, activation="relu")(L.MaxPooling1D(2)(x)))
    elif kind == "concat":  # two branches concatenated: the converter requantizes one (QUANTIZE int8 -> int8)
        i = keras.Input((STEPS, CHANNELS), name="signal")
        a = L.Conv1D(8, 5, padding="same", activation="relu")(i)
        b = L.Conv1D(8, 3, padding="same", activation="tanh")(i)
        x = L.GlobalAveragePooling1D()(L.Conv1D(16, 3, activation="relu")(L.Concatenate()([a, b])))
    else:  # resize
        i = keras.Input((STEPS, CHANNELS), name="signal")
        x = L.Conv1D(12, 5, strides=2, padding="same", activation="relu")(i)
        x = L.Reshape((STEPS // 2, 1, 12))(x)
        x = L.Resizing(STEPS, 1, interpolation="nearest")(x)
        x = L.Reshape((STEPS, 12))(x)
        x = L.GlobalAveragePooling1D()(L.Conv1D(16, 3, activation="relu")(x))
    return keras.Model(i, L.Dense(4, activation="softmax")(L.Dense(8, activation="relu")(x)))


def classifier(keras, batch_norm: bool):
    L = keras.layers
    i = keras.Input((STEPS, CHANNELS), name="signal")
    x = L.Conv1D(12, 5, padding="same", activation="relu")(i)
    x = L.MaxPooling1D(2)(x)
    x = L.Conv1D(16, 3, activation="tanh")(x)
    if batch_norm:
        x = L.BatchNormalization()(x)
    x = L.DepthwiseConv1D(3, padding="same", activation="relu6")(x)
    x = L.AveragePooling1D(2)(x)
    x = L.GlobalAveragePooling1D()(x)
    x = L.Dense(8, activation="sigmoid")(x)
    return keras.Model(i, L.Dense(4, activation="softmax")(x))


def make_2d(name: str) -> None:
    """A really 2-D model (a keyword-spotting-like conv over a 49x10 spectrogram), untrained: refused."""
    import keras
    import tensorflow as tf

    L = keras.layers
    keras.utils.set_random_seed(33)
    i = keras.Input((49, 10, 1), name="spectrogram")
    x = L.DepthwiseConv2D((3, 3), activation="relu")(L.Conv2D(8, (3, 3), activation="relu")(i))
    model = keras.Model(i, L.Dense(4, activation="softmax")(L.GlobalAveragePooling2D()(x)))
    rows = np.random.default_rng(0).standard_normal((50, 49, 10, 1)).astype(np.float32)
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row[np.newaxis]] for row in rows)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = converter.inference_output_type = tf.int8
    (HERE / f"{name}.tflite").write_bytes(converter.convert())
    print(f"{name}.tflite: {(HERE / f'{name}.tflite').stat().st_size} bytes")


def make(name: str, batch_norm: bool = False, flat: bool = False, trained: Path | None = None,
         sixteen: bool = False, shaped: str | None = None, float_model: bool = False) -> None:
    import keras
    import tensorflow as tf

    from tests.keras_models.data import signals

    keras.utils.set_random_seed(33)
    if trained is not None:  # a fixture trained already
        model = keras.models.load_model(trained, compile=False)
        x, _ = signals(100, *model.inputs[0].shape[1:], seed=20)
    else:
        model = shaped_classifier(keras, shaped) if shaped else flat_classifier(keras) if flat else \
            classifier(keras, batch_norm)
        x, y = signals(2000, STEPS, CHANNELS, seed=10)
        x = x.reshape(len(x), *model.inputs[0].shape[1:])
        model.compile(keras.optimizers.Adam(3e-3), "sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(x, y, epochs=10, batch_size=64, verbose=0)
        x_test, y_test = signals(500, STEPS, CHANNELS, seed=11)
        x_test = x_test.reshape(len(x_test), *model.inputs[0].shape[1:])
        print(f"{name}: accuracy {model.evaluate(x_test, y_test, verbose=0)[1]:.3f} held out")
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([row[np.newaxis]] for row in x[:100])
    if float_model:  # no quantization: the tool calibrates it like any float model
        converter.optimizations = []
        converter.representative_dataset = None
    elif sixteen:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int16
    else:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        converter.inference_input_type = converter.inference_output_type = tf.int8
    (HERE / f"{name}.tflite").write_bytes(converter.convert())
    print(f"{name}.tflite: {(HERE / f'{name}.tflite').stat().st_size} bytes")


if __name__ == "__main__":
    sys.path.insert(0, str(HERE.parents[1]))
    if sys.argv[1:] == ["constants"]:  # only the SUB, QUANTIZE and 16x8 constant fixtures
        for kind in ("sub", "concat"):
            make(f"keras_{kind}_int8", shaped=kind)
        make("keras_sub_16x8", shaped="sub", sixteen=True)
        make("keras_bn_16x8", batch_norm=True, sixteen=True)
        sys.exit(0)
    make("keras_cnn_int8", batch_norm=False)
    make("keras_bn_int8", batch_norm=True)
    make("keras_flat_int8", flat=True)
    make("keras_zoo_int8", trained=HERE.parent / "keras_models" / "conv_zoo.h5")
    make("keras_cnn_16x8", sixteen=True)
    make("keras_flat_16x8", flat=True, sixteen=True)
    for kind in ("t1c", "flatin", "resize", "tile", "gmax", "hswish", "sub", "concat"):
        make(f"keras_{kind}_int8", shaped=kind)
    make("keras_sub_16x8", shaped="sub", sixteen=True)
    make("keras_bn_16x8", batch_norm=True, sixteen=True)
    make("keras_cnn_float", float_model=True)
    make_2d("keras_kws2d_int8")
