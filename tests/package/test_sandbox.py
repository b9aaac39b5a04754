from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tests.canary import Canary
from tests.package import hostile
from toolchain.cli import app
from toolchain.core.errors import LimitError
from toolchain.package.sandbox import Limits, parse_size
from toolchain.package.trust import is_trusted
from toolchain.package.verify import verify_package
from toolchain.serve import open_recommended

runner = CliRunner()


def _verify(package: Path, *options: str) -> tuple[int, list[str], list[str]]:
    """Exit code, every line printed, and the lines on stderr."""
    result = runner.invoke(app, ["verify", str(package), "--provider", "cpu", *options])
    return result.exit_code, result.output.strip().splitlines(), result.stderr.strip().splitlines()


@pytest.mark.parametrize(
    ("model", "limits", "message"),
    [
        (hostile.constant_of_shape(2**40), ["--max-memory", "2GiB"], "exceeded the memory limit of 2 GiB"),
        # NOTE: 2 GiB of floats: it would run on this machine without the limit; 1.5 GiB stops it.
        (hostile.constant_of_shape(2**29), ["--max-memory", "1536MiB"], "exceeded the memory limit of 1.5 GiB"),
        (hostile.endless_loop(2**62), ["--max-time", "8"], "exceeded the time limit of 8 s"),
    ],
    ids=["constant-of-shape-2^40", "constant-of-shape-2^29", "loop-2^62"],
)
def test_hostile_model_hits_a_limit_with_one_clear_line(
    tiny_package: Path, tmp_path: Path, model: bytes, limits: list[str], message: str
) -> None:
    package = hostile.hostile_package(tiny_package, tmp_path / "pkg", model)
    assert len(model) < 6000 and not is_trusted(package)
    canary = Canary(tmp_path / "canary.txt", allowed=("pkg",))
    code, lines, errors = _verify(package, *limits)
    assert code == 1
    assert lines[0].startswith("manifest sha256: ")
    # NOTE: a loop at full speed meets RLIMIT_CPU and the wall clock at the same 8 s; which one the child reports
    # first depends on the host's load, and both name the artifact, the limit and the option.
    said = [e.replace("exceeded the CPU time limit", "exceeded the time limit") for e in errors]
    assert said == [
        f"error: onnx/model.onnx: {message} for untrusted packages; raise it with {limits[0]} "
        f"(or TOOLCHAIN_MAX_{'MEMORY' if 'memory' in message else 'TIME'})"
    ]
    canary.assert_untouched()


def test_limits_come_from_the_environment_too(
    tiny_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = hostile.hostile_package(tiny_package, tmp_path / "pkg", hostile.constant_of_shape(2**40))
    monkeypatch.setenv("TOOLCHAIN_MAX_MEMORY", "2GiB")
    code, _lines, errors = _verify(package)
    assert code == 1 and len(errors) == 1 and "exceeded the memory limit of 2 GiB" in errors[0]


def test_untyped_input_is_a_clear_error_naming_the_artifact(tiny_package: Path, tmp_path: Path) -> None:
    package = hostile.hostile_package(tiny_package, tmp_path / "pkg", hostile.untyped_input())
    canary = Canary(tmp_path / "canary.txt", allowed=("pkg",))
    code, lines, _errors = _verify(package)
    assert code == 1
    assert any("onnx/model.onnx" in line and "does not have type information" in line for line in lines)
    canary.assert_untouched()


def test_custom_op_domain_is_refused_and_no_library_is_loaded(tiny_package: Path, tmp_path: Path) -> None:
    library = tmp_path / "libevil.so"
    package = hostile.hostile_package(
        tiny_package, tmp_path / "pkg", hostile.custom_domain(), custom_op_library="../libevil.so"
    )
    canary = Canary(library, allowed=("pkg", "bare"))
    code, lines, _errors = _verify(package)
    assert code == 1
    # NOTE: the strict schema knows no custom_op_library: the manifest is refused before any model is read.
    assert any("manifest.json: custom_op_library: unknown field" in line for line in lines), lines
    bare = hostile.hostile_package(tiny_package, tmp_path / "bare", hostile.custom_domain())
    code, lines, _errors = _verify(bare)
    assert code == 1
    assert any("onnx/model.onnx" in line and "com.evil" in line for line in lines), lines
    canary.assert_untouched()


def test_code_loading_artifacts_of_a_foreign_package_are_never_opened(tiny_package: Path, tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    shutil.copytree(tiny_package, package)
    manifest = json.loads((package / "manifest.json").read_text())
    hostile.rehash_all(package, {**manifest, "description": "came from elsewhere"})
    assert not is_trusted(package)
    # NOTE: integrity checks read every file; a file only hashed (report.md) shows how often that is.
    only_hashed = Canary(package / "report.md", existing=True)
    watched = [Canary(package / rel, existing=True) for rel in ("torchscript/model.pt", "exported_program/model.pt2")]
    code, lines, errors = _verify(package, "--strict")
    assert code == 1
    assert "torchscript/model.pt: refused: loading it runs code" in "\n".join(lines)
    assert len(errors) == 1 and "--strict: not every artifact" in errors[0]
    hashing = only_hashed.events()
    for canary in watched:
        assert canary.events() == hashing, f"{canary.path} was opened for more than hashing without --trust"
    only_code = tmp_path / "only-code"
    shutil.copytree(package, only_code)
    manifest = json.loads((only_code / "manifest.json").read_text())
    for art in manifest["artifacts"]:
        if art["format"] == "onnx":
            (only_code / art["path"]).unlink()
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["format"] != "onnx"]
    hostile.rehash_all(only_code, manifest)
    code, lines, _errors = _verify(only_code)
    assert code == 1 and any("no artifact could be run on this host" in line for line in lines)


def test_open_recommended_verifies_a_foreign_package_under_limits_first(tiny_package: Path, tmp_path: Path) -> None:
    package = hostile.hostile_package(tiny_package, tmp_path / "pkg", hostile.constant_of_shape(2**40))
    with pytest.raises(LimitError, match=r"onnx/model.onnx: exceeded the memory limit of 2 GiB"):
        open_recommended(package, 1, limits=Limits(memory_bytes=2 << 30, seconds=120))


def test_a_package_exported_here_runs_in_process(tiny_package: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from toolchain.package import sandbox

    def no_child(*args: object, **kwargs: object) -> None:
        raise AssertionError("a trusted package needs no child process")

    monkeypatch.setattr(sandbox, "verify_in_child", no_child)
    assert verify_package(tiny_package, providers=("cpu",))


def test_a_foreign_package_replays_the_same_in_the_child(tiny_package: Path, tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    shutil.copytree(tiny_package, package)
    manifest = json.loads((package / "manifest.json").read_text())
    hostile.rehash_all(package, {**manifest, "description": "came from elsewhere"})
    child = verify_package(package, providers=("cpu",))
    here = verify_package(package, providers=("cpu",), limits=None)
    assert child and child.summary() == here.summary() and child.summary_lines() == here.summary_lines()


@pytest.mark.parametrize(("text", "size"), [("4GiB", 4 << 30), ("512M", 512 << 20), ("1.5GiB", 3 << 29), ("100", 100)])
def test_parse_size(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_parse_size_refuses_nonsense() -> None:
    with pytest.raises(LimitError, match="512MiB or 4GiB"):
        parse_size("lots")
