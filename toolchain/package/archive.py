"""Single-file packages: `pack` a package folder into a zip or tar, `unpack` one as untrusted input.

Unpacking refuses, before anything is written: member names that are absolute, carry a drive letter
or a backslash, or climb out with ``..``; links, devices and anything but regular files and folders;
duplicate names and names equal up to case or Unicode normalisation; encrypted zip members; more
than `ArchiveLimits.members` members, a declared total beyond `ArchiveLimits.total_bytes`, a compression ratio beyond
`ArchiveLimits.ratio`, and zip entries whose data overlap. While streaming, bytes are counted
against the declared sizes and the total, so a lying header cannot write more than the limits.
Members are written into a staging folder beside ``--out`` (created, never followed), the result is
integrity-checked as a package, and only then put at ``--out`` in one rename.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import shutil
import stat
import struct
import tarfile
import tempfile
import unicodedata
import uuid
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from toolchain.core.errors import PackageError
from toolchain.package.format import MANIFEST, SIGNATURE_FILE, check_integrity, open_package
from toolchain.package.staging import check_destination, clean_stale, exchange

__all__ = ["ArchiveLimits", "is_archive", "pack", "unpack", "unpacked"]

_CHUNK = 1 << 20
_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")
_DRIVE = re.compile(r"^[A-Za-z]:")
_ZIP_LOCAL_HEADER = struct.Struct("<4s2B4HL2L2H")


@dataclass(frozen=True)
class ArchiveLimits:
    """What an archive may expand to; every limit is checked on the declared sizes and while streaming."""

    members: int = 10_000
    total_bytes: int = 16 << 30
    ratio: float = 200.0
    """Largest uncompressed/compressed size, per zip member and over a whole compressed tar."""


def is_archive(path: Path) -> bool:
    """True when `path` names a file with an archive suffix this module reads (zip, tar, tar.gz)."""
    return Path(path).name.lower().endswith(_SUFFIXES)


def pack(package: Path, out: Path, *, force: bool = False) -> Path:
    """Write the intact `package` as one archive at `out` (``.zip``, ``.tar``, ``.tar.gz`` or ``.tgz``).

    Raises:
        PackageError: the package does not pass its integrity check, a file changed while packing,
            or `out` exists (without `force`), is a link or is not a file.
    """
    pkg = open_package(Path(package))
    out = Path(out)
    kind = _kind(out)
    if out.parent.resolve().is_relative_to(pkg.path.resolve()):
        raise PackageError(f"{out}: lies inside the package {pkg.path}; write the archive elsewhere")
    _check_out_file(out, force=force)
    files = [(MANIFEST, "")] + [(str(e["path"]), str(e["sha256"])) for e in pkg.manifest["files"]]
    if (pkg.path / SIGNATURE_FILE).is_file() and not (pkg.path / SIGNATURE_FILE).is_symlink():
        files.append((SIGNATURE_FILE, ""))
    tmp = out.parent / f".{out.name}.pack-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        if kind == "zip":
            _write_zip(tmp, pkg.path, files)
        else:
            _write_tar(tmp, pkg.path, files, gzip=kind == "tar.gz")
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    return out


def unpack(archive: Path, out: Path, *, force: bool = False, limits: ArchiveLimits = ArchiveLimits()) -> Path:
    """Unpack `archive` into the package folder `out`, refusing anything hostile (see the module docstring).

    Raises:
        PackageError: naming the archive and the offending member, or the integrity problem of the result.
    """
    archive, out = Path(archive), Path(out)
    check_destination(out, force=force)
    clean_stale(out)
    staging = out.parent / f".{out.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        _extract(archive, staging, limits)
        problems = check_integrity(staging)
        if problems:
            raise PackageError(f"{archive}: does not hold an intact package: {problems[0]}")
        check_destination(out, force=force)
        old = exchange(staging, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


@contextlib.contextmanager
def unpacked(archive: Path, *, limits: ArchiveLimits = ArchiveLimits()) -> Iterator[Path]:
    """Unpack `archive` into a temporary folder with every protection of `unpack`; removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="toolchain-unpacked-") as tmp:
        yield unpack(archive, Path(tmp) / "package", limits=limits)


def _write_zip(tmp: Path, root: Path, files: list[tuple[str, str]]) -> None:
    with zipfile.ZipFile(tmp, "x", zipfile.ZIP_DEFLATED) as zf:
        for rel, sha in files:
            info = zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = (stat.S_IFREG | 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            with zf.open(info, "w") as dst, (root / rel).open("rb") as src:
                reader = _HashingReader(src, rel, sha)
                for block in iter(lambda: reader.read(_CHUNK), b""):  # noqa: B023 - consumed at once
                    dst.write(block)
                reader.finish()


def _write_tar(tmp: Path, root: Path, files: list[tuple[str, str]], *, gzip: bool) -> None:
    with tarfile.open(tmp, "x:gz" if gzip else "x:") as tf:
        for rel, sha in files:
            info = tarfile.TarInfo(rel)
            info.size, info.mode, info.mtime = (root / rel).stat().st_size, 0o644, 0
            with (root / rel).open("rb") as src:
                reader = _HashingReader(src, rel, sha)
                tf.addfile(info, reader)
                reader.finish()


@dataclass(frozen=True)
class _Member:
    name: str
    size: int
    is_dir: bool
    opener: Callable[[], IO[bytes]]


def _extract(archive: Path, root: Path, limits: ArchiveLimits) -> None:
    if not archive.is_file() or archive.is_symlink():
        raise PackageError(f"{archive}: not an archive file (expected a .zip, .tar or .tar.gz)")
    with contextlib.ExitStack() as stack:
        members = _zip_members(archive, stack, limits) if _kind(archive) == "zip" else None
        if members is None:
            members = _tar_members(archive, stack, limits)
        _check_names(archive, members)
        root.mkdir()
        written = 0
        for member in members:
            target = root.joinpath(*member.name.rstrip("/").split("/"))
            if member.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
            try:
                with member.opener() as src, os.fdopen(os.open(target, flags, 0o644), "wb") as dst:
                    count = 0
                    for block in iter(lambda: src.read(_CHUNK), b""):
                        count += len(block)
                        written += len(block)
                        if count > member.size or written > limits.total_bytes:
                            raise _refused(archive, member.name, "expands beyond its declared size or the limit")
                        dst.write(block)
            except (zipfile.BadZipFile, tarfile.TarError, zlib.error, EOFError, NotImplementedError) as e:
                raise _refused(archive, member.name, f"cannot be read ({e})") from e


def _zip_members(archive: Path, stack: contextlib.ExitStack, limits: ArchiveLimits) -> list[_Member]:
    _check_count(archive, _zip_declared_count(archive), limits)
    try:
        zf = stack.enter_context(zipfile.ZipFile(archive))
    except (zipfile.BadZipFile, OSError) as e:
        raise PackageError(f"{archive}: not a readable zip archive: {e}") from e
    infos = zf.infolist()
    _check_count(archive, len(infos), limits)
    total, spans = 0, []
    raw = stack.enter_context(archive.open("rb"))
    for info in infos:
        mode = info.external_attr >> 16
        kind = stat.S_IFMT(mode)
        if info.create_system == 3 and kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            what = "a symbolic link" if kind == stat.S_IFLNK else "not a regular file"
            raise _refused(archive, info.filename, f"is {what}; packages hold regular files only")
        if info.flag_bits & 0x1:
            raise _refused(archive, info.filename, "is encrypted")
        ratio = info.file_size / max(info.compress_size, 1)
        if info.file_size > 1 << 20 and ratio > limits.ratio:
            raise _refused(archive, info.filename, f"expands {ratio:.0f}x (limit {limits.ratio:g}x): a zip bomb?")
        total += info.file_size
        if total > limits.total_bytes:
            raise _refused(archive, info.filename, f"brings the total beyond {_human(limits.total_bytes)}")
        raw.seek(info.header_offset)
        header = raw.read(_ZIP_LOCAL_HEADER.size)
        if len(header) != _ZIP_LOCAL_HEADER.size or header[:4] != b"PK\x03\x04":
            raise _refused(archive, info.filename, "has no local header where the directory says")
        fields = _ZIP_LOCAL_HEADER.unpack(header)
        start = info.header_offset
        spans.append((start, start + _ZIP_LOCAL_HEADER.size + fields[-2] + fields[-1] + info.compress_size, info))
    spans.sort(key=lambda s: s[0])
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise _refused(archive, second.filename, f"overlaps the data of {first.filename!r}")
    if spans and spans[-1][1] > zf.start_dir:
        raise _refused(archive, spans[-1][2].filename, "overlaps the central directory")
    return [
        _Member(i.filename, i.file_size, i.is_dir(), lambda i=i: zf.open(i))  # type: ignore[misc]
        for i in infos
    ]


def _zip_declared_count(archive: Path) -> int:
    """Entries the end-of-central-directory record declares, read before zipfile parses them all (0: unknown)."""
    with archive.open("rb") as f:
        size = f.seek(0, os.SEEK_END)
        f.seek(max(0, size - (1 << 16) - 22))
        tail = f.read()
    at = tail.rfind(b"PK\x05\x06")
    if at < 0 or len(tail) < at + 22:
        return 0
    (count,) = struct.unpack_from("<H", tail, at + 10)
    # NOTE: 0xFFFF means a zip64 record holds the count; zipfile reads that one, and the check after it applies.
    return 0 if count == 0xFFFF else count


def _tar_members(archive: Path, stack: contextlib.ExitStack, limits: ArchiveLimits) -> list[_Member]:
    try:
        tf = stack.enter_context(tarfile.open(archive, "r:*"))  # noqa: SIM115 - closed by the stack
        total, infos = 0, []
        # NOTE: iterate header by header (tf.next), so a flood of members stops at the limit.
        while (info := tf.next()) is not None:
            infos.append(info)
            _check_count(archive, len(infos), limits)
            if info.issym() or info.islnk():
                raise _refused(archive, info.name, "is a link; packages hold regular files only")
            if not (info.isreg() or info.isdir()) or info.issparse():
                raise _refused(archive, info.name, "is not a regular file or folder")
            total += info.size
            if total > limits.total_bytes:
                raise _refused(archive, info.name, f"brings the total beyond {_human(limits.total_bytes)}")
    except (tarfile.TarError, OSError, EOFError) as e:
        raise PackageError(f"{archive}: not a readable tar archive: {e}") from e
    compressed = archive.stat().st_size
    if total > 1 << 20 and total / max(compressed, 1) > limits.ratio:
        raise PackageError(
            f"{archive}: expands {total / compressed:.0f}x (limit {limits.ratio:g}x): a decompression bomb?"
        )
    return [_Member(i.name, i.size, i.isdir(), lambda i=i: _tar_open(tf, i)) for i in infos]  # type: ignore[misc]


def _tar_open(tf: tarfile.TarFile, info: tarfile.TarInfo) -> IO[bytes]:
    reader = tf.extractfile(info)
    assert reader is not None  # a regular file always has a reader
    return reader


def _check_count(archive: Path, count: int, limits: ArchiveLimits) -> None:
    if count > limits.members:
        raise PackageError(f"{archive}: holds more than {limits.members} members; refusing to unpack it")


def _check_names(archive: Path, members: list[_Member]) -> None:
    seen: dict[str, str] = {}
    for member in members:
        name = member.name
        bare = name[:-1] if member.is_dir and name.endswith("/") else name
        if "\\" in name:
            raise _refused(archive, name, "holds a backslash (a Windows path)")
        if _DRIVE.match(name) or name.startswith("/"):
            raise _refused(archive, name, "is an absolute path")
        if any(part in ("", ".", "..") for part in bare.split("/")):
            raise _refused(archive, name, "is not a normalised relative path inside the package")
        if any(ord(c) < 32 or ord(c) == 127 for c in name):
            raise _refused(archive, name, "holds control characters")
        key = unicodedata.normalize("NFC", bare).casefold()
        if key in seen:
            raise _refused(archive, name, f"collides with {seen[key]!r} (equal up to case or Unicode form)")
        seen[key] = name
    folders = {unicodedata.normalize("NFC", m.name.rstrip("/")).casefold() for m in members if m.is_dir}
    for key, name in seen.items():
        parts = key.split("/")
        for depth in range(1, len(parts)):
            parent = "/".join(parts[:depth])
            if parent in seen and parent not in folders:
                raise _refused(archive, name, f"lies under {seen[parent]!r}, which is a file")


def _refused(archive: Path, member: str, why: str) -> PackageError:
    return PackageError(f"{archive}: member {member!r} {why}; refusing to unpack (nothing was written at --out)")


def _kind(path: Path) -> str:
    name = Path(path).name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar.gz", ".tgz")):
        return "tar.gz"
    if name.endswith(".tar"):
        return "tar"
    raise PackageError(f"{path}: unknown archive type; name it .zip, .tar, .tar.gz or .tgz")


def _check_out_file(out: Path, *, force: bool) -> None:
    try:
        info = os.lstat(out)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise PackageError(f"{out}: exists and is not a regular file; choose another -o")
    if not force:
        raise PackageError(f"{out}: already exists; pass --force to replace it")


class _HashingReader:
    """Reads a package file while hashing it; at its end the hash must be the manifest's."""

    def __init__(self, f: IO[bytes], rel: str, sha: str) -> None:
        self.f, self.rel, self.sha, self.digest = f, rel, sha, hashlib.sha256()

    def read(self, size: int = -1) -> bytes:
        """Up to `size` bytes, hashed on the way."""
        block = self.f.read(size)
        self.digest.update(block)
        return block

    def finish(self) -> None:
        """`PackageError` unless the file read ends exactly with the bytes the manifest hashed."""
        if self.f.read(1) or (self.sha and self.digest.hexdigest() != self.sha):
            raise PackageError(f"{self.rel}: changed while it was being packed; pack again")


def _human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:g} {unit}"
        n //= 1024
    return str(n)
