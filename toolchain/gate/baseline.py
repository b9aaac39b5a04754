"""The committed regression baseline: what each model achieved last time, and how far it may move.

One JSON file, ``{"schema": 1, "models": {name: entry}}``; an entry records the model's status, the
paths kept, and per artifact its status and, when kept, the worst error on every sample set (each
size of each symbolic dim), the ONNX node count and op histogram, and with ``--bench`` the ratio of
eager's median latency to the artifact's per batch size (recorded for review; timings are too noisy
to gate on). It is written with sorted keys and floats rounded to three significant digits, so a
re-run that changes nothing rewrites the same bytes and a real change reviews as a small diff.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolchain.core.errors import GateError

__all__ = [
    "SCHEMA",
    "BaselinePolicy",
    "Change",
    "compare_entry",
    "entry_for",
    "is_known_failure",
    "load_baseline",
    "stable_float",
    "write_baseline",
]

SCHEMA = 1
_EMPTY: Mapping[str, Any] = {}


@dataclass(frozen=True)
class BaselinePolicy:
    """How far a model may move from its baseline entry and still pass.

    Args:
        growth: the worst error of a kept artifact on each sample set, as a fraction of the allowed
            tolerance, may grow up to this factor; more is a regression even within tolerance.
        floor: errors below this fraction of the allowed tolerance are rounding noise that library
            upgrades move freely; they never count as growth.
        allow_new: a model with no baseline entry passes (reported as new) instead of failing.
    """

    growth: float = 2.0
    floor: float = 0.05
    allow_new: bool = False

    def __post_init__(self) -> None:
        if not (math.isfinite(self.growth) and self.growth >= 1.0):
            raise GateError(f"the allowed error growth must be a factor >= 1, got {self.growth!r}")
        if not (math.isfinite(self.floor) and self.floor >= 0.0):
            raise GateError(f"the noise floor must be a fraction >= 0, got {self.floor!r}")


@dataclass(frozen=True)
class Change:
    """One difference between a model's result and its baseline entry."""

    model: str
    artifact: str
    """The export path it concerns; empty for the model as a whole."""
    kind: str
    """``now-fails``, ``path-rejected``, ``error-growth``, ``new-model`` (regressions) or ``fixed``,
    ``path-kept``, ``graph-changed``, ``not-run`` (notes)."""
    message: str
    regression: bool

    def __str__(self) -> str:
        where = f"{self.model} / {self.artifact}" if self.artifact else self.model
        return f"{where}: {self.message}"


def stable_float(value: float | str | None) -> float | str | None:
    """`value` rounded to three significant digits (``"inf"``/``"nan"`` and None kept as they are)."""
    if value is None or isinstance(value, str):
        return value
    if not math.isfinite(value):
        return str(float(value))
    return float(f"{float(value):.3g}")


def entry_for(result: Mapping[str, Any]) -> dict[str, Any]:
    """The baseline entry recording `result` (a result dict of `toolchain.gate.work.check_model`)."""
    artifacts: dict[str, Any] = {}
    for path in result["paths"]:
        record: dict[str, Any] = {"status": path["status"]}
        if path["status"] == "kept":
            record["errors"] = {
                name: {"max_abs": stable_float(s["max_abs"]), "worst_ratio": stable_float(s["worst_ratio"])}
                for name, s in path["samples"].items()
            }
            if path.get("nodes") is not None:
                record["nodes"], record["ops"] = path["nodes"], dict(path["ops"])
            if path.get("bench"):
                record["bench"] = {batch: stable_float(r) for batch, r in path["bench"].items()}
        artifacts[path["exporter"]] = record
    return {"status": result["status"], "kept": sorted(result["kept"]), "artifacts": artifacts}


def load_baseline(path: Path) -> dict[str, dict[str, Any]]:
    """The entries of the baseline file at `path`, by model name."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GateError(f"{path}: no such baseline file; create it with --update-baseline") from None
    except (OSError, ValueError) as e:
        raise GateError(f"{path}: cannot read the baseline: {e}") from e
    if not isinstance(data, dict) or data.get("schema") != SCHEMA or not isinstance(data.get("models"), dict):
        found = data.get("schema") if isinstance(data, dict) else type(data).__name__
        raise GateError(
            f"{path}: not a gate baseline of schema {SCHEMA} (found {found!r}); rewrite it with --update-baseline"
        )
    models: dict[str, dict[str, Any]] = data["models"]
    return models


def write_baseline(
    path: Path,
    results: Iterable[Mapping[str, Any]],
    *,
    previous: Mapping[str, Any] = _EMPTY,
    prune: bool = False,
) -> dict[str, Any]:
    """Record `results` at `path` (atomically) and return what was written.

    Entries in `previous` for models not in `results` are kept, unless `prune` (the gate ran every
    registered model, so a model missing now was removed).
    """
    models = {} if prune else {k: dict(v) for k, v in previous.items()}
    for result in results:
        models[result["name"]] = entry_for(result)
    data = {"schema": SCHEMA, "models": models}
    text = json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n"
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    except OSError as e:
        raise GateError(f"{path}: cannot write the baseline: {e}") from e
    return data


def is_known_failure(entry: Mapping[str, Any] | None, artifact: str) -> bool:
    """True when the baseline already records `artifact` (an exporter or a stage) as failing."""
    if entry is None:
        return False
    recorded = entry.get("artifacts", {}).get(artifact)
    if recorded is not None:
        return bool(recorded.get("status") != "kept")
    return entry.get("status") != "passed"


def compare_entry(result: Mapping[str, Any], entry: Mapping[str, Any] | None, policy: BaselinePolicy) -> list[Change]:
    """What changed between `result` and its baseline `entry` (None: the model has none)."""
    name = result["name"]
    if entry is None:
        hint = "it passes as new (--allow-new)" if policy.allow_new else "record it with --update-baseline"
        return [Change(name, "", "new-model", f"no baseline entry; {hint}", not policy.allow_new)]
    changes = []
    was_ok, now_ok = entry.get("status") == "passed", result["status"] == "passed"
    if was_ok and not now_ok:
        where = f" at stage '{result['failed_stage']}'" if result["failed_stage"] else ""
        # NOTE: when paths were tried, each rejected one says why in its own change below.
        why = "" if result["paths"] else f": {result['detail']}"
        changes.append(Change(name, "", "now-fails", f"passed in the baseline, now fails{where}{why}", True))
    elif now_ok and not was_ok:
        changes.append(Change(name, "", "fixed", "failed in the baseline, now passes; update the baseline", False))
    tried = {p["exporter"]: p for p in result["paths"]}
    for exporter, old in sorted(entry.get("artifacts", {}).items()):
        new = tried.get(exporter)
        if new is None:
            if old.get("status") == "kept" and now_ok:
                changes.append(Change(name, exporter, "not-run", "kept in the baseline, not tried in this run", False))
        elif old.get("status") == "kept" and new["status"] != "kept":
            changes.append(
                Change(name, exporter, "path-rejected", f"kept in the baseline, now rejected: {new['reason']}", True)
            )
        elif old.get("status") == "kept":
            changes.extend(_error_growth(name, exporter, old, new, policy))
            changes.extend(_graph_change(name, exporter, old, new))
        elif new["status"] == "kept":
            changes.append(
                Change(name, exporter, "path-kept", "rejected in the baseline, now kept; update the baseline", False)
            )
    return changes


def _error_growth(
    name: str, exporter: str, old: Mapping[str, Any], new: Mapping[str, Any], policy: BaselinePolicy
) -> list[Change]:
    changes = []
    for sample, recorded in sorted(old.get("errors", {}).items()):
        now = new["samples"].get(sample)
        if now is None:
            continue
        before, after = _as_float(recorded.get("worst_ratio")), _as_float(now.get("worst_ratio"))
        if after > policy.floor and after > policy.growth * before:
            grew = f"{after / before:.3g}x" if before > 0 else "from 0"
            changes.append(
                Change(
                    name,
                    exporter,
                    "error-growth",
                    f"error on sample {sample!r} grew {grew}: now {after:.3g} of the allowed tolerance, "
                    f"baseline {before:.3g} (allowed growth {policy.growth:g}x above {policy.floor:g})",
                    True,
                )
            )
    return changes


def _graph_change(name: str, exporter: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> list[Change]:
    before, after = old.get("ops") or {}, new.get("ops") or {}
    if not before or not after or before == after:
        return []
    delta = {op: after.get(op, 0) - before.get(op, 0) for op in sorted(set(before) | set(after))}
    moved = ", ".join(f"{op} {d:+d}" for op, d in delta.items() if d)
    message = f"ONNX graph changed: {old.get('nodes')} -> {new.get('nodes')} nodes ({moved})"
    return [Change(name, exporter, "graph-changed", message, False)]


def _as_float(value: Any) -> float:
    if value is None:
        return math.inf
    return float(value)
