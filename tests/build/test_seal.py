"""The seal: a staged package is committed only when it reads back as the package the export verified."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

import toolchain.build.seal as seal_module
from tests.conftest import TINY
from toolchain.build.pipeline import export_package
from toolchain.package.staging import PackageStaging
from toolchain.package.verify import verify_package


def test_the_seal_replays_the_export_sample_and_the_package_verifies_in_full(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[Any] = []
    original = seal_module.replay_package

    def spy(package: Any, **options: Any) -> Any:
        asked.append(options.get("samples"))
        return original(package, **options)

    monkeypatch.setattr(seal_module, "replay_package", spy)
    result = export_package(TINY, tmp_path / "pkg", formats=["onnx", "onnx_legacy"])
    assert result
    assert asked == [("export",)]
    check = verify_package(tmp_path / "pkg")
    assert check.complete
    assert {len(c.reports) for c in check.checks} == {len(result.samples)}


def test_a_golden_array_that_does_not_read_back_bit_for_bit_stops_the_commit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = PackageStaging.save_array

    def nudged(self: PackageStaging, rel: str, array: np.ndarray) -> str:
        # NOTE: one ulp on a reference output of a size sample: within any tolerance, so a replay passes it.
        if rel == "samples/batch-7/expected/y.npy":
            array = np.nextafter(array, np.asarray(np.inf, dtype=array.dtype))
        return original(self, rel, array)

    monkeypatch.setattr(PackageStaging, "save_array", nudged)
    result = export_package(TINY, tmp_path / "pkg", formats=["onnx"])
    assert not result and result.failed_stage is not None
    assert result.failed_stage.name == "package"
    assert "samples/batch-7/expected/y.npy does not read back as the array the export was verified on" in (
        result.failed_stage.detail
    )
    assert not (tmp_path / "pkg").exists()


def test_the_sealing_replay_judges_with_the_tolerance_the_manifest_records(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    original = seal_module.build_manifest

    def exact(result: Any, entries: Any) -> dict[str, Any]:
        manifest = original(result, entries)
        manifest["tolerance"] = {**manifest["tolerance"], "atol": 0.0, "rtol": 0.0}
        return manifest

    monkeypatch.setattr(seal_module, "build_manifest", exact)
    result = export_package(TINY, tmp_path / "pkg", formats=["onnx"])
    assert not result and result.failed_stage is not None
    assert result.failed_stage.name == "package"
    assert "does not re-verify: onnx/model.onnx: output 'y' on sample 'export'" in result.failed_stage.detail
    assert not (tmp_path / "pkg").exists()
