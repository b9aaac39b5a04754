from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import rehash
from toolchain.package.verify import verify_package

# NOTE: make torch, onnx and onnxscript unimportable, as on a production host that has none of them.
TORCHLESS = (
    "import sys\n"
    "for name in ('torch', 'onnx', 'onnxscript'):\n"
    "    sys.modules[name] = None\n"
    "from toolchain.cli import main\n"
    "sys.argv = ['toolchain', 'verify', sys.argv[1]]\n"
    "try:\n"
    "    main()\n"
    "finally:\n"
    "    assert sys.modules.get('torch') is None, 'torch was imported'\n"
)


def _verify_without_torch(package: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", TORCHLESS, str(package)], capture_output=True, text=True, timeout=120, check=False
    )


def test_verify_passes_on_every_sample_set(dlrm_package: Path) -> None:
    report = verify_package(dlrm_package)
    assert report, report.failure_lines()
    assert len(report.checks) == 5
    for check in report.checks:
        assert [r.sample for r in check.reports] == [
            "export",
            "batch-1",
            "batch-17",
            "batch-512",
            "values-wide",
            "values-shifted",
        ]


def test_verify_runs_without_torch(dlrm_package: Path) -> None:
    proc = _verify_without_torch(dlrm_package)
    assert proc.returncode == 0, proc.stderr
    assert "verified" in proc.stdout


def test_verify_without_torch_still_fails_a_corrupted_package(dlrm_package: Path, copy_of) -> None:
    pkg = copy_of(dlrm_package)
    (pkg / "samples/batch-1/expected/score.npy").unlink()
    proc = _verify_without_torch(pkg)
    assert proc.returncode == 1
    assert "samples/batch-1/expected/score.npy" in proc.stderr


def _scale_one_initializer(package: Path, factor: float) -> str:
    path = package / "onnx/model.onnx"
    model = onnx.load(str(path))
    init = next(i for i in model.graph.initializer if i.name.startswith("top.") and i.name.endswith("weight"))
    array = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array((array * factor).astype(array.dtype), init.name))
    onnx.save(model, str(path))
    rehash(package, "onnx/model.onnx")
    return init.name


def test_scaled_initializer_with_valid_hashes_fails_parity(dlrm_package: Path, copy_of) -> None:
    pkg = copy_of(dlrm_package)
    _scale_one_initializer(pkg, 1.01)
    report = verify_package(pkg)
    assert not report
    assert report.problems == ()
    lines = report.failure_lines()
    assert any("onnx/model.onnx" in ln and "'score'" in ln and "sample 'batch-17'" in ln for ln in lines), lines


def test_corrupted_sample_array_is_reported(tiny_package: Path, copy_of) -> None:
    pkg = copy_of(tiny_package)
    target = pkg / "samples/export/inputs/x.npy"
    target.write_bytes(b"\x93NUMPY garbage")
    rehash(pkg, "samples/export/inputs/x.npy")
    report = verify_package(pkg)
    assert not report
    assert any("x.npy" in ln for ln in report.failure_lines())


def test_expected_outputs_changed_consistently_fail(tiny_package: Path, copy_of) -> None:
    pkg = copy_of(tiny_package)
    target = pkg / "samples/batch-7/expected/y.npy"
    np.save(target, np.load(target) + np.float32(1e-2), allow_pickle=False)
    rehash(pkg, "samples/batch-7/expected/y.npy")
    lines = verify_package(pkg).failure_lines()
    assert any("output 'y' on sample 'batch-7'" in ln for ln in lines), lines


@pytest.mark.parametrize("missing", ["", "nowhere"])
def test_verify_of_a_missing_folder(tmp_path: Path, missing: str) -> None:
    report = verify_package(tmp_path / "absent" / missing)
    assert not report
    assert "no such package folder" in report.failure_lines()[0]


def test_own_export_replays_every_artifact(tiny_package: Path) -> None:
    report = verify_package(tiny_package)
    assert report, report.failure_lines()
    assert [c.runtime for c in report.checks] == ["ort", "ort", "torchscript", "torchscript", "exported_program"]
    assert report.refused == ()


def test_foreign_package_refuses_code_loading_artifacts_unless_trusted(
    tiny_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TOOLCHAIN_HOME", str(tmp_path / "another-machine"))
    report = verify_package(tiny_package)
    assert report  # the ONNX artifacts still verify
    assert [c.artifact for c in report.checks] == ["onnx/model.onnx", "onnx_legacy/model.onnx"]
    assert report.refused == ("torchscript/model.pt", "torchscript_trace/model.pt", "exported_program/model.pt2")
    assert any("pass --trust" in line for line in report.summary_lines())
    trusted = verify_package(tiny_package, trust=True)
    assert len(trusted.checks) == 5 and trusted


def test_trust_is_void_once_the_manifest_changes(tiny_package: Path, copy_of) -> None:
    from toolchain.package.trust import is_trusted

    pkg = copy_of(tiny_package)
    assert is_trusted(pkg)
    (pkg / "manifest.json").write_text((pkg / "manifest.json").read_text().replace('"test.tiny"', '"test.tinz"'))
    assert not is_trusted(pkg)


def test_unwritable_trust_list_keeps_the_package_and_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests.conftest import TINY
    from toolchain.build.pipeline import export_package

    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("TOOLCHAIN_HOME", str(blocker))
    result = export_package(TINY, tmp_path / "pkg", formats=["onnx", "torchscript"])
    assert result
    assert any(f.kind == "trust-list" for f in result.findings)
    report = verify_package(tmp_path / "pkg")
    assert report.refused == ("torchscript/model.pt",)


def test_auto_notes_a_provider_it_cannot_start_and_a_named_one_fails(
    tiny_package: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import onnxruntime as ort

    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    report = verify_package(tiny_package)
    assert report, report.failure_lines()
    assert any(c.runtime == "ort" for c in report.checks)
    assert not any(c.runtime.startswith("ort-") for c in report.checks)
    assert any(line.startswith("provider cuda: not started here") for line in report.summary_lines())
    named = verify_package(tiny_package, providers=("cuda",))
    assert not named and "could not start cuda" in " ".join(named.failure_lines())


def test_verify_summarises_and_strict_fails_unless_every_artifact_was_verified(
    tiny_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from toolchain.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["verify", str(tiny_package), "--strict"])
    assert result.exit_code == 0, result.output
    assert "5 verified, 0 failed, 0 refused, 0 skipped (of 5 artifacts)" in result.output
    assert f"verified: {tiny_package}" in result.output
    monkeypatch.setenv("TOOLCHAIN_HOME", str(tmp_path / "another-machine"))
    assert verify_package(tiny_package).counts == {"verified": 2, "failed": 0, "refused": 3, "skipped": 0}
    result = runner.invoke(app, ["verify", str(tiny_package)])
    assert result.exit_code == 0, result.output
    assert "2 verified, 0 failed, 3 refused, 0 skipped (of 5 artifacts)" in result.output
    assert f"verified: {tiny_package}" not in result.output.replace("partly verified", "")
    assert f"partly verified: {tiny_package}" in result.output
    result = runner.invoke(app, ["verify", str(tiny_package), "--strict"])
    assert result.exit_code == 1
    assert f"--strict: not every artifact of {tiny_package} was verified" in result.output
