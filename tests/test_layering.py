"""Layers depend downward only: a module imports its own layer and those below, never above (the IR
imports nothing but itself and the errors). Read from the sources' import statements."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "onnx2cmsis"

# Lowest first. A module belongs to the layer of its longest listed prefix.
LAYERS: list[set[str]] = [
    {"onnx2cmsis", "onnx2cmsis.errors"},  # the version string, the error types
    {"onnx2cmsis.ir"},  # the canonical IR and the target description it carries
    {"onnx2cmsis.quant.rules", "onnx2cmsis.quant.fixedpoint", "onnx2cmsis.quant.lut16",
     "onnx2cmsis.quant.sigmoid16", "onnx2cmsis.quant.sample_file", "onnx2cmsis.quant.samples",
     "onnx2cmsis.codegen.naming"},  # arithmetic and text helpers
    {"onnx2cmsis.ops", "onnx2cmsis.frontends", "onnx2cmsis.cmsis_nn", "onnx2cmsis.oracle"},
    {"onnx2cmsis.importer", "onnx2cmsis.passes", "onnx2cmsis.quant", "onnx2cmsis.plan", "onnx2cmsis.targets"},
    {"onnx2cmsis.codegen"},
    {"onnx2cmsis.api", "onnx2cmsis.report"},
    {"onnx2cmsis.evaluate", "onnx2cmsis.verification", "onnx2cmsis.inspect_model", "onnx2cmsis.stream_check"},
    {"onnx2cmsis.cli", "onnx2cmsis.cli_options", "onnx2cmsis.cli_progress"},
]


def layer_of(module: str) -> int:
    best, layer = "", -1
    for i, prefixes in enumerate(LAYERS):
        for p in prefixes:
            if (module == p or module.startswith(p + ".")) and len(p) > len(best):
                best, layer = p, i
    assert layer >= 0, f"{module} is in no layer: add it to LAYERS"
    return layer


def module_imports() -> dict[str, set[str]]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        module = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("onnx2cmsis"):
                deps.add(node.module)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("onnx2cmsis"))
        found[module] = deps
    return found


def test_every_import_points_down():
    upward = [f"{module} (layer {layer_of(module)}) imports {dep} (layer {layer_of(dep)})"
              for module, deps in module_imports().items() for dep in sorted(deps)
              if layer_of(dep) > layer_of(module)]
    assert not upward, "\n".join(upward)


def test_the_ir_imports_only_itself_and_the_errors():
    for module, deps in module_imports().items():
        if module.startswith("onnx2cmsis.ir"):
            assert all(d.startswith("onnx2cmsis.ir") or d == "onnx2cmsis.errors" for d in deps), (module, deps)


def test_the_check_sees_an_upward_import(tmp_path, monkeypatch):
    """The check can fail: an IR module importing a handler is caught."""
    fake = tmp_path / "onnx2cmsis" / "ir"
    fake.mkdir(parents=True)
    (fake / "bad.py").write_text("from onnx2cmsis.ops.registry import build_registry\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", tmp_path / "onnx2cmsis")
    imports = module_imports()
    assert imports == {"onnx2cmsis.ir.bad": {"onnx2cmsis.ops.registry"}}
    assert layer_of("onnx2cmsis.ops.registry") > layer_of("onnx2cmsis.ir.bad")
