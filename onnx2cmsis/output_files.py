"""Writing a conversion's files: all of them appear, or none changes (write_outputs)."""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from onnx2cmsis.errors import ConversionError

if TYPE_CHECKING:
    from onnx2cmsis.api import Conversion


def _new_staging_file(folder: Path, name: str) -> tuple[int, str]:
    """A new hidden file beside the final one, created 0666 so the user's umask applies as it does to any
    file they write (mkstemp would make it 0600, and reading the umask means changing it)."""
    for _ in range(100):
        tmp = str(folder / f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            return os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666), tmp
        except FileExistsError:
            continue
    raise ConversionError("cannot create a temporary file", str(folder))


def write_outputs(conv: Conversion, out_dir: Path, tflite: bool = False) -> list[Path]:
    """Write NAME.c/.h/.json/.mk/.cmake, NAME.md and NAME_memory.svg (and NAME.tflite) atomically: all of them appear, or none changes. A
    missing output folder is created (a file in its place is an error).

    NAME.tflite is the same integer graph for TFLite-Micro, with exactly NAME_invoke's input and output
    bytes (the [verify] extra)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ConversionError("the output folder is a file", str(out_dir))
    created = [p for p in (out_dir, *out_dir.parents) if not p.exists()]  # made now, removed again on failure
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConversionError(f"cannot create the output folder ({exc.strerror})", str(out_dir)) from exc
    files: dict[Path, str | bytes] = {
        out_dir / f"{conv.name}.c": conv.source,
        out_dir / f"{conv.name}.h": conv.header,
        out_dir / f"{conv.name}.json": json.dumps(conv.report, indent=2, sort_keys=False) + "\n",
        **{out_dir / file: text for file, text in conv.build_files.items()},
        **{out_dir / file: text for file, text in conv.pages.items()},
    }
    if tflite:
        from onnx2cmsis.oracle.tflite_export import export_tflite

        files[out_dir / f"{conv.name}.tflite"] = export_tflite(conv.graph, conv.registry)
    staged: list[tuple[str, Path]] = []
    try:
        for path, content in files.items():
            fd, tmp = _new_staging_file(out_dir, path.name)
            staged.append((tmp, path))
            if isinstance(content, bytes):
                with os.fdopen(fd, "wb") as fb:
                    fb.write(content)
                continue
            with os.fdopen(fd, "w", encoding="ascii", newline="\n") as f:
                f.write(content)
        for tmp, path in staged:
            os.replace(tmp, path)
    except OSError as exc:
        for folder in created:  # innermost first: no partial output, not even an empty folder
            if folder.is_dir() and not any(folder.iterdir()):
                folder.rmdir()
        raise ConversionError(f"cannot write output ({exc.strerror})", str(out_dir)) from exc
    finally:
        for tmp, _ in staged:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return list(files)
