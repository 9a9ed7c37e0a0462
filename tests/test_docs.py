"""The generated docs match the code (docs/generate.py): the supported-layers table from the handler
table, the command line reference from the commands' own help."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_generated_docs_are_up_to_date():
    proc = subprocess.run([sys.executable, str(ROOT / "docs" / "generate.py"), "--check"], capture_output=True,
                          text=True, cwd=ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_builtin_handler_has_a_row():
    from onnx2cmsis.ops.registry import BUILTIN_HANDLERS

    page = (ROOT / "docs" / "supported-layers.md").read_text()
    for cls in BUILTIN_HANDLERS:
        assert f"| `{cls.op}` |" in page
