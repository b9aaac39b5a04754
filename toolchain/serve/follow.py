"""Serving that follows the registry: the version an alias names serves, and moves when the alias moves.

`RegistryFollower` polls a `ModelRegistry` every few seconds. For each followed model it reads the
version the alias (``production``) names and, when that changed, hands the stored package to
`Repository.offer`: it is verified here before it serves (as every version is), then swapped in while
requests in flight finish on the old one. A version that fails verification never serves; the old
one keeps serving and the failure shows in metadata, metrics and the log. A candidate (a version
``NAME@VERSION`` or another alias, e.g. ``candidate``) is loaded beside it for an `Explorer`, whose
results are written to the registry for that version periodically and on `close`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from toolchain.core.errors import ToolchainError
from toolchain.registry.rules import explored
from toolchain.registry.store import PRODUCTION, ModelRegistry, Version
from toolchain.serve.repository import Repository
from toolchain.serve.shadow import SHADOW, SHARE, Exploration, Explorer
from toolchain.serve.versions import VersionSpec, fingerprint

__all__ = ["RegistryFollower", "exploration_record", "follow_registry"]

_log = logging.getLogger("toolchain.serve")


class RegistryFollower:
    """Keeps a `Repository` serving what a registry alias names.

    Args:
        repository: the server's repository.
        registry: the registry to follow.
        alias: the alias whose version serves.
        models: the model names to follow (empty: every registered model, also those added later).
        candidate: ``NAME@VERSION`` (that model only) or an alias (every followed model that has it) to
            explore beside the serving version; '' for none.
        explorer: runs the candidate (needed with `candidate`).
    """

    def __init__(
        self,
        repository: Repository,
        registry: ModelRegistry,
        *,
        alias: str = PRODUCTION,
        models: Sequence[str] = (),
        candidate: str = "",
        explorer: Explorer | None = None,
    ) -> None:
        if candidate and explorer is None:
            raise ToolchainError("a candidate to explore needs an Explorer (shadow or share)")
        self.repository, self.registry, self.alias = repository, registry, alias
        self.models = tuple(models)
        self.candidate, self.explorer = candidate, explorer
        self._following: dict[str, tuple[str, str]] = {}
        self._exploring: dict[str, tuple[str, str]] = {}
        self._base: dict[tuple[str, str], dict[str, str]] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._flush_lock = threading.Lock()

    def poll(self) -> list[Future[None]]:
        """Read the aliases once and offer every version that changed; returns the loads started."""
        futures: list[Future[None]] = []
        for name in self.models or self.registry.names():
            current = self.registry.alias(name, self.alias)
            if current is None:
                if self._following.get(name) != ("", ""):
                    _log.warning(
                        "%s has no %r version in the registry; %s", name, self.alias,
                        "the version serving keeps serving" if name in self._following else "nothing of it serves yet",
                    )  # fmt: skip
                    self._following[name] = ("", "")
            elif self._following.get(name) != (current.version, current.source):
                futures += self._offer(current, serve=True)
                self._following[name] = (current.version, current.source)
            chosen = self._candidate(name)
            if chosen is not None and chosen.version != (current.version if current else ""):
                if self._exploring.get(name) != (chosen.version, chosen.source):
                    self._release(name)
                    futures += self._offer(chosen, serve=False)
                    self._exploring[name] = (chosen.version, chosen.source)
                    self._base.setdefault((name, chosen.version), explored(chosen.tags))
                    assert self.explorer is not None
                    self.explorer.set_candidate(name, chosen.version)
            elif name in self._exploring and self.explorer is not None:
                self.explorer.set_candidate(name, "")
                self._release(name)
        return futures

    def flush(self) -> None:
        """Write what each candidate showed so far into the registry (added to what it held before)."""
        if self.explorer is None:
            return
        with self._flush_lock:
            for found in self.explorer.snapshot():
                if not found.requests and not found.dropped:
                    continue
                record = exploration_record(found, self._base.get((found.model, found.version), {}))
                self.registry.record_exploration(found.model, found.version, record)

    def start(self, interval_s: float) -> threading.Thread:
        """Poll (and flush) every `interval_s` seconds in a daemon thread until `close`."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                    self.flush()
                except Exception:  # NOTE: an unreachable registry must not stop serving; it is logged
                    _log.exception("following the registry %s failed; serving what was verified", self.registry.uri)

        self._thread = threading.Thread(target=loop, daemon=True, name="toolchain-follow")
        self._thread.start()
        return self._thread

    def close(self) -> None:
        """Stop polling and flush the exploration results one last time."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
        try:
            self.flush()
        except ToolchainError as e:
            _log.error("could not record the exploration results in %s: %s", self.registry.uri, e)

    def _candidate(self, name: str) -> Version | None:
        if not self.candidate:
            return None
        model, at, version = self.candidate.partition("@")
        if at:
            return self.registry.get(model, version) if model == name else None
        return self.registry.alias(name, self.candidate)

    def _release(self, name: str) -> None:
        """Unload the model's previous candidate, unless it serves now (it was promoted)."""
        previous = self._exploring.pop(name, None)
        if previous is not None:
            self.repository.release(name, previous[0])

    def _offer(self, version: Version, *, serve: bool) -> list[Future[None]]:
        path = self.registry.local_path(version)
        spec = VersionSpec(version.name, version.version, path, fingerprint(path))
        role = f"{self.alias} version" if serve else "candidate"
        _log.info(
            "%s: %s %s from the registry (%s); verifying before it serves", version.name, role, spec.version, path
        )
        future = self.repository.offer(spec, serve=serve)
        return [future] if future is not None else []


def exploration_record(found: Exploration, base: dict[str, str]) -> dict[str, Any]:
    """The registry record of `found`, counts added to `base` (what the registry held when this server began).

    Worst values are the worst of both; the p50s are this server's when it compared any request. A base
    recorded against another production version is dropped: the counts start again against this one.
    """
    if found.against and base.get("against", found.against) != found.against:
        base = {}

    def number(key: str) -> float:
        try:
            return float(base.get(key, 0))
        except ValueError:
            return 0.0

    fresh = found.requests > 0
    return {
        "requests": int(number("requests")) + found.requests,
        "dropped": int(number("dropped")) + found.dropped,
        "beyond": int(number("beyond")) + found.beyond,
        "p50_ms": round(found.p50_ms if fresh else number("p50_ms"), 4),
        "production_p50_ms": round(found.production_p50_ms if fresh else number("production_p50_ms"), 4),
        "max_abs": max(number("max_abs"), found.max_abs),
        "max_rel": max(number("max_rel"), found.max_rel),
        "worst_ratio": max(number("worst_ratio"), found.worst_ratio),
        "against": found.against or base.get("against", ""),
        "mode": found.mode,
    }


def follow_registry(
    repository: Repository,
    uri: str,
    *,
    alias: str = PRODUCTION,
    models: Sequence[str] = (),
    candidate: str = "",
    share: float = 0.0,
    poll_s: float = 5.0,
) -> RegistryFollower:
    """Make `repository` serve what `alias` names in the registry at `uri`, polled every `poll_s` seconds.

    With `candidate`, that version shadows production (`share` 0) or answers `share` of the requests.
    Returns the started follower; `RegistryFollower.close` stops it and records the exploration.
    """
    explorer = Explorer(repository, mode=SHARE if share else SHADOW, share=share) if candidate else None
    follower = RegistryFollower(
        repository, ModelRegistry(uri), alias=alias, models=models, candidate=candidate, explorer=explorer
    )
    follower.poll()
    follower.start(poll_s)
    return follower
