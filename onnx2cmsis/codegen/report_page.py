"""NAME.md and NAME_memory.svg: the conversion as a person reads it, beside the C.

NAME.md is the per-layer table (op, kernel, shapes, width, MACs, weights, where the output lives,
scratch) and the memory summary; NAME_memory.svg draws the arena: every buffer as a box from the step
that writes it to the last step that reads it, at its offset, with the bytes live at each step and
the arena's size. Both come from NAME.json's figures and the memory plan, through templates only.
Model names are untrusted text: escaped for Markdown tables and XML.
"""

from __future__ import annotations

from typing import Any

from onnx2cmsis.codegen.emit_c import template_environment
from onnx2cmsis.plan.arena import MemoryPlan
from onnx2cmsis.tuning.recipe import Recipe

SVG_WIDTH, SVG_HEIGHT, MARGIN = 760, 280, 48


def md_cell(text: object) -> str:
    """Text safe inside a Markdown table cell: one line, no column breaks, no HTML tag or entity.
    Backslash escapes (CommonMark) keep the raw file readable: `int8 -> int16` stays as written,
    where `&gt;` would show in every editor."""
    s = " ".join(str(text).split())
    return s.replace("\\", "\\\\").replace("|", "\\|").replace("<", "\\<").replace("&", "\\&")


def recipe_text(recipe: dict[str, Any]) -> str:
    """The quantization recipe chosen, and why (tuning/recipe.py's summary)."""
    chosen = recipe["chosen"]
    if chosen is None:  # nothing chosen: the model file's own quantization
        return recipe["reason"]
    return f"{Recipe.described(chosen).text()}: {recipe['reason']}"


def auto_precision_headline(auto: dict[str, Any]) -> str:
    """--precision auto's budget and what the choice, all-int8 and all-int16 measured on the
    calibration samples (NAME.json's quantization.auto_precision), in one sentence."""
    by_accuracy = auto.get("max_accuracy_drop") is not None

    def fig(key: str) -> str:
        f = auto[key]
        figure = f"{100 * f['accuracy']:.2f}%, {f['sqnr_db']:.2f} dB" if by_accuracy else f"{f['sqnr_db']:.2f} dB"
        return f"{figure}, arena {f['arena_bytes']} B"
    error = (f"at most {auto['max_accuracy_drop']:g} points of accuracy lost from the float model's "
             f"{100 * auto['float_accuracy']:.2f}%" if by_accuracy else
             None if auto["min_sqnr_db"] is None else f"{auto['min_sqnr_db']:g} dB")
    arena = None if auto.get("max_arena_bytes") is None else f"an arena of at most {auto['max_arena_bytes']} B"
    budget = (f" for a budget of {error}" + ("" if arena is None else f" within {arena}") if error is not None
              else f": the most accurate measured within {arena}")
    chosen = auto["chosen"]
    held = ""
    if chosen.get("heldout_sqnr_db") is not None:
        accuracy = chosen.get("heldout_accuracy")
        low = chosen.get("heldout_low_sqnr_db")
        held = (f"; expected on samples the ranges did not see: {chosen['heldout_sqnr_db']:.2f} dB"
                + ("" if accuracy is None else f", {100 * accuracy:.2f}%")
                + f" ({chosen['heldout_samples']} samples, cross-validated"
                + ("" if low is None else f"; {low:.2f} dB or more on {100 * (1 - auto['heldout_low_quantile']):.0f}% "
                                            "of resamples of them")
                + (f"; {auto['heldout_checks']} assignments checked to meet it" if auto.get("heldout_checks", 0) > 1 else "")
                + ")")
        if not by_accuracy and auto["min_sqnr_db"] is not None and \
                (chosen["heldout_sqnr_db"] if low is None else low) < auto["min_sqnr_db"]:
            held += ", below the budget even so"
    return (f"{fig('chosen')}{budget} (all int8: {fig('int8')}; all int16: {fig('int16')}; "
            f"on the calibration samples){held}")


def _where(plan: MemoryPlan, tensor: str, groups: dict[str, str], several: bool) -> str:
    p = plan.tensors[tensor]
    if p.storage != "arena":
        return f"caller's {p.storage}" + (f" {p.offset}" if several else "")
    if tensor in plan.written_in_place:
        return f"arena + {p.offset} (in place)"
    return f"arena + {p.offset}" + ("" if groups.get(tensor, tensor) == tensor else " (view)")


def render_report_page(name: str, report: dict[str, Any], plan: MemoryPlan, outputs: list[str],
                       views: dict[str, str]) -> tuple[str, str]:
    """(NAME.md, NAME_memory.svg). `outputs`: each layer's output tensor, in execution order; `views`:
    tensor -> the tensor whose buffer it shares."""
    env = template_environment()
    env.filters.setdefault("md", md_cell)
    steps = max(len(report["layers"]), 1)
    arena = max(plan.arena_bytes, 1)
    live = [0] * steps
    for b in plan.buffers:
        for t in range(b.start, min(b.end, steps - 1) + 1):
            live[t] += b.size
    sx = (SVG_WIDTH - 2 * MARGIN) / steps
    sy = (SVG_HEIGHT - 2 * MARGIN) / arena
    boxes = [{"x": MARGIN + b.start * sx, "w": (b.end - b.start + 1) * sx, "y": MARGIN + b.offset * sy,
              "h": max(b.size * sy, 1.0), "scratch": b.key.startswith("#scratch"), "bytes": b.size,
              "label": "kernel scratch" if b.key.startswith("#scratch") else b.key,
              "steps": f"{b.start}-{b.end}"} for b in plan.buffers]
    line = " ".join(f"{MARGIN + t * sx:.1f},{MARGIN + v * sy:.1f} {MARGIN + (t + 1) * sx:.1f},{MARGIN + v * sy:.1f}"
                    for t, v in enumerate(live))
    context = {"name": name, "r": report, "plan": plan, "live": live, "peak_step": live.index(max(live)),
               "where": [_where(plan, t, views, "inputs" in report) for t in outputs], "total_macs": sum(l["macs"] for l in report["layers"]),
               "auto_precision": (None if report["quantization"]["auto_precision"] is None
                                  else auto_precision_headline(report["quantization"]["auto_precision"])),
               "recipe": recipe_text(report["quantization"]["recipe"]),
               # the layers quantizing set something on: their own scales, a correction, fitted codes, a floor
               "tuned": sorted((layer for layer in report["layers"]
                                if any(k in layer for k in ("weights", "bias_correction", "weight_rounding",
                                                            "range_floor"))),
                               key=lambda layer: layer["index"]),
               "boxes": boxes, "line": line, "width": SVG_WIDTH, "height": SVG_HEIGHT, "margin": MARGIN,
               "arena_y": MARGIN + plan.arena_bytes * sy, "steps": steps, "sx": sx}
    return env.get_template("report.md.j2").render(context), env.get_template("memory.svg.j2").render(context)
