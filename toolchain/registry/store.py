"""The model registry on MLflow's Model Registry: versions with evidence, promotion, retirement, audit log.

A package becomes a model version: an MLflow run holds the package folder as its artifacts and the
evidence as metrics and params; the version carries the evidence as tags (`Evidence.tags`), so the
MLflow UI shows and searches them. Production is the registered model's ``production`` alias. Every
transition (add, promote, refused promotion, retire) is one JSON tag ``toolchain.log.<time>-<id>``
on the registered model: MLflow keeps no history of aliases, and tags need no schema of our own.

MLflow is imported only when a `ModelRegistry` is made (``pip install 'toolchain[registry]'``).
"""

from __future__ import annotations

import functools
import getpass
import json
import logging
import math
import os
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlparse

from toolchain.core.errors import RegistryError
from toolchain.package.format import open_package
from toolchain.package.trust import toolchain_home
from toolchain.package.verify import VerificationReport, verify_package
from toolchain.registry.evidence import Evidence, read_evidence
from toolchain.registry.rules import (
    DEFAULT_BUDGETS,
    EXPLORE_TAG,
    Budgets,
    PromotionCheck,
    check_exploration,
    check_promotion,
    explored,
)

__all__ = ["PRODUCTION", "LogEntry", "ModelRegistry", "Version", "check_name", "default_uri", "who"]

PRODUCTION = "production"
_LOG = "toolchain.log."
_STATUS = "toolchain.status"
_BUDGET = "toolchain.budget."
_EXPLORE = EXPLORE_TAG
_EXPERIMENT = "toolchain-registry"
_EVAL = "toolchain.eval."
_FAMILY = "toolchain.family"
_MARGIN = "toolchain.margin."
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
F = TypeVar("F", bound=Callable[..., Any])


def _explained(method: F) -> F:
    """Turn an error MLflow raises (unreachable store, limit exceeded) into a one-line `RegistryError`."""

    @functools.wraps(method)
    def wrapper(self: ModelRegistry, *args: Any, **kwargs: Any) -> Any:
        from mlflow.exceptions import MlflowException

        try:
            return method(self, *args, **kwargs)
        except MlflowException as e:
            raise RegistryError(f"{self.uri}: {e.message}") from e

    return wrapper  # type: ignore[return-value]


def check_name(name: str) -> str:
    """`name` when it is a model name the registry accepts (letters, digits, ``._-``), else `RegistryError`."""
    if not _NAME.match(name):
        raise RegistryError(
            f"model name {name!r} must be 1-128 letters, digits, '.', '_' or '-', starting with a letter or digit"
        )
    return name


def default_uri() -> str:
    """``$TOOLCHAIN_REGISTRY_URI``, else SQLite at ``$TOOLCHAIN_HOME/registry.db``."""
    return os.environ.get("TOOLCHAIN_REGISTRY_URI") or f"sqlite:///{(toolchain_home() / 'registry.db').resolve()}"


def who() -> str:
    """Who acts: ``$TOOLCHAIN_USER``, else the login name."""
    return os.environ.get("TOOLCHAIN_USER") or getpass.getuser()


@dataclass(frozen=True)
class Version:
    """One registered version: its number, status, evidence and where its package is stored."""

    name: str
    version: str
    status: str
    """``registered``, ``production`` or ``retired``."""
    evidence: Evidence
    source: str
    tags: dict[str, str]


@dataclass(frozen=True)
class LogEntry:
    """One transition: what happened to which version, who did it, when and why."""

    when: str
    who: str
    action: str
    version: str
    why: str = ""
    forced: bool = False
    findings: tuple[str, ...] = ()

    def describe(self) -> str:
        """``2026-12-03T14:00:00+00:00 alice promote 2 (forced): why [findings]``."""
        forced = " (forced)" if self.forced else ""
        why = f": {self.why}" if self.why else ""
        found = f" [{'; '.join(self.findings)}]" if self.findings else ""
        return f"{self.when} {self.who} {self.action} {self.version}{forced}{why}{found}"


class ModelRegistry:
    """Registered packages under one MLflow tracking/registry URI (SQLite, a server, PostgreSQL)."""

    def __init__(
        self,
        uri: str = "",
        *,
        artifacts: Path | None = None,
        verify: Callable[[Path], VerificationReport] = verify_package,
    ) -> None:
        """Open (and on first use create) the registry at `uri` (`default_uri` when empty).

        Args:
            uri: MLflow tracking and registry URI.
            artifacts: where package copies go for a database URI (default ``$TOOLCHAIN_HOME/registry-artifacts``).
            verify: how a package is verified before it is added or promoted.
        """
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise RegistryError(
                f"the registry needs MLflow, which is not importable ({e}); pip install 'toolchain[registry]'"
            ) from e
        # NOTE: MLflow logs its database migrations at INFO on first use; a CLI line per table is noise.
        for noisy in ("mlflow", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.uri = uri or default_uri()
        self._artifacts = artifacts or toolchain_home() / "registry-artifacts"
        self._verify = verify
        self._client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    @_explained
    def add(self, package: Path, *, name: str = "") -> Version:
        """Verify `package` on this host, then register it as the next version of `name` (its manifest's).

        Raises:
            RegistryError: the package does not verify here.
        """
        package = Path(package)
        report = self._verify(package)
        if not report:
            raise RegistryError(f"{package}: does not verify on this host, not added: {_first_failure(report)}")
        evidence = read_evidence(open_package(package))
        name = check_name(name or evidence.name)
        client = self._client
        run = client.create_run(self._experiment(), tags={"toolchain.model": name})
        run_id = run.info.run_id
        for key, value in evidence.metrics().items():
            client.log_metric(run_id, key, value)
        client.log_param(run_id, "source", evidence.source)
        client.log_param(run_id, "kept", ",".join(evidence.kept))
        client.log_artifacts(run_id, str(package), "package")
        client.set_terminated(run_id)
        if not client.search_registered_models(filter_string=f"name = '{name}'"):
            from mlflow.exceptions import MlflowException

            try:
                client.create_registered_model(name, description=f"toolchain packages of {evidence.source}")
            except MlflowException as e:
                # NOTE: another `add` of the same new model may have created it since the search.
                if e.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
        tags = {**evidence.tags(), _STATUS: "registered"}
        created = client.create_model_version(name, f"{run.info.artifact_uri}/package", run_id=run_id, tags=tags)
        self._log(name, "add", str(created.version), why=f"from {package}")
        return self.get(name, str(created.version))

    @_explained
    def names(self) -> list[str]:
        """Every registered model name, sorted."""
        return sorted(m.name for m in self._client.search_registered_models())

    @_explained
    def versions(self, name: str) -> list[Version]:
        """Every version of `name`, oldest first."""
        found = self._client.search_model_versions(filter_string=f"name = '{check_name(name)}'")
        if not found:
            raise RegistryError(f"no model {name!r} in {self.uri}; known: {self.names()}")
        return sorted((self._version(mv) for mv in found), key=lambda v: int(v.version))

    @_explained
    def get(self, name: str, version: str = "") -> Version:
        """Version `version` of `name`; without one, production, else the latest."""
        if not version:
            return self.production(name) or self.versions(name)[-1]
        from mlflow.exceptions import MlflowException

        try:
            return self._version(self._client.get_model_version(name, version))
        except MlflowException as e:
            raise RegistryError(f"no version {version!r} of {name!r} in {self.uri}: {e.message}") from None

    @_explained
    def production(self, name: str) -> Version | None:
        """The version the ``production`` alias names, if any."""
        from mlflow.exceptions import MlflowException

        try:
            return self._version(self._client.get_model_version_by_alias(name, PRODUCTION))
        except MlflowException:
            return None

    @_explained
    @_explained
    def budgets(self, name: str) -> Budgets:
        """The budgets declared for `name` (`declare_budgets`), else `DEFAULT_BUDGETS`."""
        tags = self._client.get_registered_model(check_name(name)).tags
        try:
            return Budgets(
                latency=float(tags.get(_BUDGET + "latency", DEFAULT_BUDGETS.latency)),
                size=float(tags.get(_BUDGET + "size", DEFAULT_BUDGETS.size)),
                min_shadowed=int(tags.get(_BUDGET + "min_shadowed", DEFAULT_BUDGETS.min_shadowed)),
            )
        except ValueError as e:
            raise RegistryError(f"{name}: a budget tag is not a number ({e}); declare it again") from None

    @_explained
    def declare_budgets(self, name: str, budgets: Budgets, *, reason: str = "") -> Budgets:
        """Declare how much worse than production a version of `name` may be; logged like a transition."""
        for key, value in (("latency", budgets.latency), ("size", budgets.size)):
            if not 0 <= value < 1000:
                raise RegistryError(f"{key} budget {value} must be a share of production's value, from 0 (e.g. 0.1)")
        if not 0 <= budgets.min_shadowed < 1 << 40:
            raise RegistryError(f"--min-shadowed {budgets.min_shadowed} must be a count of requests, from 0")
        self.versions(name)  # NOTE: only for a registered model; names a missing one with what exists.
        self._client.set_registered_model_tag(name, _BUDGET + "latency", repr(budgets.latency))
        self._client.set_registered_model_tag(name, _BUDGET + "size", repr(budgets.size))
        declared = f"latency +{budgets.latency:.0%}, size +{budgets.size:.0%}"
        if budgets.min_shadowed:
            declared += f", at least {budgets.min_shadowed} shadowed requests"
        self._client.set_registered_model_tag(name, _BUDGET + "min_shadowed", str(budgets.min_shadowed))
        self._log(name, "budget", "-", why=f"{declared}: {reason}" if reason else declared)
        return budgets

    def check(self, name: str, version: str, *, budgets: Budgets | None = None) -> PromotionCheck:
        """Judge promoting `version` of `name` (verified here now) against the production version.

        `budgets` default to those declared for `name` (`budgets`).
        """
        candidate = self.get(name, version)
        report = self._verify(self.local_path(candidate))
        current = self.production(name)
        budgets = budgets or self.budgets(name)
        check = check_promotion(
            candidate.version,
            candidate.evidence,
            verified="" if report else _first_failure(report),
            production=(current.version, current.evidence) if current else None,
            budgets=budgets,
        )
        if candidate.status == "retired":
            check = PromotionCheck(check.version, check.production, ("is retired", *check.problems), check.notes)
        return check_exploration(check, explored(candidate.tags), budgets)

    @_explained
    def promote(
        self, name: str, version: str, *, to: str = PRODUCTION, force: bool = False, reason: str = ""
    ) -> PromotionCheck:
        """Point alias `to` at `version` when `check` passes (declared budgets), or with `force` and a `reason`.

        Raises:
            RegistryError: the check failed and `force` was not given (the refusal is logged), or
                `force` was given without a reason.
        """
        if to != PRODUCTION:
            return self.set_alias(name, version, to, reason=reason)
        if force and not reason.strip():
            raise RegistryError("--force needs --reason: an override is recorded with why it was made")
        check = self.check(name, version)
        if not check and not force:
            self._log(name, "refused", version, why=reason, findings=check.problems)
            raise RegistryError(
                f"{name}: not promoted: {check.describe()}; fix it, or pass --force --reason WHY to override"
            )
        previous = self.production(name)
        self._client.set_registered_model_alias(name, to, version)
        if previous is not None and previous.version != version:
            self._client.set_model_version_tag(name, previous.version, _STATUS, "registered")
        self._client.set_model_version_tag(name, version, _STATUS, PRODUCTION)
        self._log(name, "promote", version, why=reason, forced=not check, findings=check.problems)
        return check

    @_explained
    def retire(self, name: str, version: str, *, reason: str, force: bool = False) -> Version:
        """Mark `version` retired with `reason`; the production version only with `force`.

        Raises:
            RegistryError: no reason, or the version is production and `force` was not given.
        """
        if not reason.strip():
            raise RegistryError("retire needs --reason: the log records why a version was retired")
        target = self.get(name, version)
        if target.status == PRODUCTION:
            if not force:
                raise RegistryError(
                    f"{name} version {version} is production; promote another version first, or pass --force"
                )
            self._client.delete_registered_model_alias(name, PRODUCTION)
        self._client.set_model_version_tag(name, version, _STATUS, "retired")
        self._client.set_model_version_tag(name, version, "toolchain.retired_reason", reason)
        self._log(name, "retire", version, why=reason, forced=target.status == PRODUCTION)
        return self.get(name, version)

    @_explained
    def alias(self, name: str, alias: str) -> Version | None:
        """The version `alias` names (``production``, ``candidate``, ...), if any."""
        from mlflow.exceptions import MlflowException

        try:
            return self._version(self._client.get_model_version_by_alias(check_name(name), alias))
        except MlflowException:
            return None

    @_explained
    def set_alias(self, name: str, version: str, alias: str, *, reason: str = "") -> PromotionCheck:
        """Point an alias other than production (e.g. ``candidate``, to shadow production) at `version`.

        No promotion rule applies: such an alias serves only as a shadow or a declared share. Logged.
        """
        if alias == PRODUCTION or not _NAME.match(alias) or alias.isdigit() or alias.lower() == "latest":
            raise RegistryError(
                f"alias {alias!r}: expected a name of letters, digits, '.', '_' or '-', not a number, 'latest' or "
                f"{PRODUCTION!r} (use promote for that)"
            )
        target = self.get(name, version)
        if target.status == "retired":
            raise RegistryError(f"{name} version {version} is retired; it cannot become {alias!r}")
        self._client.set_registered_model_alias(name, alias, version)
        self._log(name, f"alias {alias}", version, why=reason)
        return PromotionCheck(version, "", (), (f"{alias!r} is not production: no promotion rule applies",))

    @_explained
    def record_exploration(self, name: str, version: str, values: dict[str, float | int | str]) -> None:
        """Store what serving `version` beside production showed (``toolchain serve --shadow/--share``).

        The values become version tags ``toolchain.explore.<key>`` (shown by ``compare``, searchable) and,
        the numbers, metrics of the version's run (their history across flushes, in the MLflow UI).
        """
        client = self._client
        run_id = client.get_model_version(check_name(name), version).run_id
        for key, value in values.items():
            client.set_model_version_tag(name, version, _EXPLORE + key, str(value))
            if run_id and isinstance(value, int | float) and math.isfinite(value):
                client.log_metric(run_id, f"explore.{key}", float(value), step=int(values.get("requests", 0)))

    @_explained
    def log(self, name: str) -> list[LogEntry]:
        """Every transition of `name`, oldest first."""
        from mlflow.exceptions import MlflowException

        try:
            tags = self._client.get_registered_model(name).tags
        except MlflowException:
            raise RegistryError(f"no model {name!r} in {self.uri}; known: {self.names()}") from None
        entries = [json.loads(v) for k, v in sorted(tags.items()) if k.startswith(_LOG)]
        return [LogEntry(**{**e, "findings": tuple(e.get("findings", ()))}) for e in entries]

    def local_path(self, version: Version) -> Path:
        """The stored package of `version` as a folder on this machine (downloaded when remote)."""
        parsed = urlparse(version.source)
        if parsed.scheme in ("", "file"):
            return Path(unquote(parsed.path))
        import mlflow.artifacts

        return Path(mlflow.artifacts.download_artifacts(artifact_uri=version.source, tracking_uri=self.uri))

    def _version(self, mv: Any) -> Version:
        tags = dict(mv.tags)
        evidence = Evidence.from_tags(tags)
        status = tags.get(_STATUS, "registered")
        return Version(mv.name, str(mv.version), status, evidence, str(mv.source), tags)

    def _experiment(self) -> str:
        found = self._client.get_experiment_by_name(_EXPERIMENT)
        if found is not None:
            return str(found.experiment_id)
        local = urlparse(self.uri).scheme.split("+")[0] in ("sqlite", "postgresql", "mysql", "mssql", "file", "")
        location = (self._artifacts.resolve().as_uri()) if local else None
        if location:
            self._artifacts.mkdir(parents=True, exist_ok=True)
        return str(self._client.create_experiment(_EXPERIMENT, artifact_location=location))

    def _log(
        self, name: str, action: str, version: str, *, why: str = "", forced: bool = False,
        findings: tuple[str, ...] = (),
    ) -> None:  # fmt: skip
        entry = LogEntry(datetime.now(UTC).isoformat(timespec="seconds"), who(), action, version, why, forced, findings)
        # NOTE: nanosecond time first, so that sorting tag keys orders the log; the random part keeps two
        # writers in the same nanosecond apart.
        key = f"{_LOG}{time.time_ns():020d}-{uuid.uuid4().hex[:8]}"
        record = {**entry.__dict__, "findings": list(findings)}
        self._client.set_registered_model_tag(name, key, json.dumps(record))

    # NOTE: evaluation and families (issue 23 points 4-5) below; kept at the end of the class for merges.

    @_explained
    def record_evaluation(self, name: str, version: str, package: Path, values: dict[str, str]) -> Version:
        """Record an evaluation of `package`, which must be `version` of `name`, as a run metric and tags.

        Args:
            name: registered model name.
            version: its version ('' for production, else the latest).
            package: the package folder that was evaluated.
            values: ``metric``, ``value``, ``examples``, ``data_sha256``, ``artifact`` (as text).

        Raises:
            RegistryError: `package` has other weights or another signature than the registered version.
        """
        target = self.get(name, version)
        evaluated = read_evidence(open_package(Path(package)))
        for what in ("weights_sha256", "signature_sha256"):
            if getattr(evaluated, what) != getattr(target.evidence, what):
                raise RegistryError(
                    f"{package}: its {what} {getattr(evaluated, what)[:12]} is not that of {name} version "
                    f"{target.version} ({getattr(target.evidence, what)[:12]}); evaluate the registered package"
                )
        run_id = self._client.get_model_version(name, target.version).run_id
        if run_id:
            self._client.log_metric(run_id, f"eval/{values['metric']}", float(values["value"]))
        for key, value in values.items():
            self._client.set_model_version_tag(name, target.version, _EVAL + key, value)
        summary = f"{values['metric']} {float(values['value']):.6g} on {values['examples']} examples"
        self._log(name, "evaluate", target.version, why=f"{summary} (data {values['data_sha256'][:12]})")
        return self.get(name, target.version)

    @_explained
    def set_family(self, name: str, family: str, *, margin: float | None = None) -> None:
        """Declare `name` a member of `family` (peers compare members); with `margin`, the family's margin too."""
        if margin is not None and not 0 <= margin <= 1:
            raise RegistryError(f"margin {margin:g} must be a metric difference from 0 to 1 (e.g. 0.02)")
        self.versions(name)  # NOTE: only for a registered model; names a missing one with what exists.
        self._client.set_registered_model_tag(name, _FAMILY, check_name(family))
        self._log(name, "family", "-", why=family)
        if margin is not None:
            self._client.set_experiment_tag(self._experiment(), _MARGIN + family, repr(margin))

    @_explained
    def families(self) -> dict[str, str]:
        """Registered model name -> declared family, for those that declared one."""
        return {m.name: m.tags[_FAMILY] for m in self._client.search_registered_models() if _FAMILY in m.tags}

    @_explained
    def margin(self, family: str, *, default: float) -> float:
        """The margin declared for `family` (`set_family`), else `default`."""
        declared = self._client.get_experiment(self._experiment()).tags.get(_MARGIN + family)
        return float(declared) if declared is not None else default


def _first_failure(report: VerificationReport) -> str:
    lines = report.failure_lines()
    return lines[0] if lines else report.summary()
