"""The manifest's strict schema (version 1): parsed and validated before any other use.

A manifest is untrusted input. `parse_manifest` refuses what is not UTF-8 JSON, duplicate keys,
nesting deeper than `MAX_DEPTH`, an unknown ``schema_version`` and any field of the wrong type, missing
or unknown, each as one `PackageError` line naming the JSON path
(``manifest.json: artifacts[0].opset: expected an integer, found "x"``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic.functional_validators import AfterValidator, PlainValidator
from pydantic_core import PydanticCustomError

from toolchain.core.errors import PackageError
from toolchain.core.text import printable

__all__ = [
    "MANIFEST",
    "MAX_DEPTH",
    "MAX_MANIFEST_BYTES",
    "SCHEMA_VERSION",
    "SIGNATURE_FILE",
    "Manifest",
    "parse_manifest",
    "safe_rel",
]

SCHEMA_VERSION = 1
MANIFEST = "manifest.json"
SIGNATURE_FILE = "model.sig"
"""The one unlisted file a package may hold: its signature (`toolchain.package.signing`), at the root."""
MAX_DEPTH = 32
"""Deepest nesting of objects and lists accepted; the pipeline writes at most 6."""
MAX_MANIFEST_BYTES = 16 << 20
"""Largest manifest read; the zoo's are under 200 KB."""
DTYPES = frozenset(
    {
        *("bool", "float16", "bfloat16", "float32", "float64", "complex64", "complex128"),
        *("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"),
    }
)
"""Tensor dtypes a signature may name (never ``object``)."""


def safe_rel(rel: str) -> str:
    """`rel` if it is a normalised relative POSIX path without control characters; else `PackageError`."""
    if (
        not rel
        or len(rel) > 1024
        or "\\" in rel
        or rel.startswith("/")
        or re.match(r"^[A-Za-z]:", rel)
        or printable(rel) != rel
        or any(part in ("..", ".", "") for part in rel.split("/"))
    ):
        raise PackageError(f"path {printable(repr(rel))} must be relative, normalised and stay inside the package")
    return rel


def _rel_path(value: Any) -> str:
    if not isinstance(value, str):
        raise PydanticCustomError("rel_path", "expected a relative path (a string)")
    try:
        return safe_rel(value)
    except PackageError as e:
        raise PydanticCustomError("rel_path", "{why}", {"why": str(e)}) from None


def _dim(value: Any) -> int | str:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise PydanticCustomError("dim", "expected an integer or a symbol name")
    if isinstance(value, int) and value < 0:
        raise PydanticCustomError("dim", "expected a size >= 0")
    return value


def _dtype(value: str) -> str:
    if value not in DTYPES:
        raise PydanticCustomError("dtype", "expected one of {known}", {"known": ", ".join(sorted(DTYPES))})
    return value


def _finite(value: float) -> float:
    if not math.isfinite(value):
        raise PydanticCustomError("finite_number", "expected a finite number")
    return value


RelPath = Annotated[str, PlainValidator(_rel_path)]
DimSize = Annotated[int | str, PlainValidator(_dim)]
Dtype = Annotated[str, AfterValidator(_dtype)]
Finite = Annotated[float, AfterValidator(_finite)]
Count = Annotated[int, Field(ge=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class _FileEntry(_Strict):
    path: RelPath
    size: Count
    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


class _TensorSig(_Strict):
    name: str
    dtype: Dtype
    shape: list[DimSize]


class _Signature(_Strict):
    inputs: list[_TensorSig]
    outputs: list[_TensorSig]
    verified_sizes: dict[str, list[Count]] = {}


class _Bound(_Strict):
    atol: Finite
    rtol: Finite


class _Padded(_Strict):
    input: str
    pad: int


class _Tolerance(_Bound):
    per_output: dict[str, _Bound] = {}
    ignore_padded: dict[str, _Padded] = {}


class _TaskCheck(_Strict):
    kind: str
    output: str
    threshold: Finite


class _Finding(_Strict):
    kind: str
    message: str
    source: str


class _Artifact(_Strict):
    format: str
    path: RelPath
    files: list[RelPath]
    exporter: str
    opset: Count
    variant: str
    export_seconds: float = 0.0
    findings: list[_Finding] = []
    passes: list[str] = []
    keep: list[str] = []
    tolerance: _Tolerance | None = None
    checks: list[_TaskCheck] = []


class _Rejected(_Strict):
    exporter: str
    reason: str


class _Parity(_Strict):
    stage: str
    passed: bool
    sample_sets: list[str]
    worst: dict[str, dict[str, float]] = {}
    gated_on: str = ""


class _Sample(_Strict):
    name: str
    sizes: dict[str, Count] = {}
    inputs: dict[str, RelPath]
    expected: dict[str, RelPath]


class _Dim(_Strict):
    example: Count
    min: Count
    max: Count


class _Portable(_Strict):
    artifact: RelPath
    provider: str
    fixed_dims: dict[str, Count] = {}
    p50_ms: float


class _Recommendation(_Strict):
    artifact: RelPath
    runtime: str
    provider: str
    fixed_dims: dict[str, Count] = {}
    p50_ms: float
    ratio_vs_eager: float
    sizes: dict[str, Count] = {}
    portable: _Portable | None = None
    host: dict[str, str | int | None] = {}


class Manifest(_Strict):
    """``manifest.json`` as the pipeline writes it (schema version 1); every field typed, none unknown."""

    schema_version: int
    name: str
    version: str
    description: str = ""
    source: str = ""
    tags: list[str] = []
    created: str = ""
    versions: dict[str, str] = {}
    signature: _Signature
    dims: dict[str, _Dim] = {}
    artifacts: list[_Artifact]
    rejected: list[_Rejected] = []
    tolerance: _Tolerance
    parity: dict[str, _Parity] = {}
    samples: list[_Sample]
    recommended: dict[str, _Recommendation] = {}
    files: list[_FileEntry]


class _Duplicate(ValueError):
    pass


def parse_manifest(data: bytes) -> dict[str, Any]:
    """The manifest in `data` as plain JSON values, after every check of the schema.

    Raises:
        PackageError: one line naming the JSON path of the first problem (and how many more there are).
    """
    if len(data) > MAX_MANIFEST_BYTES:
        raise PackageError(f"{MANIFEST}: {len(data)} bytes, more than the {MAX_MANIFEST_BYTES} a manifest may hold")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise PackageError(f"{MANIFEST}: not UTF-8 text (byte {e.start}); the file is damaged or not a manifest") from e
    depth = _depth(text)
    if depth > MAX_DEPTH:
        raise PackageError(f"{MANIFEST}: nested {depth} levels deep, more than the {MAX_DEPTH} allowed")
    try:
        value = json.loads(text, object_pairs_hook=_no_duplicates)
    except _Duplicate as e:
        raise PackageError(f"{MANIFEST}: {e}; the meaning of the manifest would be ambiguous") from e
    except (ValueError, RecursionError) as e:
        raise PackageError(f"{MANIFEST}: not valid JSON: {printable(str(e))}") from e
    if not isinstance(value, dict):
        raise PackageError(f"{MANIFEST}: must hold a JSON object, found {_found(value)}")
    version = value.get("schema_version")
    if type(version) is not int or version != SCHEMA_VERSION:
        raise PackageError(
            f"{MANIFEST}: schema_version {_found(version)} is not supported (this toolchain reads "
            f"{SCHEMA_VERSION}); use a toolchain release that matches the package"
        )
    try:
        manifest = Manifest.model_validate(value)
    except ValidationError as e:
        errors = e.errors(include_url=False)
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        raise PackageError(f"{MANIFEST}: {_describe(errors[0])}{more}") from None
    _check_references(manifest)
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Duplicate(f"duplicate key {_found(key)} in one object")
        out[key] = value
    return out


_STRINGS = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')


def _depth(text: str) -> int:
    """Deepest nesting of ``[`` and ``{`` outside strings, counted without recursion."""
    deepest = level = 0
    for char in _STRINGS.sub("", text):
        if char in "[{":
            level += 1
            deepest = max(deepest, level)
        elif char in "]}":
            level -= 1
    return deepest


_EXPECTED = {
    "int_type": "expected an integer",
    "int_parsing": "expected an integer",
    "int_from_float": "expected an integer",
    "float_type": "expected a number",
    "float_parsing": "expected a number",
    "string_type": "expected a string",
    "bool_type": "expected true or false",
    "list_type": "expected a list",
    "dict_type": "expected an object",
    "model_type": "expected an object",
    "model_attributes_type": "expected an object",
    "extra_forbidden": "unknown field (not in schema version 1)",
    "greater_than_equal": "expected a number >= 0",
}


def _describe(error: Mapping[str, Any]) -> str:
    where = _json_path(error["loc"])
    if error["type"] == "missing":
        return f"{where}: missing (a required field)"
    expected = _EXPECTED.get(error["type"], error["msg"])
    return f"{where}: {printable(expected)}, found {_found(error['input'])}"


def _json_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", str(part)):
            out += f".{part}" if out else str(part)
        else:
            out += f"[{_found(str(part))}]"
    return out or "(top level)"


def _found(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    text = json.dumps(value) if isinstance(value, str | int | float | bool) or value is None else repr(value)
    return printable(text if len(text) <= 60 else text[:57] + "...")


def _check_references(manifest: Manifest) -> None:
    """Every path the manifest refers to is in its file list, which names each file once."""
    listed: set[str] = set()
    for i, entry in enumerate(manifest.files):
        if entry.path in listed or entry.path == MANIFEST:
            twice = f"{_found(entry.path)} is listed twice (or is the manifest)"
            raise PackageError(f"{MANIFEST}: files[{i}].path: {twice}")
        listed.add(entry.path)
    refs = [(f"artifacts[{i}].path", a.path) for i, a in enumerate(manifest.artifacts)]
    refs += [(f"artifacts[{i}].files[{j}]", f) for i, a in enumerate(manifest.artifacts) for j, f in enumerate(a.files)]
    for i, s in enumerate(manifest.samples):
        refs += [(f"samples[{i}].inputs[{_found(k)}]", p) for k, p in s.inputs.items()]
        refs += [(f"samples[{i}].expected[{_found(k)}]", p) for k, p in s.expected.items()]
    for where, rel in refs:
        if rel not in listed:
            raise PackageError(f"{MANIFEST}: {where}: {_found(rel)} is not in the manifest's file list")
    inputs = {t.name for t in manifest.signature.inputs}
    outputs = {t.name for t in manifest.signature.outputs}
    for i, s in enumerate(manifest.samples):
        for key, names, kind in (("inputs", inputs, "input"), ("expected", outputs, "output")):
            unknown = sorted(set(getattr(s, key)) - names)
            if unknown:
                raise PackageError(
                    f"{MANIFEST}: samples[{i}].{key}: {_found(unknown[0])} is not an {kind} of the signature"
                )
