"""The command line: both argument forms, one-line errors, no partial files, deterministic output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "vibration" / "vibration_cnn.onnx"
CALIB = ROOT / "examples" / "vibration" / "calibration.npy"


# For tests of the command's plumbing (files, folders, argument forms), not of quantization: the
# searches that measure candidates on the samples are what makes the example's conversion take seconds.
FAST = ("--dense-weights", "per-tensor", "--no-bias-correction")


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "onnx2cmsis.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


def test_convert_writes_c_h_json(tmp_path):
    r = run_cli("convert", str(MODEL), "--calibration", str(CALIB), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["vibration_cnn.c", "vibration_cnn.cmake", "vibration_cnn.h", "vibration_cnn.json", "vibration_cnn.md", "vibration_cnn.mk", "vibration_cnn_memory.svg"]
    umask = os.umask(0o022)
    os.umask(umask)
    for p in tmp_path.iterdir():  # like any file the user writes, not mkstemp's private 0600
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, (p, oct(p.stat().st_mode))
    header = (tmp_path / "vibration_cnn.h").read_text()
    for define in ("INPUT_SIZE 384", "OUTPUT_SIZE 4", "INPUT_SCALE", "INPUT_ZERO_POINT", "OUTPUT_SCALE",
                   "OUTPUT_ZERO_POINT -128", "ARENA_SIZE"):
        assert f"#define VIBRATION_CNN_{define}" in header
    assert "int vibration_cnn_invoke(const vibration_cnn_input_t *input, vibration_cnn_output_t *output);" in header
    assert "typedef int8_t vibration_cnn_input_t;" in header
    assert 'extern "C"' in header and "#ifndef VIBRATION_CNN_H" in header
    sha = __import__("hashlib").sha256(MODEL.read_bytes()).hexdigest()
    assert sha in header
    report = json.loads((tmp_path / "vibration_cnn.json").read_text())
    assert report["arena_bytes"] >= report["arena_lower_bound_bytes"] > 0
    assert report["input"]["shape"] == [1, 3, 128]
    assert "Source/ConvolutionFunctions/arm_convolve_s8.c" in report["cmsis_nn"]["sources"]
    assert sum(layer["weight_bytes"] for layer in report["layers"]) == report["weights_bytes"]


@pytest.mark.parametrize("umask", [0o077, 0o002])
def test_written_files_follow_the_users_umask(tmp_path, umask):
    r = subprocess.run([sys.executable, "-m", "onnx2cmsis.cli", "convert", str(MODEL), "-c", str(CALIB), "--out",
                        str(tmp_path), *FAST], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       preexec_fn=lambda: os.umask(umask))
    assert r.returncode == 0, r.stderr
    assert {p.stat().st_mode & 0o777 for p in tmp_path.iterdir()} == {0o666 & ~umask}


def test_a_missing_output_folder_is_created(tmp_path):
    out = tmp_path / "does" / "not" / "exist"
    r = run_cli("convert", str(MODEL), "-c", str(CALIB), "--out", str(out), *FAST)
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == ["vibration_cnn.c", "vibration_cnn.cmake", "vibration_cnn.h", "vibration_cnn.json", "vibration_cnn.md", "vibration_cnn.mk", "vibration_cnn_memory.svg"]


def test_original_positional_form(tmp_path):
    r = run_cli("convert", str(MODEL), "vib", str(tmp_path), "--calibration", str(CALIB), *FAST)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "vib.c").is_file() and "vib_invoke" in (tmp_path / "vib.h").read_text()


@pytest.mark.slow
@pytest.mark.heavy
def test_output_is_deterministic(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    for d in (a, b):
        assert run_cli("convert", str(MODEL), "-c", str(CALIB), "--out", str(d)).returncode == 0
    for suffix in (".c", ".h", ".json", ".mk", ".cmake", ".md", "_memory.svg"):
        assert (a / f"vibration_cnn{suffix}").read_bytes() == (b / f"vibration_cnn{suffix}").read_bytes()


def _unsupported_model(path: Path) -> None:
    node = helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3], pads=[1, 1])
    lstm = helper.make_node("Tan", ["c"], ["y"], name="weird_tan")
    graph = helper.make_graph(
        [node, lstm], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 16])],
        initializer=[numpy_helper.from_array(np.ones((4, 2, 3), np.float32), "w")],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing_model", "file not found"),
        ("garbage_model", "not a readable ONNX model"),
        ("unsupported_op", "node 'weird_tan' (Tan): operator Tan is not supported"),
        ("bad_name", "is not a valid C identifier"),
        ("bad_calibration_shape", "calibration data has shape"),
        ("no_calibration", "--calibration"),
    ],
)
def test_bad_input_gives_one_line_and_no_files(tmp_path, case, expect):
    out = tmp_path / "out"
    out.mkdir()
    model, calib, extra = str(MODEL), str(CALIB), []
    if case == "missing_model":
        model = str(tmp_path / "nope.onnx")
    elif case == "garbage_model":
        (tmp_path / "g.onnx").write_bytes(b"\x00\x01garbage" * 10)
        model = str(tmp_path / "g.onnx")
    elif case == "unsupported_op":
        _unsupported_model(tmp_path / "u.onnx")
        model = str(tmp_path / "u.onnx")
        np.save(tmp_path / "u.npy", np.zeros((4, 2, 16), np.float32))
        calib = str(tmp_path / "u.npy")
    elif case == "bad_name":
        extra = ["--name", "3-bad name"]
    elif case == "bad_calibration_shape":
        np.save(tmp_path / "c.npy", np.zeros((4, 128, 3), np.float32))
        calib = str(tmp_path / "c.npy")
    args = ["convert", model, "--out", str(out), *extra] + ([] if case == "no_calibration" else ["-c", calib])
    r = run_cli(*args)
    assert r.returncode != 0
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert expect in lines[0]
    assert "Traceback" not in r.stderr
    if out.is_dir():
        assert list(out.iterdir()) == []


@pytest.mark.parametrize("args, expect", [
    (["convert", "--no-such-option"], "No such option: --no-such-option"),
    (["convert"], "Missing argument 'MODEL'"),
    (["convert", str(MODEL), "-c", str(CALIB), "--flash-kb", "0"], "Invalid value for '--flash-kb'"),
    (["verify", str(MODEL), "-d", str(CALIB)], "--calibration samples are needed: the model is float"),
    # found by the command itself or the library, still usage errors
    (["convert", str(MODEL)], "--calibration samples are needed: the model is float"),
    (["convert", str(MODEL), "-c", str(CALIB), "--cmsis-nn-api", "6"], "--cmsis-nn-api '6' is not one of 2024.01, 7"),
    (["convert", str(MODEL), "-c", str(CALIB), "--name", "9lives"], "--name '9lives' is not a valid C identifier"),
    (["convert", str(MODEL), "-c", str(CALIB), "--calibration-method", "kl"], "--calibration-method 'kl' is not one"),
    (["verify", str(MODEL), "-c", str(CALIB), "-d", str(CALIB), "-t", "m3"], "unknown target 'm3'"),
])
def test_usage_errors_are_one_line_with_exit_2(args, expect, tmp_path):
    r = run_cli(*args, cwd=tmp_path)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert lines[0].startswith("onnx2cmsis: error: ") and expect in lines[0] and "--help" in lines[0]
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("level, kernel", [("7", "arm_fully_connected_per_channel_s8"),
                                           ("2024.01", "arm_convolve_1x1_s8_fast")])
@pytest.mark.slow
@pytest.mark.heavy
def test_dense_weights_per_channel_on_request(tmp_path, level, kernel):
    """--dense-weights per-channel: one scale per output feature; the per-channel CMSIS-NN kernel at
    level 7, the equivalent 1x1 convolution at 2024.01."""
    r = subprocess.run([sys.executable, "-m", "onnx2cmsis.cli", "convert", str(MODEL), "-c", str(CALIB), "--out",
                        str(tmp_path), "--cmsis-nn-api", level, "--dense-weights", "per-channel"],
                       capture_output=True, text=True, env={**{k: v for k, v in os.environ.items() if k != "CMSIS_NN_PATH"},
                                                            "PYTHONPATH": str(ROOT), "XDG_CACHE_HOME": str(tmp_path / "c")})
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "vibration_cnn.json").read_text())
    q = report["quantization"]
    assert (q["dense_weights"], q["search"]) == ("per-channel", None)
    assert {c["dense_weights"] for c in q["recipe"]["candidates"]} == {"per-channel"}  # pinned in every one
    chosen = q["recipe"]["chosen"]
    assert q["calibration_method"] == chosen["calibration_method"]
    assert q["bias_corrected_layers"] is None if not chosen["bias_correction"] else \
        0 <= q["bias_corrected_layers"] <= 5  # of the example's three convs and two dense layers
    dense = [layer for layer in report["layers"] if layer["op"] == "dense"]
    assert [(layer["kernel"], layer["weights"]) for layer in dense] == [(kernel, "per-channel")] * 2
    r = run_cli("convert", str(MODEL), "-c", str(CALIB), "--out", str(tmp_path), "--dense-weights", "per-row")
    assert r.returncode == 2 and "--dense-weights 'per-row' is not one of per-tensor, per-channel, auto" in r.stderr


def test_verify_names_data_of_the_wrong_shape_as_data(tmp_path):
    np.save(tmp_path / "x.npy", np.zeros((2, 128, 3), np.float32))  # (W, C): the ONNX model takes (C, W)
    r = run_cli("verify", str(MODEL), "-c", str(CALIB), "-d", str(tmp_path / "x.npy"))
    assert r.returncode == 1 and "x.npy: --data has shape (2, 128, 3), expected (N, 3, 128): each sample is the " \
        "model's input transposed" in r.stderr, r.stderr


def _dynamic_time_model(path: Path) -> None:
    """A PyTorch-style export with dynamic_axes on batch and time."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((4, 3, 3)).astype(np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3]),
             helper.make_node("GlobalAveragePool", ["c"], ["y"])]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "time"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    m = helper.make_model(helper.make_graph(nodes, "g", [x], [y], initializer=[w]),
                          opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))


def test_dynamic_time_axis_is_fixed_with_input_shape(tmp_path):
    model, calib = tmp_path / "dyn.onnx", tmp_path / "cal.npy"
    _dynamic_time_model(model)
    np.save(calib, np.random.default_rng(1).standard_normal((16, 3, 64)).astype(np.float32))
    refused = run_cli("convert", str(model), "-c", str(calib), "-o", str(tmp_path / "a"))
    assert refused.returncode == 1
    assert "input 'x' has a dynamic dimension 'time'" in refused.stderr and "--input-shape 3,LENGTH" in refused.stderr
    ok = run_cli("convert", str(model), "-c", str(calib), "-o", str(tmp_path / "b"), "--input-shape", "3,64")
    assert ok.returncode == 0, ok.stderr
    assert "#define DYN_INPUT_SIZE 192" in (tmp_path / "b" / "dyn.h").read_text()
    clash = run_cli("convert", str(model), "-c", str(calib), "-o", str(tmp_path / "c"), "--input-shape", "4,64")
    assert clash.returncode == 2 and "--input-shape 4,64 does not fit input 'x' of shape [N, 3, time]" in clash.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "c").exists()


@pytest.mark.slow
@pytest.mark.heavy
def test_quiet_and_verbose(tmp_path):
    plain = run_cli("convert", str(MODEL), "-c", str(CALIB), "-o", str(tmp_path / "a"))
    assert plain.returncode == 0 and "onnx2cmsis: calibrating" not in plain.stderr  # not a terminal: no steps
    quiet = run_cli("convert", str(MODEL), "-c", str(CALIB), "-o", str(tmp_path / "b"), "-q")
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""
    assert (tmp_path / "b" / "vibration_cnn.c").is_file()
    loud = run_cli("convert", str(MODEL), "-c", str(CALIB), "-o", str(tmp_path / "c"), "-v")
    steps = [line for line in loud.stderr.splitlines() if line.startswith("onnx2cmsis: ")]
    assert loud.returncode == 0 and steps[0] == "onnx2cmsis: reading vibration_cnn.onnx ..."
    assert any(s.startswith("onnx2cmsis: calibrating on") for s in steps) and loud.stdout == plain.stdout.replace(
        str(tmp_path / "a"), str(tmp_path / "c"))


@pytest.mark.parametrize("command", [["convert"], ["verify"], ["inspect"], ["cmsis-nn", "fetch"],
                                     ["cmsis-nn", "path"]])
def test_help_shows_an_example_and_plain_placeholders(command):
    """Help a person reads: usage with the metavars as written (no typer {MODEL} braces or <path>
    type tags), an example, and extras such as [keras] not eaten by markup."""
    r = run_cli(*command, "--help")
    assert r.returncode == 0, r.stderr
    usage = r.stdout.splitlines()[0]
    assert usage.startswith(f"Usage: onnx2cmsis {' '.join(command)} [OPTIONS]")
    assert "{" not in usage and not any(tag in r.stdout for tag in ("<path>", "<str>", "<bool>", "<int>"))
    assert "Example" in r.stdout
    if command[0] in ("convert", "verify", "inspect"):
        assert "MODEL" in usage.split()
        assert "[required]" in r.stdout.split("Arguments:")[1].split("Options:")[0]
    if command == ["convert"]:
        assert usage.endswith("MODEL [NAME] [OUTDIR]") and "[keras]" in r.stdout



@pytest.mark.parametrize("command", [[], ["convert"], ["cmsis-nn", "fetch"]])
def test_dash_h_is_help_too(command):
    """`onnx2cmsis -h` was refused as an unknown option while --help worked."""
    from typer.testing import CliRunner

    from onnx2cmsis.cli import app

    short, long = (CliRunner().invoke(app, [*command, flag], prog_name="onnx2cmsis") for flag in ("-h", "--help"))
    assert short.exit_code == long.exit_code == 0, short.output
    assert short.output == long.output and short.output.startswith("Usage: onnx2cmsis")


@pytest.mark.slow
@pytest.mark.heavy
def test_a_terminal_sees_each_step_finish_with_its_duration(tmp_path):
    """On a terminal (stderr a pty) a spinner runs and every finished step stays as a line with its
    duration; the result on stdout is what a pipe gets."""
    import pty
    import re

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "onnx2cmsis.cli", "convert", str(MODEL), "-c", str(CALIB), "-o",
                             str(tmp_path)], stdout=subprocess.PIPE, stderr=slave,
                            env={**os.environ, "PYTHONPATH": str(ROOT), "TERM": "xterm"})
    os.close(slave)
    said = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        said += chunk
    os.close(master)
    stdout = proc.stdout.read().decode()
    assert proc.wait() == 0
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", said.decode(errors="replace"))
    done = re.findall(r"done (.+?) \((\d+\.\d) s\)", text)
    assert [step for step, _ in done][:1] == ["reading vibration_cnn.onnx"], text[-2000:]
    assert any(step.startswith("calibrating on") for step, _ in done) and "writing the C" in done[-1][0]
    assert stdout.startswith("vibration_cnn.onnx -> ") and "error" not in text
