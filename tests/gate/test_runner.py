from __future__ import annotations

import json
import sys
import textwrap
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolchain.cli import app
from toolchain.core.errors import TargetError
from toolchain.core.spec import SPECS
from toolchain.gate.executors import LocalExecutor
from toolchain.gate.runner import judge, parse_formats, run_gate, select_specs

runner = CliRunner()

MODELS = """
import torch
from torch import nn
from toolchain import Dim, exportable

LIMIT = {limit}


@exportable(name="alpha.linear", inputs={{"x": ("batch", 4)}}, outputs=["y"], dims={{"batch": Dim(example=3)}},
            formats=["onnx"])
class Linear(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x)


@exportable(name="zeta.branch", inputs={{"x": ("batch", 4)}}, outputs=["y"], dims={{"batch": Dim(example=3)}},
            formats=["onnx"])
class Branch(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        if x.shape[0] > LIMIT:
            return self.fc(x) * 2
        return self.fc(x)
"""


def _forget(path: Path) -> None:
    """Unregister the file's models and drop its module, so the next import reads the file again."""
    for name in ("alpha.linear", "zeta.branch"):
        SPECS.unregister(name)
    for key, module in list(sys.modules.items()):
        if getattr(module, "__file__", None) == str(path.resolve()):
            del sys.modules[key]


@pytest.fixture
def models(tmp_path: Path):
    path = tmp_path / "gate_models.py"
    path.write_text(textwrap.dedent(MODELS.format(limit=1000)))
    yield path
    _forget(path)


def _gate(*args: str) -> tuple[int, str]:
    result = runner.invoke(app, ["gate", "--jobs", "0", "--quiet", *args])
    return result.exit_code, result.output


def test_seeded_regression_fails_the_gate_with_that_model_first(models: Path, tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    code, output = _gate(str(models), "--baseline", str(baseline), "--update-baseline")
    assert code == 0, output
    first = baseline.read_bytes()
    assert sorted(json.loads(first)["models"]) == ["alpha.linear", "zeta.branch"]

    code, output = _gate(str(models), "--baseline", str(baseline), "--json", str(tmp_path / "same.json"))
    assert code == 0, output
    assert all(m["cached"] for m in json.loads((tmp_path / "same.json").read_text())["models"])

    _forget(models)
    models.write_text(textwrap.dedent(MODELS.format(limit=2)))  # the seeded regression: a changed constant
    reports = {kind: tmp_path / f"gate.{kind}" for kind in ("md", "xml", "json")}
    code, output = _gate(
        str(models),
        "--baseline",
        str(baseline),
        "--markdown",
        str(reports["md"]),
        "--junit",
        str(reports["xml"]),
        "--json",
        str(reports["json"]),
    )
    assert code == 1, output
    assert "FAIL zeta.branch / onnx: passed in the baseline, now fails" in output
    assert baseline.read_bytes() == first  # judging never rewrites the baseline

    markdown = reports["md"].read_text()
    assert markdown.startswith("## :x: parity gate FAILED (1 of 2 models)")
    rows = [line for line in markdown.splitlines() if line.startswith("| `")]
    assert rows[0].startswith("| `zeta.branch` | onnx | passed in the baseline, now fails")
    models_table = markdown.split("### Models")[1]
    assert models_table.index("zeta.branch") < models_table.index("alpha.linear")

    cases = ET.parse(reports["xml"]).getroot().findall(".//testcase")
    assert [(c.get("classname"), c.get("name")) for c in cases] == [("alpha.linear", "onnx"), ("zeta.branch", "onnx")]
    failure = cases[1].find("failure")
    assert failure is not None and failure.text is not None
    assert "sample 'batch-1': FAILED" in failure.text
    assert "first divergence at module `<root>`" in failure.text
    assert cases[0].find("failure") is None

    data = json.loads(reports["json"].read_text())
    assert data["passed"] is False
    assert [m["name"] for m in data["models"]] == ["zeta.branch", "alpha.linear"]
    assert {c["kind"] for c in data["changes"] if c["regression"]} == {"now-fails", "path-rejected"}


def test_new_model_fails_unless_allowed(models: Path, tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    code, output = _gate(f"{models}:Linear", "--baseline", str(baseline), "--update-baseline")
    assert code == 0, output
    code, output = _gate(str(models), "--baseline", str(baseline))
    assert code == 1
    assert "FAIL zeta.branch / onnx: no baseline entry; record it with --update-baseline" in output
    code, output = _gate(str(models), "--baseline", str(baseline), "--allow-new")
    assert code == 0, output


def test_no_cache_checks_again(models: Path, tmp_path: Path) -> None:
    report = tmp_path / "r.json"
    assert _gate(f"{models}:Linear", "--json", str(report))[0] == 0
    assert _gate(f"{models}:Linear", "--json", str(report))[0] == 0
    assert json.loads(report.read_text())["models"][0]["cached"] is True
    assert _gate(f"{models}:Linear", "--json", str(report), "--no-cache")[0] == 0
    assert json.loads(report.read_text())["models"][0]["cached"] is False


def test_bench_ratio_goes_into_the_baseline(models: Path, tmp_path: Path) -> None:
    baseline = tmp_path / "baseline.json"
    code, output = _gate(f"{models}:Linear", "--bench", "--baseline", str(baseline), "--update-baseline")
    assert code == 0, output
    ratios = json.loads(baseline.read_text())["models"]["alpha.linear"]["artifacts"]["onnx"]["bench"]
    assert set(ratios) == {"1", "16"} and all(r > 0 for r in ratios.values())


def test_without_baseline_a_rejected_path_fails(models: Path) -> None:
    _forget(models)
    models.write_text(textwrap.dedent(MODELS.format(limit=2)))
    code, output = _gate(f"{models}:Branch")
    assert code == 1
    assert "FAIL zeta.branch / onnx: parity failed on sample 'batch-1'" in output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["no.such.model"], "neither a registered model nor an importable module"),
        ([], "nothing to check"),
        (["feed.dlrm_small", "--baseline", "missing.json"], "no such baseline file"),
        (["feed.dlrm_small", "--formats", "onnxx"], "unknown export format"),
        (["feed.dlrm_small", "--executor", "dask"], "no executor named 'dask'"),
        (["feed.dlrm_small", "--growth", "0.5"], "growth must be a factor >= 1"),
    ],
)
def test_usage_and_environment_errors_exit_2(args: list[str], message: str, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    code, output = _gate(*args)
    assert code == 2, output
    assert message in output


def test_ray_missing_exits_2(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # makes `import ray` fail
    code, output = _gate("feed.dlrm_small", "--executor", "ray")
    assert code == 2
    assert "pip install 'toolchain[ray]'" in output


def test_typer_usage_error_exits_2() -> None:
    assert runner.invoke(app, ["gate", "--jobs", "many"]).exit_code == 2


def test_help_documents_the_exit_codes() -> None:
    result = runner.invoke(app, ["gate", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "Exit codes: 0 every case passed" in text
    assert "1 a parity failure or a regression" in text
    assert "2 a usage or environment error" in text


def test_selection_by_file_module_attr_and_name(models: Path) -> None:
    by_file = select_specs([str(models)])
    assert [s.spec.name for s in by_file] == ["alpha.linear", "zeta.branch"]
    assert by_file[0].imports == (str(models.resolve()),)  # the file registers both; a worker imports it
    assert [s.ref for s in select_specs([f"{models}:Branch"])] == [f"{models.resolve()}:Branch"]
    assert [s.spec.name for s in select_specs(["feed.dlrm_small", "zoo.feed:DLRMSmall"])] == ["feed.dlrm_small"]
    assert select_specs(["feed.dlrm_small"])[0].imports[-1] == "zoo.feed"


def test_a_file_without_models_is_refused(tmp_path: Path) -> None:
    empty = tmp_path / "empty.py"
    empty.write_text("X = 1\n")
    with pytest.raises(TargetError, match="declares no model"):
        select_specs([str(empty)])


def test_formats() -> None:
    assert parse_formats("all") == ()
    assert parse_formats("auto") == ("auto",)
    assert parse_formats("onnx, torchscript,onnx") == ("onnx", "torchscript")


@pytest.mark.slow
def test_local_pool_gives_the_inline_verdicts(models: Path) -> None:
    selected = select_specs([str(models)])
    inline = judge(run_gate(selected, cache=False))
    pooled = judge(run_gate(selected, cache=False, executor=LocalExecutor(jobs=1)))
    assert [(c.model, c.artifact, c.outcome) for c in pooled.cases] == [
        (c.model, c.artifact, c.outcome) for c in inline.cases
    ]
    assert bool(pooled) and all(not r["cached"] for r in pooled.results)
