from __future__ import annotations

import json
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from runtimes.ort import OrtOptions, OrtRuntime
from tests.conftest import TINY
from toolchain.build.pipeline import export_package
from toolchain.cli import app
from toolchain.core.errors import InferenceError, RuntimeLoadError, TargetError
from toolchain.core.spec import Dim, Input, ModelSpec
from toolchain.package.format import open_package
from toolchain.package.verify import verify_package
from toolchain.perf.bench import BenchReport, BenchRow, bench_package, record_bench
from toolchain.perf.runoff import _undecided, runoff
from toolchain.perf.timing import Timing


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


def test_raced_candidates_are_ranked_by_their_paired_raced_ratio() -> None:
    report = BenchReport(Path("pkg"), "m", trusted=False)
    report.rows = [
        _row("onnx/model.onnx", "ort", 0.90),
        replace(_row("onnx/model.onnx", "ort", 0.95), fixed_dims=(("batch", 1),)),
        _row("onnx/model.int8-static.onnx", "ort", 0.80, parity=False),
        _row("onnx_legacy/model.onnx", "ort", 1.50),
    ]
    assert report.recommended(1) is report.rows[0]
    # side by side the planned session won: the run-off decides between the two near-equal ones
    report.rows[0] = replace(report.rows[0], runoff=Timing.of([1.0e-3] * 3), runoff_ratio=1.25)
    report.rows[1] = replace(report.rows[1], runoff=Timing.of([0.8e-3] * 3), runoff_ratio=1.0)
    best = report.recommended(1)
    assert best is report.rows[1] and best.label == "ort[batch=1]"
    rec = report.recommendations()["1"]
    assert rec["fixed_dims"] == {"batch": 1} and rec["portable"]["fixed_dims"] == {"batch": 1}
    assert "ort[batch=1]" in report.table()


def test_the_runoff_races_only_the_candidates_near_the_fastest_side_by_side() -> None:
    # c looked fastest timed alone (a fast window of the host) and b looked slowest; side by side,
    # in the heat, a and b run alike and c three times slower: a and b go to the run-off, c not
    rows = [_row("a", "ort", 1.0), _row("b", "ort", 3.0), _row("c", "ort", 0.5), _row("d", "ort", 0.4, parity=False)]
    calls = {"a": 0, "b": 0, "c": 0}

    def run(name: str, seconds: float) -> Callable[[], None]:
        def go() -> None:
            calls[name] += 1
            time.sleep(seconds)

        return go

    runoff(rows, {0: run("a", 1e-3), 1: run("b", 1e-3), 2: run("c", 3e-3)})  # d failed parity
    assert rows[0].runoff is not None and rows[1].runoff is not None
    assert rows[2].runoff is None and rows[3].runoff is None
    assert min(r.runoff_ratio or 9.0 for r in rows[:2]) <= 1.0 <= max(r.runoff_ratio or 0.0 for r in rows[:2])
    assert calls["a"] >= 10 + calls["c"] and calls["b"] >= 10 + calls["c"]  # c ran in the heat only
    # timed alone, b looked fastest; side by side it is 5x slower and the heat leaves a alone
    rows = [_row("a", "ort", 1.0), _row("b", "ort", 0.5)]
    runoff(rows, {0: run("a", 1e-3), 1: run("b", 5e-3)})
    assert rows[0].runoff_ratio == 1.0 and rows[1].runoff is None
    report = BenchReport(Path("p"), "m", trusted=True, rows=rows)
    assert report.recommended(1) is rows[0]
    alone = [_row("a", "ort", 1.0)]
    runoff(alone, {0: run("a", 0.0)})
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


class _PoolSeq(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.reshape(x.shape[0], x.shape[1], 4).mean(dim=1))


SEQ = ModelSpec(
    name="test.pool_seq",
    factory=_PoolSeq,
    inputs={"x": Input.normal(("batch", "seq", 4))},
    outputs=("y",),
    dims={"batch": Dim(example=2), "seq": Dim(example=5, min=1, max=16)},
)


def test_plan_shape_fixes_every_dim_at_the_sizes_asked_for(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    assert export_package(SEQ, pkg, formats=("onnx",), optimize=False)
    report = bench_package(pkg, spec=SEQ, batches=(3,), runtimes=("ort",), sizes={"seq": 7}, plan="shape")
    assert report.sizes == {3: {"batch": 3, "seq": 7}}
    planned = [r for r in report.rows if r.fixed_dims]
    assert planned and all(r.fixed_dims == (("batch", 3), ("seq", 7)) and r.parity for r in planned)
    assert planned[0].label == "ort[batch=3,seq=7]"
    assert report.recommendations()["3"]["sizes"] == {"batch": 3, "seq": 7}
    assert "refuse every other size" in report.table()
    runtime = OrtRuntime(OrtOptions(fixed_dims=planned[0].fixed_dims))
    session = runtime.load(pkg / planned[0].artifact, signature=open_package(pkg).signature)
    with pytest.raises(InferenceError):  # planned for seq=7: another length is refused, never run wrongly
        session.run({"x": np.zeros((3, 6, 4), np.float32)})
    default = bench_package(pkg, spec=SEQ, batches=(3,), runtimes=("ort",))
    assert {r.fixed_dims for r in default.rows if r.fixed_dims} == {(("batch", 3),)}
    assert default.sizes == {3: {"batch": 3, "seq": 5}}  # the spec's example


@pytest.mark.parametrize(
    ("sizes", "plan", "message"),
    [
        ({"frames": 3}, "batch", "size 'frames': not a symbolic dim other than the batch; the model has ['seq']"),
        ({"batch": 3}, "batch", "size 'batch': not a symbolic dim other than the batch"),
        ({"seq": 17}, "batch", "size seq=17 is outside the declared range [1, 16]"),
        ({}, "all", "plan must be one of batch, shape, got 'all'"),
    ],
)
def test_bad_sizes_and_plans_are_refused_by_name(
    tiny_package: Path, sizes: dict[str, int], plan: str, message: str
) -> None:
    with pytest.raises(TargetError, match=re.escape(message)):
        bench_package(tiny_package, spec=SEQ, batches=(1,), sizes=sizes, plan=plan)


def test_bench_command_rejects_a_malformed_size(tiny_package: Path) -> None:
    result = CliRunner().invoke(app, ["bench", str(tiny_package), "--size", "seq:128"])
    assert result.exit_code == 1 and "--size items must look like seq=128, got 'seq:128'" in result.output
    result = CliRunner().invoke(app, ["bench", str(tiny_package), "--size", "seq=4", "--no-record"])
    assert result.exit_code == 1 and "need the model's spec" in result.output


def test_a_less_exact_variant_must_be_faster_beyond_the_tie_margin() -> None:
    report = BenchReport(Path("pkg"), "m", trusted=False)
    fp16 = replace(_row("onnx/model.fp16.onnx", "ort", 0.99), variant="fp16")
    int8 = replace(_row("onnx/model.int8-dynamic.onnx", "ort", 0.90), variant="int8-dynamic")
    report.rows = [_row("onnx/model.onnx", "ort", 1.0), fp16, int8]
    assert report.recommended(1) is int8  # 10% faster: worth its precision
    report.rows[2] = replace(int8, timing=Timing.of([0.985e-3] * 3))
    assert report.recommended(1) is report.rows[0]  # fp16 and int8 within 3% of fp32: fp32


def test_auto_skips_a_provider_it_cannot_start_with_a_note_and_a_named_one_is_an_error(
    tiny_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    report = bench_package(tiny_package, spec=TINY, batches=(2,), runtimes=("ort",), providers=("auto",))
    assert {r.provider for r in report.rows if r.runtime == "ort"} == {"cpu"}
    assert any(n.startswith("provider cuda: not started here") for n in report.notes)
    assert report.recommendations()["2"]["provider"] == "cpu"
    with pytest.raises(RuntimeLoadError, match="could not start cuda"):
        bench_package(tiny_package, spec=TINY, batches=(2,), runtimes=("ort",), providers=("cuda",))
    result = CliRunner().invoke(app, ["bench", str(tiny_package), "--provider", " ", "--no-record"])
    assert result.exit_code == 1 and "--provider needs a provider name" in result.output


def test_rows_on_a_device_provider_are_labelled_with_it() -> None:
    row = BenchRow("onnx/model.onnx", "fp16", "ort", 16, Timing.of([1e-3]), True, 1, 0, provider="cuda",
                   fixed_dims=(("batch", 16),))  # fmt: skip
    assert row.label == "ort-cuda[batch=16]"
    assert replace(row, provider="cpu").label == "ort[batch=16]"


def test_a_less_exact_variant_wins_the_runoff_only_when_every_round_agrees() -> None:
    def raced(artifact: str, variant: str, rounds_ms: list[float]) -> BenchRow:
        timing = Timing.of([m / 1e3 for m in rounds_ms], [[m / 1e3] for m in rounds_ms])
        return replace(_row(artifact, "ort", 1.0), variant=variant, runoff=timing)

    steady = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0]
    noisy = [0.85, 1.10, 0.90, 1.05, 0.88, 1.12, 0.91, 1.02, 0.86, 1.08]  # median 0.955: "4.5% faster"
    fp32, int8 = raced("onnx/model.onnx", "fp32", steady), raced("onnx/model.int8-static.onnx", "int8-static", noisy)
    report = BenchReport(Path("pkg"), "m", trusted=False)
    report.rows = [replace(fp32, runoff_ratio=1.047), replace(int8, runoff_ratio=1.0)]
    assert report.recommended(1) is report.rows[0]  # int8's lead is inside the rounds' noise
    sure = raced("onnx/model.int8-static.onnx", "int8-static", [m * 0.8 for m in steady])
    report.rows = [replace(fp32, runoff_ratio=1.25), replace(sure, runoff_ratio=1.0)]
    assert report.recommended(1) is report.rows[1]  # 20% faster in every round: worth its precision


def test_the_runoff_races_on_only_the_candidates_it_cannot_yet_tell_from_the_leader() -> None:
    def rounds(ms: list[float]) -> Timing:
        return Timing.of([m / 1e3 for m in ms], [[m / 1e3] for m in ms])

    leader = rounds([1.0] * 10)
    slower = rounds([1.2] * 10)  # surely 20% slower: settled
    twin = rounds([1.0] * 10)  # surely within 2%: a tie, settled
    unsure = rounds([0.95, 1.08, 0.97, 1.1, 0.96, 1.07, 0.98, 1.09, 0.94, 1.06])
    assert _undecided([leader, slower, twin, unsure]) == [True, False, False, True]
    assert _undecided([leader, slower, twin]) == [False, False, False]  # nothing left to settle: stop


def test_the_runoff_races_on_a_more_exact_variant_until_its_margin_is_settled() -> None:
    def rounds(ms: list[float]) -> Timing:
        return Timing.of([m / 1e3 for m in ms], [[m / 1e3] for m in ms])

    int8 = rounds([1.0] * 10)
    fp32 = rounds([1.02, 1.18, 1.05, 1.15, 1.03, 1.12, 1.04, 1.2, 1.01, 1.1])  # surely slower; by 3%? unsure
    far = rounds([1.2] * 10)  # surely slower by more than 3%: settled
    assert _undecided([int8, fp32], [2, 0]) == [True, True]
    assert _undecided([int8, fp32], [0, 0]) == [False, False]  # same precision: it cannot win, settled
    assert _undecided([int8, far], [2, 0]) == [False, False]
