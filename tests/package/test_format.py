from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.conftest import TINY
from toolchain.build import pipeline
from toolchain.build import seal as seal_module
from toolchain.core.errors import ExportError, PackageError
from toolchain.package.format import MANIFEST, check_integrity, open_package
from toolchain.package.staging import stage_package


def _leftovers(parent: Path) -> list[str]:
    return [p.name for p in parent.iterdir() if ".staging-" in p.name or ".replaced-" in p.name]


def test_package_holds_manifest_samples_and_reports(tiny_package: Path) -> None:
    manifest = json.loads((tiny_package / MANIFEST).read_text())
    assert manifest["schema_version"] == 1
    assert manifest["name"] == "test.tiny"
    assert {"torch", "onnx", "onnxruntime", "numpy", "toolchain"} <= set(manifest["versions"])
    assert manifest["signature"]["verified_sizes"] == {"batch": [1, 3, 7]}
    paths = [a["path"] for a in manifest["artifacts"]]
    assert paths == [
        "onnx/model.onnx",
        "onnx_legacy/model.onnx",
        "torchscript/model.pt",
        "torchscript_trace/model.pt",
        "exported_program/model.pt2",
    ]
    assert all(manifest["parity"][p]["passed"] for p in paths)
    assert manifest["rejected"] == []
    assert manifest["signature"]["outputs"] == [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}]
    listed = {e["path"] for e in manifest["files"]}
    assert {"onnx/model.onnx", "report.json", "report.md", "samples/batch-1/inputs/x.npy"} <= listed
    assert "samples/batch-7/expected/y.npy" in listed
    assert check_integrity(tiny_package) == []
    report = (tiny_package / "report.md").read_text()
    assert "| batch-1 | batch=1 | y |" in report
    assert "| path | status | findings | export (batch=3) | batch-1 (batch=1) | batch-7 (batch=7) |" in report


def test_failure_mid_export_leaves_no_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Broken:
        name, format = "broken", "onnx"

        def export(self, model, spec, sample, workdir):
            (workdir / "onnx").mkdir()
            (workdir / "onnx" / "model.onnx").write_bytes(b"half")
            raise ExportError("simulated crash halfway through the export")

    monkeypatch.setattr(pipeline.EXPORTERS, "_entries", {"onnx": Broken()})
    out = tmp_path / "pkg"
    result = pipeline.export_package(TINY, out, formats=["onnx"])
    assert not result
    assert result.stage("export").status == "failed"
    assert "simulated crash" in result.stage("export").detail
    assert result.path("onnx").status == "rejected"
    assert result.stage("package").status == "not run"
    assert not out.exists()
    assert _leftovers(tmp_path) == []


def test_unexpected_crash_while_packaging_leaves_old_package_intact(
    tiny_package: Path, copy_of, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = copy_of(tiny_package)
    before = (pkg / MANIFEST).read_bytes()

    def boom(report):
        raise RuntimeError("disk full")

    monkeypatch.setattr(seal_module, "render_markdown", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        pipeline.export_package(TINY, pkg, force=True)
    assert (pkg / MANIFEST).read_bytes() == before
    assert check_integrity(pkg) == []
    assert _leftovers(pkg.parent) == []


def test_refuses_to_overwrite_without_force(tiny_package: Path, copy_of) -> None:
    pkg = copy_of(tiny_package)
    with pytest.raises(PackageError, match="--force"):
        pipeline.export_package(TINY, pkg)


def test_force_replaces_a_package(tiny_package: Path, copy_of) -> None:
    pkg = copy_of(tiny_package)
    (pkg / "report.md").write_text("stale")
    result = pipeline.export_package(TINY, pkg, force=True)
    assert result
    assert check_integrity(pkg) == []
    assert _leftovers(pkg.parent) == []


def test_never_replaces_a_folder_that_is_not_a_package(tmp_path: Path) -> None:
    precious = tmp_path / "precious"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    with pytest.raises(PackageError, match="not empty"), stage_package(precious, force=True):
        pass
    assert (precious / "thesis.tex").read_text() == "years of work"


@pytest.mark.parametrize(
    ("tamper", "file", "message"),
    [
        (lambda p: (p / "extra.txt").write_text("x"), "extra.txt", "not listed"),
        (lambda p: (p / "samples/export/inputs/x.npy").unlink(), "samples/export/inputs/x.npy", "missing"),
        (lambda p: (p / "report.md").write_text("edited"), "report.md", "size"),
        (lambda p: (p / "loop").symlink_to("/etc/passwd"), "loop", "symbolic link"),
    ],
)
def test_integrity_names_the_file(tiny_package: Path, copy_of, tamper, file: str, message: str) -> None:
    pkg = copy_of(tiny_package)
    tamper(pkg)
    problems = check_integrity(pkg)
    assert any(p.file == file and message in p.message for p in problems), problems
    with pytest.raises(PackageError, match=file):
        open_package(pkg)


def test_flipped_byte_is_a_hash_mismatch(tiny_package: Path, copy_of) -> None:
    pkg = copy_of(tiny_package)
    model = pkg / "onnx/model.onnx"
    data = bytearray(model.read_bytes())
    data[len(data) // 2] ^= 0xFF
    model.write_bytes(bytes(data))
    problems = check_integrity(pkg)
    assert [(p.file, "sha256" in p.message) for p in problems] == [("onnx/model.onnx", True)]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda m: m.update(schema_version=99), "schema_version 99"),
        (lambda m: m["files"].append({"path": "../../etc/passwd", "size": 1, "sha256": "0" * 64}), "inside"),
        (lambda m: m["files"].append({"path": "/etc/passwd", "size": 1, "sha256": "0" * 64}), "relative"),
        (lambda m: m.update(files="all of them"), "files: expected a list"),
    ],
)
def test_hostile_or_foreign_manifest_is_refused(tiny_package: Path, copy_of, edit, message: str) -> None:
    pkg = copy_of(tiny_package)
    manifest = json.loads((pkg / MANIFEST).read_text())
    edit(manifest)
    (pkg / MANIFEST).write_text(json.dumps(manifest))
    problems = check_integrity(pkg)
    assert any(message in p.message for p in problems), problems


def test_manifest_that_is_not_json(tiny_package: Path, copy_of) -> None:
    pkg = copy_of(tiny_package)
    (pkg / MANIFEST).write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        open_package(pkg)
