"""CHECKLIST rows 5 (malformed manifests) and 16 (control characters), against a real package."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.package.hostile import MANIFEST, cli, edit_manifest, fail_lines
from toolchain.core.errors import PackageError
from toolchain.package.format import open_package
from toolchain.package.schema import MAX_DEPTH, parse_manifest


def _write(pkg: Path, text: str | bytes) -> None:
    data = text.encode() if isinstance(text, str) else text
    (pkg / MANIFEST).write_bytes(data)


def _raw(pkg: Path) -> str:
    return (pkg / MANIFEST).read_text()


RAW_CASES = [
    ("truncated", lambda raw: raw[: len(raw) // 2], "manifest.json: not valid JSON"),
    ("empty", lambda raw: "", "manifest.json: not valid JSON"),
    ("not UTF-8", lambda raw: raw.encode().replace(b'"name"', b'"n\xffme"'), "manifest.json: not UTF-8 text"),
    ("not an object", lambda raw: "[1, 2]", "manifest.json: must hold a JSON object, found a list"),
    (
        "duplicate keys",
        lambda raw: raw.replace('"tolerance": {', '"tolerance": {"atol": 1e99, "rtol": 1e99}, "tolerance": {', 1),
        'manifest.json: duplicate key "tolerance" in one object',
    ),
    ("deep nesting", lambda raw: raw[:-2] + ', "deep": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested 100001 levels"),
    ("huge integer", lambda raw: raw.replace('"version"', f'"size": {"9" * 5000}, "version"', 1), "not valid JSON"),
]


@pytest.mark.parametrize(("case", "damage", "message"), RAW_CASES, ids=[c[0] for c in RAW_CASES])
def test_damaged_manifest_is_one_line_naming_it(
    zoo_package: Path, hostile, canary, no_runtime, case: str, damage, message: str
) -> None:
    pkg = hostile(zoo_package)
    _write(pkg, damage(_raw(pkg)))
    result = cli("verify", str(pkg), "--provider", "cpu")
    assert result.exit_code == 1
    lines = fail_lines(result)
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert no_runtime == []


def test_missing_manifest(zoo_package: Path, hostile, canary) -> None:
    pkg = hostile(zoo_package)
    (pkg / MANIFEST).unlink()
    result = cli("inspect", str(pkg))
    assert result.exit_code == 1
    assert result.stderr.strip().endswith(f"manifest.json: missing; is {pkg} a toolchain package?")


def test_manifest_that_is_a_link_is_not_followed(zoo_package: Path, hostile, canary) -> None:
    pkg = hostile(zoo_package)
    canary.path.write_text(_raw(pkg))
    canary.arm()
    (pkg / MANIFEST).unlink()
    (pkg / MANIFEST).symlink_to(canary.path)
    with pytest.raises(PackageError, match=r"manifest\.json: is a symbolic link"):
        open_package(pkg)


def test_nesting_is_refused_before_recursion() -> None:
    deep = "[" * MAX_DEPTH + "]" * MAX_DEPTH  # inside the top-level object: MAX_DEPTH + 1 levels
    with pytest.raises(PackageError, match=f"nested {MAX_DEPTH + 1} levels deep"):
        parse_manifest(('{"schema_version": 1, "x": ' + deep + "}").encode())
    # NOTE: brackets inside strings are not nesting.
    with pytest.raises(PackageError, match="name: missing"):
        parse_manifest(json.dumps({"schema_version": 1, "x": "[" * 1000}).encode())


def _set(path: str, value: Any):
    def edit(m: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = m
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        if value is _DELETE:
            del target[int(last) if last.isdigit() else last]
        else:
            target[int(last) if last.isdigit() else last] = value

    return edit


_DELETE = object()

FIELD_CASES = [
    ("schema_version", 99, "manifest.json: schema_version 99 is not supported"),
    ("schema_version", "1", 'manifest.json: schema_version "1" is not supported'),
    ("artifacts", "all", 'manifest.json: artifacts: expected a list, found "all"'),
    ("artifacts.0.opset", "x", 'manifest.json: artifacts[0].opset: expected an integer, found "x"'),
    ("artifacts.0.opset", True, "manifest.json: artifacts[0].opset: expected an integer, found true"),
    ("artifacts.0.path", _DELETE, "manifest.json: artifacts[0].path: missing (a required field)"),
    ("artifacts.0.opset", _DELETE, "manifest.json: artifacts[0].opset: missing"),
    ("artifacts.0.path", "../../etc/passwd", "manifest.json: artifacts[0].path: path '../../etc/passwd' must be"),
    (
        "artifacts.0.path",
        "onnx/other.onnx",
        'manifest.json: artifacts[0].path: "onnx/other.onnx" is not in the manifest\'s file list',
    ),
    ("parity", [], "manifest.json: parity: expected an object, found a list"),
    ("samples", {}, "manifest.json: samples: expected a list, found an object"),
    ("samples.0.inputs", [], "manifest.json: samples[0].inputs: expected an object, found a list"),
    ("signature.inputs.0.shape", _DELETE, "manifest.json: signature.inputs[0].shape: missing"),
    ("signature.inputs.0.dtype", "object", "manifest.json: signature.inputs[0].dtype: expected one of"),
    (
        "signature.inputs.0.shape",
        [1.5],
        "manifest.json: signature.inputs[0].shape[0]: expected an integer or a symbol name, found 1.5",
    ),
    ("tolerance", _DELETE, "manifest.json: tolerance: missing"),
    ("tolerance.atol", "9e99", 'manifest.json: tolerance.atol: expected a number, found "9e99"'),
    ("tolerance.atol", float("nan"), "manifest.json: tolerance.atol: expected a finite number, found NaN"),
    ("recommended", {"1": {"artifact": "onnx/model.onnx"}}, 'manifest.json: recommended["1"].runtime: missing'),
    ("recommended", {"1": "fast"}, 'manifest.json: recommended["1"]: expected an object, found "fast"'),
    ("files.0.size", -1, "manifest.json: files[0].size: expected a number >= 0, found -1"),
    ("files.0.sha256", "abc", "manifest.json: files[0].sha256: String should match pattern"),
    ("surprise", 1, "manifest.json: surprise: unknown field (not in schema version 1), found 1"),
    ("name", "\x1b[2Kfake", "manifest.json: name"),
]


@pytest.mark.parametrize(("path", "value", "message"), FIELD_CASES, ids=[f"{c[0]}={c[1]!r}" for c in FIELD_CASES])
def test_malformed_field_is_one_line_with_its_json_path(
    zoo_package: Path, hostile, canary, no_runtime, path: str, value: Any, message: str
) -> None:
    pkg = hostile(zoo_package)
    edit_manifest(pkg, _set(path, value))
    if path == "name":
        # NOTE: a control character in a name is valid JSON and a valid string: it is only escaped.
        result = cli("inspect", str(pkg))
        assert result.exit_code == 0, result.stderr
        assert "\x1b" not in result.stdout and result.stdout.startswith("\\x1b[2Kfake ")
        return
    result = cli("verify", str(pkg), "--provider", "cpu")
    assert result.exit_code == 1
    lines = fail_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"FAIL {message}"), lines[0]
    assert no_runtime == []
    inspected = cli("inspect", str(pkg))
    assert inspected.exit_code == 1
    assert inspected.stderr.count("\n") == 1 and message in inspected.stderr


def test_every_package_the_pipeline_writes_is_valid(zoo_package: Path, tiny_package: Path) -> None:
    for pkg in (zoo_package, tiny_package):
        assert open_package(pkg).manifest == json.loads((pkg / MANIFEST).read_text())


def test_control_characters_in_package_strings_are_escaped(zoo_package: Path, hostile, canary) -> None:
    pkg = hostile(zoo_package)

    def rename(m: dict[str, Any]) -> None:
        m["name"] = "ok\rFAKE verified\x1b[2K"
        m["signature"]["inputs"][0]["name"] = "x\x07\u202e"
        for sample in m["samples"]:
            sample["inputs"]["x\x07\u202e"] = sample["inputs"].pop("a")

    edit_manifest(pkg, rename)
    (pkg / "unlisted\x1b[1A\x1b[2K.txt").write_text("moves the cursor up and erases the FAIL line")
    result = cli("verify", str(pkg), "--provider", "cpu")
    assert result.exit_code == 1
    out = result.stdout + result.stderr
    assert not any(c in out for c in "\x1b\r\x07\u202e")
    assert "FAIL unlisted\\x1b[1A\\x1b[2K.txt: is not listed in the manifest" in result.stderr
    (pkg / "unlisted\x1b[1A\x1b[2K.txt").unlink()
    inspected = cli("inspect", str(pkg))
    assert inspected.exit_code == 0, inspected.stderr
    assert inspected.stdout.startswith("ok\\rFAKE verified\\x1b[2K ")
    assert "input  x\\x07\\u202e:" in inspected.stdout
