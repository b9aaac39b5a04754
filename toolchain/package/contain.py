"""Containment: read a package's files once, without following links, and keep ONNX external data inside it.

Every entry of the package folder is looked at without being opened first (``lstat``): symbolic
links, named pipes, devices and sockets are refused, never opened. Each listed regular file is then
opened once relative to its folder's descriptor with ``O_NOFOLLOW``, checked (regular, one link, its
recorded size), read into memory and hashed; those bytes are what gets parsed and loaded afterwards.
ONNX external-data references are checked against the same reading and handed to ONNX Runtime as those
bytes, in memory, with the model's own bytes: it is given no path to open.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolchain.core.errors import PackageError
from toolchain.core.text import printable
from toolchain.package.onnxwire import EXTERNAL, WireError, external_tensors
from toolchain.package.schema import MANIFEST, MAX_MANIFEST_BYTES, SIGNATURE_FILE, parse_manifest

__all__ = ["Contents", "Problem", "contained_onnx", "entry_kind", "read_contents", "read_file"]

MAX_ENTRIES = 100_000
"""Most entries (files and folders) a package may hold."""
MAX_LEVELS = 32
"""Deepest folder nesting inside a package."""
_EXTERNAL_KEYS = frozenset({"location", "offset", "length", "checksum"})
_NUMBER = re.compile(r"^[0-9]{1,19}$")
_OPEN = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0)
_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
_KINDS = (
    (stat.S_ISLNK, "is a symbolic link"),
    (stat.S_ISFIFO, "is a named pipe"),
    (stat.S_ISCHR, "is a character device"),
    (stat.S_ISBLK, "is a block device"),
    (stat.S_ISSOCK, "is a socket"),
)


@dataclass(frozen=True)
class Problem:
    """One integrity problem, naming the file it concerns."""

    file: str
    message: str

    def __str__(self) -> str:
        return printable(f"{self.file}: {self.message}")


@dataclass
class Contents:
    """What `read_contents` found: the validated manifest, the bytes of every intact listed file, the problems."""

    manifest: dict[str, Any] | None = None
    manifest_bytes: bytes = b""
    blobs: dict[str, bytes] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)
    refused: dict[str, str] = field(default_factory=dict)
    """Entries that are not plain files with one link (relative path -> what they are)."""
    seen: set[str] = field(default_factory=set)


def read_contents(path: Path) -> Contents:
    """Read the package at `path`: manifest first, then every entry, checked against the manifest.

    The package folder itself may be reached through a link (the caller named it); nothing inside it is.
    """
    out = Contents()
    try:
        root = os.open(path, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        out.problems.append(Problem(str(path), "no such package folder"))
        return out
    try:
        try:
            out.manifest_bytes = read_file(root, MANIFEST, limit=MAX_MANIFEST_BYTES)
            out.manifest = parse_manifest(out.manifest_bytes)
        except FileNotFoundError:
            out.problems.append(Problem(MANIFEST, f"missing; is {path} a toolchain package?"))
            return out
        except PackageError as e:
            out.problems.append(Problem(MANIFEST, str(e).removeprefix(f"{MANIFEST}: ")))
            return out
        listed = {str(e["path"]): e for e in out.manifest["files"]}
        _walk(root, "", 0, listed, out)
    finally:
        os.close(root)
    out.problems += [Problem(rel, "is listed in the manifest but missing") for rel in listed if rel not in out.seen]
    external: list[Problem] = []
    if any(p.file not in out.refused for p in out.problems):
        return out  # NOTE: no model byte is parsed while any file is missing, unlisted or altered.
    for artifact in out.manifest["artifacts"]:
        rel = str(artifact["path"])
        if artifact["format"] == "onnx" and rel in out.blobs:
            try:
                _references(rel, out.blobs, listed, out.refused)
            except PackageError as e:
                external.append(Problem(rel, str(e).removeprefix(f"{rel}: ")))
    # NOTE: a link or hard link that ONNX external data points at is named as an escape first.
    out.problems = external + out.problems
    return out


def read_file(dir_fd: int, name: str, *, limit: int) -> bytes:
    """The bytes of `name` in the folder `dir_fd`: opened without following a link, a regular file with one link.

    Raises:
        FileNotFoundError: there is no such entry.
        PackageError: it is a link, not a regular file, hard-linked, or larger than `limit`.
    """
    before = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    kind = entry_kind(before.st_mode)
    if kind:
        raise PackageError(f"{name}: {kind}; packages hold regular files only")
    _check_opened(name, before)
    try:
        fd = os.open(name, _OPEN, dir_fd=dir_fd)
    except OSError as e:
        raise PackageError(f"{name}: cannot be opened without following links: {e.strerror}") from e
    try:
        info = os.fstat(fd)
        _check_opened(name, info)
        if info.st_size > limit:
            raise PackageError(f"{name}: {info.st_size} bytes, more than the {limit} allowed")
        return _read_all(fd, info.st_size)
    finally:
        os.close(fd)


def _walk(fd: int, prefix: str, level: int, listed: Mapping[str, Mapping[str, Any]], out: Contents) -> None:
    with os.scandir(fd) as it:
        entries = sorted(it, key=lambda e: e.name)
    for entry in entries:
        rel = prefix + entry.name
        out.seen.add(rel)
        if len(out.seen) > MAX_ENTRIES:
            out.problems.append(Problem(rel, f"the package holds more than {MAX_ENTRIES} entries"))
            return
        info = entry.stat(follow_symlinks=False)
        mode = info.st_mode
        kind = entry_kind(mode)
        if not kind and stat.S_ISREG(mode) and info.st_nlink != 1 and rel != MANIFEST:
            # NOTE: found by lstat, so a hard link to a file outside the package is never opened.
            kind = f"has {info.st_nlink} hard links"
            why = "package files must have exactly one (a hard link can bring a file from outside the package in)"
        else:
            why = "packages hold regular files only"
        if kind:
            out.refused[rel] = kind
            out.problems.append(Problem(rel, f"{kind}; {why}"))
        elif stat.S_ISDIR(mode):
            if level >= MAX_LEVELS:
                out.problems.append(Problem(rel, f"folders nested more than {MAX_LEVELS} deep"))
                continue
            if not any(p.startswith(rel + "/") for p in listed):
                out.problems.append(Problem(rel, "is a folder holding no file the manifest lists (unexpected folder)"))
                continue
            sub = os.open(entry.name, _OPEN_DIR, dir_fd=fd)
            try:
                _walk(sub, rel + "/", level + 1, listed, out)
            finally:
                os.close(sub)
        elif rel in (MANIFEST, SIGNATURE_FILE):
            continue  # NOTE: the signature signs the manifest and every listed file (`toolchain.package.signing`)
        elif rel not in listed:
            out.problems.append(Problem(rel, "is not listed in the manifest (unexpected file)"))
        else:
            _read_listed(fd, entry.name, rel, listed[rel], out)


def _read_listed(fd: int, name: str, rel: str, entry: Mapping[str, Any], out: Contents) -> None:
    try:
        file = os.open(name, _OPEN, dir_fd=fd)
    except OSError as e:
        out.problems.append(Problem(rel, f"cannot be opened without following links: {e.strerror}"))
        return
    try:
        info = os.fstat(file)
        try:
            _check_opened(rel, info)
        except PackageError as e:
            out.refused[rel] = str(e).removeprefix(f"{rel}: ").split(";")[0]
            out.problems.append(Problem(rel, str(e).removeprefix(f"{rel}: ")))
            return
        if info.st_size != entry["size"]:
            out.problems.append(Problem(rel, f"size {info.st_size} != recorded {entry['size']}"))
            return
        data = _read_all(file, info.st_size)
    finally:
        os.close(file)
    if hashlib.sha256(data).hexdigest() != entry["sha256"]:
        out.problems.append(Problem(rel, "sha256 does not match the manifest (file changed or corrupted)"))
    else:
        out.blobs[rel] = data


def entry_kind(mode: int) -> str:
    """What an entry of mode `mode` (from ``lstat``) is when it is not a folder or a regular file, else ``""``."""
    plain = stat.S_ISDIR(mode) or stat.S_ISREG(mode)
    return next((kind for test, kind in _KINDS if test(mode)), "" if plain else "is not a regular file")


def _check_opened(name: str, info: os.stat_result) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise PackageError(f"{name}: is not a regular file; packages hold regular files only")
    if info.st_nlink != 1:
        raise PackageError(
            f"{name}: has {info.st_nlink} hard links; package files must have exactly one "
            "(a hard link can bring a file from outside the package in)"
        )


def _read_all(fd: int, size: int) -> bytes:
    buffer = bytearray(size)
    view, done = memoryview(buffer), 0
    while done < size:
        n = os.readv(fd, [view[done:]])
        if n == 0:
            break
        done += n
    if done != size or os.read(fd, 1):
        raise PackageError(f"file changed size while it was read ({done} of {size} bytes)")
    return bytes(buffer)


@dataclass(frozen=True)
class _Reference:
    location: str
    file: str
    offset: int
    length: int


def _references(
    rel: str, blobs: Mapping[str, bytes], listed: Mapping[str, Mapping[str, Any]], refused: Mapping[str, str]
) -> list[_Reference]:
    """The external-data references of the ONNX model at `rel`, each checked; `PackageError` on the first bad one."""
    try:
        tensors = external_tensors(blobs[rel])
    except WireError as e:
        raise PackageError(f"{rel}: not a valid ONNX model: {printable(str(e))}") from e
    folder = posixpath.dirname(rel)
    refs = []
    for tensor in tensors:
        what = f"{rel}: tensor {printable(repr(tensor.name))}"
        info: dict[str, str] = {}
        for key, value in tensor.entries:
            if key not in _EXTERNAL_KEYS or key in info:
                known = ", ".join(sorted(_EXTERNAL_KEYS))
                raise PackageError(
                    f"{what}: external data key {printable(repr(key))} is unknown or repeated (known: {known})"
                )
            info[key] = value
        if tensor.data_location != EXTERNAL or "location" not in info:
            raise PackageError(f"{what}: external data needs data_location EXTERNAL and a location")
        location = info["location"]
        shown = printable(repr(location))
        file = _inside(what, folder, location)
        for prefix in _prefixes(file):
            if prefix in refused:
                raise PackageError(f"{what}: external data {shown} escapes the package: {prefix} {refused[prefix]}")
        if file not in listed:
            raise PackageError(f"{what}: external data {shown} is not a file the manifest lists")
        size = len(blobs[file]) if file in blobs else int(listed[file]["size"])
        offset = _number(what, "offset", info.get("offset", "0"))
        length = _number(what, "length", info["length"]) if "length" in info else size - min(offset, size)
        if offset + length > size:
            raise PackageError(
                f"{what}: external data offset {offset} + length {length} lies past the end of {file} ({size} bytes)"
            )
        refs.append(_Reference(location, file, offset, length))
    return refs


def _inside(what: str, folder: str, location: str) -> str:
    parts = location.split("/")
    if (
        not location
        or "\\" in location
        or "\x00" in location
        or location.startswith("/")
        or re.match(r"^[A-Za-z]:", location)
        or any(p in ("", ".", "..") for p in parts)
    ):
        raise PackageError(
            f"{what}: external data {printable(repr(location))} escapes the package (a location must be a "
            "relative, normalised path inside the model's folder)"
        )
    return posixpath.join(folder, location) if folder else location


def _prefixes(rel: str) -> list[str]:
    parts = rel.split("/")
    return ["/".join(parts[: i + 1]) for i in range(len(parts))]


def _number(what: str, key: str, value: str) -> int:
    if not _NUMBER.match(value):
        raise PackageError(f"{what}: external data {key} {printable(repr(value))} is not a non-negative integer")
    return int(value)


def contained_onnx(
    rel: str, blobs: Mapping[str, bytes], listed: Mapping[str, Mapping[str, Any]]
) -> tuple[bytes, dict[str, bytes]]:
    """The ONNX model at `rel` for ONNX Runtime, from the bytes already read and hashed.

    Returns:
        The model's bytes, and each external-data file it refers to, by the location the model
        names, as the bytes that were hashed: ONNX Runtime is given them in memory
        (``add_external_initializers_from_files_in_memory``) and no path to open.
    """
    refs = _references(rel, blobs, listed, {})
    missing = sorted({r.file for r in refs if r.file not in blobs})
    if missing:
        raise PackageError(f"{rel}: external data file {missing[0]} was not read with the package")
    return blobs[rel], {r.location: blobs[r.file] for r in refs}
