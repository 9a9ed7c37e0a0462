"""The host runs the library it was asked to run.

glibc's dlopen recognises a loaded object by device and inode: a new library that shares an inode
with one already loaded (a file built where a removed temporary folder's library was, while that
library's models stay loaded) comes back as the old one, and with models of the same name the wrong
model runs without a sound. A hard link stands in for the reused inode here.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys

import pytest

from onnx2cmsis.targets.host import load_library


def _library(folder, value: int):
    folder.mkdir()
    (folder / "m.c").write_text(f"int model_invoke(void) {{ return {value}; }}\n")
    so = folder / "libmodels.so"
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(so), str(folder / "m.c")], check=True)
    return so


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's loader")
def test_a_library_the_loader_already_holds_under_another_path_is_loaded_afresh(tmp_path):
    first = _library(tmp_path / "a", 1)
    held = load_library(first)
    assert held.model_invoke() == 1
    (tmp_path / "b").mkdir()
    same_inode = tmp_path / "b" / "libmodels.so"
    os.link(first, same_inode)
    assert ctypes.CDLL(str(same_inode))._handle == held._handle  # what glibc does by itself
    fresh = load_library(same_inode)
    assert fresh._handle != held._handle and fresh.model_invoke() == 1
    (copy,) = (tmp_path / "b").glob("libmodels.*.1.so")
    assert load_library(same_inode)._handle == fresh._handle  # the copy again, loaded as it is, not rewritten
    assert list((tmp_path / "b").glob("libmodels.*.so")) == [copy]


def test_a_new_library_loads_as_itself(tmp_path):
    lib = load_library(_library(tmp_path / "c", 7))
    assert lib.model_invoke() == 7
    assert not list((tmp_path / "c").glob("libmodels.*.so"))
