"""Text views of registered versions: ``compare``'s side-by-side table and ``show``'s record."""

from __future__ import annotations

from collections.abc import Sequence

from toolchain.registry.peers import PeerRanking
from toolchain.registry.store import Version

__all__ = ["compare_table", "describe_version", "peers_table"]

_BATCHES = ("1", "16")


def compare_table(versions: Sequence[Version]) -> str:
    """One line per version: status, drift, p50 at batch 1 and 16, size, ops, evaluation metric, signature."""
    head = f"{'version':>7}  {'status':10} {'drift':>7} {'p50@1 ms':>9} {'p50@16 ms':>10} {'size B':>9} {'ops':>5}"
    lines = [head + f"  {'evaluation':18}  signature     weights       created"]
    for v in versions:
        e = v.evidence
        latency = [f"{e.latency[b].p50_ms:.4g}" if b in e.latency else "—" for b in _BATCHES]
        lines.append(
            f"{v.version:>7}  {v.status:10} {e.drift:7.3g} {latency[0]:>9} {latency[1]:>10} {e.size_bytes:>9} "
            f"{e.ops:>5}  {_evaluation(v):18}  {e.signature_sha256[:12]}  {e.weights_sha256[:12]}  {e.created}"
        )
    lines.append(
        "drift: worst error of any artifact as a share of its allowed error (1 is the limit); "
        "evaluation: the task metric `toolchain evaluate` recorded on labelled data"
    )
    return "\n".join(lines)


def peers_table(ranking: PeerRanking) -> str:
    """One line per member, best first: metric, how far behind the best, p50 at batch 1, size, the flag."""
    lines = [
        f"family {ranking.family}: ranked on {ranking.metric or 'nothing (no member evaluated)'}, then p50 at "
        f"batch 1, then size; flagged when behind the best by more than {ranking.margin:g}",
        f"{'rank':>4}  {'model':28} {'version':>7}  {'status':10} {ranking.metric or 'metric':>9} {'behind':>8} "
        f"{'examples':>8} {'p50@1 ms':>9} {'size B':>9}  flag",
    ]
    for rank, p in enumerate(ranking.peers, 1):
        value = f"{p.value:.4g}" if p.value is not None and p.behind is not None else "—"
        behind = f"{p.behind:.4g}" if p.behind is not None else "—"
        latency = f"{p.p50_ms:.4g}" if p.p50_ms is not None else "—"
        flag = "BEHIND (retire?)" if p.flagged else ""
        lines.append(
            f"{rank:>4}  {p.name:28} {p.version:>7}  {p.status:10} {value:>9} {behind:>8} {p.examples:>8} "
            f"{latency:>9} {p.size_bytes:>9}  {flag}".rstrip()
        )
    lines += [f"note: {n}" for n in ranking.notes]
    return "\n".join(lines)


def _evaluation(version: Version) -> str:
    metric, value = version.tags.get("toolchain.eval.metric"), version.tags.get("toolchain.eval.value")
    return f"{metric} {float(value):.4g}" if metric and value else "—"


def describe_version(version: Version) -> str:
    """Every fact recorded for `version`, one per line."""
    e = version.evidence
    lines = [
        f"{version.name} version {version.version}: {version.status}",
        f"  stored at:  {version.source}",
        f"  source:     {e.source} (package version {e.package_version}, exported {e.created})",
        f"  signature:  {e.signature_sha256}",
        f"  weights:    {e.weights_sha256 or 'unrecorded'}",
        f"  source sha: {e.source_sha256 or 'unrecorded'}",
        f"  size:       {e.size_bytes} B of artifacts, {e.ops} ops in the first ONNX artifact",
    ]
    lines += [
        f"  artifact:   {p} ({e.sizes.get(p, 0)} B, worst {e.worst_ratio.get(p, 0.0):.3g}x allowed)" for p in e.kept
    ]
    lines += [
        f"  batch {b}:    {lat.runtime} {lat.artifact} p50 {lat.p50_ms:.4g} ms on {lat.host}"
        for b, lat in sorted(e.latency.items(), key=lambda kv: int(kv[0]))
    ] or ["  latency:    not recorded (run `toolchain bench` before `registry add`)"]
    if "toolchain.eval.metric" in version.tags:
        t = {k.removeprefix("toolchain.eval."): v for k, v in version.tags.items() if k.startswith("toolchain.eval.")}
        lines.append(
            f"  evaluated:  {_evaluation(version)} on {t.get('examples', '?')} examples with {t.get('artifact', '?')}"
            f" (data {t.get('data_sha256', '')[:12]})"
        )
    if version.status == "retired":
        lines.append(f"  retired:    {version.tags.get('toolchain.retired_reason', '')}")
    return "\n".join(lines)
