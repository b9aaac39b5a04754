"""Compare the shapes a `torch.export.ExportedProgram` holds for with the spec's symbolic dims."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from toolchain.core.artifact import Finding
from toolchain.core.spec import ModelSpec

if TYPE_CHECKING:
    from torch.export import ExportedProgram

__all__ = ["exported_program_findings"]


def exported_program_findings(ep: ExportedProgram, spec: ModelSpec) -> list[Finding]:
    """Findings for every declared symbolic dim that the export fixed, narrowed or merged with another.

    User inputs of `ep` are matched to ``spec.inputs`` in order. A declared dim that became a plain
    int is ``specialized-dim``; one whose range in ``ep.range_constraints`` is narrower than its `Dim`
    is ``narrowed-dim``; two declared-distinct dims that became the same expression are ``unified-dims``.

    Args:
        ep: the captured program.
        spec: the spec it was captured from.
    """
    placeholders = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    names = list(ep.graph_signature.user_inputs)
    found: list[Finding] = []
    if len(names) != len(spec.inputs):
        found.append(
            Finding("missing-input", f"the program takes {len(names)} input(s), the spec declares {len(spec.inputs)}")
        )
    exprs: dict[str, Any] = {}  # declared symbol -> first expression the export gave it
    for (key, inp), name in zip(spec.inputs.items(), names, strict=False):
        val = placeholders[str(name)].meta.get("val") if str(name) in placeholders else None
        if val is None or not hasattr(val, "shape"):
            continue
        for axis, (want, got) in enumerate(zip(inp.shape, val.shape, strict=False)):
            if not isinstance(want, str):
                continue
            # NOTE: a specialised dim may be a plain int or a SymInt whose expression is a number.
            fixed = got if isinstance(got, int) else _bound(got.node.expr)
            if fixed is not None:
                found.append(
                    Finding(
                        "specialized-dim",
                        f"input {key!r} axis {axis} is declared {want!r} but the export fixed it to {fixed}",
                    )
                )
            elif want not in exprs:
                exprs[want] = got.node.expr
    found += _narrowed(exprs, ep.range_constraints, spec)
    found += _unified(exprs)
    return found


def _narrowed(exprs: dict[str, Any], ranges: Any, spec: ModelSpec) -> list[Finding]:
    found = []
    for sym, expr in exprs.items():
        if expr not in ranges:
            continue  # NOTE: a derived expression (2*s0) has no range of its own; its symbol is checked.
        dim, value_range = spec.dim(sym), ranges[expr]
        lower, upper = _bound(value_range.lower), _bound(value_range.upper)
        # NOTE: torch reports a lower bound of 2 for Dim.AUTO / Dim.DYNAMIC (it specialises 0 and 1
        # while tracing) yet the program still runs at size 1, so 2 only narrows a min above 2.
        too_high = lower is not None and lower > max(dim.min, 2)
        too_low = upper is not None and (dim.max == 0 or upper < dim.max)
        if too_high or too_low:
            found.append(
                Finding(
                    "narrowed-dim",
                    f"dim {sym!r} was declared {_interval(dim.min, dim.max or None)} but the export only holds "
                    f"for {_interval(lower, upper)}: a guard on its size (a shape-dependent branch?) was baked in",
                )
            )
    return found


def _unified(exprs: dict[str, Any]) -> list[Finding]:
    by_expr: dict[str, list[str]] = {}
    for sym, expr in exprs.items():
        by_expr.setdefault(str(expr), []).append(sym)
    return [
        Finding(
            "unified-dims",
            f"dims {syms} are declared distinct but the export made them all {expr}: the model requires them "
            "to be equal; declare one symbol for them",
        )
        for expr, syms in by_expr.items()
        if len(syms) > 1
    ]


def _bound(value: Any) -> int | None:
    """A range bound as an int, or None when it is infinite (torch's ``int_oo``)."""
    return int(value) if getattr(value, "is_Integer", False) else None


def _interval(lower: int | None, upper: int | None) -> str:
    return f"[{'-inf' if lower is None else lower}, {'inf' if upper is None else upper}]"
