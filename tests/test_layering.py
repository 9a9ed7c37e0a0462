"""Layers depend downward only: a module imports its own layer and those below, never above (the IR
imports nothing but itself and the errors); and no module outside the handlers and the importer names
an IR op key. Read from the sources' import statements and string literals."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "onnx2cmsis"

# Lowest first, one package (or top-level module) per layer: an import between two of them must point
# down this list; modules of one package import each other freely. A module belongs to the entry of
# its longest listed prefix.
LAYERS: list[str] = [
    "onnx2cmsis",  # the version string; the API names it loads on first use (no import statement)
    "onnx2cmsis.errors",  # the error types
    "onnx2cmsis.ir",  # the canonical IR and the target description it carries
    "onnx2cmsis.arith",  # integer arithmetic bit-exact with CMSIS-NN: rules, fixed point, 16x8 tables
    "onnx2cmsis.data",  # calibration and test samples, in memory and in files
    "onnx2cmsis.frontends",  # a model file -> ONNX
    "onnx2cmsis.cmsis_nn",  # finding, fetching and describing CMSIS-NN trees
    "onnx2cmsis.ops",  # the op handlers and their table
    "onnx2cmsis.importer",  # ONNX -> canonical IR
    "onnx2cmsis.passes",  # graph rewrites
    "onnx2cmsis.plan",  # execution order, arena, streaming state
    "onnx2cmsis.quant",  # calibration ranges, quantizing the graph, the integer reference run
    "onnx2cmsis.tuning",  # searches that run the whole quantized graph: method, weights, bias, precision
    "onnx2cmsis.oracle",  # the TFLite form of a quantized graph, tflite-micro
    "onnx2cmsis.targets",  # building and running C: host, QEMU
    "onnx2cmsis.codegen",  # C, headers and build files from templates
    "onnx2cmsis.report",  # NAME.json / NAME.md
    "onnx2cmsis.options",  # the settings of a conversion, validated (ConvertOptions, Budget)
    "onnx2cmsis.api",  # the pipeline: convert
    "onnx2cmsis.output_files",  # writing a conversion's files, atomically
    "onnx2cmsis.drivers",  # verify (verification, evaluate, stream_check) and inspect (inspect_model)
    "onnx2cmsis.cli_options",
    "onnx2cmsis.cli_progress",
    "onnx2cmsis.cli",
]


def layer_of(module: str) -> int:
    matches = [(len(p), i) for i, p in enumerate(LAYERS) if module == p or module.startswith(p + ".")]
    assert matches, f"{module} is in no layer: add its package to LAYERS"
    return max(matches)[1]


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


def wrong_way(imports: dict[str, set[str]]) -> list[str]:
    """Every import from one listed package into another that is not below it."""
    return [f"{module} ({LAYERS[layer_of(module)]}) imports {dep} ({LAYERS[layer_of(dep)]}, not below it)"
            for module, deps in imports.items() for dep in sorted(deps)
            if layer_of(dep) != layer_of(module) and layer_of(dep) > layer_of(module)]


def test_every_import_points_down():
    assert not wrong_way(module_imports()), "\n".join(wrong_way(module_imports()))


def test_every_package_is_listed_once():
    packages = {m if m in LAYERS else ".".join(m.split(".")[:2]) for m in module_imports()}
    assert packages == set(LAYERS) and len(LAYERS) == len(set(LAYERS)), packages ^ set(LAYERS)


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


def test_the_check_sees_a_cycle_between_packages(tmp_path, monkeypatch):
    """The cycle the handlers once had (ops used quant's rules, quant ran the handlers): a handler that
    imports the quantizer again is caught, naming both ends."""
    fake = tmp_path / "onnx2cmsis"
    (fake / "ops").mkdir(parents=True)
    (fake / "quant").mkdir()
    (fake / "ops" / "bad.py").write_text("from onnx2cmsis.quant.quantize import run_reference\n")
    (fake / "quant" / "quantize.py").write_text("from onnx2cmsis.ops.registry import Registry\n")
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", fake)
    found = wrong_way(module_imports())
    assert found == ["onnx2cmsis.ops.bad (onnx2cmsis.ops) imports onnx2cmsis.quant.quantize "
                     "(onnx2cmsis.quant, not below it)"], found


# The packages that may name IR op keys: the handlers (each owns its key) and the importer (which
# picks the op a model node or a layout change becomes). Frontends write ONNX, whose op types and
# Keras's layer vocabulary ("softmax") are not IR keys. Everything else asks a handler (its role,
# capabilities, lowering), so a plugin op takes part like a built-in one.
MAY_NAME_OPS = ("onnx2cmsis.ops", "onnx2cmsis.importer", "onnx2cmsis.frontends")


def op_key_literals(keys: set[str]) -> list[str]:
    """Every string literal equal to an IR op key in a module outside MAY_NAME_OPS (docstrings aside)."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if any(module == p or module.startswith(p + ".") for p in MAY_NAME_OPS):
            continue
        tree = ast.parse(path.read_text())
        docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                      if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef)) and n.body
                      and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
        found += [f"{module}:{n.lineno} names op '{n.value}'" for n in ast.walk(tree)
                  if isinstance(n, ast.Constant) and isinstance(n.value, str) and n.value in keys
                  and id(n) not in docstrings]
    return found


def _op_keys() -> set[str]:
    from onnx2cmsis.ops.registry import build_registry

    return set(build_registry(plugins=False).by_op)


def test_no_op_key_literal_outside_the_handlers_and_the_importer():
    found = op_key_literals(_op_keys())
    assert not found, "\n".join(found)


def test_the_check_sees_an_op_key_literal(tmp_path, monkeypatch):
    """The check can fail: a pass that tests a node's op by name (as passes/canonical.py once did for
    the requantize) is caught; the handlers' own modules may name their keys."""
    fake = tmp_path / "onnx2cmsis"
    (fake / "passes").mkdir(parents=True)
    (fake / "ops").mkdir()
    (fake / "passes" / "bad.py").write_text('"""Folds a requantize."""\n\n'
                                            'def is_requantize(node):\n    return node.op == "requantize"\n')
    (fake / "ops" / "requantize.py").write_text('OP = "requantize"\n')
    monkeypatch.setattr(__import__(__name__, fromlist=["PACKAGE"]), "PACKAGE", fake)
    assert op_key_literals(_op_keys()) == ["onnx2cmsis.passes.bad:4 names op 'requantize'"]
