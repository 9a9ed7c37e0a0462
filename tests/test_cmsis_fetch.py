"""Getting CMSIS-NN: `onnx2cmsis cmsis-nn fetch` checks what it unpacks against pinned file hashes;
convert and verify never download (a missing tree is one line saying how to get one)."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest

from onnx2cmsis.api import convert
from onnx2cmsis.cmsis_nn.fetch import cached_tree, fetch_cmsis_nn, fetch_snapshot, tree_hash
from onnx2cmsis.cmsis_nn.source import CmsisTree, detect_api, index_of
from onnx2cmsis.errors import ToolchainError
from onnx2cmsis.ir.target import LEVEL_7, SNAPSHOT_API
from tests.needs import cmsis_archive

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "examples" / "vibration" / "vibration_cnn.onnx"
CALIB = ROOT / "examples" / "vibration" / "calibration.npy"


@pytest.fixture
def empty_cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("CMSIS_NN_PATH", raising=False)
    return tmp_path / "cache" / "onnx2cmsis"


def cli(*args: str, cache: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "CMSIS_NN_PATH"}
    env.update(PYTHONPATH=str(ROOT), XDG_CACHE_HOME=str(cache.parent))
    return subprocess.run([sys.executable, "-m", "onnx2cmsis.cli", *args], capture_output=True, text=True, env=env)


def test_fetch_checks_the_pinned_trees_from_a_path_and_a_file_url(empty_cache):
    v7 = fetch_cmsis_nn("7", str(cmsis_archive("CMSIS-NN-v7.0.0.tar.gz")))
    main = fetch_cmsis_nn("7", cmsis_archive("CMSIS-NN-main-99f736a6.tar.gz").as_uri())
    assert v7.parent == main.parent == empty_cache and v7 != main
    assert detect_api(v7) == detect_api(main) == LEVEL_7
    assert cached_tree("7") == v7  # the release first
    r = cli("cmsis-nn", "path", "--level", "7", cache=empty_cache)
    assert r.returncode == 0 and r.stdout.strip() == str(v7), r.stderr


def test_fetch_refuses_a_tree_that_is_not_the_pinned_one(empty_cache, tmp_path):
    with tarfile.open(cmsis_archive("CMSIS-NN-v7.0.0.tar.gz")) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    header = tmp_path / "x" / "CMSIS-NN-v7.0.0" / "Include" / "arm_nnfunctions.h"
    header.write_text(header.read_text() + "\n/* changed */\n")
    with tarfile.open(tmp_path / "changed.tar.gz", "w:gz") as tar:
        tar.add(tmp_path / "x" / "CMSIS-NN-v7.0.0", arcname="CMSIS-NN-v7.0.0")
    r = cli("cmsis-nn", "fetch", "--from", str(tmp_path / "changed.tar.gz"), cache=empty_cache)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "is not one this tool pins" in r.stderr and "v7.0.0 or main-99f736a6" in r.stderr
    assert cached_tree("7") is None


def test_the_shipped_source_lists_are_the_trees_own(empty_cache):
    """Without a tree, NAME.json lists the source files from the index shipped for the level: the same
    index the snapshot and v7.0.0 trees give."""
    v7 = fetch_cmsis_nn("7", str(cmsis_archive("CMSIS-NN-v7.0.0.tar.gz")))
    for level, root in ((SNAPSHOT_API, fetch_snapshot()), (LEVEL_7, v7)):
        shipped = CmsisTree(None, level)._index
        defines, calls = index_of(root)
        assert shipped == (defines, calls), level.level


@pytest.mark.slow
@pytest.mark.heavy
def test_convert_needs_no_tree_and_downloads_nothing(empty_cache):
    for level, versions in (("7", "CMSIS-NN v7.0.0"), ("2024.01", "the PyPI snapshot")):
        conv = convert(MODEL, CALIB, cmsis_api=level)
        assert conv.cmsis.root is None
        assert "Source/ConvolutionFunctions/arm_convolve_s8.c" in conv.report["cmsis_nn"]["sources"]
        assert conv.report["cmsis_nn"]["sources_from"].startswith(f"the file list of {versions}")
    assert not empty_cache.exists() or not any(empty_cache.iterdir())


@pytest.mark.slow
@pytest.mark.heavy
def test_verify_without_a_tree_says_how_to_get_one(empty_cache, tmp_path):
    np.save(tmp_path / "x.npy", np.load(CALIB)[:2])
    r = cli("verify", str(MODEL), "-c", str(CALIB), "-d", str(tmp_path / "x.npy"), cache=empty_cache)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1 and len(lines) == 1, r.stderr
    assert "needs a CMSIS-NN tree of API level 7 and none is here" in lines[0]
    assert "onnx2cmsis cmsis-nn fetch --level 7" in lines[0] and "--cmsis-nn PATH" in lines[0]
    assert not empty_cache.exists() or not any(empty_cache.iterdir())
    with pytest.raises(ToolchainError, match=r"fetch_cmsis_nn='7'"):  # the library names the function
        CmsisTree(None, LEVEL_7).include


def test_tree_hash_sees_one_changed_byte(tmp_path):
    for name in ("Include/a.h", "Source/b.c"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    before = tree_hash(tmp_path)
    (tmp_path / "Source/b.c").write_text("y")
    assert tree_hash(tmp_path) != before


def test_fetch_offline_names_the_way_without_network(empty_cache):
    # port 9 (discard) on loopback: refused at once, as an offline machine's download would fail
    r = cli("cmsis-nn", "fetch", "--from", "http://127.0.0.1:9/CMSIS-NN-v7.0.0.tar.gz", cache=empty_cache)
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "cannot read CMSIS-NN from http://127.0.0.1:9/" in r.stderr
    assert "cmsis-nn fetch --from FILE.tar.gz" in r.stderr
    with pytest.raises(ToolchainError, match="give it with `source='FILE.tar.gz'`"):  # the API's own parameter
        fetch_cmsis_nn(source="http://127.0.0.1:9/CMSIS-NN-v7.0.0.tar.gz")
