"""Transposed convolutions (issue 31): ONNX ConvTranspose and Keras Conv1DTranspose with TFLite
TRANSPOSE_CONV's arithmetic (ops/conv_transpose.py: two CMSIS-NN paths at level 7, an own loop
elsewhere). The op sweep (test_op_sweeps.py, family conv_transpose) checks C == reference ==
tflite-micro on 200 random cases; here: each kernel path at every level, trained denoisers
(tests/decoder_models: PyTorch's two exporters, a Keras U-Net with skips), the 2-D-written form,
streaming, and the refusals."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import helper, numpy_helper

from onnx2cmsis.api import convert
from onnx2cmsis.errors import UnsupportedOpError
from onnx2cmsis.quant.quantize import dequantized_outputs
from onnx2cmsis.tuning.search import float_outputs
from tests.bit_exact import bit_exact_everywhere
from tests.needs import module
from tests.onnx_models import save_one_input_model

FIXTURES = Path(__file__).resolve().parent / "decoder_models"


def _save(tmp_path, name: str, nodes: list, shape: list[int], inits: list) -> str:
    return save_one_input_model(tmp_path / f"{name}.onnx", nodes, shape, inits)


def _sqnr(conv, x) -> float:
    want = float_outputs(conv.model, x).reshape(len(x), -1)
    got = dequantized_outputs(conv.graph, conv.registry, x).reshape(len(x), -1)
    return float(10 * np.log10(np.sum(want**2) / np.sum((got - want) ** 2)))


@pytest.mark.parametrize("form", ["1d", "unit_h"])
def test_a_decoder_step_is_exact_and_close_to_float_in_both_forms(tmp_path, form):
    """k3, stride 2, pads [1, 1], output_padding 1 (PyTorch's doubling step): the C of the (N, C, 1, T)
    form is the (N, C, T) form's, and both stay close to ONNX Runtime's float output."""
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((6, 4, 3)) / 3).astype(np.float32)
    b = (rng.standard_normal(4) / 10).astype(np.float32)
    convs, samples = {}, rng.standard_normal((48, 6, 20)).astype(np.float32)
    for f in ("1d", form):
        attrs = ({"kernel_shape": [3], "strides": [2], "pads": [1, 1], "output_padding": [1]} if f == "1d" else
                 {"kernel_shape": [1, 3], "strides": [1, 2], "pads": [0, 1, 0, 1], "output_padding": [0, 1]})
        kernel = w if f == "1d" else w[:, :, None, :]
        shape = [1, 6, 20] if f == "1d" else [1, 6, 1, 20]
        path = _save(tmp_path, f, [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)], shape,
                     [numpy_helper.from_array(kernel, "w"), numpy_helper.from_array(b, "b")])
        x = samples.reshape(48, *shape[1:])
        convs[f] = convert(path, x[:32], name="dec")
        assert [layer["op"] for layer in convs[f].report["layers"]][1] == "convtr1d"
        assert convs[f].graph.tensors[convs[f].graph.outputs[0]].size == 4 * 40
        assert _sqnr(convs[f], x[32:]) > 30.0
    from tests.test_two_d_written import _code

    assert _code(convs[form].source) == _code(convs["1d"].source)  # comments name the file and its shape
    assert convs[form].report["arena_bytes"] == convs["1d"].report["arena_bytes"]


@pytest.mark.parametrize("auto_pad", ["SAME_UPPER", "SAME_LOWER"])
@pytest.mark.parametrize("k, stride, extra, w_in", [(3, 4, 3, 3), (5, 2, 1, 21), (4, 2, 1, 5), (2, 4, 1, 5)])
def test_same_padding_with_output_padding_gives_onnx_runtimes_width(tmp_path, auto_pad, k, stride, extra, w_in):
    """ONNX's shape inference makes a SAME ConvTranspose with output_padding `extra` columns wider
    than ONNX Runtime computes (input x stride, as the operator's text says): the graph follows ONNX
    Runtime, column for column, so the C computes what the float model does. (With a stride wider than
    the kernel, (2, 4, 1, 5), ONNX Runtime pads nothing: fewer columns than input x stride.)"""
    rng = np.random.default_rng(k * 100 + stride)
    w = (rng.standard_normal((3, 4, k)) / 3).astype(np.float32)
    b = (rng.standard_normal(4) / 10).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w", "b"], ["h"], auto_pad=auto_pad, kernel_shape=[k],
                            strides=[stride], output_padding=[extra])
    path = _save(tmp_path, "same", [node, helper.make_node("Relu", ["h"], ["y"])], [1, 3, w_in],
                 [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    x = rng.standard_normal((64, 3, w_in)).astype(np.float32)
    conv = convert(path, x[:40], name="same", calibration_method="minmax", dense_weights="per-channel",
                   bias_correction=False)
    assert conv.graph.tensors[conv.graph.outputs[0]].size == 4 * min(w_in * stride, stride * (w_in - 1) + k + extra)
    assert _sqnr(conv, x[40:]) > 25.0  # int8 noise; a column off would leave next to nothing


def _denoising_checked(conv, x: np.ndarray, clean: np.ndarray, tmp_path, qemu_samples: int) -> tuple[float, float]:
    """C == reference == tflite-micro on the host for 16 samples and on QEMU M4 and M55 for a few; on
    all of `x`, the reference (the C's bytes) removes as much noise as the float model does. Returns
    (SQNR against the float model, dB of noise removed by the float model less by ours)."""
    from tests.decoder_models.make_decoders import snr_db

    bit_exact_everywhere(conv, x[:16], tmp_path, qemu_samples=qemu_samples)
    want = float_outputs(conv.model, x).reshape(clean.shape)
    got = dequantized_outputs(conv.graph, conv.registry, x).reshape(clean.shape)
    assert snr_db(want, clean) > snr_db(x, clean) + 5.0  # the float model denoises: trained, not random
    return snr_db(got, want), snr_db(want, clean) - snr_db(got, clean)


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.oracle
@pytest.mark.level
@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_a_trained_pytorch_denoiser_is_bit_exact_and_removes_the_noise_the_float_model_does(tmp_path, exporter):
    """tests/decoder_models: Conv1d stride 2 twice, then ConvTranspose1d (k3, stride 2, padding 1,
    output_padding 1) and (k5, stride 2, padding 2, output_padding 1), trained to denoise, exported
    by each of PyTorch's exporters. int8 and int16: bit-exact everywhere, and on 200 held-out samples
    within 0.1 dB of the float model's noise removal (about 6 dB)."""
    from tests.decoder_models.make_decoders import channel_major, denoising

    noisy, clean = (channel_major(a) for a in denoising(48 + 200, seed=3))
    for precision, floor_db in (("int8", 32.0), ("int16", 38.0)):
        conv = convert(FIXTURES / f"torch_ae_{exporter}.onnx", noisy[:48], name=f"ae_{exporter}_{precision}",
                       precision=precision)
        layers = conv.report["layers"]
        assert [layer["op"] for layer in layers].count("convtr1d") == 2
        assert "lut" not in [layer["op"] for layer in layers]  # each ReLU fused into its conv
        if precision == "int8" and conv.report["cmsis_nn"]["capabilities"]["transpose_conv_wrapper"]:
            # level 7: 32 input channels at stride 2 -> the filter reversed in flash; 16 -> the wrapper
            assert [layer["kernel"] for layer in layers if layer["op"] == "convtr1d"] == [
                "arm_convolve_s8", "arm_transpose_conv_s8"]
        sqnr, lost = _denoising_checked(conv, noisy[48:], clean[48:], tmp_path / precision, qemu_samples=3)
        assert sqnr > floor_db and lost < 0.1, (precision, sqnr, lost)


@pytest.mark.slow
@pytest.mark.keras
@pytest.mark.qemu
@pytest.mark.oracle
@pytest.mark.level
def test_a_trained_keras_unet_with_skip_concatenations_is_bit_exact_and_denoises(tmp_path):
    """tests/decoder_models/keras_unet.h5: two Conv1DTranspose (k4, stride 2, same) each concatenated
    with the encoder's map of its width. int8 and int16 as above."""
    from tests.decoder_models.make_decoders import denoising

    module("keras", 'pip install -e ".[keras]"')
    noisy, clean = denoising(48 + 200, seed=3)
    for precision, floor_db in (("int8", 32.0), ("int16", 38.0)):
        conv = convert(FIXTURES / "keras_unet.h5", noisy[:48], name=f"unet_{precision}", precision=precision)
        ops = [layer["op"] for layer in conv.report["layers"]]
        assert ops.count("convtr1d") == 2 and ops.count("concat") == 2
        sqnr, lost = _denoising_checked(conv, noisy[48:], clean[48:], tmp_path / precision, qemu_samples=2)
        assert sqnr > floor_db and lost < 0.1, (precision, sqnr, lost)


@pytest.mark.slow
@pytest.mark.keras
def test_keras_conv1d_transpose_same_and_valid_are_exact(tmp_path):
    keras = module("keras", 'pip install -e ".[keras]"')
    L = keras.layers
    keras.utils.set_random_seed(2)
    i = keras.Input((32, 3))
    x = L.Conv1D(8, 3, strides=2, padding="same", activation="relu")(i)
    x = L.Conv1DTranspose(6, 4, strides=2, padding="same", activation="relu", name="up_same")(x)
    x = L.Conv1DTranspose(4, 3, strides=2, padding="valid", name="up_valid")(x)
    keras.Model(i, L.Conv1D(2, 3, padding="same")(x)).save(tmp_path / "unet_step.h5")
    x = np.random.default_rng(2).standard_normal((48, 32, 3)).astype(np.float32)
    conv = convert(tmp_path / "unet_step.h5", x[:32], name="unet_step")
    assert [layer["op"] for layer in conv.report["layers"]] == ["conv1d", "convtr1d", "convtr1d", "conv1d"]
    bit_exact_everywhere(conv, x[32:], tmp_path, qemu_samples=2)
    assert _sqnr(conv, x[32:]) > 30.0


def test_a_transposed_conv_starts_a_streams_head_and_the_stream_is_exact(tmp_path):
    from tests.test_streaming import _check_host

    rng = np.random.default_rng(4)
    w1 = (rng.standard_normal((6, 4, 3)) / 3).astype(np.float32)
    w2 = (rng.standard_normal((6, 6, 4)) / 4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c"], kernel_shape=[3], pads=[1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("ConvTranspose", ["r", "w2"], ["y"], kernel_shape=[4], strides=[2], pads=[1, 1])]
    path = _save(tmp_path, "stream", nodes, [1, 4, 32], [numpy_helper.from_array(w1, "w1"),
                                                         numpy_helper.from_array(w2, "w2")])
    conv = convert(path, rng.standard_normal((32, 4, 32)).astype(np.float32), name="tr_stream", streaming=8)
    assert "convtr1d) starts the head" in conv.report["stream"]["head"]
    _check_host(conv, 8, seed=5, tmp=tmp_path / "host")


@pytest.mark.parametrize("attrs, why", [({"group": 2}, "group=2"), ({"dilations": [2]}, "dilation=2")])
def test_grouped_and_dilated_transposed_convs_are_refused_naming_the_node(tmp_path, attrs, why):
    groups = attrs.get("group", 1)
    w = np.ones((4, 6 // groups, 3), np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[3], strides=[2], name="up", **attrs)
    path = _save(tmp_path, "refused", [node], [1, 4, 16], [numpy_helper.from_array(w, "w")])
    with pytest.raises(UnsupportedOpError, match=rf"'up'.*{why}"):
        convert(path, np.zeros((4, 4, 16), np.float32))


@pytest.mark.slow
@pytest.mark.qemu
@pytest.mark.oracle
@pytest.mark.level
def test_each_kernel_path_is_taken_where_it_is_exact_and_is_bit_exact_on_the_host_and_qemu(tmp_path):
    """Level 7: more than 16 input channels at stride <= 2 -> arm_convolve_s8 over the upscaled input
    with the filter reversed in flash; an output inside arm_transpose_conv_s8's row buffer -> that
    kernel (kernel shorter than the stride here, where its own size function falls short); an output
    past the buffer (output_padding beyond the last tap) -> the own loop. Level 2024.01: the own loop
    throughout. Each C == reference == tflite-micro on the host and the same on QEMU M4 and M55."""
    cases = [  # (c_in, c_out, k, stride, pads, output_padding, kernel at level 7)
        (24, 8, 4, 2, [1, 1], 0, "arm_convolve_s8"),
        (20, 6, 3, 1, [1, 1], 0, "arm_convolve_s8"),
        (8, 6, 2, 3, [0, 0], 0, "arm_transpose_conv_s8"),
        (6, 4, 5, 2, [3, 1], 1, "arm_transpose_conv_s8"),
        (6, 4, 3, 2, [0, 0], 1, "own loop"),
    ]
    rng = np.random.default_rng(7)
    for i, (c_in, c_out, k, stride, pads, out_pad, kernel) in enumerate(cases):
        w = (rng.standard_normal((c_in, c_out, k)) / np.sqrt(c_in)).astype(np.float32)
        b = (rng.standard_normal(c_out) / 10).astype(np.float32)
        attrs = {"kernel_shape": [k], "strides": [stride], "pads": pads, **({"output_padding": [out_pad]} if out_pad else {})}
        path = _save(tmp_path, f"path{i}", [helper.make_node("ConvTranspose", ["x", "w", "b"], ["y"], **attrs)],
                     [1, c_in, 12], [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
        x = rng.standard_normal((40, c_in, 12)).astype(np.float32)
        conv = convert(path, x[:32], name=f"path{i}")
        used = next(layer["kernel"] for layer in conv.report["layers"] if layer["op"] == "convtr1d")
        level_7 = conv.report["cmsis_nn"]["capabilities"]["transpose_conv_wrapper"]
        assert used == (kernel if level_7 else "own loop"), (i, used)
        bit_exact_everywhere(conv, x[32:], tmp_path / f"p{i}", qemu_samples=3)
        assert _sqnr(conv, x[32:]) > 20.0  # the float model's numbers (a misplaced column gives about 0 dB)


@pytest.mark.parametrize("width", [30, 31, 32])
def test_output_shape_places_the_odd_padding_column_as_onnx_says(tmp_path, width):
    """With `output_shape`, ONNX puts the odd column of padding at the beginning (SAME_UPPER aside):
    one column off and the output no longer tracks ONNX Runtime's."""
    rng = np.random.default_rng(width)
    w = (rng.standard_normal((4, 5, 4)) / 2).astype(np.float32)
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], kernel_shape=[4], strides=[2], output_shape=[width])
    path = _save(tmp_path, f"shape{width}", [node], [1, 4, 16], [numpy_helper.from_array(w, "w")])
    x = rng.standard_normal((40, 4, 16)).astype(np.float32)
    conv = convert(path, x[:32], name="shaped")
    assert conv.graph.tensors[conv.graph.outputs[0]].size == 5 * width
    assert _sqnr(conv, x[32:]) > 30.0
