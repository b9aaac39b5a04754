"""Promotion rules: what stops a version from replacing production, as a result object.

A version may be promoted when it verifies on this host, keeps production's signature, and does not
regress against production beyond the declared `Budgets`. `check_promotion` only judges; the store
refuses (or, with ``--force --reason``, records the override).
"""

from __future__ import annotations

from dataclasses import dataclass

from toolchain.registry.evidence import Evidence

__all__ = [
    "DEFAULT_BUDGETS",
    "EXPLORE_TAG",
    "Budgets",
    "PromotionCheck",
    "check_exploration",
    "check_promotion",
    "explored",
]

EXPLORE_TAG = "toolchain.explore."
"""Prefix of the version tags that hold what serving beside production showed (`explored`)."""


@dataclass(frozen=True)
class Budgets:
    """How much worse than production a candidate may be, as a share of production's value.

    Args:
        latency: p50 at any batch size both were benchmarked at on the same host (0.10: 10% slower).
        size: bytes of the artifacts shipped.
        min_shadowed: see below.
    """

    latency: float = 0.10
    size: float = 0.10
    min_shadowed: int = 0
    """Requests the candidate must have answered beside production (shadow or share) before promotion."""


DEFAULT_BUDGETS = Budgets()


@dataclass(frozen=True)
class PromotionCheck:
    """The verdict on one candidate; truthy when nothing stands in the way of promoting it."""

    version: str
    production: str
    """The version the candidate would replace ('' when there is none)."""
    problems: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    """What was not compared and why (latency measured on another host, none recorded)."""

    def __bool__(self) -> bool:
        return not self.problems

    def describe(self) -> str:
        """One line: ``version 3 vs production 1: size 2.1x ...`` or ``... passes``."""
        against = f" vs production {self.production}" if self.production else " (no production version)"
        return f"version {self.version}{against}: " + ("; ".join(self.problems) if self.problems else "passes")


def check_promotion(
    version: str,
    candidate: Evidence,
    *,
    verified: str,
    production: tuple[str, Evidence] | None,
    budgets: Budgets = DEFAULT_BUDGETS,
) -> PromotionCheck:
    """Judge `candidate` against the production version under `budgets`.

    Args:
        version: the candidate's registry version.
        candidate: its evidence.
        verified: '' when the candidate verified on this host, else the first failure.
        production: the production version and its evidence; None when there is none yet.
        budgets: the allowed regression.
    """
    problems, notes = [], []
    if verified:
        problems.append(f"does not verify on this host: {verified}")
    if production is None or production[0] == version:
        return PromotionCheck(version, production[0] if production else "", tuple(problems), ())
    current_version, current = production
    if candidate.signature_sha256 != current.signature_sha256:
        problems.append(
            f"signature {candidate.signature_sha256[:12]} differs from production's {current.signature_sha256[:12]}"
            " (clients built for it would break)"
        )
    if current.size_bytes and candidate.size_bytes > current.size_bytes * (1 + budgets.size):
        problems.append(
            f"size {candidate.size_bytes} B is {candidate.size_bytes / current.size_bytes:.2f}x production's "
            f"{current.size_bytes} B (budget +{budgets.size:.0%})"
        )
    for batch, mine in sorted(candidate.latency.items(), key=lambda kv: int(kv[0])):
        theirs = current.latency.get(batch)
        if theirs is None:
            notes.append(f"batch {batch}: production has no latency recorded")
        elif theirs.host != mine.host:
            notes.append(f"batch {batch}: latency measured on different hosts ({mine.host} vs {theirs.host})")
        elif theirs.p50_ms > 0 and mine.p50_ms > theirs.p50_ms * (1 + budgets.latency):
            problems.append(
                f"p50 at batch {batch} is {mine.p50_ms:.4g} ms, {mine.p50_ms / theirs.p50_ms:.2f}x production's "
                f"{theirs.p50_ms:.4g} ms (budget +{budgets.latency:.0%})"
            )
    if not candidate.latency:
        notes.append("no latency recorded; run `toolchain bench` on the package before adding it to compare speed")
    return PromotionCheck(version, current_version, tuple(problems), tuple(notes))


def explored(tags: dict[str, str]) -> dict[str, str]:
    """The exploration record among a version's tags (``toolchain.explore.<key>`` -> value), prefix removed."""
    return {k[len(EXPLORE_TAG) :]: v for k, v in tags.items() if k.startswith(EXPLORE_TAG)}


def check_exploration(check: PromotionCheck, record: dict[str, str], budgets: Budgets) -> PromotionCheck:
    """`check` with a problem added when the candidate answered fewer requests beside production than declared.

    Args:
        check: the verdict so far.
        record: the candidate's exploration record (`explored`).
        budgets: the declared budgets; ``min_shadowed`` 0 asks for nothing.
    """
    if not budgets.min_shadowed or not check.production or check.production == check.version:
        return check
    try:
        shadowed = int(record.get("requests", "0"))
    except ValueError:
        shadowed = 0
    if shadowed >= budgets.min_shadowed:
        return check
    problem = (
        f"answered {shadowed} request(s) beside production, the rule asks for {budgets.min_shadowed} "
        "(serve it with --shadow or --share first)"
    )
    return PromotionCheck(check.version, check.production, (*check.problems, problem), check.notes)
