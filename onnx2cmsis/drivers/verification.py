"""`onnx2cmsis verify`: the proof a user can run. Convert, build for each target, run every sample,
compare with tflite-micro (the independent oracle) and with the float model.

A target passes only when every output byte equals the oracle's (and the integer reference's). On
a mismatch a debug host build dumps every layer's output and names the first layer that differs
from the reference.
"""

from __future__ import annotations

import platform
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from onnx2cmsis.api import Conversion
from onnx2cmsis.errors import ConversionError, OptionError
from onnx2cmsis.drivers.evaluate import file_model_codes, float_outputs, quantize_inputs
from onnx2cmsis.quant.accuracy import accuracy, load_labels, predicted_classes
from onnx2cmsis.quant.calibrate import load_calibration
from onnx2cmsis.quant.quantize import output_floats, output_slices, run_reference
from onnx2cmsis.data.samples import MultiSamples, checked_samples
from onnx2cmsis.drivers.stream_check import StreamRun, stream_run
from onnx2cmsis.targets.catalog import target_named
from onnx2cmsis.targets.host import layer_outputs
from onnx2cmsis.targets.interface import DoesNotFit, Ran, Target


@dataclass
class TargetResult:
    target: str
    samples: int
    bit_exact: bool
    mismatches: int  # samples whose output differs from the oracle (or the reference without one)
    first_bad_layer: str | None
    max_abs_error_vs_float: float
    argmax_agreement: float
    accuracy: float | None
    flash_bytes: int | None  # the firmware image: code + constants (host: None)
    weights_bytes: int
    ram_bytes: int | None  # static RAM of the image: data + bss (the arena is in bss)
    arena_bytes: int
    instructions_per_inference: int | None  # exact, QEMU's count plugin; the largest over the samples
    stack_bytes: int | None  # measured on QEMU: painted-stack high-water mark of NAME_invoke, largest over samples
    oracle: str
    skipped: str | None = None
    # with labels: the float model's accuracy (ONNX Runtime) on the same samples, beside the C's
    float_accuracy: float | None = None
    # a streaming conversion: its pushes, those whose output differs from invoke on the window, the
    # instructions of a push after the first whole window (median; QEMU), the state bytes
    stream_pushes: int | None = None
    stream_mismatches: int | None = None
    instructions_per_push: int | None = None
    stream_state_bytes: int | None = None
    stream_stateful: bool = False  # held to the one run over the whole stream, not invoke per window
    # a model quantized already (QDQ): how its outputs compare with ONNX Runtime running the file
    # (graph optimization off): the share of output elements within one step of its, the largest
    # difference in steps, and the share of samples with the same argmax (first output)
    file_within_one_step: float | None = None
    file_max_steps: int | None = None
    file_argmax_agreement: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def oracle_outputs(conv: Conversion, xq: np.ndarray, reference: np.ndarray | None = None
                   ) -> tuple[np.ndarray | None, str]:
    """tflite-micro's outputs for the same integer graph (a .tflite: for the file itself, where
    tflite-micro can run it right), or None and why not."""
    if platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"):
        return None, f"unavailable: the tflite-micro wheel is Linux x86_64 only ({platform.system()} {platform.machine()})"
    try:
        from onnx2cmsis.oracle.tflite_export import NotExportable, export_tflite, run_tflite_micro
    except ImportError:
        return None, "unavailable: install the [verify] extra (tflite-micro)"
    name = "tflite-micro"
    if conv.graph.file_quant is not None and conv.graph.file_quant.source == "TFLite":
        from_file, why_not = _file_oracle(conv, xq, reference)
        if from_file is not None:
            return from_file, "tflite-micro on the file"
        name = f"tflite-micro on this tool's export (not on the file: {why_not})"
    try:
        return run_tflite_micro(export_tflite(conv.graph, conv.registry), xq), name
    except NotExportable as exc:
        return None, f"unavailable: {exc}"
    except ConversionError as exc:
        return None, f"unavailable: {exc.args[0] if exc.args else exc}"


def _file_oracle(conv: Conversion, xq: np.ndarray, reference: np.ndarray | None) -> tuple[np.ndarray | None, str]:
    """tflite-micro's outputs for a .tflite file itself, or None and why it cannot be the oracle: it
    lacks an op (TILE), or the file holds a chain it computes wrongly (a dynamic batch's dilated
    convolution as SPACE_TO_BATCH_ND -> ... -> BATCH_TO_SPACE_ND: docs/quantization.md)."""
    from onnx2cmsis.frontends.tflite_reader import read_tflite
    from onnx2cmsis.oracle.tflite_export import run_tflite_micro

    try:
        outputs = run_tflite_micro(conv.model_path.read_bytes(), xq)
    except Exception as exc:  # the runtime raises plain RuntimeErrors for ops it lacks
        return None, f"it cannot run the file ({str(exc).splitlines()[0][:80] if str(exc) else type(exc).__name__})"
    if reference is not None and not np.array_equal(outputs, reference) and \
            "SPACE_TO_BATCH_ND" in {op.code for op in read_tflite(conv.model_path).operators}:
        return None, "it computes the file's SPACE_TO_BATCH_ND dilated-convolution chain wrongly"
    return outputs, ""


def first_bad_layer(conv: Conversion, x: np.ndarray, workdir: Path) -> str:
    """The first layer whose output in a debug host build differs from the integer reference (run
    with the conversion's own handlers, plugins included)."""
    got = layer_outputs(conv, x, workdir)
    want = run_reference(conv.graph, conv.registry, x, keep_all=True)
    for i, node in enumerate(conv.graph.nodes):
        if i >= len(got):
            return f"layer {i} '{node.name}' ({node.op}): never reached (the C returned an error before it)"
        if not np.array_equal(got[i], want[node.output].reshape(-1)):
            return f"layer {i} '{node.name}' ({node.op}, {node.origin})"
    return "none on the host (every layer matches there)"


@dataclass
class Verification:
    """What `verify` found: one TargetResult per target, in the order asked."""

    conversion: Conversion
    results: list[TargetResult]
    samples: np.ndarray  # the float samples that ran, as given

    @property
    def passed(self) -> bool:
        """At least one target ran, and every target that ran gave the oracle's bytes on every sample."""
        ran = [r for r in self.results if not r.skipped]
        return bool(ran) and all(r.bit_exact for r in ran)

    def table(self) -> str:
        return format_table(self.results)


def verify(conversion: Conversion, data: np.ndarray | str | Path, targets: Sequence[str] = ("host",),
           labels: np.ndarray | str | Path | None = None, workdir: Path | None = None,
           progress: Callable[[str], None] | None = None) -> Verification:
    """Build `conversion` for each target (host, m0plus, m4, m7, m55), run every sample of `data` (an
    array or a .npy/.npz, shaped like the calibration samples) and compare each output byte with
    tflite-micro's. `labels` (one class per sample) adds accuracy. `progress` is called with a short
    phrase as each step starts. A model too big for a board is reported as skipped there; a missing
    cross-compiler or QEMU raises a ToolchainError that says what to install."""
    chosen = [target_named(name) for name in targets]  # an unknown name fails here, before any work
    g = conversion.graph
    if isinstance(data, (str, Path)):
        data = load_calibration(Path(data), g.model_input_shapes, g.input_names, what="{opt:data}")
    else:
        data = checked_samples(data, g.model_input_shapes, g.input_names, "{opt:data}", what="the data")
    x = MultiSamples(tuple(np.asarray(p, np.float32) for p in data.parts)) if isinstance(data, MultiSamples) \
        else np.asarray(data, np.float32)
    if labels is not None:
        if len(g.outputs) > 1:
            raise OptionError(f"{{opt:labels}} judge one output's classes; this model has {len(g.outputs)} outputs")
        labels = load_labels(labels, len(x))
    return Verification(conversion, _run_targets(conversion, x, chosen, labels, workdir, progress), x)


def _run_targets(conv: Conversion, x_float: np.ndarray, targets: list[Target], labels: np.ndarray | None,
                 workdir: Path | None, progress: Callable[[str], None] | None) -> list[TargetResult]:
    step = progress or (lambda _: None)
    xq = quantize_inputs(conv, x_float)
    step(f"running {len(xq)} samples in the integer reference and tflite-micro")
    reference = conv.references(xq)
    oracle, oracle_name = oracle_outputs(conv, xq, reference)
    if oracle is not None and not np.array_equal(oracle, reference):
        bad = int(np.argmax(np.any(oracle != reference, axis=1)))
        raise ConversionError(f"the integer reference differs from tflite-micro on sample {bad}: a converter bug, "
                              "please report it")
    file_codes = None
    if conv.file_model is not None:
        step(f"running {len(xq)} samples of the quantized model file in ONNX Runtime")
        file_codes = file_model_codes(conv, x_float)
    checks = _Checks(reference if oracle is None else oracle, oracle_name,
                     stream_run(conv, xq) if conv.report.get("stream") else None,
                     float_outputs(conv, x_float).astype(np.float64), labels, file_codes)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        base = workdir or Path(tmp)
        for target in targets:
            step(f"{target.name}: {target.building}")
            try:
                built = target.build(conv, base / target.name, stream=checks.stream is not None)
                ran = built.run(xq, None if checks.stream is None else checks.stream.pushes())
            except DoesNotFit:
                results.append(_skipped(conv, target.name, oracle_name, len(xq),
                                        f"does not fit {target.machine}'s memory"))
                continue
            results.append(_judged(conv, target.name, xq, ran, checks, base))
    return results


@dataclass
class _Checks:
    """What every target's run is held to."""

    expected: np.ndarray  # the oracle's output codes (the reference's without one)
    oracle: str
    stream: StreamRun | None
    want_float: np.ndarray  # the float model's outputs
    labels: np.ndarray | None
    file_codes: np.ndarray | None  # ONNX Runtime's outputs of a quantized model file, on the output grid


def _judged(conv: Conversion, target: str, xq: np.ndarray, ran: Ran, checks: _Checks, base: Path) -> TargetResult:
    outputs, counts, stream = ran.outputs, ran.counts, checks.stream
    bad = np.any(outputs != checks.expected, axis=1)
    stream_bad = per_push = None
    if stream is not None:
        ready = [k for k, status in enumerate(ran.push_statuses) if status == 1]
        stream_bad = len(stream.ready) if ready != stream.ready else int(
            np.sum(np.any(ran.pushed != stream.want, axis=1)))
        if counts.push_instructions is not None:  # a push after the first whole window: the steady cost
            per_push = int(np.median(counts.push_instructions[stream.ready[1:] or stream.ready]))
    got = output_floats(conv.graph, outputs).astype(np.float64).reshape(len(xq), -1)
    want_float = checks.want_float.reshape(got.shape)
    first = output_slices(conv.graph)[0]  # agreement is the first output's (a classifier's scores)
    culprit = None
    if bad.any():
        culprit = first_bad_layer(conv, xq[int(np.argmax(bad))], base / f"{target}_debug")
    largest = lambda per_sample: None if per_sample is None else int(per_sample.max())  # noqa: E731
    file_figures = {}
    if checks.file_codes is not None:
        steps = np.abs(outputs.astype(np.int64) - checks.file_codes)
        file_figures = {"file_within_one_step": float(np.mean(steps <= 1)), "file_max_steps": int(steps.max()),
                        "file_argmax_agreement": float(np.mean(outputs[:, first].argmax(axis=1)
                                                               == checks.file_codes[:, first].argmax(axis=1)))}
    return TargetResult(
        target=target, samples=len(xq), bit_exact=not bad.any() and not stream_bad, mismatches=int(bad.sum()),
        first_bad_layer=culprit, max_abs_error_vs_float=float(np.max(np.abs(got - want_float))),
        argmax_agreement=accuracy(got[:, first], predicted_classes(want_float[:, first])),
        accuracy=None if checks.labels is None else accuracy(got, checks.labels),
        float_accuracy=None if checks.labels is None else accuracy(want_float, checks.labels),
        flash_bytes=counts.flash_bytes, weights_bytes=conv.report["weights_bytes"], ram_bytes=counts.ram_bytes,
        arena_bytes=conv.plan.arena_bytes, instructions_per_inference=largest(counts.instructions),
        stack_bytes=largest(counts.stack_bytes), oracle=checks.oracle,
        **({} if stream is None else {"stream_pushes": len(stream.pushes()), "stream_mismatches": stream_bad,
                                      "instructions_per_push": per_push,
                                      "stream_state_bytes": conv.report["stream"]["state_bytes"],
                                      "stream_stateful": bool(conv.report["stream"].get("stateful"))}),
        **file_figures)


def _skipped(conv: Conversion, target: str, oracle: str, samples: int, why: str) -> TargetResult:
    return TargetResult(target=target, samples=samples, bit_exact=False, mismatches=0, first_bad_layer=None,
                        max_abs_error_vs_float=float("nan"), argmax_agreement=float("nan"), accuracy=None,
                        flash_bytes=None, weights_bytes=conv.report["weights_bytes"], ram_bytes=None,
                        arena_bytes=conv.plan.arena_bytes, instructions_per_inference=None, stack_bytes=None,
                        oracle=oracle,
                        skipped=why)


def format_table(results: list[TargetResult]) -> str:
    head = (f"{'target':<8}{'samples':>8}{'bit-exact':>10}{'mismatch':>9}{'max|err|':>10}{'argmax':>8}"
            f"{'accuracy':>9}{'float acc':>10}{'flash':>8}{'weights':>8}{'RAM':>7}{'arena':>7}{'stack':>7}{'instr/inf':>10}  oracle")
    lines = [head, "-" * len(head)]
    for r in results:
        if r.skipped:
            lines.append(f"{r.target:<8}skipped: {r.skipped}")
            continue
        fmt = lambda v: "-" if v is None else str(v)  # noqa: E731
        acc = "-" if r.accuracy is None else f"{r.accuracy:.3f}"
        float_acc = "-" if r.float_accuracy is None else f"{r.float_accuracy:.3f}"
        lines.append(f"{r.target:<8}{r.samples:>8}{'yes' if r.bit_exact else 'NO':>10}{r.mismatches:>9}"
                     f"{r.max_abs_error_vs_float:>10.4f}{r.argmax_agreement:>8.3f}{acc:>9}{float_acc:>10}{fmt(r.flash_bytes):>8}"
                     f"{r.weights_bytes:>8}{fmt(r.ram_bytes):>7}{r.arena_bytes:>7}{fmt(r.stack_bytes):>7}"
                     f"{fmt(r.instructions_per_inference):>10}  {r.oracle}")
        if r.first_bad_layer:
            lines.append(f"{'':<8}first bad layer: {r.first_bad_layer}")
        if r.stream_pushes is not None:
            lines.append(f"{'':<8}{_stream_summary(r)}")
        if r.file_within_one_step is not None:
            lines.append(f"{'':<8}vs ONNX Runtime running the quantized file: {100 * r.file_within_one_step:.2f}% of "
                         f"output values within one step (largest {r.file_max_steps}), same argmax on "
                         f"{100 * r.file_argmax_agreement:.1f}% of samples")
    return "\n".join(lines)


def _stream_summary(r: TargetResult) -> str:
    held_to = "the model run once over every step since the reset" if r.stream_stateful else "invoke on its window"
    exact = (f"every output == {held_to}" if not r.stream_mismatches
             else f"{r.stream_mismatches} outputs DIFFER from {held_to}")
    cost = ""
    if r.instructions_per_push is not None and r.instructions_per_inference:
        cost = (f", {r.instructions_per_push:,} instructions per push "
                f"(x{r.instructions_per_push / r.instructions_per_inference:.2f} of an invoke)")
    return f"stream: {r.stream_pushes} pushes, {exact}{cost}, state {r.stream_state_bytes:,} B"


def format_layer_table(rows: list) -> str:
    """evaluate.layer_accuracy rows as a table: where the integer model departs from the float one."""
    head = f"{'layer':>5}  {'op':<10}{'SQNR dB':>8}{'max|err| LSB':>13}{'saturated':>11}  name (from)"
    lines = ["", head, "-" * len(head)]
    for r in rows:
        name = "".join(ch if ch.isprintable() else "?" for ch in r.name)  # model text: no terminal controls
        lines.append(f"{r.index:>5}  {r.op:<10}{r.sqnr_db:>8.1f}{r.max_error_lsb:>13.2f}"
                     f"{100 * r.saturated_share:>10.2f}%  {name} ({r.origin})")
    lines.append("saturated: the share of the float values more than one step outside the layer's integer range; "
                 "where it is not 0 on your data, the calibration samples did not cover it")
    return "\n".join(lines)
