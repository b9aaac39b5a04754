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
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from toolchain.core.errors import PackageError
from toolchain.core.parity import Tolerance
from toolchain.core.signature import Signature, TensorSig
from toolchain.core.text import printable
from toolchain.package.arrays import parse_npy
from toolchain.package.contain import Problem, contained_onnx, read_contents, read_file
from toolchain.package.schema import MANIFEST, SCHEMA_VERSION, SIGNATURE_FILE, safe_rel

__all__ = [
    "MANIFEST",
    "SCHEMA_VERSION",
    "SIGNATURE_FILE",
    "Package",
    "Problem",
    "check_integrity",
    "load_array",
    "open_package",
    "read_package",
]

_MAX_ARRAY_BYTES = 16 << 30


@dataclass(frozen=True)
class Package:
    """A package whose manifest was validated and whose files were read and hashed (see `open_package`).

    `blobs` holds the bytes of every listed file as they were hashed: what is parsed and loaded.
    """

    path: Path
    manifest: Mapping[str, Any]
    blobs: Mapping[str, bytes] = field(default_factory=dict, repr=False, compare=False)

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
            raise PackageError(
                f"{self.path / MANIFEST}: refers to {printable(repr(rel))}, which its file list does not hold"
            )
        return self.path / _safe_rel(rel)

    def read(self, rel: str) -> bytes:
        """The bytes of the listed file `rel`, exactly as they were hashed when the package was opened."""
        self.file(rel)
        if rel not in self.blobs:
            raise PackageError(f"{self.path}: {rel} was not read with the package; open it with open_package()")
        return self.blobs[rel]

    def onnx_model(self, rel: str) -> tuple[bytes, dict[str, bytes]]:
        """The ONNX artifact `rel` for a runtime, external data checked and resolved from the hashed bytes."""
        self.read(rel)
        listed = {str(e["path"]): e for e in self.manifest["files"]}
        return contained_onnx(rel, self.blobs, listed)

    def array(self, rel: str, *, tensor: TensorSig | None = None, sizes: Mapping[str, int] | None = None) -> np.ndarray:
        """The golden ``.npy`` array `rel`, its header checked (against `tensor` when given) before use."""
        return parse_npy(self.read(rel), where=rel, tensor=tensor, sizes=sizes)


def read_package(path: Path) -> tuple[Package | None, list[Problem]]:
    """Read a package once: the manifest (strict schema), then every file, without following links.

    Returns the package (None when a problem was found) and every problem: an invalid manifest,
    missing, unlisted, linked or non-regular entries, wrong sizes or hashes, ONNX external data that
    does not stay inside the package.
    """
    path = Path(path)
    contents = read_contents(path)
    if contents.problems or contents.manifest is None:
        return None, contents.problems
    return Package(path, contents.manifest, contents.blobs), []


def open_package(path: Path) -> Package:
    """Read a package after checking every file's hash and the exact file set."""
    path = Path(path)
    package, problems = read_package(path)
    if package is None:
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        raise PackageError(f"{path}: {problems[0]}{more}")
    return package


def check_integrity(path: Path) -> list[Problem]:
    """Every problem with the package's files: missing, unlisted, wrong size or hash, links, external data."""
    return read_package(path)[1]


def load_array(path: Path) -> np.ndarray:
    """Load a ``.npy`` file without ever unpickling, its header checked before anything is allocated."""
    path = Path(path)
    try:
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise PackageError(f"{path}: not a readable .npy array: {e.strerror}") from e
    try:
        data = read_file(folder, path.name, limit=_MAX_ARRAY_BYTES)
    except OSError as e:
        raise PackageError(f"{path}: not a readable .npy array: {e.strerror}") from e
    finally:
        os.close(folder)
    return parse_npy(data, where=str(path))


def _field(manifest: Mapping[str, Any], key: str, kind: type) -> Any:
    value = manifest.get(key)
    if not isinstance(value, kind):
        raise PackageError(f"{MANIFEST}: field {key!r} must be a {kind.__name__}, got {type(value).__name__}")
    return value


def _safe_rel(rel: str) -> PurePosixPath:
    return PurePosixPath(safe_rel(rel))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
