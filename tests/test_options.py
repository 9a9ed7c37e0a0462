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
