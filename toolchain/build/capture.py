"""One ``torch.export`` capture shared by the export paths that start from one (ONNX and ``.pt2``)."""

from __future__ import annotations

import copy
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from exporters.onnx import capture_program
from toolchain.build.paths import PathResult
from toolchain.core.artifact import Finding
from toolchain.core.errors import ExportError
from toolchain.core.samples import SampleSet
from toolchain.core.spec import ModelSpec

__all__ = ["SHARING", "SharedCapture", "violated_assert"]

SHARING = ("onnx", "exported_program")
"""Paths fed from the shared capture, when both are asked for."""


class SharedCapture:
    """Captures the model once, on first use, the way ``torch.onnx.export(dynamo=True)`` does.

    NOTE: capture is a third of a dynamo ONNX export and nearly all of a ``.pt2`` one (1-2.5 s per zoo
    model here); the ONNX exporter translates a given program exactly as it would its own capture, so
    sharing costs the ONNX path nothing. Only when both paths are asked for: otherwise there is nothing
    to share, and a capture that fails would be paid twice.
    """

    def __init__(self, model: Any, spec: ModelSpec, sample: SampleSet, candidates: Sequence[str]) -> None:
        self._model, self._spec, self._sample = model, spec, sample
        self._enabled = all(name in candidates for name in SHARING)
        self._done = False
        self._program: Any = None
        self._findings: tuple[Finding, ...] = ()
        self._seconds = 0.0
        self._charged = False

    @property
    def shared(self) -> bool:
        """Whether both paths are asked for, so the capture is shared at all."""
        return self._enabled

    def program_for(self, name: str) -> Any:
        """The shared program for path `name`, or None: the path captures on its own."""
        if not self._enabled or name not in SHARING:
            return None
        if not self._done:
            self._done = True
            start = time.perf_counter()
            try:
                # NOTE: captured from a copy: the paths' own copies are taken from a model never run.
                self._program, findings = capture_program(copy.deepcopy(self._model), self._spec, self._sample)
                self._findings = tuple(findings)
            except ExportError:
                self._program = None  # NOTE: each path then captures on its own and reports its own reason
            self._seconds = time.perf_counter() - start
        return self._program

    def credit(self, path: PathResult) -> PathResult:
        """Give `path` what the shared capture warned, and its time (to the first path that used it)."""
        if path.artifact is not None:
            findings = (*self._findings, *path.artifact.findings)
            path.artifact = replace(path.artifact, findings=tuple(dict.fromkeys(findings)))
        if not self._charged:
            self._charged = True
            path.export_seconds += self._seconds
        return path


def violated_assert(program: Any, spec: ModelSpec, samples: Sequence[SampleSet]) -> str:
    """The first deferred runtime assertion of `program` that a sample set breaks, as ``sample: expr``; else "".

    NOTE: the shared capture is torch.onnx's, which defers shape assertions to run time (ONNX drops
    them); a ``.pt2`` keeps them and fails on the sizes they exclude (``Ne(s79, 1)`` on a declared
    size 1: every attention model of the zoo). Each assertion is evaluated on every sample set's sizes
    before anything is saved, loaded or replayed, so such a program goes straight to the plain capture
    instead of being rejected after a replay. Only a prediction: an assertion over sizes that are not
    the inputs' dims is left undecided, and whatever is shipped is verified as always.
    """
    try:
        import sympy
        import torch

        nodes = {n.name: n for n in program.graph.nodes}
        placeholders = [nodes[name] for name in program.graph_signature.user_inputs]
        found = [n for n in program.graph.nodes if n.target is torch.ops.aten._assert_scalar.default]
        if not found:
            return ""
        for sample in samples:
            sizes: dict[Any, Any] = {}
            for name, node in zip(spec.inputs, placeholders, strict=False):
                shape = getattr(node.meta.get("val"), "shape", ())
                for axis, dim in enumerate(shape):
                    if isinstance(dim, torch.SymInt) and isinstance(dim.node.expr, sympy.Symbol):
                        sizes[dim.node.expr] = sympy.Integer(sample.feeds[name].shape[axis])
            for node in found:
                value = node.args[0].meta.get("val")
                if isinstance(value, torch.SymBool) and value.node.expr.xreplace(sizes) is sympy.false:
                    return f"{sample.name}: {value.node.expr}"
    except Exception:  # NOTE: a prediction that cannot be made changes nothing
        return ""
    return ""
