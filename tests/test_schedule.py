"""The same model gives the same bytes, at the best schedule.

Whatever order an exporter writes a model's nodes in, the C is identical, and its layers run in the
execution order with the smallest live-set bound. The smallest bound is worked out here by brute force
over every topological order of the IR graph, with the test's own liveness arithmetic (not the
planner's).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnx2cmsis.api import convert
from tests.needs import module
from tests.onnx_models import make_model

ROOT = Path(__file__).resolve().parents[1]


def _conv(name: str, x: str, c_in: int, c_out: int, k: int, rng, inits: list) -> onnx.NodeProto:
    w = numpy_helper.from_array((rng.standard_normal((c_out, c_in, k)) / np.sqrt(c_in * k)).astype(np.float32), f"{name}_w")
    inits.append(w)
    return helper.make_node("Conv", [x, w.name], [name], kernel_shape=[k], pads=[k // 2, k // 2], name=f"{name}_node")


def branchy_model() -> onnx.ModelProto:
    """8 nodes: two two-conv chains from the input, joined by a channel concat, a 1x1 conv, and a
    residual add with a third branch that reads the input again (which order runs it decides how
    long its output stays live)."""
    rng, inits = np.random.default_rng(13), []
    nodes = [
        _conv("a", "x", 4, 16, 3, rng, inits), _conv("b", "x", 4, 4, 3, rng, inits),
        _conv("c", "a", 16, 8, 3, rng, inits), _conv("d", "b", 4, 8, 5, rng, inits),
        helper.make_node("Concat", ["c", "d"], ["cd"], axis=1, name="concat"),
        _conv("e", "x", 4, 8, 1, rng, inits), _conv("f", "cd", 16, 8, 1, rng, inits),
        helper.make_node("Add", ["f", "e"], ["y"], name="add"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 64])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return make_model(nodes, [x], [y], inits)


def topological_orders(n: int, deps: list[set[int]]):
    """Every order of range(n) in which each node comes after its dependencies."""
    def extend(order: list[int], done: set[int]):
        if len(order) == n:
            yield list(order)
            return
        for v in range(n):
            if v not in done and deps[v] <= done:
                order.append(v)
                done.add(v)
                yield from extend(order, done)
                order.pop()
                done.discard(v)
    yield from extend([], set())


def onnx_deps(model: onnx.ModelProto) -> list[set[int]]:
    producer = {out: i for i, n in enumerate(model.graph.node) for out in n.output}
    return [{producer[v] for v in n.input if v in producer} for n in model.graph.node]


def reordered(model: onnx.ModelProto, order: list[int]) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    nodes = [copy.graph.node[i] for i in order]
    kept = [onnx.NodeProto() for _ in nodes]
    for k, n in zip(kept, nodes):
        k.CopyFrom(n)
    del copy.graph.node[:]
    copy.graph.node.extend(kept)
    return copy


def bounds_by_brute_force(conv) -> tuple[int, int]:
    """The smallest, over every topological order of the IR nodes, of the largest number of bytes live
    at one step: each tensor outside the caller's input and output (4-byte aligned) from its producer
    to its last reader, plus the running layer's scratch. This model has no views. Returns the smallest
    and the largest such bound."""
    g = conv.graph
    assert not any(layer["kernel"] == "none (view)" for layer in conv.report["layers"])
    scratch = [(layer["scratch_bytes"] + 3) // 4 * 4 for layer in conv.report["layers"]]
    producer = {out: i for i, n in enumerate(g.nodes) for out in n.outputs}
    deps = [{producer[t] for t in n.inputs if t in producer} for n in g.nodes]
    tensors = [t for t in producer if t not in g.outputs]
    bounds = []
    for order in topological_orders(len(g.nodes), deps):
        step = {v: s for s, v in enumerate(order)}
        live = [scratch[v] for v in order]
        for t in tensors:
            start = step[producer[t]]
            end = max([step[i] for i, n in enumerate(g.nodes) if t in n.inputs] + [start])
            for s in range(start, end + 1):
                live[s] += (g.tensors[t].size + 3) // 4 * 4
        bounds.append(max(live))
    return min(bounds), max(bounds)


@pytest.mark.slow
@pytest.mark.heavy
def test_every_node_order_of_a_branchy_model_gives_one_c_at_the_smallest_arena(tmp_path):
    model = branchy_model()
    calib = np.random.default_rng(1).standard_normal((32, 4, 64)).astype(np.float32)
    orders = list(topological_orders(len(model.graph.node), onnx_deps(model)))
    assert len(orders) >= 20, len(orders)
    sources, arenas = set(), set()
    for i, order in enumerate(orders):
        path = tmp_path / f"order{i}.onnx"
        onnx.save(reordered(model, order), str(path))
        conv = convert(path, calib, name="branchy")
        sources.add(without_provenance(conv.source))
        arenas.add(conv.report["arena_bytes"])
    assert len(sources) == 1, f"{len(sources)} different .c files from {len(orders)} node orders"
    (arena,) = arenas
    smallest, largest = bounds_by_brute_force(conv)
    assert arena == smallest == conv.report["arena_smallest_bound_bytes"], (arena, smallest)
    assert conv.report["schedule"]["exact"]
    assert largest > smallest  # the order matters for this model


def without_provenance(source: str) -> str:
    """The C without the lines that name the model file and its SHA-256 (a reordered file is another file)."""
    return "\n".join(line for line in source.splitlines() if "SHA-256" not in line and "generated by" not in line)


def _random_order(model: onnx.ModelProto, rng: np.random.Generator) -> list[int]:
    deps = onnx_deps(model)
    order: list[int] = []
    while len(order) < len(deps):
        ready = [v for v in range(len(deps)) if v not in order and deps[v] <= set(order)]
        order.append(int(rng.choice(ready)))
    return order


@pytest.mark.slow
def test_random_node_orders_of_the_largest_fuzzer_graphs_give_one_c(tmp_path):
    from hypothesis import given, settings

    from tests.test_fuzz_graphs import cnn_graphs

    cases = []

    @settings(max_examples=30, derandomize=True, database=None, deadline=None)
    @given(case=cnn_graphs())
    def collect(case):
        model = case[0]
        readers: dict[str, int] = {}
        for n in model.graph.node:
            for v in n.input:
                readers[v] = readers.get(v, 0) + 1
        if any(count > 1 for v, count in readers.items() if v not in {i.name for i in model.graph.initializer}):
            cases.append(case)  # branches: several orders exist

    collect()
    largest = sorted(cases, key=lambda c: len(c[0].graph.node))[-2:]
    assert len(largest) == 2 and len(largest[0][0].graph.node) >= 10, [len(c[0].graph.node) for c in largest]
    rng = np.random.default_rng(5)
    for k, (model, shape, kinds) in enumerate(largest):
        calib = rng.standard_normal((16, *shape)).astype(np.float32)
        sources = set()
        for i in range(50):
            path = tmp_path / f"g{k}_{i}.onnx"
            onnx.save(reordered(model, _random_order(model, rng)), str(path))
            sources.add(without_provenance(convert(path, calib, name="fuzz").source))
        assert len(sources) == 1, f"{len(sources)} different .c files for blocks {kinds}"


KERAS_RESIDUAL = '''
import sys
import numpy as np
import keras
from keras import layers

keras.utils.set_random_seed(0)
inp = keras.Input((64, 3))
x = layers.ReLU()(layers.BatchNormalization()(layers.Conv1D(8, 5, padding="same")(inp)))
main = layers.Conv1D(16, 3, padding="same")(x)
shortcut = layers.Conv1D(16, 1)(x)
z = layers.BatchNormalization()(layers.ReLU()(layers.Add()([main, shortcut])))
z = layers.Flatten()(layers.Conv1D(8, 3)(layers.MaxPooling1D(2)(z)))
model = keras.Model(inp, layers.Dense(4, activation="softmax")(z))
model.save(sys.argv[1])
'''


@pytest.mark.slow
@pytest.mark.keras
def test_keras_residual_model_converted_four_times_gives_one_c(tmp_path):
    """conv-BN-ReLU, conv, 1x1 conv shortcut, Add, ReLU, BN, pool, conv, flatten, dense: each run a new
    process with its own hash seed, as a user converting again would (four: each costs a TensorFlow
    start-up, and the suite's time is bounded)."""
    module("keras", 'the [keras] extra: pip install -e ".[keras]"')
    subprocess.run([sys.executable, "-c", KERAS_RESIDUAL, str(tmp_path / "residual.h5")], check=True,
                   capture_output=True)
    np.save(tmp_path / "calib.npy", np.random.default_rng(0).standard_normal((64, 64, 3)).astype(np.float32))
    from concurrent.futures import ThreadPoolExecutor

    def convert_in_a_new_process(run: int) -> bytes:
        out = tmp_path / f"run{run}"
        out.mkdir()
        r = subprocess.run([sys.executable, "-m", "onnx2cmsis.cli", "convert", str(tmp_path / "residual.h5"),
                            "-c", str(tmp_path / "calib.npy"), "--out", str(out)], capture_output=True, text=True,
                           env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": str(run)})
        assert r.returncode == 0, r.stderr
        return (out / "residual.c").read_bytes()

    with ThreadPoolExecutor(max_workers=2) as pool:  # two at a time: each is mostly TensorFlow's start-up
        sources = set(pool.map(convert_in_a_new_process, range(4)))
    assert len(sources) == 1, f"{len(sources)} different .c files in 4 conversions"


def test_above_the_search_limit_the_greedy_order_is_deterministic_too(tmp_path, monkeypatch):
    """With the exact search cut off, the greedy and canonical orders still give one C for every node
    order, and the report says the bound is only the smallest of the orders tried."""
    from onnx2cmsis.plan import schedule

    monkeypatch.setattr(schedule, "EXACT_STATE_LIMIT", 1)
    model = branchy_model()
    calib = np.random.default_rng(1).standard_normal((32, 4, 64)).astype(np.float32)
    sources = set()
    for i, order in enumerate(list(topological_orders(len(model.graph.node), onnx_deps(model)))[::7]):
        path = tmp_path / f"order{i}.onnx"
        onnx.save(reordered(model, order), str(path))
        conv = convert(path, calib, name="branchy")
        sources.add(without_provenance(conv.source))
    assert len(sources) == 1
    assert not conv.report["schedule"]["exact"] and conv.report["schedule"]["method"] in ("greedy", "canonical")
    smallest, _ = bounds_by_brute_force(conv)
    assert conv.report["arena_bytes"] >= conv.report["arena_lower_bound_bytes"] >= smallest
