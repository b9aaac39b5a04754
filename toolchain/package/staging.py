"""Writing a package: a staging sibling, fsync, then an atomic exchange with whatever is at ``--out``.

At every instant some complete package (the old one or the new one) is at ``--out``:

1. files are written into ``.<name>.staging-<pid>-<random>`` beside ``--out``;
2. `PackageStaging.finalize` hashes them into the manifest;
3. `PackageStaging.commit` fsyncs every file and folder, then swaps the staging folder with the old
   package in one ``renameat2(RENAME_EXCHANGE)`` (Linux >= 3.15 on ext4, xfs, btrfs, tmpfs, ...), or
   moves it in with ``RENAME_NOREPLACE`` when ``--out`` does not exist yet; the old package, now at
   the staging name, is removed afterwards.

Where ``renameat2`` is missing (other systems, or a file system that refuses the flags) the fallback
is two renames (old aside, new in), with a window of a few microseconds in which ``--out`` is absent;
a kill in that window leaves the old package at ``.<name>.replaced-<pid>-<random>``, and the next
export restores it before anything else. Work files that never ship (each export path's own folder)
live under ``.<name>.scratch-<pid>-<random>`` (`PackageStaging.scratch`), removed when the export
ends. A staging, replaced or scratch folder whose process is dead (an export killed with SIGKILL or
by the OOM killer) is removed by the next export to the same ``--out``.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from toolchain.core.errors import PackageError
from toolchain.package.format import MANIFEST, SCHEMA_VERSION
from toolchain.package.schema import parse_manifest

__all__ = ["PackageStaging", "check_destination", "clean_stale", "exchange", "stage_package"]

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_DISK_FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)


def _after_step(step: str) -> None:
    """Called after each step of `PackageStaging.commit`; tests replace it to kill the process there."""


class PackageStaging:
    """A temporary sibling folder that becomes the package on `commit`."""

    def __init__(self, dest: Path, *, force: bool) -> None:
        self.dest = Path(dest)
        self.force = force
        clean_stale(self.dest)
        self.path = self.dest.parent / f".{self.dest.name}.staging-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.path.mkdir(parents=True)
        self.committed = False
        self._scratch: Path | None = None

    def scratch(self) -> Path:
        """A folder beside the staging one for work files that never ship (created on first use).

        Removed when the staging ends, committed or not; one left by a killed process goes with the next
        export's `clean_stale`, because its name carries this process's pid.
        """
        if self._scratch is None:
            self._scratch = self.path.with_name(self.path.name.replace(".staging-", ".scratch-", 1))
            self._scratch.mkdir()
        return self._scratch

    def discard(self) -> None:
        """Remove the scratch folder, and the staging folder unless it was committed."""
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
        if not self.committed:
            shutil.rmtree(self.path, ignore_errors=True)

    def file(self, rel: str) -> Path:
        """Absolute path for `rel` inside the staging folder, parents created."""
        pure = PurePosixPath(rel)
        if not rel or pure.is_absolute() or any(part in ("", ".", "..") for part in rel.split("/")) or "\\" in rel:
            raise PackageError(f"path {rel!r} must be relative, normalised and stay inside the package")
        target = self.path / pure
        target.parent.mkdir(parents=True, exist_ok=True)
        return target

    def save_array(self, rel: str, array: np.ndarray) -> str:
        """Write `array` as ``.npy`` (no pickles) and return `rel`."""
        with _disk_full_is_an_error(self.dest, rel):
            np.save(self.file(rel), np.ascontiguousarray(array), allow_pickle=False)
        return rel

    def write_text(self, rel: str, text: str) -> str:
        """Write UTF-8 text and return `rel`."""
        with _disk_full_is_an_error(self.dest, rel):
            self.file(rel).write_text(text, encoding="utf-8")
        return rel

    def write_json(self, rel: str, data: Any) -> str:
        """Write pretty, key-sorted JSON and return `rel`."""
        return self.write_text(rel, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def finalize(self, manifest: Mapping[str, Any]) -> None:
        """Hash every staged file into `manifest` and write it; the folder is then a whole package.

        Raises:
            PackageError: the manifest breaks the schema every reader checks (a toolchain bug).
        """
        entries = []
        for p in sorted(self.path.rglob("*")):
            rel = p.relative_to(self.path).as_posix()
            if p.is_file() and not p.is_symlink() and rel != MANIFEST:
                with p.open("rb") as f:
                    digest = hashlib.file_digest(f, "sha256").hexdigest()
                entries.append({"path": rel, "size": p.stat().st_size, "sha256": digest})
        text = json.dumps({**manifest, "schema_version": SCHEMA_VERSION, "files": entries}, indent=2, sort_keys=True)
        try:
            parse_manifest(text.encode())  # NOTE: a manifest readers would refuse must never replace a package
        except PackageError as e:
            raise PackageError(
                f"{self.dest}: the manifest built for this package breaks the schema ({e}); nothing was written "
                "there; this is a toolchain bug, please report it"
            ) from e
        self.write_text(MANIFEST, text + "\n")

    def commit(self) -> Path:
        """Swap the finalized folder into place atomically; an old package is replaced only when forced."""
        if not (self.path / MANIFEST).is_file():
            raise PackageError(f"{self.dest}: finalize() the package before committing it")
        with _disk_full_is_an_error(self.dest, "(syncing to disk)"):
            _fsync_tree(self.path)
        _after_step("synced")
        check_destination(self.dest, force=self.force)
        _after_step("checked")
        try:
            old = exchange(self.path, self.dest)
        except OSError as e:
            raise PackageError(f"{self.dest}: could not move the finished package into place: {e}") from e
        self.committed = True
        _after_step("exchanged")
        _fsync_dir(self.dest.parent)
        _after_step("synced-parent")
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        _after_step("removed-old")
        return self.dest


@contextlib.contextmanager
def stage_package(dest: Path, *, force: bool = False) -> Iterator[PackageStaging]:
    """Stage a package next to `dest`; whatever happens, nothing half-written is left behind."""
    check_destination(dest, force=force)
    staging = PackageStaging(Path(dest), force=force)
    try:
        with _disk_full_is_an_error(Path(dest), "the package"):
            yield staging
    finally:
        staging.discard()


def check_destination(dest: Path, *, force: bool) -> None:
    """Refuse to overwrite an existing package without `force`, and anything else ever (links not followed)."""
    dest = Path(dest)
    try:
        info = os.lstat(dest)
    except FileNotFoundError:
        return
    if stat.S_ISLNK(info.st_mode):
        raise PackageError(f"{dest}: is a symbolic link; refusing to write through it; choose another --out")
    if not stat.S_ISDIR(info.st_mode):
        raise PackageError(f"{dest}: exists and is not a package folder; choose another --out")
    manifest = dest / MANIFEST
    is_package = manifest.is_file() and not manifest.is_symlink()
    if not is_package and any(dest.iterdir()):
        raise PackageError(f"{dest}: exists, is not empty and holds no {MANIFEST}; refusing to replace it")
    if is_package and not force:
        raise PackageError(f"{dest}: a package already exists there; pass --force to replace it")


def exchange(new: Path, dest: Path) -> Path | None:
    """Put folder `new` at `dest` in one step; returns where the old `dest` now is (None when there was none).

    Raises:
        OSError: the rename failed (``dest`` appeared meanwhile, another file system, ...).
    """
    if os.path.lexists(dest):
        if _renameat2(new, dest, _RENAME_EXCHANGE):
            return new
        # NOTE: fallback without renameat2 (see the module docstring): a short window without --out.
        aside = dest.parent / f".{dest.name}.replaced-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.rename(dest, aside)
        try:
            os.rename(new, dest)
        except OSError:
            os.rename(aside, dest)
            raise
        return aside
    if not _renameat2(new, dest, _RENAME_NOREPLACE):
        # NOTE: os.rename would replace an empty folder created meanwhile; that is still a package-free spot.
        os.rename(new, dest)
    return None


def clean_stale(dest: Path) -> list[Path]:
    """Remove staging and scratch folders of `dest` left by dead processes; restore a package left aside.

    Only folders named ``.<name>.staging-<pid>-<hex8>`` / ``.<name>.scratch-<pid>-<hex8>`` /
    ``.<name>.replaced-<pid>-<hex8>`` beside `dest`, real folders (not links) whose pid is no longer
    running, are touched. Returns the removed ones.
    """
    dest = Path(dest)
    pattern = re.compile(rf"^\.{re.escape(dest.name)}\.(staging|scratch|replaced)-(\d+)-[0-9a-f]{{8}}$")
    removed = []
    try:
        siblings = sorted(os.scandir(dest.parent), key=lambda e: e.name)
    except FileNotFoundError:
        return []
    for entry in siblings:
        match = pattern.match(entry.name)
        if not match or not entry.is_dir(follow_symlinks=False) or _alive(int(match[2])):
            continue
        path = Path(entry.path)
        if match[1] == "replaced" and not os.path.lexists(dest):
            os.rename(path, dest)
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def _disk_full_is_an_error(dest: Path, what: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        if e.errno not in _DISK_FULL:
            raise
        raise PackageError(
            f"{dest}: no space left while writing {what} ({os.strerror(e.errno)}); nothing was replaced "
            "(any old package there is intact); free some space and export again"
        ) from e


def _fsync_tree(root: Path) -> None:
    """Fsync every file, then every folder bottom-up, so the swap never exposes unwritten data."""
    folders = []
    for parent, dirs, files in os.walk(root):
        folders.append(parent)
        for name in files:
            fd = os.open(os.path.join(parent, name), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        del dirs  # walked by os.walk itself
    for folder in reversed(folders):
        _fsync_dir(Path(folder))


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # NOTE: some file systems (and all of Windows) cannot fsync a folder.
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """``renameat2(src, dst, flags)``; False when this system or file system does not offer it."""
    call = _libc_renameat2()
    if call is None:
        return False
    if call(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(dst))


_RENAMEAT2: list[Callable[..., int] | None] = []


def _libc_renameat2() -> Callable[..., int] | None:
    if not _RENAMEAT2:
        found = None
        if sys.platform.startswith("linux"):
            with contextlib.suppress(OSError, AttributeError):
                libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
                found = libc.renameat2  # NOTE: glibc >= 2.28 and musl export it.
                found.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
                found.restype = ctypes.c_int
        _RENAMEAT2.append(found)
    return _RENAMEAT2[0]
