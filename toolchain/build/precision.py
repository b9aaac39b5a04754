"""Precision variants (fp16, dynamic and static int8) with automatic repair under their own gate.

A variant is built from the optimised fp32 ONNX file by a maintained converter (ONNX Runtime's
float16 tools and quantiser). When it fails its gate, the nodes responsible are found and kept in
fp32 (fp16 block list) or left unquantised (int8 exclusion list), and the variant is rebuilt, until
it passes or nothing is left to keep. Responsible means: values beyond the fp16 range in the fp32
graph, a converter/loader error or an invalid file naming a node, or the node whose error against
the fp32 graph jumps the most on the failing sample. Nodes are kept a module at a time (the exporter's name scopes), so
the list reads as "this layer stays in fp32".
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.build.converters import NAMED_NODE, QUANTIZABLE, check_valid, fp16, int8_dynamic, int8_static
from toolchain.build.passes import quiet_libraries
from toolchain.core.parity import ParityReport
from toolchain.diagnose.bisect import diverges, relative_error
from toolchain.diagnose.localize import node_scopes, run_exposed

__all__ = ["FP16_MAX", "MAX_ROUNDS", "VARIANTS", "RepairRound", "Variant", "VariantOutcome", "make_variant"]

FP16_MAX = 65504.0
SENTINEL = 1e30
"""Finite values this large are stand-ins for infinity (``finfo.min`` attention masks); fp16 turns
them into the infinity they stand for, so the range scan leaves them alone."""
MAX_ROUNDS = 5
"""Repair rebuilds a failing variant at most this many times."""
STALL_ROUNDS = 2
"""Repair stops early when this many rounds in a row failed no fewer sample sets, no less badly."""
_NODE_IN_ERROR = re.compile(r"Node \(([^)]+)\)|node\. Name:'([^']+)'")

Feeds = Mapping[str, np.ndarray]
Check = Callable[[Path], list[ParityReport]]


@dataclass(frozen=True)
class Variant:
    """How to build one precision variant.

    Args:
        name: variant key (``"fp16"``, ``"int8-dynamic"``).
        precision: the precision family whose tolerance applies (``"fp16"``, ``"int8"``).
        build: ``build(src, dst, keep, calibration)``; `keep` holds node names to leave in fp32.
        blames: which fp32 node types can be kept (fp16: any; int8: those the quantiser touches).
    """

    name: str
    precision: str
    build: Callable[[Path, Path, frozenset[str], Sequence[Feeds]], None]
    blames: Callable[[str], bool]


@dataclass(frozen=True)
class RepairRound:
    """One rebuild: which nodes were added to the keep list, and why."""

    added: tuple[str, ...]
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {"added": list(self.added), "reason": self.reason}


@dataclass
class VariantOutcome:
    """The final variant: passed or not, the nodes kept in fp32, every repair round, the reports."""

    variant: str
    passed: bool = False
    keep: list[str] = field(default_factory=list)
    rounds: list[RepairRound] = field(default_factory=list)
    reports: list[ParityReport] = field(default_factory=list)
    reason: str = ""
    seconds: float = 0.0

    @property
    def kept_modules(self) -> list[str]:
        """The module scopes named by the repair rounds whose nodes the final variant really keeps."""
        kept = [r for r in self.rounds if set(r.added) <= set(self.keep)]
        return sorted({m for r in kept for m in re.findall(r"module `([^`]*)`", r.reason)})


VARIANTS: Mapping[str, Variant] = {
    "fp16": Variant("fp16", "fp16", fp16, lambda op: True),
    "int8-dynamic": Variant("int8-dynamic", "int8", int8_dynamic, lambda op: op in QUANTIZABLE),
    # NOTE: QDQ quantisation wraps most operators, so any of them can be left out.
    "int8-static": Variant("int8-static", "int8", int8_static, lambda op: True),
}


def make_variant(
    variant: Variant,
    src: Path,
    dst: Path,
    *,
    check: Check,
    samples: Mapping[str, Feeds],
    limit: float,
    artifact: str,
    max_rounds: int = MAX_ROUNDS,
) -> VariantOutcome:
    """Build `variant` of the fp32 ONNX file `src` at `dst`, repairing it until it passes `check`.

    Args:
        variant: what to build.
        src: the verified (optimised) fp32 ONNX file; never changed.
        dst: where the variant goes (left there even when it fails, for the caller to discard).
        check: replays a file on every sample set against eager with the variant's gate.
        samples: sample set name -> feeds; all of them calibrate static int8 and the fp16 range scan.
        limit: relative error (integers and booleans: fraction changed) beyond which a node's output
            counts as diverged from the fp32 graph's; the variant tolerance's rtol is a good choice.
        artifact: `dst`'s path inside the package (``onnx/model.fp16.onnx``), the only path that
            messages name (`dst` lies in a scratch folder that is gone once the package is written).
        max_rounds: most rebuilds.
    """
    import onnx

    start = time.perf_counter()
    outcome = VariantOutcome(variant.name)
    proto = onnx.load(str(src))
    groups = _scope_groups(proto)
    keep: set[str] = set()
    if variant.precision == "fp16":
        hot = _beyond_fp16(proto, list(samples.values()))
        if hot:
            added = _expand(hot, groups)
            keep |= added
            outcome.rounds.append(RepairRound(tuple(sorted(added)), _why(hot, groups, "values beyond the fp16 range")))
    nodes = {n.name: n.op_type for n in proto.graph.node}
    built: set[str] = set()
    progress: list[tuple[int, float]] = []
    for _ in range(max_rounds + 1):
        try:
            with quiet_libraries():
                variant.build(src, dst, frozenset(keep), list(samples.values()))
                check_valid(dst, shown=artifact, reference=proto)
        except Exception as e:  # NOTE: a crash or invalid file ends repair unless it names a node to keep.
            text = _scrub(str(e), dst, artifact)
            named = NAMED_NODE.search(text)
            node = named.group(1) if named else ""
            if node in nodes and node not in keep and variant.blames(nodes[node]):
                added = _expand({node}, groups) - keep
                keep |= added
                why = f"{artifact} was not a valid model at node {node}"
                outcome.rounds.append(RepairRound(tuple(sorted(added)), _why({node}, groups, why)))
                continue
            outcome.reason = f"{variant.name} converter failed: {type(e).__name__}: {text.splitlines()[0][:400]}"
            break
        built = set(keep)
        outcome.reports = [replace(r, error=_scrub(r.error, dst, artifact)) for r in check(dst)]
        if all(outcome.reports):
            outcome.passed = True
            break
        progress.append(_badness(outcome.reports))
        if len(progress) > STALL_ROUNDS and min(progress[-STALL_ROUNDS:]) >= progress[-STALL_ROUNDS - 1]:
            outcome.reason = _failure_text(outcome.reports) + (
                f"; repair stopped: the last {STALL_ROUNDS} rounds did not reduce the failures"
            )
            break
        blamed, why = _blame(variant, proto, dst, outcome.reports, samples, keep, limit)
        if not blamed:
            outcome.reason = _failure_text(outcome.reports) + f"; repair stopped: {why}"
            break
        added = _expand(blamed, groups) - keep
        keep |= added
        outcome.rounds.append(RepairRound(tuple(sorted(added)), _why(blamed, groups, why)))
    else:
        outcome.reason = _failure_text(outcome.reports) + f"; still failing after {max_rounds} repair rounds"
    # NOTE: only what the last file built really holds in fp32; a round whose rebuild failed kept nothing.
    outcome.keep = sorted(built)
    outcome.seconds = time.perf_counter() - start
    return outcome


def _scrub(text: str, dst: Path, artifact: str) -> str:
    """`text` naming the variant by its package-relative path, never by its scratch folder."""
    root = dst.parents[len(Path(artifact).parts) - 1]
    for folder in dict.fromkeys((str(root.resolve()), str(root))):
        text = text.replace(f"{folder}/{artifact}", artifact).replace(f"{folder}/", "")
    return text


def _scope_groups(proto: Any) -> dict[str, str]:
    """Node name -> its innermost module scope ("" when the exporter recorded none)."""
    return {n.name: (node_scopes(n) or ("",))[-1] for n in proto.graph.node}


def _expand(nodes: set[str], groups: Mapping[str, str]) -> set[str]:
    """Every node of the modules the given nodes belong to (a node without a module stands alone)."""
    scopes = {groups.get(n, "") for n in nodes} - {""}
    return set(nodes) | {n for n, s in groups.items() if s in scopes}


def _why(nodes: set[str], groups: Mapping[str, str], reason: str) -> str:
    modules = sorted({groups.get(n, "") for n in nodes} - {""})
    where = ", ".join(f"module `{m}`" for m in modules) or ", ".join(sorted(nodes))
    return f"{reason}: {where}"


def _beyond_fp16(proto: Any, feeds: Sequence[Feeds]) -> set[str]:
    """Nodes of the fp32 graph with a float output beyond the fp16 range on any sample."""
    producer = {o: n.name for n in proto.graph.node for o in n.output if o}
    hot: set[str] = set()
    for sample in feeds:
        values = _values(proto, list(producer), sample)
        hot |= {producer[k] for k, v in values.items() if k in producer and _float_max(v) > FP16_MAX}
    return hot


def _blame(
    variant: Variant,
    proto: Any,
    dst: Path,
    reports: Sequence[ParityReport],
    samples: Mapping[str, Feeds],
    keep: set[str],
    limit: float,
) -> tuple[set[str], str]:
    """The node to keep next and why, or an empty set and why nothing is left."""
    import onnx

    failed = next(r for r in reports if not r)
    errors = [r.error for r in reports if r.error]
    named = _NODE_IN_ERROR.search(errors[0]) if errors else None
    nodes = {n.name: n for n in proto.graph.node}
    culprit = (named.group(1) or named.group(2)) if named else ""
    if culprit in nodes and culprit not in keep:
        return {culprit}, f"ONNX Runtime could not run node {culprit}"
    if errors and len(errors) == len(reports):
        return set(), f"the variant does not run ({errors[0][:200]})"
    feeds = samples[failed.sample]
    variant_proto = onnx.load(str(dst))
    present = {o for n in variant_proto.graph.node for o in n.output}
    names = [o for n in proto.graph.node for o in n.output if o and o in present]
    reference, candidate = _values(proto, names, feeds), _values(variant_proto, names, feeds)
    error = {k: relative_error(reference[k], candidate[k]) for k in names if k in reference and k in candidate}
    diverged = {k: diverges(e, reference[k], limit) for k, e in error.items()}
    first = _first_divergence(proto, diverged)
    if first is not None:
        where = f"on sample {failed.sample!r}"
        if first.name not in keep and variant.blames(first.op_type):
            return {first.name}, f"first node to diverge from fp32 (beyond {limit:g} relative) {where}"
        # NOTE: the diverging node already runs in fp32, so its inputs were rounded upstream: widen the
        # fp32 region towards the producers of its inputs.
        producers = {o: n for n in proto.graph.node for o in n.output}
        upstream = {producers[i].name for i in first.input if i in producers} - keep
        if upstream:
            return upstream, f"inputs of {first.name}, which diverges {where} although it runs in fp32"
    best: tuple[float, str] | None = None
    for node in proto.graph.node:
        if node.name in keep or not variant.blames(node.op_type):
            continue
        outs = [error[o] for o in node.output if o in error]
        if not outs:
            continue
        jump = max(outs) - max((error.get(i, 0.0) for i in node.input), default=0.0)
        if jump > 1e-6 and (best is None or jump > best[0]):
            best = (jump, node.name)
    if best is None:
        return set(), f"no node left to keep in fp32 (kept {len(keep)})"
    return {best[1]}, f"largest error jump ({best[0]:.3g} relative) on sample {failed.sample!r}"


def _first_divergence(proto: Any, diverged: Mapping[str, bool]) -> Any:
    """The first node (topological order) with a diverged output while none of its inputs diverged."""
    for node in proto.graph.node:
        if any(diverged.get(o, False) for o in node.output) and not any(diverged.get(i, False) for i in node.input):
            return node
    return None


def _values(proto: Any, names: Sequence[str], feeds: Feeds) -> dict[str, np.ndarray]:
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    return run_exposed(copy, names, feeds)


def _float_max(value: np.ndarray) -> float:
    if value.dtype.kind != "f" or value.size == 0:
        return 0.0
    finite = value[np.isfinite(value) & (np.abs(value) < SENTINEL)]
    return float(np.abs(finite).max()) if finite.size else 0.0


def _badness(reports: Sequence[ParityReport]) -> tuple[int, float]:
    """(failed sample sets, worst error ratio): compared as a tuple, smaller is better."""
    worst = max((o.worst_ratio for r in reports for o in r.outputs), default=0.0)
    checks = max((c.allowed - c.achieved for r in reports for c in r.checks if not c), default=0.0)
    return sum(not r for r in reports), float(max(worst, checks))


def _failure_text(reports: Sequence[ParityReport]) -> str:
    bad = [r for r in reports if not r]
    if not bad:
        return "passed"
    first = bad[0]
    if first.error:
        what = f"could not run: {first.error}"
    elif first.failures:
        what = first.failures[0].describe()
    else:
        what = next(c.describe() for c in first.checks if not c)
    more = f" (and {len(bad) - 1} more sample set(s))" if len(bad) > 1 else ""
    return f"failed on sample {first.sample!r}: {what}{more}"
