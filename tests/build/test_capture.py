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
