"""Range floors: a value's range may start where its reader stops telling values apart.

A classifier's logits often span far more below than the softmax reading them can resolve: a class
the model rules out sits 30-90 below the winner, and with min/max ranges (TFLite's converter's) those
values take most of the int8 codes. The reader's handler says where its input stops mattering
(OpHandler.input_floor: the softmax's, ops/softmax.py); the value's range then starts there, in every
recipe, and the codes go to the values that decide the output. On the held-out benchmark this took
the int8 median over TFLite's converter from +0.92 to +1.71 dB (docs/benchmarks.md, issue 29 part 10).

Only where the floor is the value's own business: one reader, which reads it as its first input; not
a model input or output (its range serves the application too); no other tensor taking the same
model value's range; and a producer whose output range comes from calibration (free_output_quant: a
pool or an upsampling keeps its input's quantization, and a floor there would move nothing).
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx

from onnx2cmsis.ir.graph import Graph, Node
from onnx2cmsis.ir.tensor import Tensor
from onnx2cmsis.ops.registry import Registry
from onnx2cmsis.quant.calibrate import RecordedFloats, float_values


def floor_ranges(model: onnx.ModelProto, graph: Graph, registry: Registry, samples,
                 ranges: dict[str, tuple[float, float]], recorded: RecordedFloats | None = None
                 ) -> dict[str, tuple[float, float]]:
    """{value: (its low end in `ranges`, the floor)} for each value whose reader floors it above that low
    end (the floor at most 0: a range holds zero whatever its ends). The floor is the lowest over the
    samples, read from `recorded` (the float values of `samples`) or from one more float run, sample
    by sample."""
    readers = _floored_inputs(graph, registry, ranges)
    if not readers:
        return {}
    lowest = dict.fromkeys(readers, np.inf)
    for values in float_values(model, samples, sorted(readers), recorded):
        for name, (node, t) in readers.items():
            floor = registry.for_op(node.op).input_floor(node, t.in_layout(np.asarray(values[name])[None]))
            if floor is not None:
                lowest[name] = min(lowest[name], floor)
    floors = {}
    for name, floor in lowest.items():
        low = ranges[name][0]
        if np.isfinite(floor) and low < min(floor, 0.0):
            floors[name] = (low, min(floor, 0.0))
    return floors


def _floored_inputs(graph: Graph, registry: Registry, ranges: dict[str, tuple[float, float]]
                    ) -> dict[str, tuple[Node, Tensor]]:
    """Model value -> (its reader, its tensor) where a floor may apply (see the module docstring)."""
    shared = Counter(t.calib_name for t in graph.tensors.values() if t.calib_name)
    found = {}
    for node in graph.nodes:
        if not node.inputs or not registry.for_op(node.op).floors_input:
            continue
        name = node.inputs[0]
        t, producer = graph.tensors[name], graph.producer(name)
        if (t.mirrors_model_value and shared[t.calib_name] == 1 and t.calib_name in ranges
                and name not in graph.inputs and name not in graph.outputs and len(graph.consumers(name)) == 1
                and producer is not None and registry.for_op(producer.op).free_output_quant):
            found[t.calib_name] = (node, t)
    return found


def mark_floors(graph: Graph, floors: dict[str, tuple[float, float]]) -> None:
    """Say on each node whose output was floored what calibration saw and where its reader stops
    telling values apart (NAME.json's layers[].range_floor; verify --layers compares from there)."""
    for node in graph.nodes:
        value = graph.tensors[node.output].calib_name if node.outputs else None
        if value in floors:
            low, floor = floors[value]
            node.attrs["range_floor"] = {"lowest_seen": round(low, 4), "floor": round(floor, 4)}
