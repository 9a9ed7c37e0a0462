"""NAME.mk and NAME.cmake: what a firmware build compiles for one model.

Both list NAME.c and exactly the CMSIS-NN sources the model calls (with everything they call),
relative to a CMSIS_NN_PATH the application sets, so the files stay valid wherever the tree lives.
The list comes from the tree the model was converted with, else from the file index shipped for its
API level: the same files in every CMSIS-NN release of that level.
"""

from __future__ import annotations

from onnx2cmsis import __version__
from onnx2cmsis.codegen.emit_c import template_environment
from onnx2cmsis.ir.target import CmsisApi


def render_build_files(name: str, cmsis_sources: list[str], api: CmsisApi) -> dict[str, str]:
    """{file name: text} for NAME.mk and NAME.cmake."""
    env = template_environment()
    context = {"name": name, "NAME": name.upper(), "version": __version__, "sources": cmsis_sources,
               "level": api.level, "versions": api.versions}
    return {f"{name}.mk": env.get_template("build.mk.j2").render(context),
            f"{name}.cmake": env.get_template("build.cmake.j2").render(context)}
