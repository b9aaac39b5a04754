from __future__ import annotations

from pathlib import Path

import pytest
import torch

from exporters.onnx import OnnxExporter
from tests.conftest import TINY
from toolchain.build.optimize import graph_digest
from toolchain.build.pipeline import export_package
from toolchain.core.samples import generate_samples


def _counting_export(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    original = torch.export.export

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.export, "export", counted)
    return calls


def test_onnx_and_pt2_share_one_capture(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_export(monkeypatch)
    result = export_package(TINY, tmp_path / "pkg", formats=["onnx", "exported_program"], optimize=False)
    assert result, result.failed_stage
    assert [p.exporter for p in result.kept] == ["onnx", "exported_program"]
    assert len(calls) == 1


def test_a_single_path_captures_on_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _counting_export(monkeypatch)
    assert export_package(TINY, tmp_path / "pkg", formats=["exported_program"], optimize=False)
    assert len(calls) == 1


def test_onnx_from_the_shared_capture_is_the_direct_export(tmp_path: Path) -> None:
    result = export_package(TINY, tmp_path / "pkg", formats=["onnx", "exported_program"], optimize=False)
    assert result, result.failed_stage
    direct = OnnxExporter().export(TINY.build().eval(), TINY, generate_samples(TINY)[0], tmp_path / "direct")
    shipped = tmp_path / "pkg" / "onnx" / "model.onnx"
    assert graph_digest(shipped, "onnx") == graph_digest(tmp_path / "direct" / direct.path, "onnx")


def test_a_shared_program_whose_deferred_asserts_exclude_a_declared_size_goes_straight_to_plain_capture(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import copy

    import zoo  # noqa: F401 - registers the zoo
    from exporters.onnx import capture_program
    from toolchain.build import paths
    from toolchain.build.capture import violated_assert
    from toolchain.core.spec import SPECS

    spec = SPECS.get("search.text_encoder")  # NOTE: torch.onnx's capture defers `Ne(seq, 1)` for its attention
    samples = generate_samples(spec)
    program, _ = capture_program(copy.deepcopy(spec.build().eval()), spec, samples[0])
    assert violated_assert(program, spec, samples).startswith("seq-1: ")
    assert violated_assert(program, spec, [s for s in samples if 1 not in s.sizes.values()]) == ""
    tried: list[bool] = []
    real = paths.try_path

    def spy(name, model, replayer, workdir, *, program=None):  # type: ignore[no-untyped-def]
        if name == "exported_program":
            tried.append(program is not None)
        return real(name, model, replayer, workdir, program=program)

    monkeypatch.setattr("toolchain.build.pipeline.try_path", spy)
    result = export_package(spec, tmp_path / "pkg", formats=["onnx", "exported_program"], optimize=False, workers=1)
    assert result, result.failed_stage
    assert result.path("exported_program").status == "kept"
    assert tried == [False]  # NOTE: before, the shared program was saved, loaded, replayed and rejected first
