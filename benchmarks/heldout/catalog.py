"""The held-out benchmark list (issue 29): fixed, with its data and its dev/heldback split, before any
model was trained or any quantization result seen.

Each entry names a Keras architecture (a builder taking the keras module), a data generator from
data.py with its parameters, a seed, a calibration size (32-64 samples, varied on purpose: users
calibrate with what they have) and a test size. Seeds: Keras weights and the training data use
`seed`, the calibration samples `seed + CALIBRATION_OFFSET`, the test set `seed + TEST_OFFSET`, so
the three never share samples.

The split is a fixed rule, not a choice: the names, sorted, are shuffled by
numpy.random.default_rng(SPLIT_SEED) and the first half is `dev` (what tuning may look at), the
rest `heldback` (looked at only to check that a tuning result carries over).
Three entries are look-alikes of user models the repository was never tuned on:
lookalike_a_tanh_bn_gap, lookalike_b_imu_pool and lookalike_c_dilated_residual.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

import data as generators

CALIBRATION_OFFSET = 1000
TEST_OFFSET = 2000
SPLIT_SEED = 29  # the issue number; never changed after the first commit


@dataclass(frozen=True)
class Entry:
    name: str
    build: Callable[[Any], Any]  # keras module -> keras.Model
    data: str  # a generator in data.py
    params: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    calibration: int = 48
    test: int = 600
    task: str = "softmax"  # "softmax", "logits" or "regression"
    epochs: int = 8

    def samples(self, n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return getattr(generators, self.data)(n, seed, **self.params)

    def calibration_set(self) -> np.ndarray:
        return self.samples(self.calibration, self.seed + CALIBRATION_OFFSET)[0]

    def test_set(self) -> tuple[np.ndarray, np.ndarray]:
        return self.samples(self.test, self.seed + TEST_OFFSET)


# --- architectures -------------------------------------------------------------------------------

def lookalike_a(keras) -> Any:
    """(a) Conv1D(16,k7,tanh) > BN > MaxPool > Conv1D(32,k5,sigmoid) > GAP > Dense(2) > Softmax."""
    L = keras.layers
    i = keras.Input((150, 1))
    x = L.Conv1D(16, 7, activation="tanh")(i)
    x = L.BatchNormalization()(x)
    x = L.MaxPooling1D(2)(x)
    x = L.Conv1D(32, 5, activation="sigmoid")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(i, L.Softmax()(L.Dense(2)(x)))


def lookalike_b(classes: int, steps: int = 100) -> Callable[[Any], Any]:
    """(b) Conv1D(16,k5,relu,valid) > MaxPool > Conv1D(32,k3,relu,same) > AvgPool > Flatten > Dense softmax."""
    def build(keras) -> Any:
        L = keras.layers
        i = keras.Input((steps, 6))
        x = L.Conv1D(16, 5, activation="relu")(i)
        x = L.MaxPooling1D(2)(x)
        x = L.Conv1D(32, 3, padding="same", activation="relu")(x)
        x = L.AveragePooling1D(2)(x)
        return keras.Model(i, L.Dense(classes, activation="softmax")(L.Flatten()(x)))
    return build


def lookalike_c(head_activation: str | None) -> Callable[[Any], Any]:
    """(c) Conv1D(16,k5,same,relu) > dilated Conv1D + residual Add > ReLU > MaxPool(4) >
    Conv1D(32,k3,tanh) > GAP > Dense(6)."""
    def build(keras) -> Any:
        L = keras.layers
        i = keras.Input((427, 1))
        a = L.Conv1D(16, 5, padding="same", activation="relu")(i)
        b = L.Conv1D(16, 3, padding="same", dilation_rate=4)(a)
        x = L.ReLU()(L.Add()([a, b]))
        x = L.MaxPooling1D(4)(x)
        x = L.Conv1D(32, 3, activation="tanh")(x)
        x = L.GlobalAveragePooling1D()(x)
        return keras.Model(i, L.Dense(6, activation=head_activation)(x))
    return build


def gmp_relu6(keras) -> Any:
    L = keras.layers
    i = keras.Input((512, 1))
    x = L.ReLU(6.0)(L.Conv1D(16, 9, strides=2)(i))
    x = L.ReLU(6.0)(L.Conv1D(32, 5, strides=2)(x))
    x = L.Conv1D(32, 3, activation="relu")(x)
    x = L.GlobalMaxPooling1D()(x)
    return keras.Model(i, L.Dense(4, activation="softmax")(x))


def bn_after_act_logits(keras) -> Any:
    """BatchNormalization after the activation (not foldable into the conv before it)."""
    L = keras.layers
    i = keras.Input((512, 2))
    x = L.BatchNormalization()(L.Conv1D(8, 7, strides=2, activation="relu")(i))
    x = L.BatchNormalization()(L.Conv1D(16, 5, activation="relu")(x))
    x = L.MaxPooling1D(4)(x)
    x = L.Conv1D(32, 3, activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    x = L.Dropout(0.2)(L.Dense(16, activation="relu")(x))
    return keras.Model(i, L.Dense(4)(x))


def avgpool_tanh(keras) -> Any:
    L = keras.layers
    i = keras.Input((512, 1))
    x = L.AveragePooling1D(4)(L.Conv1D(16, 7, strides=2, activation="tanh")(i))
    x = L.AveragePooling1D(2)(L.Conv1D(32, 5, activation="tanh")(x))
    x = L.Conv1D(32, 3, activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(i, L.Dense(4, activation="softmax")(x))


def separable_gear(keras) -> Any:
    L = keras.layers
    i = keras.Input((512, 1))
    x = L.Conv1D(16, 7, strides=2, activation="relu")(i)
    x = L.SeparableConv1D(32, 5, activation="relu")(x)
    x = L.MaxPooling1D(4)(x)
    x = L.SeparableConv1D(32, 5, activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(i, L.Dense(3, activation="softmax")(x))


def dilated_stack(keras) -> Any:
    L = keras.layers
    i = keras.Input((512, 1))
    x = L.Conv1D(16, 5, strides=2, activation="relu")(i)
    x = L.Conv1D(16, 3, padding="causal", dilation_rate=2, activation="relu")(x)
    x = L.Conv1D(16, 3, padding="causal", dilation_rate=4, activation="relu")(x)
    x = L.Conv1D(32, 3, padding="causal", dilation_rate=8, activation="relu")(x)
    x = L.GlobalMaxPooling1D()(x)
    return keras.Model(i, L.Dense(3, activation="softmax")(x))


def conv_mlp_logits(keras) -> Any:
    L = keras.layers
    i = keras.Input((512, 1))
    x = L.Conv1D(8, 5, strides=4, activation="relu")(i)
    x = L.MaxPooling1D(4)(x)
    x = L.Dense(32, activation="relu")(L.Flatten()(x))
    return keras.Model(i, L.Dense(3)(L.Dropout(0.3)(x)))


def bn_leaky(keras) -> Any:
    L = keras.layers
    i = keras.Input((300, 1))
    x = L.LeakyReLU(0.1)(L.BatchNormalization()(L.Conv1D(16, 7)(i)))
    x = L.MaxPooling1D(2)(x)
    x = L.LeakyReLU(0.1)(L.BatchNormalization()(L.Conv1D(32, 5)(x)))
    x = L.AveragePooling1D(2)(x)
    x = L.Conv1D(32, 3, activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(i, L.Dense(4, activation="softmax")(x))


def sigmoid_flatten_logits(keras) -> Any:
    L = keras.layers
    i = keras.Input((300, 1))
    x = L.AveragePooling1D(2)(L.Conv1D(8, 5, activation="sigmoid")(i))
    x = L.MaxPooling1D(4)(L.Conv1D(16, 5, activation="tanh")(x))
    x = L.Dropout(0.2)(L.Flatten()(x))
    x = L.Dense(32, activation="relu")(x)
    return keras.Model(i, L.Dense(4)(x))


def imu_residual_bn(keras) -> Any:
    L = keras.layers
    i = keras.Input((100, 6))
    a = L.BatchNormalization()(L.Conv1D(32, 5, padding="same", activation="relu")(i))
    b = L.BatchNormalization()(L.Conv1D(32, 3, padding="same", activation="relu")(a))
    x = L.MaxPooling1D(2)(L.Add()([a, b]))
    x = L.Conv1D(32, 3, activation="relu")(x)
    x = L.GlobalMaxPooling1D()(x)
    return keras.Model(i, L.Dense(5, activation="softmax")(x))


def imu_depthwise(keras) -> Any:
    L = keras.layers
    i = keras.Input((100, 6))
    x = L.DepthwiseConv1D(5, depth_multiplier=2, activation="relu")(i)
    x = L.Conv1D(16, 1, activation="relu")(x)
    x = L.MaxPooling1D(2)(x)
    x = L.Conv1D(32, 3, activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(i, L.Dense(5, activation="softmax")(x))


def ppg_regressor(keras) -> Any:
    L = keras.layers
    i = keras.Input((256, 1))
    x = L.MaxPooling1D(2)(L.Conv1D(16, 7, activation="relu")(i))
    x = L.MaxPooling1D(2)(L.Conv1D(32, 5, activation="relu")(x))
    x = L.Conv1D(32, 3, activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(i, L.Dense(1)(L.Dense(16, activation="relu")(x)))


def ppg_sigmoid_bn(keras) -> Any:
    L = keras.layers
    i = keras.Input((256, 1))
    x = L.BatchNormalization()(L.Conv1D(16, 9, strides=2, activation="sigmoid")(i))
    x = L.MaxPooling1D(2)(x)
    x = L.BatchNormalization()(L.Conv1D(16, 5, activation="relu")(x))
    x = L.AveragePooling1D(2)(x)
    x = L.Flatten()(x)
    return keras.Model(i, L.Dense(1)(L.Dense(16, activation="tanh")(x)))


def emg_adc(keras) -> Any:
    L = keras.layers
    i = keras.Input((200, 4))
    x = L.BatchNormalization()(L.Conv1D(16, 9, strides=2, activation="relu")(i))
    x = L.Conv1D(32, 5, activation="relu")(x)
    x = L.GlobalMaxPooling1D()(x)
    return keras.Model(i, L.Dense(5, activation="softmax")(x))


def emg_concat(keras) -> Any:
    L = keras.layers
    i = keras.Input((200, 4))
    s = L.Conv1D(8, 3, padding="same")(i)
    w = L.Conv1D(8, 9, padding="same")(i)
    x = L.ReLU()(L.Concatenate()([s, w]))
    x = L.BatchNormalization()(x)
    x = L.MaxPooling1D(4)(x)
    x = L.Conv1D(32, 3, activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(i, L.Dense(5, activation="softmax")(x))


def keyword_strided(keras) -> Any:
    L = keras.layers
    i = keras.Input((512, 1))
    x = L.Conv1D(16, 9, strides=4, activation="relu")(i)
    x = L.Conv1D(32, 5, strides=2, activation="relu")(x)
    x = L.MaxPooling1D(4)(x)
    x = L.Conv1D(32, 3, activation="relu")(x)
    x = L.Flatten()(x)
    x = L.Dropout(0.3)(L.Dense(32, activation="relu")(x))
    return keras.Model(i, L.Dense(6, activation="softmax")(x))


def keyword_separable_leaky(keras) -> Any:
    L = keras.layers
    i = keras.Input((512, 1))
    x = L.LeakyReLU(0.2)(L.Conv1D(16, 9, strides=4)(i))
    x = L.LeakyReLU(0.2)(L.SeparableConv1D(32, 5, strides=2)(x))
    x = L.MaxPooling1D(4)(x)
    x = L.LeakyReLU(0.2)(L.SeparableConv1D(32, 3)(x))
    x = L.AveragePooling1D(2)(x)
    return keras.Model(i, L.Dense(6)(L.Flatten()(x)))


def shapes_pad_crop(keras) -> Any:
    L = keras.layers
    i = keras.Input((150, 1))
    x = L.Conv1D(16, 5, activation="relu")(L.ZeroPadding1D(4)(i))
    x = L.MaxPooling1D(2)(L.Cropping1D((2, 2))(x))
    x = L.ReLU(6.0)(L.Conv1D(16, 3)(x))
    x = L.Conv1D(32, 3, activation="relu")(x)
    x = L.GlobalAveragePooling1D()(x)
    return keras.Model(i, L.Dense(4, activation="softmax")(x))


def denoise_autoencoder(keras) -> Any:
    L = keras.layers
    i = keras.Input((128, 1))
    x = L.MaxPooling1D(2)(L.Conv1D(16, 5, padding="same", activation="relu")(i))
    x = L.Conv1D(8, 3, padding="same", activation="relu")(x)
    x = L.Conv1D(16, 3, padding="same", activation="relu")(L.UpSampling1D(2)(x))
    return keras.Model(i, L.Conv1D(1, 3, padding="same")(x))


def denoise_adc_tanh(keras) -> Any:
    L = keras.layers
    i = keras.Input((128, 1))
    x = L.Activation("tanh")(L.BatchNormalization()(L.Conv1D(8, 7, padding="same")(i)))
    x = L.Conv1D(8, 5, padding="same", activation="tanh")(x)
    return keras.Model(i, L.Conv1D(1, 1)(x))


# --- the list ------------------------------------------------------------------------------------

_ENTRIES = [
    Entry("lookalike_a_tanh_bn_gap", lookalike_a, "wave_shapes", {"classes": 2}, 101, 50, 600, epochs=10),
    Entry("tanh_bn_gap_ecg", lookalike_a, "ecg_rhythm", {"classes": 2, "normalize": True}, 102, 45, 600, epochs=10),
    Entry("lookalike_b_imu_pool", lookalike_b(4), "imu_activity", {"classes": 4}, 103, 40, 600),
    Entry("imu_pool_falls", lookalike_b(5), "imu_activity", {"classes": 5}, 104, 36, 600),
    Entry("lookalike_c_dilated_residual", lookalike_c(None), "transient_events", {}, 105, 64, 600, "logits", 12),
    Entry("dilated_residual_softmax", lookalike_c("softmax"), "transient_events", {}, 106, 56, 600, epochs=12),
    Entry("bearing_gmp_relu6", gmp_relu6, "bearing_vibration", {}, 107, 32, 600),
    Entry("bearing_bn_after_act", bn_after_act_logits, "bearing_vibration", {"axes": 2}, 108, 60, 600, "logits"),
    Entry("bearing_avgpool_tanh", avgpool_tanh, "bearing_vibration", {}, 109, 50, 600),
    Entry("gear_separable", separable_gear, "gear_vibration", {}, 110, 44, 600),
    Entry("gear_dilated_causal", dilated_stack, "gear_vibration", {}, 111, 62, 600),
    Entry("gear_conv_mlp", conv_mlp_logits, "gear_vibration", {}, 112, 42, 600, "logits"),
    Entry("ecg_bn_leaky_mv", bn_leaky, "ecg_rhythm", {"steps": 300}, 113, 36, 600),
    Entry("ecg_sigmoid_flatten", sigmoid_flatten_logits, "ecg_rhythm", {"steps": 300}, 114, 52, 600, "logits"),
    Entry("imu_residual_bn", imu_residual_bn, "imu_activity", {"classes": 5}, 115, 48, 600),
    Entry("imu_depthwise", imu_depthwise, "imu_activity", {"classes": 5}, 116, 34, 600),
    Entry("ppg_hr_regressor", ppg_regressor, "ppg_heart_rate", {}, 117, 32, 600, "regression"),
    Entry("ppg_sigmoid_bn", ppg_sigmoid_bn, "ppg_heart_rate", {}, 118, 54, 600, "regression"),
    Entry("emg_adc_counts", emg_adc, "emg_gestures", {}, 119, 44, 600),
    Entry("emg_concat_branches", emg_concat, "emg_gestures", {}, 120, 58, 600),
    Entry("keyword_strided", keyword_strided, "keyword_tones", {}, 121, 64, 600),
    Entry("keyword_separable_leaky", keyword_separable_leaky, "keyword_tones", {}, 122, 38, 600, "logits"),
    Entry("shapes4_pad_crop", shapes_pad_crop, "wave_shapes", {"classes": 4}, 123, 40, 600),
    Entry("denoise_autoencoder", denoise_autoencoder, "denoise", {}, 124, 40, 600, "regression"),
    Entry("denoise_adc_tanh", denoise_adc_tanh, "denoise", {"adc": True}, 125, 48, 600, "regression"),
]

MODELS: dict[str, Entry] = {e.name: e for e in _ENTRIES}


def _split() -> dict[str, str]:
    """The fixed rule: sorted names, seeded shuffle, first half dev (the extra odd one heldback)."""
    order = [str(s) for s in np.random.default_rng(SPLIT_SEED).permutation(sorted(MODELS))]
    dev = len(order) // 2
    return {name: "dev" if k < dev else "heldback" for k, name in enumerate(order)}


HALF: dict[str, str] = _split()


def select(half: str = "all", names: list[str] | None = None) -> list[Entry]:
    """Entries in catalog order: one half, or the named ones."""
    if names:
        unknown = set(names) - set(MODELS)
        if unknown:
            raise SystemExit(f"unknown model(s): {', '.join(sorted(unknown))}")
        return [MODELS[n] for n in names]
    return [e for e in _ENTRIES if half == "all" or HALF[e.name] == half]
