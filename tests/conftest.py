"""Suite-wide set-up: which CMSIS-NN tree every test converts for and builds with.

The suite runs at the API level of $CMSIS_NN_PATH when it is set (e.g. a CMSIS-NN v7.0.0 or main
checkout), else at the level of the pinned PyPI snapshot, which it fetches. `python -m tests.run_levels`
runs it against every tree (what CI does). Setting the variable for
the whole session keeps `convert` (which would otherwise emit for level 7 without a tree) and every
build on one tree, in-process and in the CLI subprocesses alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def pytest_configure(config) -> None:
    if not os.environ.get("CMSIS_NN_PATH"):
        from onnx2cmsis.cmsis_nn.fetch import fetch_snapshot

        os.environ["CMSIS_NN_PATH"] = str(fetch_snapshot())


def pytest_report_header(config) -> str:
    from onnx2cmsis.cmsis_nn.source import detect_api

    root = Path(os.environ["CMSIS_NN_PATH"])
    level_7 = os.environ.get("ONNX2CMSIS_LEVEL7_CMSIS_NN")
    return (f"CMSIS-NN: {root} (API level {detect_api(root).level})"
            + (f"; level-7 tests also use {level_7}" if level_7 else ""))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items) -> None:
    """With pytest-xdist (`-n auto --dist loadgroup`, as tests.run_levels runs it): tests that share a
    module-scoped fixture of this suite (a 200-case sweep, a zoo of conversions, a built library) go
    to one worker, so each such fixture is still computed once per run; the rest spread freely.
    Tests linked through any shared fixture form one group (union-find over the fixture keys)."""
    # on a worker, xdist sets option.dist to "no" and option.loadgroup to whether --dist is loadgroup
    if not getattr(config.option, "loadgroup", False):
        return
    parent: dict[str, str] = {}

    def root(key: str) -> str:
        while parent.setdefault(key, key) != key:
            key = parent[key]
        return key

    keys_of = {}
    for item in items:
        keys = []
        info = getattr(item, "_fixtureinfo", None)
        for name, defs in (info.name2fixturedefs.items() if info is not None else ()):
            fixture = defs[-1]
            if fixture.scope in ("module", "class", "session") and str(fixture.baseid or "").startswith("tests"):
                callspec = getattr(item, "callspec", None)
                param = callspec.params.get(name) if callspec is not None else None
                keys.append(f"{fixture.baseid}::{name}[{param}]")
        for a, b in zip(keys, keys[1:]):
            parent[root(a)] = root(b)
        keys_of[item] = keys
    for item, keys in keys_of.items():
        if keys:
            # xdist reads the group after the last "@" only when no "]" follows it
            group = root(keys[0]).replace("@", "_").replace("[", "(").replace("]", ")")
            item.add_marker(pytest.mark.xdist_group(group))
