"""``compare``'s view of exploration: what versions showed when served beside production (shadow or share)."""

from __future__ import annotations

from collections.abc import Sequence

from toolchain.registry.rules import explored
from toolchain.registry.store import Version

__all__ = ["exploration_table"]


def exploration_table(versions: Sequence[Version]) -> str:
    """What versions showed served beside production (``serve --shadow/--share``); '' when none did."""
    rows = [(v, explored(v.tags)) for v in versions]
    rows = [(v, r) for v, r in rows if r]
    if not rows:
        return ""
    lines = [
        f"{'version':>7}  {'mode':6} {'vs':>4} {'requests':>8} {'dropped':>7} {'p50 ms':>8} {'prod p50':>8} "
        f"{'max abs':>9} {'max rel':>9} {'worst':>7} {'beyond':>6}"
    ]
    for v, r in rows:
        lines.append(
            f"{v.version:>7}  {r.get('mode', ''):6} {r.get('against', ''):>4} {r.get('requests', '0'):>8} "
            f"{r.get('dropped', '0'):>7} {_num(r, 'p50_ms'):>8} {_num(r, 'production_p50_ms'):>8} "
            f"{_num(r, 'max_abs'):>9} {_num(r, 'max_rel'):>9} {_num(r, 'worst_ratio'):>7} {r.get('beyond', '0'):>6}"
        )
    lines.append(
        "beside production: latency on the same requests; drift of the answers against production's "
        "(worst: as a share of production's tolerance, beyond: requests past it)"
    )
    return "\n".join(lines)


def _num(record: dict[str, str], key: str) -> str:
    try:
        return f"{float(record.get(key, 'nan')):.4g}"
    except ValueError:
        return "?"
