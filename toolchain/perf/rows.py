"""Benchmark results: a row per artifact x runtime x batch, the report, and the rule that recommends one."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.package.report import runtime_label
from toolchain.perf.timing import Timing, paired_interval

__all__ = ["EAGER", "RUNOFF_MARGIN", "TIE_MARGIN", "BenchReport", "BenchRow", "exactness"]

EAGER = "eager"
RUNOFF_MARGIN = 0.5
"""Candidates this much slower than the fastest in a short heat are raced on side by side."""
TIE_MARGIN = 0.03
"""A less exact variant (fp16, int8) is recommended only when faster than the more exact one by this."""
_EXACTNESS = {"fp32": 0, "fp16": 1, "int8": 2}


@dataclass(frozen=True)
class BenchRow:
    """One artifact on one runtime at one batch size."""

    artifact: str
    variant: str
    runtime: str
    batch: int
    timing: Timing
    settled: bool
    rss_mb: float
    """Resident memory of the process after loading and running it."""
    added_mb: float
    """Resident memory that loading and running it added."""
    eager_ms: float = 0.0
    parity: bool | None = None
    """Matched eager on this batch's inputs with the artifact's own gate (None: not checked, e.g. eager)."""
    runs_code: bool = False
    note: str = ""
    fixed_dims: tuple[tuple[str, int], ...] = ()
    """ONNX Runtime session planned for these sizes (feeds of other sizes are refused)."""
    runoff: Timing | None = None
    """This row raced side by side against the other candidates near the fastest."""
    runoff_ratio: float | None = None
    """Its latency in the run-off over the fastest raced one's, paired round by round (`paired_ratio`)."""
    provider: str = ""
    """ONNX Runtime execution provider (short name), "" for other runtimes."""

    @property
    def label(self) -> str:
        """Runtime and provider, with the sizes its session was planned for: ``ort-cuda[batch=16]``."""
        return runtime_label(self.runtime, dict(self.fixed_dims), self.provider)

    @property
    def ratio_vs_eager(self) -> float:
        """Eager median over this median: > 1 is faster than eager."""
        return self.eager_ms / self.timing.p50_ms if self.eager_ms and self.timing.p50_ms else 0.0

    @property
    def throughput(self) -> float:
        """Items per second at the median latency."""
        return self.batch * 1e3 / self.timing.p50_ms if self.timing.p50_ms else 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "artifact": self.artifact,
            "variant": self.variant,
            "runtime": self.runtime,
            "provider": self.provider,
            "fixed_dims": dict(self.fixed_dims),
            "batch": self.batch,
            **self.timing.to_dict(),
            "runoff_p50_ms": round(self.runoff.p50_ms, 4) if self.runoff else None,
            "runoff_ratio": round(self.runoff_ratio, 4) if self.runoff_ratio is not None else None,
            "settled": self.settled,
            "throughput_per_s": round(self.throughput, 2),
            "ratio_vs_eager": round(self.ratio_vs_eager, 3),
            "rss_mb": round(self.rss_mb, 1),
            "added_mb": round(self.added_mb, 1),
            "parity": self.parity,
            "runs_code": self.runs_code,
            "note": self.note,
        }


@dataclass
class BenchReport:
    """Every row measured, and the recommendation per batch size."""

    package: Path
    model: str
    trusted: bool
    rows: list[BenchRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    plan: str = "batch"
    sizes: dict[int, dict[str, int]] = field(default_factory=dict)
    """Per batch size: the size of every symbolic dim in the benchmarked inputs."""

    def recommended(self, batch: int, *, portable: bool = False) -> BenchRow | None:
        """Fastest artifact that matched eager at `batch` (ONNX Runtime only when `portable`).

        Rows raced in the run-off are ranked by their paired ratio to the fastest raced one; the
        others were slower than the fastest by more than `RUNOFF_MARGIN` in a heat raced side by side.
        Within `TIE_MARGIN` of the fastest the most exact variant wins (fp32, then fp16, then int8):
        on a CPU fp16 is rarely faster, and trading precision for a gain inside the host's noise is
        not a trade. Among raced rows "within" means not surely slower (`_most_exact_of_raced`).
        """
        candidates = [
            r
            for r in self.rows
            if r.batch == batch
            and r.runtime != EAGER
            and r.parity
            and (self.trusted or not r.runs_code)
            and (not portable or r.runtime == "ort")
        ]
        raced = [r for r in candidates if r.runoff_ratio is not None]
        if raced:
            return _most_exact_of_raced(raced)
        return _most_exact_of_fastest(candidates, lambda r: r.timing.p50_ms) if candidates else None

    def recommendations(self) -> dict[str, Any]:
        """Manifest form: batch -> fastest and portable choice with the numbers behind them."""
        out: dict[str, Any] = {}
        for batch in sorted({r.batch for r in self.rows}):
            best, portable = self.recommended(batch), self.recommended(batch, portable=True)
            if best is None:
                continue
            out[str(batch)] = {
                "artifact": best.artifact,
                "runtime": best.runtime,
                "provider": best.provider,
                "fixed_dims": dict(best.fixed_dims),
                "p50_ms": round(best.timing.p50_ms, 4),
                "ratio_vs_eager": round(best.ratio_vs_eager, 3),
                "sizes": self.sizes.get(batch, {}),
                "portable": {
                    "artifact": portable.artifact,
                    "provider": portable.provider,
                    "fixed_dims": dict(portable.fixed_dims),
                    "p50_ms": round(portable.timing.p50_ms, 4),
                }
                if portable
                else None,
                "host": _host(),
            }
        return out

    def table(self) -> str:
        """Human table: one line per row, the recommendation marked."""
        head = f"{'batch':>5}  {'artifact':34} {'runtime':16} {'p50 ms':>9} {'p90':>8} {'p99':>8} {'±':>5}"
        head += f" {'raced':>8} {'/best':>5} {'items/s':>10} {'x eager':>8} {'RSS MB':>8} {'+MB':>6}  parity"
        lines = [head]
        for r in sorted(self.rows, key=lambda r: (r.batch, r.timing.p50_ms)):
            mark = "*" if self.recommended(r.batch) is r else " "
            parity = {None: "—", True: "ok", False: "FAIL"}[r.parity]
            raced = f"{r.runoff.p50_ms:8.3f}" if r.runoff else f"{'—':>8}"
            raced += f" {r.runoff_ratio:5.2f}" if r.runoff_ratio is not None else f" {'—':>5}"
            t = r.timing
            lines.append(
                f"{r.batch:>5} {mark}{r.artifact[:34]:34} {r.label[:16]:16} {t.p50_ms:9.3f} {t.p90_ms:8.3f} "
                f"{t.p99_ms:8.3f} {t.spread:5.0%} {raced} {r.throughput:10.1f} {r.ratio_vs_eager:8.2f} "
                f"{r.rss_mb:8.0f} {r.added_mb:6.0f}  {parity}{' (' + r.note + ')' if r.note else ''}"
            )
        lines += [f"note: {n}" for n in self.notes]
        if self.plan == "shape":
            lines.append("note: ort[...] sessions are planned for the benchmarked shape and refuse every other size")
        lines.append(
            "* recommended: fastest artifact that matched eager on these inputs (code-loading ones only if trusted);"
            f" raced: p50 when the candidates within {RUNOFF_MARGIN:.0%} of the fastest (in a short heat)"
            " ran side by side,"
            " /best: over the fastest of them, paired round by round (the ranking)"
        )
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {
            "package": str(self.package),
            "model": self.model,
            "trusted": self.trusted,
            "plan": self.plan,
            "sizes": {str(b): s for b, s in self.sizes.items()},
            "host": _host(),
            "rows": [r.to_dict() for r in self.rows],
            "recommended": self.recommendations(),
            "notes": self.notes,
        }


def _most_exact_of_fastest(rows: Sequence[BenchRow], latency: Callable[[BenchRow], float]) -> BenchRow:
    """The fastest row, unless a more exact variant is within `TIE_MARGIN` of it."""
    fastest = latency(min(rows, key=latency))
    near = [r for r in rows if latency(r) <= fastest * (1 + TIE_MARGIN)]
    return min(near, key=lambda r: (exactness(r), latency(r)))


def _most_exact_of_raced(rows: Sequence[BenchRow]) -> BenchRow:
    """The fastest raced row, unless a more exact one is not surely slower by more than `TIE_MARGIN`.

    Surely: the whole 95% bootstrap interval of their paired ratio (over the run-off rounds) lies
    beyond the margin. On a 30 us model the rounds differ by 5-15%, so a 3% lead of an int8 variant
    in the run-off's median is noise; precision is traded only for a gain the rounds agree on.
    """
    fastest = min(rows, key=lambda r: r.runoff_ratio or 0.0)

    def surely_slower(row: BenchRow) -> bool:
        if row.runoff is None or fastest.runoff is None:
            return (row.runoff_ratio or 0.0) > 1 + TIE_MARGIN
        return paired_interval(row.runoff, fastest.runoff)[0] > 1 + TIE_MARGIN

    near = [r for r in rows if r is fastest or not surely_slower(r)]
    return min(near, key=lambda r: (exactness(r), r.runoff_ratio or 0.0))


def exactness(row: BenchRow) -> int:
    """Rank of the row's precision: 0 fp32, 1 fp16, 2 int8, 3 anything else (lower is more exact)."""
    return _EXACTNESS.get(row.variant.split("-")[0], 3)


def _host() -> dict[str, Any]:
    return {"machine": platform.machine(), "processor": platform.processor() or "?", "cpus": os.cpu_count()}
