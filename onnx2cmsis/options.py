"""What a conversion is asked to do: one validated options object for the API and both commands.

`ConvertOptions` holds every setting of `api.convert` (the command line's `convert` and `verify`
build one from their flags, which cli_options.py declares once for both). `checked()` finds every bad
value or combination at once and raises one OptionError naming them ({opt:...} markers: the CLI
spells them as flags, the API as parameter names); nothing else in the pipeline validates options.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from onnx2cmsis.arith.rules import PRECISIONS
from onnx2cmsis.codegen.naming import is_c_identifier
from onnx2cmsis.errors import OptionError
from onnx2cmsis.ir.graph import DENSE_WEIGHTS, QuantOptions
from onnx2cmsis.ir.target import DEFAULT_API
from onnx2cmsis.quant.ranges import CALIBRATION_METHODS

if TYPE_CHECKING:
    from onnx2cmsis.tuning.width_search import PrecisionBudget

WEIGHT_ROUNDINGS = ("auto", "nearest", "fitted")  # tuning/weight_rounding.py


def _input_shape(value: tuple[int, ...] | str | None) -> tuple[tuple[int, ...] | None, str | None]:
    """(the sizes, None) or (None, what is wrong with the text)."""
    if not isinstance(value, str):
        return (None if value is None else tuple(int(v) for v in value)), None
    try:
        return tuple(int(v) for v in value.replace("x", ",").split(",") if v.strip()), None
    except ValueError:
        return None, f"{{opt:input_shape}} {value!r} is not a list of sizes such as 3,128"


@dataclass(frozen=True)
class Budget:
    """What the target part offers. The defaults flag models that fit few Cortex-M parts: 512 KiB of
    flash for the weights alone (code and CMSIS-NN add 5-30 KB) and 128 KiB of RAM for the arena."""

    flash_bytes: int = 512 * 1024
    ram_bytes: int = 128 * 1024

    def check(self, weights_bytes: int, arena_bytes: int) -> list[str]:
        warnings = []
        if weights_bytes > self.flash_bytes:
            warnings.append(f"the weights take {weights_bytes:,} B of flash, more than the {self.flash_bytes:,} B "
                            f"budget (set your part's with {{opt:flash_bytes}})")
        if arena_bytes > self.ram_bytes:
            warnings.append(f"the arena takes {arena_bytes:,} B of RAM, more than the {self.ram_bytes:,} B "
                            f"budget (set your part's with {{opt:ram_bytes}})")
        return warnings


@dataclass(frozen=True, eq=False)
class ConvertOptions:
    """Every setting of a conversion, with api.convert's defaults (see its docstring for each)."""

    name: str | None = None  # the C prefix; default: the model file's stem
    cmsis_nn: str | os.PathLike[str] | None = None  # the CMSIS-NN tree (cmsis_nn/source.locate_cmsis_nn)
    cmsis_api: str | None = None  # the API level to emit for
    default_api: str | None = DEFAULT_API.level  # None: a fetched tree decides (what verify needs)
    budget: Budget = field(default_factory=Budget)
    dense_weights: str = "auto"
    calibration_method: str = "auto"  # auto: chosen with the recipe on held-out folds (tuning/recipe.py)
    bias_correction: bool = True
    range_floors: bool = True  # a softmax's input range from 10 below its rows' lowest maximum (QuantOptions)
    weight_rounding: str = "auto"  # auto: fitted rounding challenges the chosen recipe on held-out folds
    precision: str = "int8"
    max_error_db: float | None = None
    max_accuracy_drop: float | None = None
    max_arena_bytes: int | None = None  # --precision auto: the arena the widths must fit in
    calibration_labels: Path | str | np.ndarray | None = None
    input_shape: tuple[int, ...] | str | None = None  # text as "3,128" too (the command line's)
    streaming: int | None = None
    stateful: bool = False  # with streaming: recurrent state kept across pushes (plan/stateful.py)
    plugins: tuple[str, ...] = ()  # module:Class handlers to load besides the installed ones
    allow_override: bool = False  # may those replace built-in handlers

    def with_settings(self, settings: dict[str, Any]) -> ConvertOptions:
        """These options with some settings replaced (api.convert's keyword arguments)."""
        unknown = sorted(set(settings) - {f.name for f in fields(self)})
        if unknown:
            raise TypeError(f"convert() got unexpected settings: {', '.join(unknown)}")
        return replace(self, **settings) if settings else self

    def checked(self) -> ConvertOptions:
        """Itself (a text input shape as sizes), when every value and combination is valid; else one
        OptionError naming each problem."""
        shape, shape_problem = _input_shape(self.input_shape)
        problems = [p for p in (self._value_problems() + self._budget_problems() + [shape_problem]) if p]
        if problems:
            raise OptionError("; ".join(problems))
        return replace(self, input_shape=shape)

    def _value_problems(self) -> list[str]:
        return [
            None if self.name is None or is_c_identifier(self.name) else
            f"{{opt:name}} {self.name!r} is not a valid C identifier",
            None if self.calibration_method in (*CALIBRATION_METHODS, "auto") else
            f"{{opt:calibration_method}} {self.calibration_method!r} is not one of {', '.join(CALIBRATION_METHODS)}, auto",
            None if self.precision in (*PRECISIONS, "auto") else
            f"{{opt:precision}} {self.precision!r} is not one of {', '.join(PRECISIONS)}, auto",
            None if self.weight_rounding in WEIGHT_ROUNDINGS else
            f"{{opt:weight_rounding}} {self.weight_rounding!r} is not one of {', '.join(WEIGHT_ROUNDINGS)}",
            None if self.dense_weights in DENSE_WEIGHTS else
            f"{{opt:dense_weights}} {self.dense_weights!r} is not one of {', '.join(DENSE_WEIGHTS)}",
        ]

    def _budget_problems(self) -> list[str]:
        """--precision auto's budget: an error budget of one of two kinds, an arena limit, or both, given
        exactly when auto is asked for."""
        if self.max_error_db is not None and self.max_accuracy_drop is not None:
            return ["give one budget: {opt:max_error_db} (output SQNR) or {opt:max_accuracy_drop} (with "
                    "{opt:calibration_labels})"]
        if self.max_arena_bytes is not None:
            arena = self.max_arena_bytes
            if isinstance(arena, bool) or not isinstance(arena, (int, np.integer)) or arena < 1:
                return [f"{{opt:max_arena_bytes}} {arena!r} is not a number of bytes above 0"]
            if self.precision != "auto":
                return ["{opt:max_arena_bytes} is the arena {opt:precision=auto} chooses the widths to fit: give "
                        "it with {opt:precision=auto}"]
        error_budget = self.max_error_db is not None or self.max_accuracy_drop is not None
        if self.precision == "auto" and not error_budget and self.max_arena_bytes is None:
            return ["{opt:precision=auto} needs a budget to choose the widths for: {opt:max_error_db} (the output "
                    "SQNR in dB on the calibration samples), {opt:max_arena_bytes} (the most accurate widths that "
                    "fit), or both"]
        if self.precision != "auto" and error_budget:
            return ["{opt:precision=auto} and {opt:max_error_db} go together: the budget (the output SQNR in dB "
                    "on the calibration samples) is what auto chooses the widths for"]
        if (self.max_accuracy_drop is not None) != (self.calibration_labels is not None):
            return ["{opt:calibration_labels} and {opt:max_accuracy_drop} go together: the accuracy budget of "
                    "{opt:precision=auto} needs each calibration sample's class"]
        return []

    @property
    def quant_options(self) -> QuantOptions:
        return QuantOptions(dense_weights=self.dense_weights, calibration_method=self.calibration_method,
                            precision=self.precision, range_floors=self.range_floors)

    def precision_budget(self, labels: np.ndarray | None) -> PrecisionBudget:
        """--precision auto's budget; `labels`: the search samples' classes, which an accuracy budget
        needs (_budget_problems has refused the one without the other)."""
        # imported here: the options module stays light to import (the API names it on first use)
        from onnx2cmsis.tuning.width_search import PrecisionBudget

        by_accuracy = self.max_accuracy_drop is not None and labels is not None
        return PrecisionBudget(
            min_sqnr_db=None if by_accuracy or self.max_error_db is None else float(self.max_error_db),
            max_accuracy_drop=float(self.max_accuracy_drop) if by_accuracy else None,
            labels=labels if by_accuracy else None, max_arena_bytes=self.max_arena_bytes)
