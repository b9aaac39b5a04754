"""The CI parity gate: select specs, check each one (or reuse its cached check), judge against a baseline.

`select_specs` turns TARGETs into specs, `run_gate` checks them on an executor (in worker processes;
a model whose content key is unchanged reuses its cached result) and `judge` turns the results, and
the baseline when there is one, into one test case per model x export path and an outcome that is
truthy only when no case failed.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from toolchain.core.errors import TargetError
from toolchain.core.spec import FORMATS, SPECS, ModelSpec
from toolchain.core.target import FILE_MODULE_PREFIX, import_source, is_file_target, resolve_target
from toolchain.gate.baseline import BaselinePolicy, Change, compare_entry, is_known_failure
from toolchain.gate.cache import content_key, load_result, store_result
from toolchain.gate.executors import Executor, InlineExecutor
from toolchain.gate.work import check_model, error_result, make_task

__all__ = [
    "Case",
    "GateOutcome",
    "GateTally",
    "Selected",
    "judge",
    "parse_formats",
    "run_gate",
    "select_specs",
]

PASSED, FAILED, KNOWN = "passed", "failed", "known"
_INLINE = InlineExecutor()
_DEFAULT_POLICY = BaselinePolicy()


@dataclass(frozen=True)
class Selected:
    """One model the gate checks, and how a worker process finds it again."""

    spec: ModelSpec
    ref: str
    """A registered name, or a TARGET with a colon (``/abs/file.py:Model``, ``pkg.module:attr``)."""
    imports: tuple[str, ...] = ()
    """Modules and ``.py`` files (absolute) a worker imports first: they register the specs."""


@dataclass(frozen=True)
class GateTally:
    """Progress of a gate run: how many models are done, failed, served from the cache, running."""

    total: int
    done: int = 0
    failed: int = 0
    cached: int = 0
    running: int = 0
    last: str = ""
    """One line on the model that finished last (empty before the first)."""


@dataclass(frozen=True)
class Case:
    """One model x export path (or the stage that stopped the model) and its verdict."""

    model: str
    artifact: str
    outcome: str
    """``passed``, ``failed``, or ``known`` (a failure the baseline already records)."""
    message: str = ""
    details: str = ""
    """The parity table and the localisation finding, for failure reports."""
    seconds: float = 0.0
    regression: bool = False

    def __bool__(self) -> bool:
        """True unless the case fails the gate (a known failure does not)."""
        return self.outcome != FAILED

    def __str__(self) -> str:
        why = f": {self.message}" if self.message else ""
        return f"{self.model} / {self.artifact} {self.outcome}{why}"


@dataclass
class GateOutcome:
    """The verdict over every case; truthy only when no case failed."""

    results: list[dict[str, Any]]
    cases: list[Case]
    changes: list[Change] = field(default_factory=list)
    with_baseline: bool = False
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return not self.failed

    @property
    def failed(self) -> list[Case]:
        """Cases that fail the gate, regressions first."""
        return sorted((c for c in self.cases if c.outcome == FAILED), key=lambda c: not c.regression)

    @property
    def regressions(self) -> list[Change]:
        """Changes against the baseline that fail the gate."""
        return [c for c in self.changes if c.regression]

    @property
    def notes(self) -> list[Change]:
        """Changes against the baseline that do not fail the gate (fixed paths, changed graphs)."""
        return [c for c in self.changes if not c.regression]

    def ordered_results(self) -> list[dict[str, Any]]:
        """Results with regressed models first, then other failing models, then the rest by name."""
        rank: dict[str, int] = {}
        for case in self.failed:
            rank.setdefault(case.model, 0 if case.regression else 1)
        return sorted(self.results, key=lambda r: (rank.get(r["name"], 2), r["name"]))

    def summary(self) -> str:
        """One line: verdict, models, cases by outcome, regressions, cached models and time."""
        failed_models = {c.model for c in self.failed}
        verdict = "passed" if self else f"FAILED ({len(failed_models)} of {len(self.results)} models)"
        counts = {o: sum(c.outcome == o for c in self.cases) for o in (PASSED, FAILED, KNOWN)}
        cached = sum(bool(r.get("cached")) for r in self.results)
        text = (
            f"parity gate {verdict}: {len(self.results)} models, {len(self.cases)} cases "
            f"({counts[PASSED]} passed, {counts[FAILED]} failed, {counts[KNOWN]} known failures)"
        )
        if self.with_baseline:
            text += f", {len(self.regressions)} regressions against the baseline"
        return f"{text}; {cached} cached; {self.seconds:.1f}s"

    def __str__(self) -> str:
        return self.summary()


def parse_formats(text: str) -> tuple[str, ...]:
    """``all`` (each spec's own paths: empty), ``auto`` (the best ONNX path) or a comma-separated list."""
    chosen = tuple(dict.fromkeys(f.strip() for f in text.split(",") if f.strip()))
    if chosen in ((), ("all",)):
        return ()
    if chosen == ("auto",):
        return chosen
    unknown = [f for f in chosen if f not in FORMATS]
    if unknown:
        raise TargetError(f"unknown export format(s) {unknown}; use all, auto or a list drawn from {list(FORMATS)}")
    return chosen


def select_specs(targets: Sequence[str], *, all_registered: bool = False, zoo: bool = True) -> list[Selected]:
    """The specs TARGETs name, in a stable order (by name).

    A TARGET is a registered name, ``pkg.module:attr`` / ``path/file.py:attr`` (one spec), or a module
    or ``.py`` file to import (every spec it registers). `all_registered` adds every registered spec;
    `zoo` imports the zoo first so that its models are registered too.
    """
    imports: list[str] = []
    chosen: dict[str, tuple[ModelSpec, str]] = {}

    def add(spec: ModelSpec, ref: str) -> None:
        if spec.name in chosen and chosen[spec.name][0] is not spec:
            raise TargetError(f"two different models are called {spec.name!r} ({chosen[spec.name][1]} and {ref})")
        chosen.setdefault(spec.name, (spec, ref))

    if all_registered and zoo:
        _import_zoo(imports)
    for target in targets:
        if ":" in target:
            where, _, attr = target.rpartition(":")
            ref = f"{Path(where).resolve()}:{attr}" if where and is_file_target(where) else target
            add(resolve_target(target), ref)
        elif is_file_target(target) or not _is_registered(target, imports):
            for spec in _specs_of_module(target, imports):
                add(spec, spec.name)
        else:
            add(SPECS.get(target), target)
    if all_registered:
        for name in SPECS:
            add(SPECS.get(name), name)
    if not chosen:
        raise TargetError("nothing to check: give TARGETs (names, modules, files) or --all")
    chosen = dict(sorted(chosen.items()))
    return [Selected(spec, ref, tuple(dict.fromkeys([*imports, _origin(spec)]))) for spec, ref in chosen.values()]


def _origin(spec: ModelSpec) -> str:
    """The module (or, for a file imported by path, the file) that defines `spec`'s factory."""
    name = getattr(spec.factory, "__module__", "")
    file = getattr(sys.modules.get(name), "__file__", None)
    return str(Path(file).resolve()) if file and name.startswith(FILE_MODULE_PREFIX) else name


def _import_zoo(imports: list[str]) -> None:
    import zoo  # noqa: F401 - registers the zoo's models

    if "zoo" not in imports:
        imports.append("zoo")


def _is_registered(name: str, imports: list[str]) -> bool:
    if name not in SPECS:
        _import_zoo(imports)
    return name in SPECS


def _specs_of_module(target: str, imports: list[str]) -> list[ModelSpec]:
    before = set(SPECS.names())
    try:
        module = import_source(target)
    except TargetError as e:
        if is_file_target(target):
            raise
        known = ", ".join(SPECS.names()[:30]) or "none"
        raise TargetError(
            f"{target!r} is neither a registered model nor an importable module ({e}); models: {known}"
        ) from e
    where = str(Path(target).resolve()) if is_file_target(target) else target
    if where not in imports:
        imports.append(where)
    names = (set(SPECS.names()) - before) | {n for n in SPECS if SPECS.get(n).factory.__module__ == module.__name__}
    if not names:
        raise TargetError(f"{target} declares no model: decorate models with @toolchain.exportable(...)")
    return [SPECS.get(n) for n in sorted(names)]


def run_gate(
    selected: Sequence[Selected],
    *,
    formats: tuple[str, ...] = (),
    seed: int = 0,
    executor: Executor = _INLINE,
    cache: bool = True,
    out: Path | None = None,
    bench: bool = False,
    progress: Callable[[GateTally], None] = lambda tally: None,
) -> list[dict[str, Any]]:
    """Check every selected model; results (see `toolchain.gate.work`) in the order of `selected`.

    A model whose content key has a stored result is not checked again unless `cache` is false.
    Every result checked here is stored under its key. With `out`, each package is kept at
    ``out/<name>`` (and a cached result counts only when that package is there). With `bench`, each
    kept artifact is also timed beside eager (`toolchain.perf.bench`).
    """
    options = {"formats": list(formats), "seed": seed, "bench": bench}
    results: list[dict[str, Any] | None] = [None] * len(selected)
    keys, todo = [_key(s.spec, options) for s in selected], []
    tally = GateTally(total=len(selected))
    for i, (sel, key) in enumerate(zip(selected, keys, strict=True)):
        hit = load_result(key) if cache and key and (out is None or (out / sel.spec.name).is_dir()) else None
        if hit is None:
            todo.append(i)
        else:
            results[i] = {**hit, "cached": True}
            tally = _count(tally, results[i], remaining=0, slots=0)
    progress(_count(tally, None, remaining=len(todo), slots=executor.slots))
    tasks = [
        make_task(
            selected[i].ref,
            imports=selected[i].imports,
            formats=formats,
            seed=seed,
            out=str(out) if out is not None else "",
            threads=executor.threads,
            bench=bench,
        )
        for i in todo
    ]
    for finished, (j, result) in enumerate(executor.run(check_model, tasks), start=1):
        i = todo[j]
        name = selected[i].spec.name
        result = {**error_result(name, ""), **result, "name": name, "cached": False}
        key = keys[i]
        if key and result["status"] != "error":
            store_result(key, {k: v for k, v in result.items() if k != "cached"})
        results[i] = result
        tally = _count(tally, result, remaining=len(todo) - finished, slots=executor.slots)
        progress(tally)
    return [r for r in results if r is not None]


def _key(spec: ModelSpec, options: Mapping[str, Any]) -> str:
    try:
        return content_key(spec, options=options)
    except Exception:  # NOTE: a model that cannot be built is not cached; its check reports why.
        return ""


def _count(tally: GateTally, result: dict[str, Any] | None, *, remaining: int, slots: int) -> GateTally:
    if result is None:
        return GateTally(tally.total, tally.done, tally.failed, tally.cached, min(slots, remaining), tally.last)
    bad = result["status"] != PASSED or any(p["status"] != "kept" for p in result["paths"])
    cached = bool(result.get("cached"))
    last = f"{result['name']} {'FAILED' if bad else 'passed'} ({result['seconds']:.1f}s{', cached' if cached else ''})"
    return GateTally(
        tally.total,
        tally.done + 1,
        tally.failed + bad,
        tally.cached + cached,
        min(slots, max(remaining, 0)),
        last,
    )


def judge(
    results: Sequence[dict[str, Any]],
    *,
    baseline: Mapping[str, Any] | None = None,
    policy: BaselinePolicy = _DEFAULT_POLICY,
    seconds: float = 0.0,
) -> GateOutcome:
    """Cases and verdict for `results`; with a `baseline` (entries by model), changes against it too.

    Without a baseline every export path tried must be kept. With one, a path the baseline records as
    rejected (or a model it records as failing) is a known failure, and the regressions `policy`
    defines fail their cases.
    """
    cases: list[Case] = []
    changes: list[Change] = []
    for result in results:
        entry = baseline.get(result["name"]) if baseline is not None else None
        mine = compare_entry(result, entry, policy) if baseline is not None else []
        changes.extend(mine)
        cases.extend(_cases(result, entry, mine))
    return GateOutcome(list(results), cases, changes, baseline is not None, seconds)


def _cases(result: Mapping[str, Any], entry: Mapping[str, Any] | None, changes: Sequence[Change]) -> list[Case]:
    name, paths = result["name"], result["paths"]
    seconds = float(result.get("seconds", 0.0))
    if not paths:
        units: list[tuple[str, Mapping[str, Any] | None]] = [(result["failed_stage"] or "error", None)]
    else:
        units = [(p["exporter"], p) for p in paths]
    cases = []
    for artifact, path in units:
        regressions = [c for c in changes if c.regression and c.artifact in ("", artifact)]
        reason = path["reason"] if path is not None else result["detail"]
        share = seconds / len(units)
        if regressions:
            message = "; ".join(c.message for c in regressions)
            outcome = Case(name, artifact, FAILED, message, regression=True)
        elif path is not None and path["status"] == "kept":
            outcome = Case(name, artifact, PASSED)
        elif is_known_failure(entry, artifact):
            outcome = Case(name, artifact, KNOWN, f"known failure recorded in the baseline: {reason}")
        else:
            outcome = Case(name, artifact, FAILED, reason or "failed")
        details = _details(path, outcome.message) if path is not None else ""
        cases.append(replace(outcome, details=details, seconds=share))
    return cases


def _details(path: Mapping[str, Any], message: str) -> str:
    """The parity table, and the localisation finding unless the message already gives it."""
    table, found = path["table"], path["localization"]
    return f"{table}\nlocalisation: {found}" if found and found not in message else table
