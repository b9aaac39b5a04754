"""Text views of registered versions: ``compare``'s side-by-side table and ``show``'s record."""

from __future__ import annotations

from collections.abc import Sequence

from toolchain.registry.store import Version

__all__ = ["compare_table", "describe_version"]

_BATCHES = ("1", "16")


def compare_table(versions: Sequence[Version]) -> str:
    """One line per version: status, drift, p50 at batch 1 and 16 where recorded, size, ops, signature."""
    head = f"{'version':>7}  {'status':10} {'drift':>7} {'p50@1 ms':>9} {'p50@16 ms':>10} {'size B':>9} {'ops':>5}"
    lines = [head + "  signature     weights       created"]
    for v in versions:
        e = v.evidence
        latency = [f"{e.latency[b].p50_ms:.4g}" if b in e.latency else "—" for b in _BATCHES]
        lines.append(
            f"{v.version:>7}  {v.status:10} {e.drift:7.3g} {latency[0]:>9} {latency[1]:>10} {e.size_bytes:>9} "
            f"{e.ops:>5}  {e.signature_sha256[:12]}  {e.weights_sha256[:12]}  {e.created}"
        )
    lines.append("drift: worst error of any artifact as a share of its allowed error (1 is the limit)")
    return "\n".join(lines)


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
    if version.status == "retired":
        lines.append(f"  retired:    {version.tags.get('toolchain.retired_reason', '')}")
    return "\n".join(lines)
