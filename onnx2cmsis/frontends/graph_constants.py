"""The constant values an ONNX graph holds before anything is folded: what the frontends' rewrites
(the QDQ split, selection folding) read indices, scales and zero points from."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper


def constant_values(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Initializers, Constant nodes and Identity copies of them (torch's exporter shares one zero point
    between QDQ pairs through Identity nodes), by value name."""
    consts = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    for n in graph.node:  # exporters write producers first
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx"):
            for a in n.attribute:
                if a.name == "value":
                    consts[n.output[0]] = numpy_helper.to_array(a.t)
        elif n.op_type == "Identity" and n.domain in ("", "ai.onnx") and n.input[0] in consts:
            consts[n.output[0]] = consts[n.input[0]]
    return consts
