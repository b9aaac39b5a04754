from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.evaluate.family import NAMES, labelled
from toolchain.cli import app
from toolchain.core.errors import RegistryError

pytest.importorskip("mlflow")
from toolchain.registry.peers import DEFAULT_MARGIN, rank_peers
from toolchain.registry.store import ModelRegistry

GOOD, NEAR, WEAK = NAMES


@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("TOOLCHAIN_REGISTRY_URI", f"sqlite:///{tmp_path / 'registry.db'}")
    monkeypatch.setenv("TOOLCHAIN_USER", "alice")

    def run(*args: str, code: int = 0) -> str:
        result = CliRunner().invoke(app, list(args))
        assert result.exit_code == code, result.output
        return result.output

    return run


def _rows(table: str) -> list[list[str]]:
    return [line.split() for line in table.splitlines() if line.split() and line.split()[0].isdigit()]


def test_peers_rank_a_family_on_its_metric_and_flag_the_weakest(family: dict[str, Path], cli, tmp_path: Path) -> None:
    x, labels = labelled(300, seed=31)
    np.savez(tmp_path / "data.npz", x=x, labels=labels)
    for name in NAMES:
        cli("registry", "add", str(family[name]))
        cli("registry", "tag", name, "--family", "scorers", *(["--margin", "0.1"] if name == GOOD else []))
        out = cli("evaluate", str(family[name]), "--data", str(tmp_path / "data.npz"), "--labels", "labels",
                  "--name", name)  # fmt: skip
        assert f"recorded in {name} version 1" in out

    table = cli("registry", "peers", "scorers")
    rows = _rows(table)
    assert [r[1] for r in rows] == [GOOD, NEAR, WEAK]
    assert rows[0][4] == "1" and rows[0][5] == "0" and rows[-1][-2:] == ["BEHIND", "(retire?)"]
    assert "BEHIND" not in " ".join(rows[0] + rows[1])
    assert "ranked on accuracy" in table and "more than 0.1" in table

    registry = ModelRegistry()
    ranking = rank_peers(registry, "scorers")
    assert not ranking and [p.name for p in ranking.flagged] == [WEAK]
    near, weak = ranking.peers[1], ranking.peers[2]
    assert 0 < near.behind <= 0.1 < weak.behind and weak.value < 0.6 and weak.examples == 300
    # A stricter margin for this run flags the near copy too; the declared one is unchanged.
    assert [p.name for p in rank_peers(registry, "scorers", margin=near.behind / 2).flagged] == [NEAR, WEAK]
    assert registry.margin("scorers", default=DEFAULT_MARGIN) == 0.1
    # The same family found by its signature hash.
    signature = ranking.peers[0].name and registry.get(GOOD).evidence.signature_sha256
    assert [p.name for p in rank_peers(registry, signature[:12]).peers] == [GOOD, NEAR, WEAK]

    assert "accuracy 1" in cli("registry", "compare", GOOD)
    assert "evaluated:  accuracy" in cli("registry", "show", WEAK)
    cli("registry", "retire", WEAK, "1", "--reason", "behind its peers by more than the margin")
    after = cli("registry", "peers", "scorers")
    assert [r[1] for r in _rows(after)] == [GOOD, NEAR]
    assert f"{WEAK}: every version is retired" in after
    assert [e.action for e in registry.log(WEAK)] == ["add", "family", "evaluate", "retire"]


def test_an_evaluation_is_recorded_only_for_the_version_it_ran(family: dict[str, Path], cli, tmp_path: Path) -> None:
    x, labels = labelled(20, seed=32)
    np.savez(tmp_path / "data.npz", x=x, labels=labels)
    cli("registry", "add", str(family[GOOD]))
    out = cli("evaluate", str(family[WEAK]), "--data", str(tmp_path / "data.npz"), "--labels", "labels",
              "--name", GOOD, code=1)  # fmt: skip
    assert "weights_sha256" in out and f"is not that of {GOOD} version 1" in out
    assert "toolchain.eval.value" not in ModelRegistry().get(GOOD).tags


def test_peers_of_an_unknown_family_and_unevaluated_members(family: dict[str, Path], cli) -> None:
    cli("registry", "add", str(family[NEAR]))
    assert "no registered model in family 'nobody'" in cli("registry", "peers", "nobody", code=1)
    cli("registry", "tag", NEAR, "--family", "solo")
    out = cli("registry", "peers", "solo")
    assert "not evaluated" in out and "ranked on nothing" in out
    assert "margin 2 must be" in cli("registry", "tag", NEAR, "--family", "solo", "--margin", "2", code=1)
    with pytest.raises(RegistryError, match="margin -1"):
        rank_peers(ModelRegistry(), "solo", margin=-1)
