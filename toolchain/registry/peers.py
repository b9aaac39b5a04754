"""Peers: the models of one family ranked on their evaluation metric, then cost; those behind flagged.

A family is the set of registered models that declared it (``toolchain registry tag NAME --family X``),
or, given a signature hash (8 or more hex digits), the models whose version has that signature. Each
model is represented by its production version, else its latest version that is not retired. The
ranking reads what ``toolchain evaluate --registry`` recorded; a model is flagged when its metric is
behind the best by more than the family's margin (declared with ``--margin``, else `DEFAULT_MARGIN`).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass

from toolchain.core.errors import RegistryError
from toolchain.registry.store import PRODUCTION, ModelRegistry, Version

__all__ = ["DEFAULT_MARGIN", "Peer", "PeerRanking", "rank_peers"]

DEFAULT_MARGIN = 0.02
"""How far behind the best metric (an absolute difference: 0.02 is two points of accuracy) a peer may be."""
_HASH = re.compile(r"^[0-9a-f]{8,64}$")
_EVAL = "toolchain.eval."


@dataclass(frozen=True)
class Peer:
    """One model of a family, by the version that represents it."""

    name: str
    version: str
    status: str
    metric: str
    """The metric it was evaluated on ('' when it never was)."""
    value: float | None
    examples: int
    data_sha256: str
    p50_ms: float | None
    """Latency at batch 1 as bench recorded it (None when not benchmarked)."""
    size_bytes: int
    behind: float | None = None
    """How far behind the best of the family's metric (None when not ranked on it)."""
    flagged: bool = False


@dataclass(frozen=True)
class PeerRanking:
    """The family's members, best first; truthy when no member is flagged."""

    family: str
    metric: str
    margin: float
    peers: tuple[Peer, ...]
    notes: tuple[str, ...] = ()

    @property
    def flagged(self) -> tuple[Peer, ...]:
        """Members behind the best by more than the margin."""
        return tuple(p for p in self.peers if p.flagged)

    def __bool__(self) -> bool:
        return not self.flagged


def rank_peers(registry: ModelRegistry, family: str, *, margin: float | None = None) -> PeerRanking:
    """Rank the models of `family` in `registry`; `margin` overrides the family's declared one.

    Raises:
        RegistryError: no registered model belongs to `family`, or `margin` is not in [0, 1].
    """
    allowed = registry.margin(family, default=DEFAULT_MARGIN) if margin is None else margin
    if not 0 <= allowed <= 1:
        raise RegistryError(f"margin {allowed:g} must be a metric difference from 0 to 1 (e.g. 0.02)")
    notes: list[str] = []
    members: list[Version] = []
    declared = registry.families()
    by_hash = bool(_HASH.match(family))
    for name in registry.names():
        if not by_hash and declared.get(name) != family:
            continue
        chosen = _representative(registry, name)
        if chosen is None:
            notes.append(f"{name}: every version is retired")
        elif not by_hash or chosen.evidence.signature_sha256.startswith(family):
            members.append(chosen)
    if not members:
        known = sorted(set(declared.values()))
        raise RegistryError(
            f"no registered model in family {family!r}; declared families: {known or 'none'} "
            "(declare one with `toolchain registry tag NAME --family X`, or pass a signature hash)"
        )
    peers = [_peer(v) for v in members]
    counted = Counter(p.metric for p in peers if p.metric)
    metric = min(counted, key=lambda m: (-counted[m], m)) if counted else ""
    for p in peers:
        if not p.metric:
            notes.append(f"{p.name}: version {p.version} not evaluated; run `toolchain evaluate ... --name {p.name}`")
        elif p.metric != metric:
            notes.append(f"{p.name}: evaluated on {p.metric}, not the family's {metric}; not ranked on it")
    ranked = [p for p in peers if p.metric == metric and p.value is not None]
    if len({p.data_sha256 for p in ranked}) > 1:
        notes.append("members were evaluated on different data; evaluate them on the same files to compare fairly")
    best = max((p.value for p in ranked if p.value is not None), default=0.0)
    scored = [
        Peer(**{**p.__dict__, "behind": best - p.value, "flagged": best - p.value > allowed})
        if p in ranked and p.value is not None
        else p
        for p in peers
    ]
    scored.sort(key=_order)
    return PeerRanking(family, metric, allowed, tuple(scored), tuple(notes))


def _order(p: Peer) -> tuple[bool, float, bool, float, int, str]:
    """Ranked on the metric first (higher is better), then latency at batch 1, then size, then name."""
    return (
        p.behind is None,
        p.behind if p.behind is not None else 0.0,
        p.p50_ms is None,
        p.p50_ms if p.p50_ms is not None else 0.0,
        p.size_bytes,
        p.name,
    )


def _representative(registry: ModelRegistry, name: str) -> Version | None:
    production = registry.production(name)
    if production is not None:
        return production
    live = [v for v in registry.versions(name) if v.status != "retired"]
    return live[-1] if live else None


def _peer(version: Version) -> Peer:
    tags, e = version.tags, version.evidence
    raw = tags.get(_EVAL + "value")
    try:
        value = float(raw) if raw is not None else None
        examples = int(tags.get(_EVAL + "examples", "0"))
    except ValueError:
        raise RegistryError(f"{version.name} version {version.version}: evaluation tag is not a number") from None
    latency = e.latency.get("1")
    return Peer(
        name=version.name,
        version=version.version,
        status=version.status if version.status == PRODUCTION else "latest",
        metric=tags.get(_EVAL + "metric", "") if value is not None else "",
        value=value,
        examples=examples,
        data_sha256=tags.get(_EVAL + "data_sha256", ""),
        p50_ms=latency.p50_ms if latency else None,
        size_bytes=e.size_bytes,
    )
