"""pytest plugin: ``pytest --toolchain-gate`` adds one test item per registered model spec.

Registered through the ``pytest11`` entry point, so installing toolchain is enough. Without the flag
it only adds its options. With it, every spec registered once the tests are collected (or those of
``--toolchain-target`` / the ``toolchain_targets`` ini value) becomes an item that exports the model
through its paths and verifies each artifact against eager at every declared size, reusing the
gate's cache. Nothing here imports torch until the flag is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from toolchain.core.errors import ToolchainError

if TYPE_CHECKING:
    from toolchain.gate.runner import GateOutcome, Selected

__all__ = ["GateFailure", "GateItem", "pytest_addoption", "pytest_collection_modifyitems", "pytest_configure"]

MARKER = "toolchain_gate"


def pytest_addoption(parser: pytest.Parser) -> None:
    """Add ``--toolchain-gate`` and its options."""
    group = parser.getgroup("toolchain", "toolchain parity gate")
    group.addoption(
        "--toolchain-gate",
        action="store_true",
        default=False,
        help="Add one test item per registered model spec: export it and verify parity with eager.",
    )
    group.addoption(
        "--toolchain-target",
        action="append",
        default=[],
        metavar="TARGET",
        help="Module, path/file.py, registered name or module:attr to check (repeatable; default: the "
        "toolchain_targets ini value, else every spec registered once the tests are collected).",
    )
    group.addoption(
        "--toolchain-formats", default="", metavar="FORMATS", help="Export paths: all, auto or a comma list."
    )
    group.addoption(
        "--toolchain-baseline", default="", metavar="FILE", help="Regression baseline to judge the models against."
    )
    parser.addini("toolchain_targets", "Modules or files whose models --toolchain-gate checks.", type="args")
    parser.addini("toolchain_formats", "Export paths for --toolchain-gate: all, auto or a comma list.", default="all")


def pytest_configure(config: pytest.Config) -> None:
    """Register the marker the gate's items carry (``-m toolchain_gate`` selects them)."""
    config.addinivalue_line("markers", f"{MARKER}: a model checked by the toolchain parity gate (--toolchain-gate)")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    """Append the gate's items (before ``-k`` / ``-m`` deselection runs)."""
    if not config.getoption("toolchain_gate"):
        return
    from toolchain.gate.baseline import load_baseline
    from toolchain.gate.runner import parse_formats, select_specs

    targets = list(config.getoption("toolchain_target")) or list(config.getini("toolchain_targets"))
    try:
        formats = parse_formats(config.getoption("toolchain_formats") or str(config.getini("toolchain_formats")))
        selected = select_specs(targets, all_registered=not targets, zoo=False)
        baseline_file = config.getoption("toolchain_baseline")
        baseline = load_baseline(Path(baseline_file)) if baseline_file else None
    except ToolchainError as e:
        raise pytest.UsageError(f"--toolchain-gate: {e}") from e
    added = [
        GateItem.from_parent(
            session,
            name=f"{MARKER}[{s.spec.name}]",
            nodeid=f"{MARKER}[{s.spec.name}]",
            selected=s,
            formats=formats,
            baseline=baseline,
        )
        for s in selected
    ]
    items.extend(added)
    # NOTE: reported like any collected node, so that "N items collected" counts the gate's items too.
    config.hook.pytest_collectreport(report=pytest.CollectReport(MARKER, "passed", None, list(added)))


class GateFailure(Exception):
    """A model failed the gate; carries the outcome for the failure report."""

    def __init__(self, outcome: GateOutcome) -> None:
        super().__init__(outcome.summary())
        self.outcome = outcome


class GateItem(pytest.Item):
    """One model: export through its paths, verify each artifact, judge like ``toolchain gate``."""

    def __init__(
        self,
        *,
        selected: Selected,
        formats: tuple[str, ...],
        baseline: dict[str, Any] | None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.selected, self.formats, self.baseline = selected, formats, baseline
        self.add_marker(MARKER)

    def runtest(self) -> None:
        """Check the model in this process (or reuse its cached check) and judge it."""
        from toolchain.gate.runner import KNOWN, judge, run_gate

        outcome = judge(run_gate([self.selected], formats=self.formats), baseline=self.baseline)
        for case in outcome.cases:
            self.user_properties.append((f"{case.artifact}", case.outcome))
        if not outcome:
            raise GateFailure(outcome)
        known = [c for c in outcome.cases if c.outcome == KNOWN]
        if known:
            pytest.xfail("; ".join(f"{c.artifact}: {c.message}" for c in known))

    def repr_failure(self, excinfo: pytest.ExceptionInfo[BaseException], style: Any = None) -> Any:
        """The failing paths with their parity tables and localisation, instead of a traceback."""
        if not isinstance(excinfo.value, GateFailure):
            return super().repr_failure(excinfo, style=style)
        lines = []
        for case in excinfo.value.outcome.failed:
            lines += [f"{case.model} / {case.artifact}: {case.message}", case.details, ""]
        return "\n".join(lines).rstrip()

    def reportinfo(self) -> tuple[Path, int | None, str]:
        """Where the model is defined, for the report header."""
        spec = self.selected.spec
        return self.path, None, f"toolchain gate: {spec.name} ({spec.source})"
