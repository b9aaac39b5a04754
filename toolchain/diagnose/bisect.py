"""Bisection fallback of localisation: the first node where an ONNX graph departs from a known-good one.

Used when a graph carries no module scopes to match against eager (metadata stripped by an
optimiser, a converter, a hand edit). The reference is a graph that passed (the exported graph for
an optimised one, the fp32 graph for a precision variant); values with the same name are compared.
The outputs of the first half of the shared nodes, in topological order, are exposed on copies of
both graphs; if one diverges the search continues in that half, otherwise in the other, until one
node is left. The finding names the nearest module scope the reference graph knows for that node.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.diagnose.localize import node_scopes, run_exposed

__all__ = ["Divergence", "diverges", "first_divergence", "relative_error"]


@dataclass(frozen=True)
class Divergence:
    """The first node whose output differs from the reference graph's beyond the limit."""

    node: str
    op_type: str
    module: str
    error: float
    limit: float
    runs: int
    """Graph runs the bisection took (two per step)."""

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"method": "bisection", **self.__dict__}

    def __str__(self) -> str:
        where = f" in module `{self.module}`" if self.module else " (no module scope recorded)"
        return (
            f"first divergence from the reference graph at node {self.node} ({self.op_type}){where}: "
            f"relative error {self.error:.3g} (limit {self.limit:g}), found by bisection in {self.runs} runs"
        )


def first_divergence(
    reference: Path, candidate: Path, feeds: Mapping[str, np.ndarray], *, limit: float
) -> Divergence | None:
    """Bisect the shared values of two ONNX files run on `feeds`; None when none diverges.

    Args:
        reference: the known-good ONNX file.
        candidate: the ONNX file that failed.
        feeds: one sample's inputs.
        limit: relative error (max |a - b| over the reference's largest magnitude) beyond which a float
            value diverges; any changed integer or boolean diverges.
    """
    import onnx

    good, bad = onnx.load(str(reference)), onnx.load(str(candidate))
    present = {o for n in bad.graph.node for o in n.output if o}
    nodes = [n for n in good.graph.node if any(o in present for o in n.output)]
    runs = 0

    def diverged(chunk: Sequence[Any]) -> dict[str, float]:
        nonlocal runs
        names = [o for n in chunk for o in n.output if o in present]
        a, b = _run(good, names, feeds), _run(bad, names, feeds)
        runs += 2
        errors = {k: relative_error(a[k], b[k]) for k in names if k in a and k in b}
        return {k: e for k, e in errors.items() if diverges(e, a[k], limit)}

    lo, hi = 0, len(nodes)
    if not nodes or not diverged(nodes):
        return None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if diverged(nodes[lo:mid]):
            hi = mid
        else:
            lo = mid
    node = nodes[lo]
    errors = diverged([node])
    scopes = node_scopes(node)
    return Divergence(
        node=node.name,
        op_type=node.op_type,
        module=scopes[-1] if scopes else "",
        error=max(errors.values(), default=0.0),
        limit=limit,
        runs=runs,
    )


def _run(proto: Any, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return run_exposed(copy, names, feeds)


def diverges(error: float, reference: np.ndarray, limit: float) -> bool:
    """A float value diverges beyond `limit`; any changed integer or boolean (a flipped comparison) diverges."""
    return error > (limit if reference.dtype.kind == "f" else 0.0)


def relative_error(reference: np.ndarray, candidate: np.ndarray) -> float:
    """How far `candidate` strays from `reference`, comparable across tensors.

    Floats: max |a - b| over the reference's largest finite magnitude (inf where a value turns
    non-finite); integers and booleans: the fraction that differ; another shape: inf.
    """
    if reference.shape != candidate.shape:
        return float("inf")
    if reference.size == 0:
        return 0.0
    if reference.dtype.kind != "f":
        return float(np.mean(reference != candidate))
    ref, cand = reference.astype(np.float64), candidate.astype(np.float64)
    same_nonfinite = ~np.isfinite(ref) & ((ref == cand) | (np.isnan(ref) & np.isnan(cand)))
    if not (np.isfinite(cand) | same_nonfinite).all():
        return float("inf")
    finite = np.isfinite(ref)
    if not finite.any():
        return 0.0
    scale = max(float(np.abs(ref[finite]).max()), 1e-12)
    return float(np.abs(cand[finite] - ref[finite]).max()) / scale
