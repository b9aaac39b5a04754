from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import toolchain
import toolchain.build.pipeline as pipeline
from tests.conftest import TINY
from toolchain.build.lanes import can_fork
from toolchain.build.pipeline import ExportResult, export_package

REPO = Path(toolchain.__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(not can_fork(2), reason="export lanes fork: Linux only")


def _files(result: ExportResult, root: Path) -> dict[str, str]:
    out = {}
    for path in result.kept:
        assert path.artifact is not None
        for rel in path.artifact.files:
            out[rel] = hashlib.sha256((root / rel).read_bytes()).hexdigest()
    return out


def _summary(result: ExportResult) -> list[tuple[str, str, str, list[tuple[str, str]]]]:
    return [(p.exporter, p.status, p.reason, [(q.name, q.status) for q in p.passes]) for p in result.paths]


def test_a_lane_gives_the_verdicts_one_process_gives(tmp_path: Path) -> None:
    lines: list[str] = []
    one = export_package(TINY, tmp_path / "one", workers=1)
    two = export_package(TINY, tmp_path / "two", workers=2, progress=lines.append)
    assert one and two, (one.failed_stage, two.failed_stage)
    assert _summary(two) == _summary(one)
    # NOTE: the ONNX and .pt2 files; TorchScript numbers classes per process (`___torch_mangle_N`), so
    # its bytes are compared in fresh processes below.
    same = {k: v for k, v in _files(one, tmp_path / "one").items() if not k.startswith("torchscript")}
    assert {k: v for k, v in _files(two, tmp_path / "two").items() if k in same} == same
    # NOTE: the child's progress lines reach this process's callback.
    assert any("export torchscript" in line for line in lines), lines
    assert any("optimize torchscript_trace" in line for line in lines), lines


@pytest.mark.slow
def test_a_lane_ships_the_bytes_one_process_ships(tmp_path: Path) -> None:
    hashes = []
    for workers in ("1", "2"):
        out = tmp_path / workers / "pkg"
        command = [sys.executable, "-c", "from toolchain.cli import main; main()", "export", "face.match_lr"]
        command += ["--out", str(out), "--workers", workers]
        env = {**os.environ, "PYTHONPATH": str(REPO)}
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900, check=False)
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
        # NOTE: every file, golden samples and reports included (the manifest lists them all with their hashes).
        manifest = json.loads((out / "manifest.json").read_text())
        files = sorted(entry["path"] for entry in manifest["files"])
        hashes.append({f: hashlib.sha256((out / f).read_bytes()).hexdigest() for f in files})
        assert {f for a in manifest["artifacts"] for f in a["files"]} <= set(files)
    assert len(hashes[0]) >= 20 and hashes[1] == hashes[0]


def test_paths_a_dead_worker_did_not_finish_run_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parent = os.getpid()
    real = pipeline._try

    def dies_in_the_child(name: str, *args: Any, **kwargs: Any) -> Any:
        if os.getpid() != parent and name == "torchscript":
            os._exit(3)  # NOTE: as a segfault or the OOM killer would: nothing sent, nothing cleaned up
        return real(name, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_try", dies_in_the_child)
    lines: list[str] = []
    result = export_package(TINY, tmp_path / "pkg", workers=2, progress=lines.append)
    assert result, result.failed_stage
    assert {p.exporter for p in result.kept} >= {"onnx", "onnx_legacy", "torchscript", "torchscript_trace"}
    assert any("torchscript: the export's worker process did not finish it; running it here" in x for x in lines)
    assert (tmp_path / "pkg" / "torchscript" / "model.pt").is_file()


def test_eager_failing_in_the_worker_fails_the_reference_stage_with_its_message(tmp_path: Path) -> None:
    import dataclasses

    import torch

    class Fails(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.shape[0] == 1:
                raise ValueError("batch of one is not supported")
            return x * 2

    spec = dataclasses.replace(TINY, name="fails_at_one", factory=Fails)
    result = export_package(spec, tmp_path / "pkg", workers=2)
    assert not result
    stage = result.failed_stage
    assert stage is not None and stage.name == "reference"
    assert "batch of one is not supported" in stage.detail
    assert not (tmp_path / "pkg").exists()


def test_a_failing_export_stops_its_worker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import multiprocessing
    import time

    parent = os.getpid()
    real = pipeline._try

    def slow_in_the_child_broken_here(name: str, *args: Any, **kwargs: Any) -> Any:
        if os.getpid() != parent:
            time.sleep(120)  # NOTE: a long path the parent must not wait for, nor leave running
        elif name == "onnx":
            raise RuntimeError("the parent fails")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(pipeline, "_try", slow_in_the_child_broken_here)
    start = time.monotonic()
    with pytest.raises(RuntimeError, match="the parent fails"):
        export_package(TINY, tmp_path / "pkg", workers=2)
    assert time.monotonic() - start < 60
    assert multiprocessing.active_children() == []
    assert not (tmp_path / "pkg").exists() and list(tmp_path.iterdir()) == []


def _where(name: str, reference: int, tell: Any) -> Any:
    import time

    from toolchain.build.paths import PathResult

    if name == "first":
        time.sleep(0.5)  # NOTE: long enough for this process to release the held unit meanwhile
    return PathResult(name, reason=str(os.getpid()))


def test_a_held_path_is_the_childs_only_once_released() -> None:
    from toolchain.build.lanes import Lane

    never = Lane(lambda: 0, [("first",), ("held",)], _where, lambda line: None, fork=True, held=("held",))
    never.start()
    ran = never.results()  # NOTE: no help(): what the child may not take is run here after it ends
    assert ran["first"].reason != str(os.getpid())
    assert ran["held"].reason == str(os.getpid())

    released = Lane(lambda: 0, [("first",), ("held",)], _where, lambda line: None, fork=True, held=("held",))
    released.start()
    released.release("held")
    ran = released.results()
    assert ran["first"].reason == ran["held"].reason != str(os.getpid())


def test_the_pt2_path_fed_from_the_shared_capture_is_exported_here(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    parent = os.getpid()
    real = pipeline._try
    where: dict[str, bool] = {}

    def noted(name: str, *args: Any, **kwargs: Any) -> Any:
        path = real(name, *args, **kwargs)
        if os.getpid() == parent:
            where[name] = args[3] is not None  # NOTE: the shared capture, passed only where it is
        return path

    monkeypatch.setattr(pipeline, "_try", noted)
    result = export_package(TINY, tmp_path / "pkg", workers=2)
    assert result, result.failed_stage
    assert where.get("exported_program") is True
    assert "torchscript" not in where  # NOTE: the child's unit
