from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest

import toolchain
from exporters._capture import capture_findings
from tests.conftest import TINY
from toolchain.build.pipeline import export_package

REPO = Path(toolchain.__file__).resolve().parents[1]


def _export(name: str, out: Path, *args: str) -> None:
    # NOTE: a new process per export, as `toolchain export` runs: TorchScript numbers a class traced twice
    # in one process (`___torch_mangle_N`), so only a fresh process gives the same names every time.
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", "from toolchain.cli import main; main()", "export", name, "--out", str(out)]
    done = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]


def _hashes(package: Path) -> dict[str, str]:
    return {
        f.relative_to(package).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(package.rglob("*"))
        if f.is_file() and f.name != "manifest.json"
    }


def _stable(manifest: dict[str, Any]) -> dict[str, Any]:
    # NOTE: the one field that differs by design: when the package was written.
    return {**manifest, "created": None}


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "args"),
    [("face.match_lr", ()), ("feed.dlrm_small", ("--precision", "fp32,fp16,int8"))],
)
def test_two_exports_give_the_same_bytes(name: str, args: tuple[str, ...], tmp_path: Path) -> None:
    first, second = tmp_path / "first" / "a", tmp_path / "second" / "another-name"
    _export(name, first, *args)
    _export(name, second, *args)
    one, two = _hashes(first), _hashes(second)
    assert any(p.endswith((".onnx", ".pt", ".pt2")) for p in one) and "report.md" in one
    assert sorted(p for p in one if one[p] != two.get(p)) == []
    assert one.keys() == two.keys()
    manifests = [json.loads((p / "manifest.json").read_text()) for p in (first, second)]
    assert _stable(manifests[0]) == _stable(manifests[1])


def test_findings_carry_no_memory_address() -> None:
    def handler() -> None:
        pass

    with capture_findings() as findings:
        warnings.warn(f"could not infer the signature of {handler!r}", UserWarning, stacklevel=1)
    assert len(findings) == 1 and "could not infer the signature of <function" in findings[0].message
    assert "0x" not in findings[0].message, findings[0].message


def test_an_optimised_torchscript_archive_is_named_after_its_file(tmp_path: Path) -> None:
    result = export_package(TINY, tmp_path / "pkg", formats=["torchscript"])
    assert result, result.failed_stage
    assert result.path("torchscript").passes[0].status == "kept"
    with zipfile.ZipFile(tmp_path / "pkg" / "torchscript" / "model.pt") as archive:
        folders = {n.split("/", 1)[0] for n in archive.namelist()}
    assert folders == {"model"}


def _contents(path: Path) -> bytes:
    """A file's bytes, and for an archive (TorchScript, .pt2) every member's bytes, decompressed."""
    data = path.read_bytes()
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            data += b"".join(archive.read(n) for n in archive.namelist())
    return data


def test_no_shipped_file_names_a_folder_of_the_exporting_host(tmp_path: Path) -> None:
    out = tmp_path / "exported-here" / "pkg"
    result = export_package(TINY, out, precisions=("fp32", "fp16", "int8"))
    assert result, result.failed_stage
    assert {"onnx", "torchscript", "torchscript_trace", "exported_program"} <= {p.exporter for p in result.kept}
    folders = {str(REPO), str(tmp_path), str(Path.home()), sys.prefix, os.getcwd()}
    folders = {f for f in folders if len(f) > 1}
    leaks = {
        f.relative_to(out).as_posix(): folder
        for f in sorted(out.rglob("*"))
        if f.is_file()
        for folder in folders
        if folder.encode() in _contents(f)
    }
    assert leaks == {}
