"""One options object for the API and both commands: validated in one place, every problem at once."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer

from onnx2cmsis.api import convert
from onnx2cmsis.cli import app
from onnx2cmsis.cli_options import FLAGS, SHARED
from onnx2cmsis.errors import OptionError
from onnx2cmsis.options import Budget, ConvertOptions

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "vibration"


def test_every_bad_setting_is_named_at_once():
    with pytest.raises(OptionError) as caught:
        ConvertOptions(name="3d", precision="int4", dense_weights="per-row", input_shape="3,q").checked()
    message = caught.value.render(FLAGS)
    for part in ("--name '3d'", "--precision 'int4'", "--dense-weights 'per-row'", "--input-shape '3,q'"):
        assert part in message, message
    assert "precision 'int4'" in caught.value.render({})  # the API spells its parameter names


def test_checked_options_keep_their_values_and_read_a_text_shape():
    opts = ConvertOptions(precision="auto", max_error_db=30.0, input_shape="3,128", budget=Budget(1024, 2048))
    checked = opts.checked()
    assert checked.input_shape == (3, 128) and checked.budget == Budget(1024, 2048)
    assert checked.quant_options.precision == "auto"


def test_the_auto_budget_is_what_the_options_ask_and_reads_so_before_the_float_accuracy_is_known():
    """ConvertOptions.precision_budget builds what --precision auto's search keeps, and the progress
    line words it (PrecisionBudget.describe without the float model's accuracy, measured later)."""
    import numpy as np

    labels = np.array([0, 1, 1])
    by_sqnr = ConvertOptions(precision="auto", max_error_db=30.0, max_arena_bytes=9000).checked()
    budget = by_sqnr.precision_budget(None)
    assert (budget.min_sqnr_db, budget.max_accuracy_drop, budget.max_arena_bytes) == (30.0, None, 9000)
    assert budget.describe(None) == "an output SQNR of 30 dB within an arena of at most 9,000 B"
    by_accuracy = ConvertOptions(precision="auto", max_accuracy_drop=2.0, calibration_labels=labels).checked()
    budget = by_accuracy.precision_budget(labels)
    assert budget.judged_by_accuracy and budget.min_sqnr_db is None and budget.labels is labels
    assert budget.describe(None) == "at most 2 points of accuracy lost"
    assert budget.describe(0.9) == "an accuracy within 2 points of the float model's 90.00%"
    arena_only = ConvertOptions(precision="auto", max_arena_bytes=4096).checked().precision_budget(None)
    assert not arena_only.has_error_budget and arena_only.describe(None) == "an arena of at most 4,096 B"


def test_keyword_settings_replace_the_options_object_and_unknown_ones_are_refused():
    opts = ConvertOptions(precision="int16").with_settings({"streaming": 8})
    assert (opts.precision, opts.streaming) == ("int16", 8)
    with pytest.raises(TypeError, match="precison"):
        ConvertOptions().with_settings({"precison": "int8"})


def test_a_float_model_without_calibration_samples_is_refused_by_name():
    """The options allow a model that needs no samples (an already-quantized one); a float model
    still needs them, and says why."""
    with pytest.raises(OptionError) as caught:
        convert(EXAMPLE / "vibration_cnn.onnx", None)
    assert "--calibration samples are needed: the model is float" in caught.value.render(FLAGS)


def test_convert_and_verify_take_the_shared_options_from_one_declaration():
    command = typer.main.get_command(app)
    for name in ("convert", "verify"):
        params = {p.name: p for p in command.commands[name].params}
        for shared, _, declared in SHARED:
            assert shared in params, (name, shared)
            assert params[shared].opts[0] == declared.param_decls[0].split("/")[0], (name, shared)
