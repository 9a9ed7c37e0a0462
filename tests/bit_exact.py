"""The check whole-model tests share: the C is bit-exact with the reference and tflite-micro on the
host, and gives the same bytes on QEMU Cortex-M4 and M55."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from onnx2cmsis.drivers.evaluate import evaluate, quantize_inputs
from onnx2cmsis.targets.qemu import build_firmware, run_firmware
from tests.needs import qemu_tools


def bit_exact_everywhere(conv, x, tmp_path: Path, oracle_samples: int | None = None,
                         qemu_samples: int = 6) -> np.ndarray:
    """C == reference == tflite-micro on the host (the first `oracle_samples` in tflite-micro, all when
    None), and the same bytes on QEMU M4 and M55 for the first `qemu_samples`; the host C's outputs."""
    ev, out = evaluate(conv, x, tmp_path / "host", oracle_samples=oracle_samples)
    assert ev.mismatches_vs_reference == 0 and ev.mismatches_vs_tflite_micro == 0, ev
    qemu_tools()
    xq = quantize_inputs(conv, x[:qemu_samples])
    for target in ("m4", "m55"):
        fw = build_firmware([conv], target, tmp_path / target)
        assert np.array_equal(run_firmware(fw, {conv.name: xq})[conv.name], out[:qemu_samples]), target
    return out


def batch_mismatches(conversions: list, inputs: dict[str, np.ndarray]) -> list[str]:
    """The conversions whose reference on all their samples at once (Conversion.references, what the
    searches and `verify` run) differs anywhere from the reference one sample at a time."""
    bad = []
    for c in conversions:
        one_by_one = np.stack([c.reference(x) for x in inputs[c.name]])
        if not np.array_equal(c.references(inputs[c.name]), one_by_one):
            bad.append(c.name)
    return bad
