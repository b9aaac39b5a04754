"""``toolchain diagnose``: export one ONNX path, find where it first disagrees with eager, say where."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from exporters import EXPORTERS
from runtimes.eager import EagerSession
from runtimes.ort import OrtRuntime
from toolchain.core.errors import TargetError, ToolchainError
from toolchain.core.interface import input_signature, package_signature
from toolchain.core.parity import ParityReport, compare
from toolchain.core.samples import generate_samples
from toolchain.core.spec import ModelSpec
from toolchain.diagnose.localize import Localization, localize

__all__ = ["Diagnosis", "diagnose"]


@dataclass(frozen=True)
class Diagnosis:
    """Parity per sample set of one export path, and the localisation of the first failure."""

    exporter: str
    reports: tuple[ParityReport, ...]
    localization: Localization | None

    def __bool__(self) -> bool:
        return all(self.reports)


def diagnose(spec: ModelSpec, *, exporter: str = "onnx", sample: str = "", seed: int = 0) -> Diagnosis:
    """Export `spec` with an ONNX `exporter`, compare with eager, localise the first failing sample.

    Args:
        spec: the model.
        exporter: ``onnx`` or ``onnx_legacy``.
        sample: localise on this sample set instead of the first failing one.
        seed: seed of the generated samples.
    """
    if EXPORTERS.get(exporter).format != "onnx":
        raise TargetError(f"diagnose works on ONNX paths (onnx, onnx_legacy), not {exporter!r}")
    model = spec.build().eval()
    samples = generate_samples(spec, seed=seed)
    if sample and sample not in {s.name for s in samples}:
        raise TargetError(f"no sample set {sample!r}; known: {', '.join(s.name for s in samples)}")
    eager = EagerSession(model, signature=input_signature(spec))
    expected = [eager.run(s.feeds) for s in samples]
    signature = package_signature(spec, samples, expected)
    with tempfile.TemporaryDirectory() as tmp:
        artifact = EXPORTERS.get(exporter).export(model, spec, samples[0], Path(tmp))
        session = OrtRuntime().load(Path(tmp) / artifact.path, signature=signature)
        reports = []
        for s, exp in zip(samples, expected, strict=True):
            try:
                reports.append(compare(exp, session.run(s.feeds), spec.tolerance, sample=s.name, feeds=s.feeds))
            except ToolchainError as e:
                reports.append(ParityReport.could_not_run(str(e), sample=s.name))
        target = sample or next((r.sample for r in reports if not r and not r.error), "")
        found = None
        if target:
            chosen = next(s for s in samples if s.name == target)
            found = localize(spec, model, Path(tmp) / artifact.path, chosen, tolerance=spec.tolerance)
    return Diagnosis(exporter, tuple(reports), found)
