from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from tests.conftest import TINY
from toolchain.bench import BenchReport, BenchRow, bench_package, record_bench
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
