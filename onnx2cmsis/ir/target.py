"""The target the IR is emitted for: CMSIS-NN API levels as named capabilities, what the generated C
may rely on in one CMSIS-NN generation.

CMSIS-NN has no version macro, and the functions we call changed under us, so the generator emits
for a level. Handlers never compare level names: they ask the capability that decides their call
(e.g. `graph.cmsis_api.conv_upscale_dims`). A leaf module: the graph carries the level, and
cmsis_nn/source.py detects it from a tree.

Facts (read from the trees: the PyPI snapshot of January 2024, v6.0.0, v7.0.0 and main 99f736a6):

| capability | 2024.01 snapshot | v6.0.0 | v7.0.0, main |
|---|---|---|---|
| `arm_convolve_s8` takes `upscale_dims` | no | no | yes |
| `arm_convolve_s8` runs grouped convs (filter C < input C) | no | yes | yes |
| MVE conv im2col rows padded to | 8 lanes | 16 lanes | 16 lanes |
| MVE FC kernel sums are `bias + input_offset * row sum` | no (plain sums) | yes | yes |
| `arm_fully_connected_per_channel_s8` exists | no | no | yes |
| `arm_convolve_wrapper_s16` takes its bias as `cmsis_nn_bias_data` (else `int64_t *`); its MVE im2col needs scratch | no | ? | yes |
| `arm_transpose_conv_wrapper_s8` exists, and with it `arm_transpose_conv_s8`'s row-buffer algorithm (the snapshot's is another, with another scratch contract) | no | ? | yes |
| `arm_lstm_unidirectional_s8` exists (TFLite-Micro's integer LSTM; the snapshot has only the older `arm_lstm_unidirectional_s16_s8`) | no | ? | yes |

v6.0.0 is a generation of its own (new grouped conv and kernel sums, old conv prototype); it is
detected and refused rather than supported, since no v6.0.0 tree is tested here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class CmsisApi:
    """One CMSIS-NN API generation the C can be emitted for."""

    level: str  # the name users pass to --cmsis-nn-api and read in NAME.json
    versions: str  # which CMSIS-NN releases have it, for messages and docs
    conv_upscale_dims: bool  # arm_convolve_s8 takes `const cmsis_nn_dims *upscale_dims` before output_dims
    conv_native_groups: bool  # arm_convolve_s8 accepts filter channels = C_in / groups
    mve_im2col_lanes: int  # arm_convolve_s8_get_buffer_size_mve pads each im2col row to this many int8 lanes
    fc_kernel_sums_with_bias: bool  # MVE arm_fully_connected_s8 starts from bias + input_offset * row sums
    fc_per_channel: bool  # arm_fully_connected_per_channel_s8 exists (per-channel dense weights)
    # arm_convolve_wrapper_s16 takes `const cmsis_nn_bias_data *` (int64 or int32 biases) and, on MVE,
    # four im2col columns of scratch; before, `const int64_t *` and scratch only for the DSP fast kernel
    conv_s16_bias_struct: bool
    # arm_transpose_conv_wrapper_s8 exists; arm_transpose_conv_s8 keeps a row buffer of
    # ((W_in - 1) * stride + max(K, stride)) * C_out int32 in ctx and ignores output_ctx
    transpose_conv_wrapper: bool
    lstm_s8: bool  # arm_lstm_unidirectional_s8 (int8 in and out, int16 gates and cell) exists
    # A C preprocessor condition, true only for trees of this level once arm_nnsupportfunctions.h is
    # included: the generated .c stops with #error when it is false.
    c_probe: str

    def capabilities(self) -> dict[str, bool | int]:
        return {"conv_upscale_dims": self.conv_upscale_dims, "conv_native_groups": self.conv_native_groups,
                "mve_im2col_lanes": self.mve_im2col_lanes, "fc_kernel_sums_with_bias": self.fc_kernel_sums_with_bias,
                "fc_per_channel": self.fc_per_channel, "conv_s16_bias_struct": self.conv_s16_bias_struct,
                "transpose_conv_wrapper": self.transpose_conv_wrapper, "lstm_s8": self.lstm_s8}


# REVERSE_TCOL_EFFICIENT_THRESHOLD is defined in v7.0.0 and main only; MAX_COL_COUNT from v6.0.0 on;
# ARM_NNSUPPORTFUNCTIONS_H is the include guard every tree since the snapshot uses (v5.0.0 and older:
# _ARM_NNSUPPORTFUNCTIONS_H_). Checked over the snapshot, v5.0.0, v6.0.0, v7.0.0 and main.
LEVEL_7 = CmsisApi(
    level="7", versions="CMSIS-NN v7.0.0 or later (v7.0.0, main)",
    conv_upscale_dims=True, conv_native_groups=True, mve_im2col_lanes=16, fc_kernel_sums_with_bias=True,
    fc_per_channel=True, conv_s16_bias_struct=True, transpose_conv_wrapper=True, lstm_s8=True,
    c_probe="defined(REVERSE_TCOL_EFFICIENT_THRESHOLD)",
)
LEVEL_2024_01 = CmsisApi(
    level="2024.01", versions="the January 2024 CMSIS-NN snapshot (PyPI aidge-export-arm-cortexm 0.2.1)",
    conv_upscale_dims=False, conv_native_groups=False, mve_im2col_lanes=8, fc_kernel_sums_with_bias=False,
    fc_per_channel=False, conv_s16_bias_struct=False, transpose_conv_wrapper=False, lstm_s8=False,
    c_probe="defined(ARM_NNSUPPORTFUNCTIONS_H) && !defined(MAX_COL_COUNT)",
)
API_LEVELS: dict[str, CmsisApi] = {api.level: api for api in (LEVEL_2024_01, LEVEL_7)}
DEFAULT_API = LEVEL_7  # what users download from GitHub today
SNAPSHOT_API = LEVEL_2024_01  # the one this tool can fetch from PyPI


def level_named(name: str) -> CmsisApi | None:
    return API_LEVELS.get(name)


def level_with(capabilities: dict[str, bool | int]) -> CmsisApi | None:
    """The level whose capabilities are exactly these, if any."""
    for api in API_LEVELS.values():
        if api.capabilities() == capabilities:
            return api
    return None
