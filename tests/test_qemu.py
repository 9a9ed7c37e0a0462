"""Bit-exactness on the real instruction sets: the op zoo and whole models cross-compiled for
Cortex-M0 (Armv6-M), M4 and M7 (DSP) and M55 (MVE), run on QEMU, compared byte for byte with the
integer reference (which the sweeps tie to tflite-micro).

CI runs 30 random models per sweep family (360 op models); ONNX2CMSIS_QEMU_PER_FAMILY=200 runs
the full sweeps (2,400 op models) on every target (about 13 minutes on 2 cores when every model was
compiled alone; an image's models are now one translation unit). The whole models and
the MVE-rule convs carry the `level` marker: CI runs them against every CMSIS-NN tree."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from onnx2cmsis.api import convert
from onnx2cmsis.drivers.stream_check import stream_run
from onnx2cmsis.drivers.verification import verify
from onnx2cmsis.errors import OptionError
from onnx2cmsis.targets.catalog import TARGET_NAMES, target_named
from onnx2cmsis.targets.interface import Built, Target
from onnx2cmsis.targets.qemu import TARGETS, DoesNotFit, build_firmware, run_firmware
from tests.keras_models import input_window, keras_fixtures
from tests.needs import module, qemu_tools
from tests.zoo import make_op_zoo

pytestmark = [pytest.mark.slow, pytest.mark.qemu]
ROOT = Path(__file__).resolve().parents[1]
SAMPLES = 6
PER_FAMILY = int(os.environ.get("ONNX2CMSIS_QEMU_PER_FAMILY", "30"))
# models too big for a board even alone (the micro:bit has 16 KB of RAM), by name
MAY_NOT_FIT: dict[str, set[str]] = {}


def _with_inputs(convs: list, seed: int) -> tuple[list, dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    inputs = {}
    for c in convs:
        x = rng.integers(-128, 128, (SAMPLES, c.graph.tensors[c.graph.inputs[0]].size)).astype(np.int8)
        x[0], x[1] = -128, 127
        inputs[c.name] = x
    return convs, inputs


@pytest.fixture(scope="module")
def op_zoo(tmp_path_factory):
    qemu_tools()
    return _with_inputs(make_op_zoo(tmp_path_factory.mktemp("qemu_zoo"), per_family=PER_FAMILY), 5)


@pytest.fixture(scope="module")
def whole_models(tmp_path_factory):
    qemu_tools()
    folder = tmp_path_factory.mktemp("qemu_models")
    return _with_inputs(_mve_rule_convs(folder) + _whole_models(folder), 6)


def _mve_rule_convs(folder: Path) -> list:
    """Causal and strided convs with C_in % 4 == 0: on MVE the 1xN kernel is only right for stride 1
    with TFLite's pad split, so the generated C must never take it for these (it calls
    arm_convolve_s8 directly, never the wrapper that would pick it)."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.onnx_models import make_model

    rng, convs = np.random.default_rng(9), []
    for i, (c_in, k, stride, pads) in enumerate([(4, 3, 1, [2, 0]), (8, 5, 1, [4, 0]), (4, 3, 2, [1, 1]),
                                                  (8, 4, 2, [1, 2]), (12, 3, 3, [0, 0]), (4, 7, 1, [6, 0])]):
        w = numpy_helper.from_array((rng.standard_normal((6, c_in, k)) / np.sqrt(c_in * k)).astype(np.float32), "w")
        node = helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[k], strides=[stride], pads=pads)
        x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c_in, 40])
        y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
        path = folder / f"mve_rule{i}.onnx"
        import onnx

        onnx.save(make_model([node], [x], [y], [w]), str(path))
        conv = convert(path, rng.standard_normal((32, c_in, 40)).astype(np.float32), name=f"mve_rule{i}")
        assert [layer["kernel"] for layer in conv.report["layers"] if layer["op"] == "conv1d"] == ["arm_convolve_s8"]
        assert "arm_convolve_wrapper_s8" not in conv.source and "arm_convolve_1_x_n_s8" not in conv.source
        convs.append(conv)
    return convs


def _whole_models(folder: Path) -> list:
    """The bundled examples, the PyTorch exports and the Keras fixtures (when their extras exist)."""
    example = ROOT / "examples" / "vibration"
    convs = [convert(example / "vibration_cnn.onnx", example / "calibration.npy")]
    rng = np.random.default_rng(6)
    module("torch", 'pip install -e ".[test]"')
    from tests.torch_models import EXPORTS, export_torch

    for name in EXPORTS:
        path, shape = export_torch(name, folder)
        convs.append(convert(path, rng.standard_normal((64, *shape)).astype(np.float32), name=f"torch_{name}"))
    module("keras", 'pip install -e ".[keras]"')
    keras_example = ROOT / "examples" / "vibration_keras"
    convs.append(convert(keras_example / "vibration_cnn.h5", keras_example / "calibration.npy", name="vibration_keras"))
    for path in keras_fixtures():
        steps, channels = input_window(path)
        calib = rng.standard_normal((64, steps, channels)).astype(np.float32)
        convs.append(convert(path, calib, name=f"keras_{path.stem}"))
    return convs


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_op_zoo_runs_bit_exact_on_qemu(op_zoo, target, tmp_path):
    _run_bit_exact(*op_zoo, target, tmp_path)


@pytest.mark.level
@pytest.mark.parametrize("target", sorted(TARGETS))
def test_whole_models_run_bit_exact_on_qemu(whole_models, target, tmp_path):
    _run_bit_exact(*whole_models, target, tmp_path)


def _run_bit_exact(convs: list, inputs: dict[str, np.ndarray], target: str, tmp_path: Path) -> None:
    # The micro:bit has 16 KB of RAM: build in groups so each image fits, and say what did not.
    size = 12 if target == "m0plus" else 150
    groups = [convs[i:i + size] for i in range(0, len(convs), size)]
    checked, skipped = 0, []
    while groups:
        group = groups.pop(0)
        try:
            fw = build_firmware(group, target, tmp_path / f"group{len(groups)}_{group[0].name}")
        except DoesNotFit:
            if len(group) > 1:  # one model alone may still fit
                groups += [[c] for c in group]
            else:
                skipped.append(group[0].name)
            continue
        outputs = run_firmware(fw, {c.name: inputs[c.name] for c in group})
        for c in group:
            want = np.stack([c.reference(x) for x in inputs[c.name]])
            assert np.array_equal(outputs[c.name], want), f"{target}: {c.name} differs from the reference"
            checked += 1
    print(f"{target}: {checked} models x {SAMPLES} inputs bit-exact on QEMU {TARGETS[target].machine}"
          + (f"; did not fit: {skipped}" if skipped else ""))
    assert checked + len(skipped) == len(convs)
    # each model that fits the board is checked; the ones that cannot (tried alone) are named here, so
    # a model that stops fitting fails instead of shrinking what is checked
    unexpected = sorted(set(skipped) - MAY_NOT_FIT.get(target, set()))
    assert not unexpected, f"{target}: {unexpected} do not fit QEMU {TARGETS[target].machine} even alone"


def test_every_target_name_gives_one_interface_and_host_and_a_board_agree_through_it(tmp_path):
    """verify drives every target through targets.interface alone: each name gives a Target, and the
    host and a board, built and run by the same calls, give the same bytes (invoke and every push);
    the board measures what the host cannot, and the host says None rather than a guess."""
    qemu_tools()
    assert TARGET_NAMES == ("host", *TARGETS)
    assert all(isinstance(target_named(name), Target) and target_named(name).name == name for name in TARGET_NAMES)
    with pytest.raises(OptionError, match="unknown targets 'm3'"):
        target_named("m3")
    example = ROOT / "examples" / "vibration"
    conv = convert(example / "vibration_cnn.onnx", example / "calibration.npy", streaming=16)
    xq = np.random.default_rng(3).integers(-128, 128, (4, conv.graph.tensors[conv.graph.inputs[0]].size), np.int8)
    stream = stream_run(conv, xq, min_outputs=6)
    ran = {}
    for name in ("host", "m0plus"):
        built = target_named(name).build(conv, tmp_path / name, stream=True)
        assert isinstance(built, Built)
        ran[name] = built.run(xq, stream.pushes())
    host, board = ran["host"], ran["m0plus"]
    assert np.array_equal(host.outputs, np.stack([conv.reference(x) for x in xq]))
    assert np.array_equal(board.outputs, host.outputs)
    ready = [k for k, status in enumerate(board.push_statuses) if status == 1]
    assert board.push_statuses == host.push_statuses and ready == stream.ready
    assert np.array_equal(board.pushed, stream.want) and np.array_equal(host.pushed, stream.want)
    assert host.counts == type(host.counts)()  # every figure None
    counts = board.counts
    assert counts.instructions.shape == counts.stack_bytes.shape == (len(xq),)
    assert counts.push_instructions.shape == (len(stream.pushes()),)
    assert np.all(counts.instructions > 10_000) and np.all(counts.stack_bytes > 64)
    assert counts.flash_bytes > conv.report["weights_bytes"] and counts.ram_bytes >= conv.plan.arena_bytes


def test_a_model_too_big_for_a_board_is_skipped_there_and_says_which(tmp_path):
    """310 KB of weights cannot fit the micro:bit's 256 KB of flash: the target raises DoesNotFit,
    which verify reports as that board's skip (not a failure of the run)."""
    from onnx import TensorProto, helper, numpy_helper

    from tests.onnx_models import make_model
    import onnx

    qemu_tools()
    rng = np.random.default_rng(1)
    w = numpy_helper.from_array((rng.standard_normal((1200, 256)) / 30).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1200])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    onnx.save(make_model([helper.make_node("Gemm", ["x", "w"], ["y"])], [x], [y], [w]), str(tmp_path / "big.onnx"))
    conv = convert(tmp_path / "big.onnx", rng.standard_normal((16, 1200)).astype(np.float32), name="big")
    with pytest.raises(DoesNotFit):
        target_named("m0plus").build(conv, tmp_path / "direct")
    (result,) = verify(conv, rng.standard_normal((2, 1200)).astype(np.float32), ["m0plus"], workdir=tmp_path).results
    assert result.skipped == "does not fit microbit's memory" and not result.bit_exact
