from __future__ import annotations

import io
import json
import stat
import struct
import tarfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.canary import Canary
from toolchain.cli import app
from toolchain.core.errors import PackageError
from toolchain.package.archive import ArchiveLimits, pack, unpack
from toolchain.package.format import MANIFEST, check_integrity
from toolchain.package.staging import stage_package

runner = CliRunner()


def _package(dest: Path, base: Path, *, payload: bytes = b"hello") -> Path:
    """A copy of the real package `base` with one more listed file holding `payload`."""
    manifest = json.loads((base / MANIFEST).read_text())
    files = [e["path"] for e in manifest.pop("files")]
    with stage_package(dest) as s:
        for rel in files:
            s.file(rel).write_bytes((base / rel).read_bytes())
        s.file("data.bin").write_bytes(payload)
        s.save_array("samples/a.npy", np.arange(5, dtype=np.float32))
        s.finalize(manifest)
        return s.commit()


def _members(package: Path) -> list[tuple[str, bytes]]:
    files = [MANIFEST] + [e["path"] for e in json.loads((package / MANIFEST).read_text())["files"]]
    return [(rel, (package / rel).read_bytes()) for rel in files]


def _zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with warnings.catch_warnings(), zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate names these tests write on purpose
        for info, data in members:
            zf.writestr(info, data)
    return path


def _tar(path: Path, members: list[tarfile.TarInfo], data: dict[str, bytes] | None = None) -> Path:
    with tarfile.open(path, "w") as tf:
        for info in members:
            body = (data or {}).get(info.name)
            if body is not None:
                info.size = len(body)
            tf.addfile(info, io.BytesIO(body) if body is not None else None)
    return path


@pytest.fixture
def package(tmp_path: Path, tiny_package: Path) -> Path:
    return _package(tmp_path / "src" / "pkg", tiny_package)


@pytest.mark.parametrize("kind", ["zip", "tar", "tar.gz"])
def test_pack_then_unpack_gives_the_same_intact_package(package: Path, tmp_path: Path, kind: str) -> None:
    archive = pack(package, tmp_path / f"demo.{kind}")
    out = unpack(archive, tmp_path / "out")
    assert check_integrity(out) == []
    assert _members(out) == _members(package)
    assert [p.name for p in tmp_path.iterdir() if ".staging-" in p.name or ".pack-" in p.name] == []


def test_pack_refuses_a_damaged_package_and_an_existing_out(package: Path, tmp_path: Path) -> None:
    archive = pack(package, tmp_path / "demo.zip")
    with pytest.raises(PackageError, match=r"demo.zip: already exists; pass --force"):
        pack(package, archive)
    (package / "data.bin").write_bytes(b"HELLO")
    with pytest.raises(PackageError, match=r"data.bin"):
        pack(package, tmp_path / "again.zip")
    assert not (tmp_path / "again.zip").exists()


ESCAPES = ["../../canary.txt", "/abs/canary.txt", "C:\\canary.txt", "..\\canary.txt", "ok/../../canary.txt"]


@pytest.mark.parametrize("name", ESCAPES)
@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_member_escaping_the_package_is_refused_before_anything_is_written(
    package: Path, tmp_path: Path, name: str, kind: str
) -> None:
    work = tmp_path / "work"
    work.mkdir()
    canary = Canary(work / "canary.txt", allowed=("evil.", "out", ".out."))
    good = _members(package)
    if kind == "zip":
        archive = _zip(work / "evil.zip", [*good, (name, b"pwned")])
    else:
        infos = [tarfile.TarInfo(rel) for rel, _ in good] + [tarfile.TarInfo(name)]
        archive = _tar(work / "evil.tar", infos, {**dict(good), name: b"pwned"})
    result = runner.invoke(app, ["unpack", str(archive), "-o", str(work / "out")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and repr(name) in lines[0], result.output
    assert not (work / "out").exists()
    canary.assert_untouched()


def test_zip_symlink_member_is_refused_and_no_link_is_created(package: Path, tmp_path: Path) -> None:
    canary = Canary(tmp_path / "canary.txt", allowed=("evil.zip", "out", ".out.", "src"))
    link = zipfile.ZipInfo("data2.bin")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    archive = _zip(tmp_path / "evil.zip", [*_members(package), (link, b"../canary.txt")])
    with pytest.raises(PackageError, match=r"member 'data2.bin' is a symbolic link"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    canary.assert_untouched()


@pytest.mark.parametrize("kind", [tarfile.SYMTYPE, tarfile.LNKTYPE, tarfile.FIFOTYPE, tarfile.CHRTYPE])
def test_tar_link_and_special_members_are_refused(package: Path, tmp_path: Path, kind: bytes) -> None:
    canary = Canary(tmp_path / "canary.txt", allowed=("evil.tar", "out", ".out.", "src"))
    good = _members(package)
    special = tarfile.TarInfo("data2.bin")
    special.type = kind
    special.linkname = str(tmp_path / "canary.txt")
    archive = _tar(tmp_path / "evil.tar", [*(tarfile.TarInfo(r) for r, _ in good), special], dict(good))
    with pytest.raises(PackageError, match=r"member 'data2.bin' is (a link|not a regular file)"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path / "data2.bin").exists()
    canary.assert_untouched()


@pytest.mark.parametrize("second", ["data.bin", "DATA.bin", "Data.BIN"])
def test_duplicate_or_case_colliding_names_are_refused(package: Path, tmp_path: Path, second: str) -> None:
    archive = _zip(tmp_path / "dup.zip", [*_members(package), (second, b"other")])
    with pytest.raises(PackageError, match=rf"member '{second}' collides with 'data.bin'"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_names_equal_after_unicode_normalisation_collide(package: Path, tmp_path: Path) -> None:
    composed, decomposed = "caf\u00e9.txt", "cafe\u0301.txt"
    archive = _zip(tmp_path / "nfd.zip", [*_members(package), (composed, b"a"), (decomposed, b"b")])
    with pytest.raises(PackageError, match="collides with"):
        unpack(archive, tmp_path / "out")


def test_a_file_and_a_folder_of_the_same_name_collide(package: Path, tmp_path: Path) -> None:
    archive = _zip(tmp_path / "clash.zip", [*_members(package), ("data.bin/inner.txt", b"x")])
    with pytest.raises(PackageError, match=r"member 'data.bin/inner.txt' lies under 'data.bin', which is a file"):
        unpack(archive, tmp_path / "out")


def test_pack_refuses_to_write_inside_the_package(package: Path) -> None:
    with pytest.raises(PackageError, match="lies inside the package"):
        pack(package, package / "self.zip")


def test_compression_ratio_bomb_is_refused(tmp_path: Path, tiny_package: Path) -> None:
    package = _package(tmp_path / "pkg", tiny_package, payload=bytes(4 << 20))
    archive = pack(package, tmp_path / "bomb.zip")
    with pytest.raises(PackageError, match=r"member 'data.bin' expands \d+x \(limit 50x\)"):
        unpack(archive, tmp_path / "out", limits=ArchiveLimits(ratio=50))
    tar = pack(package, tmp_path / "bomb.tar.gz")
    with pytest.raises(PackageError, match=r"bomb.tar.gz: expands \d+x \(limit 50x\)"):
        unpack(tar, tmp_path / "out", limits=ArchiveLimits(ratio=50))
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_total_size_and_member_count_limits(package: Path, tmp_path: Path, kind: str) -> None:
    archive = pack(package, tmp_path / f"demo.{kind}")
    with pytest.raises(PackageError, match=r"brings the total beyond 100 B"):
        unpack(archive, tmp_path / "out", limits=ArchiveLimits(total_bytes=100))
    with pytest.raises(PackageError, match=r"holds more than 2 members"):
        unpack(archive, tmp_path / "out", limits=ArchiveLimits(members=2))
    assert not (tmp_path / "out").exists()


def test_lying_size_in_the_directory_is_refused_while_streaming(package: Path, tmp_path: Path) -> None:
    archive = pack(package, tmp_path / "demo.zip")
    data = bytearray(archive.read_bytes())
    central = data.index(b"PK\x01\x02")
    # shrink the first member's declared uncompressed size (central directory offset 24) to 1 byte
    struct.pack_into("<L", data, central + 24, 1)
    archive.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"member 'manifest.json' cannot be read"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_overlapping_zip_entries_are_refused(package: Path, tmp_path: Path) -> None:
    archive = pack(package, tmp_path / "demo.zip")
    data = bytearray(archive.read_bytes())
    first = data.index(b"PK\x01\x02")
    second = data.index(b"PK\x01\x02", first + 4)
    # point the second central-directory entry at the first member's local header (offset field at 42)
    struct.pack_into("<L", data, second + 42, struct.unpack_from("<L", data, first + 42)[0])
    archive.write_bytes(bytes(data))
    with pytest.raises(PackageError, match=r"overlaps the data of 'manifest.json'"):
        unpack(archive, tmp_path / "out")


def test_archive_that_is_not_an_intact_package_is_refused(package: Path, tmp_path: Path) -> None:
    archive = _zip(tmp_path / "extra.zip", [*_members(package), ("extra.txt", b"unlisted")])
    with pytest.raises(PackageError, match=r"extra.zip: does not hold an intact package: extra.txt"):
        unpack(archive, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir() if ".staging-" in p.name] == []


@pytest.mark.parametrize(
    "make",
    [
        lambda p: p.write_bytes(b"not a zip at all"),
        lambda p: p.write_bytes(b""),
    ],
)
def test_garbage_archive_is_one_line(tmp_path: Path, make: Callable[[Path], None]) -> None:
    archive = tmp_path / "junk.zip"
    make(archive)
    result = runner.invoke(app, ["unpack", str(archive), "-o", str(tmp_path / "out")])
    assert result.exit_code == 1
    assert result.output.count("\n") == 1 and "junk.zip: not a readable zip archive" in result.output


def test_unpack_over_a_package_needs_force_and_is_atomic(package: Path, tmp_path: Path) -> None:
    archive = pack(package, tmp_path / "demo.zip")
    out = unpack(archive, tmp_path / "out")
    with pytest.raises(PackageError, match="pass --force"):
        unpack(archive, out)
    assert unpack(archive, out, force=True) == out
    assert check_integrity(out) == []


def test_verify_reads_an_archive_directly(tiny_package: Path, tmp_path: Path) -> None:
    archive = tmp_path / "tiny.zip"
    packed = runner.invoke(app, ["pack", str(tiny_package), "-o", str(archive)])
    assert packed.exit_code == 0, packed.output
    result = runner.invoke(app, ["verify", str(archive), "--provider", "cpu"])
    assert result.exit_code == 0, result.output
    assert "verified" in result.output
    evil = _zip(tmp_path / "evil.zip", [*_members(tiny_package), ("../x", b"pwned")])
    result = runner.invoke(app, ["verify", str(evil)])
    assert result.exit_code == 1 and "member '../x'" in result.output


def test_member_count_is_checked_before_the_central_directory_is_parsed(
    package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _zip(tmp_path / "many.zip", [*_members(package), *((f"f{i}", b"") for i in range(50))])

    def parse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the central directory was parsed before the member count was checked")

    monkeypatch.setattr(zipfile, "ZipFile", parse)
    with pytest.raises(PackageError, match="holds more than 20 members"):
        unpack(archive, tmp_path / "out", limits=ArchiveLimits(members=20))
