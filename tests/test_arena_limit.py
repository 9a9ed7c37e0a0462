"""--precision auto with an arena limit (--max-arena): the RAM a firmware has decides the widths.

Alone, the limit asks for the most accurate widths that fit; with --max-error, for the cheapest that
meets it within the limit. The arenas and SQNRs asserted here are measured again from the outputs
(the memory plan convert writes, ONNX Runtime against the integer reference), not read back from
the chooser's own figures alone.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from onnx2cmsis.api import convert
from onnx2cmsis.errors import ConversionError, OptionError
from onnx2cmsis.options import ConvertOptions
from tests.test_cli import run_cli
from tests.test_mixed_precision import _calibration_sqnr, _vibration_uniform_widths

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vibration"


@pytest.mark.parametrize("settings, expect", [
    ({"max_arena_bytes": 4096}, "max_arena_bytes is the arena precision='auto' chooses the widths to fit"),
    ({"precision": "int16", "max_arena_bytes": 4096}, "give it with precision='auto'"),
    ({"precision": "auto", "max_arena_bytes": 0}, "a number of bytes above 0"),
    ({"precision": "auto"}, "needs a budget to choose the widths for"),
])
def test_arena_limit_options_are_checked(settings, expect):
    with pytest.raises(OptionError, match=expect):
        ConvertOptions(**settings).checked()


def test_an_arena_limit_alone_is_a_budget():
    ConvertOptions(precision="auto", max_arena_bytes=4096).checked()
    ConvertOptions(precision="auto", max_arena_bytes=4096, max_error_db=30.0).checked()


@pytest.mark.slow
def test_auto_gives_the_most_accurate_widths_that_fit_the_arena():
    """vibration_keras, limited to halfway between all-int8's and all-int16's arenas: the plan fits the
    limit, and the widths score clearly above all-int8 on the calibration samples (measured here,
    ONNX Runtime against the integer reference); NAME.json and NAME.md say what was asked."""
    model, calibration, figures = _vibration_uniform_widths()
    small, large = figures["int8"]["arena_bytes"], figures["int16"]["arena_bytes"]
    limit = (small + large) // 2
    assert small < limit < large
    auto = convert(model, calibration, name="vkl", precision="auto", max_arena_bytes=limit)
    assert auto.plan.arena_bytes <= limit
    int8 = convert(model, calibration, name="vk8")
    assert _calibration_sqnr(auto, calibration) > _calibration_sqnr(int8, calibration) + 3.0
    bits = [layer["bits"] for layer in auto.report["layers"]]
    assert 8 in bits and 16 in bits
    report = auto.report["quantization"]["auto_precision"]
    assert report["max_arena_bytes"] == limit and report["min_sqnr_db"] is None
    assert report["chosen"]["arena_bytes"] == auto.plan.arena_bytes
    assert f"the most accurate measured within an arena of at most {limit} B" in auto.pages["vkl.md"]


@pytest.mark.slow
def test_an_arena_limit_bounds_an_error_budget_or_refuses_it():
    """With --max-error as well: a budget all-int8 meets gives all-int8's arena under a generous
    limit; a budget only wide layers meet, within all-int8's arena, is refused naming both limits,
    what the arena allows and what all-int16 needs; a limit below all-int8's arena is refused."""
    model, calibration, figures = _vibration_uniform_widths()
    small, large = figures["int8"]["arena_bytes"], figures["int16"]["arena_bytes"]
    low = figures["int8"]["heldout_low_sqnr_db"] - 3.0
    easy = convert(model, calibration, name="vke", precision="auto", max_error_db=round(low, 1),
                   max_arena_bytes=(small + large) // 2)
    assert easy.plan.arena_bytes == small
    hard = round(figures["int16"]["sqnr_db"] - 1.0, 1)
    with pytest.raises(ConversionError, match=rf"no per-layer precision reaches an output SQNR of {hard:g} dB within "
                                              rf"an arena of at most {small:,} B .*all-int16 .* at {large:,} B "
                                              r"\(raise max_arena_bytes or lower max_error_db\)"):
        convert(model, calibration, name="vkh", precision="auto", max_error_db=hard, max_arena_bytes=small)
    with pytest.raises(ConversionError, match=rf"no per-layer precision fits an arena of {small - 1:,} B.*"
                                              rf"all-int8 {small:,} B"):
        convert(model, calibration, name="vks", precision="auto", max_arena_bytes=small - 1)


@pytest.mark.slow
@pytest.mark.heavy
def test_cli_max_arena_names_its_flag(tmp_path):
    """--max-arena on the command line: the arena in NAME.json fits it; a limit nothing fits exits 1
    with one line naming --max-arena, and writes no file; without --precision auto it exits 2."""
    calibration = np.load(EXAMPLE / "calibration.npy")[:64]
    np.save(tmp_path / "c.npy", calibration)
    model = str(EXAMPLE / "vibration_cnn.onnx")
    args = ("convert", model, "-c", str(tmp_path / "c.npy"))
    ok = run_cli(*args, "--precision", "auto", "--max-arena", "100000", "-o", str(tmp_path / "ok"))
    assert ok.returncode == 0, ok.stderr
    report = json.loads((tmp_path / "ok" / "vibration_cnn.json").read_text())
    assert report["quantization"]["auto_precision"]["max_arena_bytes"] == 100000
    assert report["arena_bytes"] <= 100000
    tight = run_cli(*args, "--precision", "auto", "--max-arena", "16", "-o", str(tmp_path / "tight"))
    assert tight.returncode == 1 and "raise --max-arena" in tight.stderr, tight.stderr
    assert len(tight.stderr.strip().splitlines()) == 1 and not (tmp_path / "tight").exists()
    alone = run_cli(*args, "--max-arena", "4096", "-o", str(tmp_path / "alone"))
    assert alone.returncode == 2 and "--max-arena is the arena --precision auto chooses" in alone.stderr, alone.stderr
