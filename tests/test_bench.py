from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from typer.testing import CliRunner

from tests.conftest import TINY
from toolchain.bench import BenchReport, BenchRow, _runoff, bench_package, record_bench
from toolchain.cli import app
from toolchain.timing import Timing
from toolchain.verify import verify_package


def _row(artifact: str, runtime: str, ms: float, *, parity: bool | None = True, runs_code: bool = False) -> BenchRow:
    return BenchRow(artifact, "fp32", runtime, 1, Timing.of([ms / 1e3] * 3), True, 100.0, 1.0, 2.0, parity, runs_code)


def test_the_recommendation_is_the_fastest_artifact_that_matched() -> None:
    report = BenchReport(Path("pkg"), "m", trusted=False)
    report.rows = [
        _row("eager", "eager", 2.0, parity=None),
        _row("onnx/model.int8-static.onnx", "ort", 0.5, parity=False),
        _row("torchscript/model.pt", "torchscript", 0.7, runs_code=True),
        _row("onnx/model.onnx", "ort", 0.9),
        _row("onnx_legacy/model.onnx", "ort", 1.1),
    ]
    assert report.recommended(1) is report.rows[3]
    report.trusted = True
    assert report.recommended(1) is report.rows[2]
    assert report.recommended(1, portable=True) is report.rows[3]
    rec = report.recommendations()["1"]
    assert rec["artifact"] == "torchscript/model.pt" and rec["portable"]["artifact"] == "onnx/model.onnx"
    assert rec["ratio_vs_eager"] == round(2.0 / 0.7, 3)


def test_raced_candidates_are_ranked_by_their_raced_medians() -> None:
    report = BenchReport(Path("pkg"), "m", trusted=False)
    report.rows = [
        _row("onnx/model.onnx", "ort", 0.90),
        replace(_row("onnx/model.onnx", "ort", 0.95), fixed_dims=(("batch", 1),)),
        _row("onnx/model.int8-static.onnx", "ort", 0.80, parity=False),
        _row("onnx_legacy/model.onnx", "ort", 1.50),
    ]
    assert report.recommended(1) is report.rows[0]
    # side by side the planned session won: the run-off decides between the two near-equal ones
    report.rows[0] = replace(report.rows[0], runoff=Timing.of([1.0e-3] * 3))
    report.rows[1] = replace(report.rows[1], runoff=Timing.of([0.8e-3] * 3))
    best = report.recommended(1)
    assert best is report.rows[1] and best.label == "ort[batch=1]"
    rec = report.recommendations()["1"]
    assert rec["fixed_dims"] == {"batch": 1} and rec["portable"]["fixed_dims"] == {"batch": 1}
    assert "ort[batch=1]" in report.table()


def test_the_runoff_races_only_the_candidates_near_the_fastest() -> None:
    rows = [_row("a", "ort", 1.0), _row("b", "ort", 1.1), _row("c", "ort", 2.0), _row("d", "ort", 0.5, parity=False)]
    calls = {"a": 0, "b": 0, "c": 0}

    def run(name: str) -> Callable[[], None]:
        return lambda: calls.__setitem__(name, calls[name] + 1)

    _runoff(rows, {0: run("a"), 1: run("b"), 2: run("c")})  # d failed parity: never a candidate
    assert rows[0].runoff is not None and rows[1].runoff is not None
    assert rows[2].runoff is None and rows[3].runoff is None and calls["c"] == 0
    assert calls["a"] >= 10 and calls["b"] >= 10
    alone = [_row("a", "ort", 1.0)]
    _runoff(alone, {0: run("a")})
    assert alone[0].runoff is None


def test_bench_a_package_records_a_recommendation_that_passed_parity(tiny_package: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    report = bench_package(pkg, spec=TINY, batches=(1, 5), trust=True)
    batches = {r.batch for r in report.rows}
    assert batches == {1, 5}
    assert {r.runtime for r in report.rows} >= {"eager", "ort"}
    for batch in (1, 5):
        best = report.recommended(batch)
        assert best is not None and best.parity is True and best.runtime != "eager"
        assert best.timing.runs >= 10 and best.eager_ms > 0 and best.rss_mb > 0
        planned = [r for r in report.rows if r.batch == batch and r.fixed_dims]
        assert planned and all(r.fixed_dims == (("batch", batch),) and r.parity for r in planned)
    record_bench(report)
    manifest = json.loads((pkg / "manifest.json").read_text())
    shipped = {a["path"] for a in manifest["artifacts"]}
    assert set(manifest["recommended"]) == {"1", "5"}
    assert all(rec["artifact"] in shipped for rec in manifest["recommended"].values())
    assert "## Benchmark" in (pkg / "report.md").read_text()
    assert verify_package(pkg)


def test_bench_command_prints_the_table_and_writes_json(tiny_package: Path, tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        app, ["bench", str(pkg), "--batch", "2", "--runtime", "ort", "--json", str(out), "--no-record"]
    )
    assert result.exit_code == 0, result.output
    assert "p50 ms" in result.output and "* recommended" in result.output
    data = json.loads(out.read_text())
    assert {r["runtime"] for r in data["rows"]} == {"ort"}  # test.tiny is not registered: no eager
    assert "recommended" not in json.loads((pkg / "manifest.json").read_text())
    result = CliRunner().invoke(app, ["bench", str(pkg), "--batch", "one"])
    assert result.exit_code == 1 and "--batch must be comma-separated integers" in result.output
