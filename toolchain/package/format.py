"""The package folder on reading: manifest, integrity checks (writing is `toolchain.package.staging`).

Layout (format version 1)::

    <package>/manifest.json     schema_version, versions, signature, artifacts, tolerance, parity,
                                samples, files [{path, size, sha256}] (every file but the manifest)
    <package>/onnx/model.onnx
    <package>/samples/<set>/inputs/<name>.npy, samples/<set>/expected/<name>.npy
    <package>/report.json, report.md
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from toolchain.core.errors import PackageError
from toolchain.core.parity import Tolerance
from toolchain.core.signature import Signature

__all__ = [
    "MANIFEST",
    "SCHEMA_VERSION",
    "SIGNATURE_FILE",
    "Package",
    "Problem",
    "check_integrity",
    "load_array",
    "open_package",
]

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE_FILE = "model.sig"
"""The one unlisted file a package may hold: its signature (`toolchain.package.signing`), at the root."""
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Problem:
    """One integrity problem, naming the file it concerns."""

    file: str
    message: str

    def __str__(self) -> str:
        return f"{self.file}: {self.message}"


@dataclass(frozen=True)
class Package:
    """A package folder whose manifest was read (see `open_package`)."""

    path: Path
    manifest: Mapping[str, Any]

    @property
    def name(self) -> str:
        """Model name."""
        return str(self.manifest.get("name", "?"))

    @property
    def signature(self) -> Signature:
        """Inputs, outputs and verified sizes."""
        return Signature.from_dict(_field(self.manifest, "signature", dict))

    @property
    def tolerance(self) -> Tolerance:
        """Tolerance recorded at export."""
        return Tolerance.from_dict(_field(self.manifest, "tolerance", dict))

    @property
    def artifacts(self) -> list[Mapping[str, Any]]:
        """Artifact entries of the manifest."""
        return list(_field(self.manifest, "artifacts", list))

    @property
    def samples(self) -> list[Mapping[str, Any]]:
        """Golden sample-set entries of the manifest."""
        return list(_field(self.manifest, "samples", list))

    def file(self, rel: str) -> Path:
        """Absolute path of a file listed in the manifest; refuse anything unlisted."""
        listed = {e["path"] for e in self.manifest["files"]}
        if rel not in listed:
            raise PackageError(f"{self.path / MANIFEST}: refers to {rel!r}, which its file list does not hold")
        return self.path / _safe_rel(rel)


def open_package(path: Path) -> Package:
    """Read a package after checking every file's hash and the exact file set."""
    path = Path(path)
    problems = check_integrity(path)
    if problems:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise PackageError(f"{path}: {problems[0]}{more}")
    return Package(path, _read_manifest(path))


def check_integrity(path: Path) -> list[Problem]:
    """Every problem with the package's files: missing, unlisted, wrong size or hash, links."""
    path = Path(path)
    if not path.is_dir():
        return [Problem(str(path), "no such package folder")]
    try:
        manifest = _read_manifest(path)
    except PackageError as e:
        return [Problem(MANIFEST, str(e))]
    problems: list[Problem] = []
    listed: dict[str, Mapping[str, Any]] = {}
    for index, entry in enumerate(manifest["files"]):
        where = f"{MANIFEST} files[{index}]"
        if not isinstance(entry, Mapping) or not isinstance(entry.get("path"), str):
            problems.append(Problem(where, "entry must be an object with path, size and sha256"))
            continue
        try:
            rel = _safe_rel(entry["path"]).as_posix()
        except PackageError as e:
            problems.append(Problem(where, str(e)))
            continue
        if rel in listed or rel == MANIFEST:
            problems.append(Problem(rel, "listed twice (or the manifest lists itself)"))
        elif not isinstance(entry.get("size"), int) or not _SHA256.match(str(entry.get("sha256", ""))):
            problems.append(Problem(rel, f"{where} needs an integer size and a 64-hex sha256"))
        else:
            listed[rel] = entry
    present = set()
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        if p.is_symlink():
            problems.append(Problem(rel, "is a symbolic link; packages hold regular files only"))
        elif p.is_file() and rel not in (MANIFEST, SIGNATURE_FILE):
            present.add(rel)
    for rel in sorted(present - set(listed)):
        problems.append(Problem(rel, "is not listed in the manifest (unexpected file)"))
    for rel, entry in listed.items():
        if rel not in present:
            problems.append(Problem(rel, "is listed in the manifest but missing"))
            continue
        file = path / rel
        if file.stat().st_size != entry["size"]:
            problems.append(Problem(rel, f"size {file.stat().st_size} != recorded {entry['size']}"))
        elif _sha256(file) != entry["sha256"]:
            problems.append(Problem(rel, "sha256 does not match the manifest (file changed or corrupted)"))
    return problems


def load_array(path: Path) -> np.ndarray:
    """Load a ``.npy`` file without ever unpickling."""
    try:
        array: np.ndarray = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise PackageError(f"{path}: not a readable .npy array: {e}") from e
    return array


def _read_manifest(path: Path) -> dict[str, Any]:
    file = path / MANIFEST
    if not file.is_file() or file.is_symlink():
        raise PackageError(f"{file}: missing; is {path} a toolchain package?")
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise PackageError(f"{file}: not valid JSON: {e}") from e
    if not isinstance(data, dict):
        raise PackageError(f"{file}: must hold a JSON object")
    version = data.get("schema_version")
    if version != SCHEMA_VERSION:
        raise PackageError(
            f"{file}: schema_version {version!r} is not supported (this toolchain reads {SCHEMA_VERSION}); "
            "use a toolchain release that matches the package"
        )
    if not isinstance(data.get("files"), list):
        raise PackageError(f"{file}: field 'files' must be a list")
    return data


def _field(manifest: Mapping[str, Any], key: str, kind: type) -> Any:
    value = manifest.get(key)
    if not isinstance(value, kind):
        raise PackageError(f"{MANIFEST}: field {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _safe_rel(rel: str) -> PurePosixPath:
    pure = PurePosixPath(rel)
    if not rel or "\\" in rel or pure.is_absolute() or any(part in ("..", ".", "") for part in rel.split("/")):
        raise PackageError(f"path {rel!r} must be relative, normalised and stay inside the package")
    return pure


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
