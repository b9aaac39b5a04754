"""The models a server holds: versions verified in the background, swapped in atomically, rolled back.

Sources are package folders named on the command line (model and version from each manifest) or a
repository folder laid out as ``DIR/<model>/<version>/`` (one package per version folder). Names
come only from listing that folder; a request's model name is looked up, never joined onto a path.

A version serves only after `open_version` verified it here. The newest verified version serves;
the swap is one reference assignment, so a request holds the version it started on until it is
answered (an old version stops taking requests only after it was swapped out, and drains its queue).
A version that fails verification is logged, shown in metadata and metrics, and never serves.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from toolchain.core.errors import PackageError, ToolchainError
from toolchain.package.format import open_package
from toolchain.serve.batching import Batcher, batch_plan
from toolchain.serve.limits import Limits, RequestError
from toolchain.serve.metrics import Metrics, VersionMetrics
from toolchain.serve.versions import NAME, Runner, VersionSpec, check_name, fingerprint, open_version

__all__ = ["Model", "ModelVersion", "Repository", "ServeOptions"]

_log = logging.getLogger("toolchain.serve")


@dataclass(frozen=True)
class ServeOptions:
    """How versions are opened and run.

    Args:
        limits: request limits.
        trust: allow TorchScript / ``.pt2`` artifacts (never without this flag).
        max_batch: dynamic batching up to this many rows (within the verified range); 1 turns it off.
        max_delay_s: how long a batch waits for more requests once the queue is empty.
        workers: threads running each version.
        providers: ONNX Runtime providers to verify and serve on.
        keep: verified versions kept loaded per model (the serving one and those to roll back to).
        intra_op_threads: ONNX Runtime threads per operator (0: its default, every core; see `open_version`).
    """

    limits: Limits = field(default_factory=Limits)
    trust: bool = False
    max_batch: int = 64
    max_delay_s: float = 0.0
    workers: int = 1
    providers: tuple[str, ...] = ("auto",)
    keep: int = 2
    intra_op_threads: int = 1


@dataclass
class ModelVersion:
    """A version and its state: ``loading``, ``ready``, ``failed`` or ``unloaded``."""

    spec: VersionSpec
    metrics: VersionMetrics
    state: str = "loading"
    reason: str = ""
    runner: Runner | None = None
    batcher: Batcher | None = None

    @property
    def name(self) -> str:
        """The version name."""
        return self.spec.version

    def set_state(self, state: str, reason: str = "") -> None:
        """Record the state, for metadata and metrics."""
        self.state, self.reason = state, reason
        self.metrics.state(state)


@dataclass
class Model:
    """A model's versions, the one serving, and the order they served in (for rollback)."""

    name: str
    versions: dict[str, ModelVersion] = field(default_factory=dict)
    serving: ModelVersion | None = None
    served: list[str] = field(default_factory=list)
    retired: set[str] = field(default_factory=set)
    unloaded: bool = False
    pinned: str = ""
    """The version a followed registry alias names: it serves once verified, whatever its number."""
    held: set[str] = field(default_factory=set)
    """Versions loaded beside the serving one that never serve by themselves (shadow/share candidates)."""

    def ready_versions(self) -> list[str]:
        """Versions that can answer, newest first."""
        ready = [v for v in self.versions.values() if v.state == "ready"]
        return [v.name for v in sorted(ready, key=lambda v: _order(v.name), reverse=True)]


class Repository:
    """Every model this server holds.

    Args:
        packages: package folders to serve (model and version from each manifest).
        root: a repository folder ``DIR/<model>/<version>/`` (instead of, or beside, `packages`).
        options: how versions are opened and run.
        metrics: where to count; a fresh registry by default.
    """

    def __init__(
        self,
        *,
        packages: Sequence[Path] = (),
        root: Path | None = None,
        options: ServeOptions | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.options = options or ServeOptions()
        self.metrics = metrics or Metrics()
        self.root = Path(root) if root is not None else None
        self._packages = [_package_spec(Path(p)) for p in packages]
        names = [s.model for s in self._packages]
        if len(set(names)) != len(names):
            raise PackageError(f"packages name the same model twice: {names}; serve versions with --repository")
        self.models: dict[str, Model] = {}
        self._lock = threading.RLock()
        self._loader = ThreadPoolExecutor(max_workers=1, thread_name_prefix="toolchain-verify")
        self._pending: dict[tuple[str, str], Future[None]] = {}
        self._stop = threading.Event()
        self.explorer: Any = None
        """A `toolchain.serve.shadow.Explorer` when a candidate shadows or shares traffic (set by its owner)."""

    def start(self, *, wait: bool = False) -> None:
        """Verify and load every version found; with `wait`, return when each one has settled."""
        futures = self.poll()
        if wait:
            for future in futures:
                future.result()

    def poll(self, only: str | None = None, *, reload: bool = False) -> list[Future[None]]:
        """Look for new or changed versions (of model `only`, else all) and verify them in the background.

        With `reload`, versions that are not ready (failed, unloaded) are verified again as well.
        """
        futures = []
        for spec in self.scan():
            if only is not None and spec.model != only:
                continue
            with self._lock:
                model = self.models.setdefault(spec.model, Model(spec.model))
                known = model.versions.get(spec.version)
                if model.unloaded or spec.version in model.retired:
                    continue
                unchanged = known is not None and known.spec.fingerprint == spec.fingerprint
                if unchanged and (not reload or known.state in ("ready", "loading")):  # type: ignore[union-attr]
                    continue
                key = (spec.model, spec.version)
                if key in self._pending and not self._pending[key].done():
                    continue
                if known is None or known.state != "ready":
                    model.versions[spec.version] = ModelVersion(spec, self.metrics.version(spec.model, spec.version))
                    model.versions[spec.version].set_state("loading")
                future = self._loader.submit(self._load, spec)
                self._pending[key] = future
            futures.append(future)
        return futures

    def scan(self) -> list[VersionSpec]:
        """Every version the sources hold now (folders that are hidden, links or badly named are skipped)."""
        specs = [replace(s, fingerprint=fingerprint(s.path)) for s in self._packages]
        if self.root is None:
            return specs
        for model_dir in _subfolders(self.root):
            for version_dir in _subfolders(model_dir):
                specs.append(VersionSpec(model_dir.name, version_dir.name, version_dir, fingerprint(version_dir)))
        return specs

    def watch(self, interval_s: float) -> threading.Thread:
        """Poll the sources every `interval_s` seconds in a daemon thread until `close`."""

        def loop() -> None:
            while not self._stop.wait(interval_s):
                try:
                    self.poll()
                except Exception:  # NOTE: a bad folder must not stop the watcher; it is logged
                    _log.exception("watching the repository failed")

        thread = threading.Thread(target=loop, daemon=True, name="toolchain-watch")
        thread.start()
        return thread

    def _load(self, spec: VersionSpec) -> None:
        try:
            options = self.options
            runner = open_version(
                spec, trust=options.trust, providers=options.providers, intra_op_threads=options.intra_op_threads
            )
        except ToolchainError as e:
            self._failed(spec, str(e))
            return
        except Exception as e:
            _log.exception("loading %s version %s failed", spec.model, spec.version)
            self._failed(spec, f"{type(e).__name__}: {e}")
            return
        options = self.options
        with self._lock:
            model = self.models.setdefault(spec.model, Model(spec.model))
            version = model.versions.get(spec.version)
            if version is None or model.unloaded or spec.version in model.retired:
                return
            old_batcher = version.batcher
            version.runner = runner
            version.spec = spec
            version.batcher = Batcher(
                runner.run,
                plan=batch_plan(runner.signature, max_batch=options.max_batch),
                max_queue=options.limits.max_queue,
                max_delay_s=options.max_delay_s,
                workers=options.workers,
                observe_batch=version.metrics.batch.observe,
                observe_depth=version.metrics.queue.set,
            )
            version.set_state("ready")
            if old_batcher is not None:
                old_batcher.close()
            newest = self._should_serve(model, spec.version)
            if newest:
                self._serve(model, version)
        _log.info(
            "%s version %s verified (%s)%s", spec.model, spec.version, runner.artifact, " and serving" if newest else ""
        )

    def _should_serve(self, model: Model, version: str) -> bool:
        """Whether a version that just verified takes over: the pinned one, else the newest not held aside."""
        if model.pinned:
            return version == model.pinned
        if version in model.held:
            return False
        return model.serving is None or _order(version) >= _order(model.serving.name)

    def offer(self, spec: VersionSpec, *, serve: bool) -> Future[None] | None:
        """Verify and load `spec` from a source other than the folders (a registry alias moved to it).

        With `serve` it becomes the model's pinned version: it serves as soon as it verified (at once
        when it is already loaded from the same folder); until then, and for ever when it fails, the
        version serving now keeps serving. Without `serve` it is held aside (a candidate).
        Returns the pending load, or None when nothing had to be loaded.
        """
        with self._lock:
            model = self.models.setdefault(spec.model, Model(spec.model))
            model.unloaded = False
            model.retired.discard(spec.version)
            if serve:
                model.pinned = spec.version
                model.held.discard(spec.version)
            else:
                model.held.add(spec.version)
            known = model.versions.get(spec.version)
            if known is not None and known.spec.fingerprint == spec.fingerprint and known.spec.path == spec.path:
                if known.state == "ready":
                    if serve and model.serving is not known:
                        self._serve(model, known)
                        _log.info("%s version %s serving (already verified)", spec.model, spec.version)
                    return None
                pending = self._pending.get((spec.model, spec.version))
                if pending is not None and not pending.done():
                    return pending
            if known is None or known.state != "ready":
                model.versions[spec.version] = ModelVersion(spec, self.metrics.version(spec.model, spec.version))
                model.versions[spec.version].set_state("loading")
            future = self._loader.submit(self._load, spec)
            self._pending[(spec.model, spec.version)] = future
            return future

    def release(self, name: str, version: str) -> None:
        """Stop holding a candidate aside: unloaded unless it serves now (its queue drains first)."""
        with self._lock:
            model = self.models.get(name)
            if model is None or version not in model.held:
                return
            model.held.discard(version)
            held = model.versions.get(version)
            if held is not None and held is not model.serving and held.state in ("ready", "loading"):
                model.retired.add(version)  # NOTE: a load still running must not make it serve afterwards
                self._unload_version(held, "no longer a candidate")

    def _failed(self, spec: VersionSpec, reason: str) -> None:
        _log.error("%s version %s never serves: %s", spec.model, spec.version, reason)
        with self._lock:
            model = self.models.setdefault(spec.model, Model(spec.model))
            version = model.versions.setdefault(
                spec.version, ModelVersion(spec, self.metrics.version(spec.model, spec.version))
            )
            if version is model.serving:  # NOTE: a changed folder of the serving version keeps the verified copy
                _log.error("%s version %s keeps serving the copy verified earlier", spec.model, spec.version)
                version.spec = spec
                version.reason = f"its files changed and were refused ({reason}); serving the copy verified earlier"
                self.metrics.failures.labels(spec.model, spec.version).inc()
                return
            version.spec = spec
            if version.batcher is not None:
                version.batcher.close()
            version.batcher, version.runner = None, None
            version.set_state("failed", reason)

    def _serve(self, model: Model, version: ModelVersion) -> None:
        """Make `version` the one serving (held lock) and unload versions beyond `keep`."""
        model.serving = version
        if version.name in model.served:
            model.served.remove(version.name)
        model.served.append(version.name)
        loaded = [v for v in model.served if model.versions[v].state == "ready" and v not in model.held]
        for stale in loaded[: max(0, len(loaded) - self.options.keep)]:
            self._unload_version(model.versions[stale], "replaced by newer versions")

    def _unload_version(self, version: ModelVersion, reason: str) -> None:
        if version.batcher is not None:
            version.batcher.close()
        version.batcher, version.runner = None, None
        version.set_state("unloaded", reason)

    def load(self, name: str) -> Model:
        """Load (or reload) a model by name from the sources; blocks until its versions settled.

        Raises:
            RequestError: 404 when no source holds a model of that name.
        """
        with self._lock:
            model = self.models.get(name)
            if model is not None:
                model.unloaded = False
                model.retired.clear()
        if not any(s.model == name for s in self.scan()):
            raise RequestError(404, f"no model {name[:100]!r} in the repository")
        for future in self.poll(only=name, reload=True):
            future.result()
        return self.models[name]

    def unload(self, name: str) -> None:
        """Stop serving a model: its versions drain their queues, then it answers 404 until loaded again."""
        with self._lock:
            model = self.get(name)
            model.unloaded = True
            model.serving = None
            for version in model.versions.values():
                if version.state == "ready":
                    self._unload_version(version, "unloaded by request")

    def rollback(self, name: str) -> str:
        """Serve the previously served version still loaded; the current one retires. Returns the version."""
        with self._lock:
            model = self.get(name)
            current = model.serving
            earlier = [v for v in model.served[:-1] if model.versions[v].state == "ready"]
            if current is None or not earlier:
                raise RequestError(400, f"model {name!r} has no earlier verified version loaded to roll back to")
            model.retired.add(current.name)
            model.served.remove(current.name)
            self._unload_version(current, "rolled back")
            model.serving = model.versions[earlier[-1]]
            _log.info("%s rolled back from version %s to %s", name, current.name, earlier[-1])
            return earlier[-1]

    def get(self, name: str) -> Model:
        """The model called `name`; `RequestError` 404 when there is none."""
        model = self.models.get(name)
        if model is None or model.unloaded:
            raise RequestError(404, f"unknown model {name[:100]!r}; GET /v2/repository/index lists them")
        return model

    def resolve(self, name: str, version: str | None = None) -> ModelVersion:
        """The version to run a request on: the serving one (or a candidate taking a share), or `version`."""
        model = self.get(name)
        chosen = model.serving if version is None else model.versions.get(version)
        if version is None and self.explorer is not None:
            chosen = self.explorer.route(model, chosen)
        if version is not None and chosen is None:
            raise RequestError(404, f"model {name!r} has no version {version[:40]!r}")
        if chosen is None or chosen.state != "ready" or chosen.batcher is None:
            shown = [chosen] if chosen is not None else list(model.versions.values())
            why = "".join(f"; version {v.name} {v.state}" + (f": {v.reason}" if v.reason else "") for v in shown)
            raise RequestError(503, f"model {name!r} has no ready version{why}", headers={"retry-after": "1"})
        return chosen

    def ready(self) -> bool:
        """Strict readiness: every model not unloaded serves a verified version and nothing is loading."""
        with self._lock:
            models = [m for m in self.models.values() if not m.unloaded]
            pending = any(not f.done() for f in self._pending.values())
            return bool(models) and not pending and all(m.serving is not None for m in models)

    def index(self) -> list[dict[str, Any]]:
        """Every model version with its state and reason (the repository extension's index)."""
        with self._lock:
            return [
                {"name": m.name, "version": v.name, "state": v.state.upper(), "reason": v.reason}
                for m in self.models.values()
                for v in sorted(m.versions.values(), key=lambda v: _order(v.name))
            ]

    def close(self) -> None:
        """Stop watching and loading; every loaded version drains and stops."""
        self._stop.set()
        self._loader.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            for model in self.models.values():
                for version in model.versions.values():
                    if version.batcher is not None:
                        version.batcher.close()


def _package_spec(path: Path) -> VersionSpec:
    package = open_package(path)
    name = check_name(package.name, f"{path}: model name")
    version = check_name(str(package.manifest.get("version", "1")), f"{path}: version")
    return VersionSpec(name, version, path, fingerprint(path))


def _subfolders(folder: Path) -> Iterable[Path]:
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        _log.error("cannot list %s: %s", folder, e)
        return []
    return [
        Path(e.path) for e in entries if NAME.match(e.name) and ".." not in e.name and e.is_dir(follow_symlinks=False)
    ]


def _order(version: str) -> tuple[int, int, str]:
    """Numeric versions in numeric order, after any named ones."""
    return (1, int(version), "") if version.isdigit() else (0, 0, version)
