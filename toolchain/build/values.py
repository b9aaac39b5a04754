"""Evidence that a trace froze a tensor's value: a branch or a number taken as a constant.

``torch.jit.trace`` (behind the ``torchscript_trace`` path, the ``torchscript`` fallback and the legacy
ONNX exporter) records the ops one sample ran. When the model turns a tensor *value* into a Python
bool or number (``if h.mean() > 0.3:``, ``int(x.argmax())``), the trace keeps the outcome as a
constant and says so with a TracerWarning at that source line. Whether the outcome depends on the
inputs is decided from evidence: the model is traced again on the other sample sets of the export
size (the value draws among them) and a trace that records another graph proves it.
"""

from __future__ import annotations

import linecache
import re
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from toolchain.core.artifact import Finding
from toolchain.core.samples import SampleSet
from toolchain.core.spec import ModelSpec

__all__ = ["frozen_values", "retrace_differs", "source_text"]

_MANGLED = re.compile(r"___torch_mangle_\d+\.")
_CONVERSIONS = (
    "Converting a tensor to a Python boolean",
    "Converting a tensor to a Python number",
    "Converting a tensor to a Python integer",
    "Converting a tensor to a Python float",
    "Converting a tensor to a Python index",
    "Converting a tensor to a NumPy array",
)


def frozen_values(findings: Sequence[Finding]) -> list[Finding]:
    """The TracerWarnings that a tensor's value became a Python value, at a line of the user's code."""
    import torch

    library = str(Path(torch.__file__).parent)
    return [
        f
        for f in findings
        if "TracerWarning" in f.message
        and any(c in f.message for c in _CONVERSIONS)
        and f.source
        and not f.source.startswith(library)
    ]


def source_text(source: str) -> str:
    """The code at ``file:line``, stripped (empty when the file cannot be read)."""
    file, _, line = source.rpartition(":")
    return linecache.getline(file, int(line)).strip() if line.isdigit() else ""


def retrace_differs(model: Any, spec: ModelSpec, samples: Sequence[SampleSet]) -> str:
    """The first sample set of the export size on which a new trace records another graph ("" if none).

    Sets of other sizes are left out: their graphs differ in shapes alone.
    """
    import torch

    same = [s for s in samples if dict(s.sizes) == dict(samples[0].sizes)]
    if len(same) < 2:
        return ""
    graphs = []
    for sample in same:
        args = tuple(torch.from_numpy(sample.feeds[n].copy()) for n in spec.inputs)
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # NOTE: the first trace already recorded these warnings.
            try:
                traced = torch.jit.trace(model, args, check_trace=False)  # type: ignore[no-untyped-call]
            except Exception:  # NOTE: a draw the trace cannot take says nothing about the export's trace.
                continue
        # NOTE: each new trace gets its class a new mangled name; the graphs are compared without it.
        graphs.append((sample.name, _MANGLED.sub("", str(traced.inlined_graph))))
    first = graphs[0][1] if graphs else ""
    return next((name for name, graph in graphs[1:] if graph != first), "")
