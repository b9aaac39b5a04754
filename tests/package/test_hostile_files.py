"""CHECKLIST rows 6 (exact file set, regular files only) and 7 (integrity before any model byte is parsed)."""

from __future__ import annotations

import json
import os
import re
import socket
import stat
from pathlib import Path

import pytest

from tests.package.hostile import MANIFEST, cli, fail_lines, opened, restamp
from toolchain.core.errors import PackageError
from toolchain.package import contain
from toolchain.package.format import check_integrity, open_package


def _fifo(pkg: Path) -> str:
    os.mkfifo(pkg / "samples/pipe")
    return "samples/pipe"


def _socket(pkg: Path) -> str:
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(pkg / "sock"))
    sock.close()
    return "sock"


def _device(pkg: Path) -> str:
    if os.geteuid() != 0:
        pytest.skip("creating a device node needs root")
    os.mknod(pkg / "null", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    return "null"


def _folder(pkg: Path) -> str:
    (pkg / "extra/deeper").mkdir(parents=True)
    return "extra"


def _unlisted(pkg: Path) -> str:
    (pkg / "onnx/evil.py").write_text("import os")
    return "onnx/evil.py"


def _absent(pkg: Path) -> str:
    (pkg / "samples/export/inputs/a.npy").unlink()
    return "samples/export/inputs/a.npy"


def _link(pkg: Path) -> str:
    (pkg / "report.md").unlink()
    (pkg / "report.md").symlink_to(pkg.parent / "secret.bin")
    return "report.md"


def _linked_folder(pkg: Path) -> str:
    (pkg / "samples").rename(pkg.parent / "elsewhere")
    (pkg / "samples").symlink_to(pkg.parent / "elsewhere")
    return "samples"


def _hard_link(pkg: Path) -> str:
    (pkg / "report.md").unlink()
    os.link(pkg.parent / "secret.bin", pkg / "report.md")
    return "report.md"


FILE_SET = [
    (_absent, "is listed in the manifest but missing"),
    (_unlisted, "is not listed in the manifest (unexpected file)"),
    (_folder, "is a folder holding no file the manifest lists"),
    (_fifo, "is a named pipe; packages hold regular files only"),
    (_socket, "is a socket; packages hold regular files only"),
    (_device, "is a character device; packages hold regular files only"),
    (_link, "is a symbolic link; packages hold regular files only"),
    (_linked_folder, "is a symbolic link; packages hold regular files only"),
    (_hard_link, "has 2 hard links; package files must have exactly one"),
]


@pytest.mark.parametrize(("damage", "message"), FILE_SET, ids=[d.__name__.strip("_") for d, _ in FILE_SET])
def test_file_set_is_exact_and_regular(zoo_package: Path, hostile, canary, no_runtime, damage, message: str) -> None:
    pkg = hostile(zoo_package)
    start = len(opened())
    rel = damage(pkg)
    canary.arm()  # NOTE: re-armed: the hard link shares the canary's inode (its mtime is the canary's own)
    result = cli("verify", str(pkg), "--provider", "cpu")
    assert result.exit_code == 1
    assert any(line.startswith(f"FAIL {rel}: {message}") for line in fail_lines(result)), result.stderr
    assert no_runtime == []
    with pytest.raises(PackageError, match=re.escape(f"{rel}: {message}")):
        open_package(pkg)
    if "only" in message or "hard links" in message:
        # NOTE: a pipe, socket, device, link or hard link is never opened (opening a pipe would block).
        assert not [p for p in opened()[start:] if Path(p).name == Path(rel).name]


def test_files_are_opened_relative_to_their_folder_without_following_links(zoo_package: Path, hostile, canary) -> None:
    pkg = hostile(zoo_package)
    start = len(opened())
    assert check_integrity(pkg) == []
    names = opened()[start:]
    assert "manifest.json" in names and "model.onnx" in names
    assert not [p for p in names if p.startswith(f"{pkg}/")]


def test_link_swapped_in_after_the_scan_is_not_followed(zoo_package: Path, hostile, canary) -> None:
    pkg = hostile(zoo_package)
    real_open = os.open

    def swap_then_open(path, flags, mode=0o777, *, dir_fd=None):
        if path == "report.md" and dir_fd is not None:
            os.unlink("report.md", dir_fd=dir_fd)
            os.symlink(canary.path, "report.md", dir_fd=dir_fd)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    os.open = swap_then_open  # type: ignore[assignment]
    try:
        problems = check_integrity(pkg)
    finally:
        os.open = real_open
    assert [str(p) for p in problems] == [
        "report.md: cannot be opened without following links: Too many levels of symbolic links"
    ]


FLIPS = [
    ("onnx/model.onnx", "onnx/model.onnx: sha256 does not match the manifest"),
    (
        "samples/export/expected/probability.npy",
        "samples/export/expected/probability.npy: sha256 does not match the manifest",
    ),
]


@pytest.mark.parametrize(("rel", "message"), FLIPS, ids=["model", "golden"])
def test_flipped_byte_is_caught_before_any_model_byte_is_parsed(
    zoo_package: Path, hostile, canary, no_runtime, monkeypatch: pytest.MonkeyPatch, rel: str, message: str
) -> None:
    pkg = hostile(zoo_package)
    data = bytearray((pkg / rel).read_bytes())
    data[len(data) // 2] ^= 0x01
    (pkg / rel).write_bytes(bytes(data))
    parsed: list[bytes] = []
    monkeypatch.setattr(contain, "external_tensors", lambda blob: parsed.append(blob) or [])
    result = cli("verify", str(pkg), "--provider", "cpu")
    assert result.exit_code == 1
    assert fail_lines(result) == [f"FAIL {message} (file changed or corrupted)"]
    assert parsed == [] and no_runtime == []


def test_flipped_byte_in_the_manifests_record_of_a_file(zoo_package: Path, hostile, canary, no_runtime) -> None:
    pkg = hostile(zoo_package)
    manifest = json.loads((pkg / MANIFEST).read_text())
    entry = next(e for e in manifest["files"] if e["path"] == "onnx/model.onnx")
    entry["sha256"] = entry["sha256"][:10] + ("0" if entry["sha256"][10] != "0" else "1") + entry["sha256"][11:]
    (pkg / MANIFEST).write_text(json.dumps(manifest))
    result = cli("verify", str(pkg), "--provider", "cpu")
    assert result.exit_code == 1
    message = "FAIL onnx/model.onnx: sha256 does not match the manifest (file changed or corrupted)"
    assert fail_lines(result) == [message]
    assert no_runtime == []


def test_bytes_that_were_hashed_are_the_bytes_that_are_loaded(zoo_package: Path, hostile, canary) -> None:
    pkg = hostile(zoo_package)
    package = open_package(pkg)
    (pkg / "onnx/model.onnx").write_bytes(b"swapped after the check")
    model, external = package.onnx_model("onnx/model.onnx")
    assert model == (zoo_package / "onnx/model.onnx").read_bytes() and external == {}


def test_restamped_package_is_valid(zoo_package: Path, hostile) -> None:
    pkg = hostile(zoo_package)
    restamp(pkg)
    assert check_integrity(pkg) == []
