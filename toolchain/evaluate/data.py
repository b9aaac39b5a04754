"""The user's labelled data, read as hostile input: ``.npz`` / ``.npy`` files checked against the signature.

Accepted: ``--data`` a ``.npz`` with one array per model input (named as the inputs), or a ``.npy``
for a model with one input; ``--labels`` (and ``--groups``) a ``.npy``, a ``.npz`` holding one array
(or one named ``labels`` / ``groups``), or the name of an array in the ``--data`` ``.npz``. Nothing is
unpickled; every array's header is checked before its bytes are read (`toolchain.package.arrays`),
and every problem is an `EvaluationError` naming the file and the field.
"""

from __future__ import annotations

import hashlib
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolchain.core.errors import EvaluationError, FeedError, PackageError
from toolchain.core.signature import Signature
from toolchain.evaluate.metrics import Metric
from toolchain.package.arrays import parse_npy

__all__ = ["MAX_DATA_BYTES", "Dataset", "check_labels", "read_dataset"]

MAX_DATA_BYTES = 4 << 30
"""Largest data file, and largest array inside a ``.npz``, that `evaluate` reads (it holds them in memory)."""
_MAX_MEMBERS = 4096


@dataclass(frozen=True)
class Dataset:
    """Inputs cast to the signature's dtypes, the labels, the query groups, and a hash of the files read."""

    inputs: dict[str, np.ndarray]
    labels: np.ndarray
    groups: np.ndarray | None
    sha256: str


def read_dataset(data: Path, labels: str, *, signature: Signature, groups: str = "") -> Dataset:
    """Read `data` (inputs) and `labels` (and `groups`), each a file or an array name in the data ``.npz``.

    Raises:
        EvaluationError: a file is missing, too large, not ``.npz``/``.npy``, or an array is not what the
            signature says (names, dtypes, ranks, fixed sizes, sizes shared by a symbolic dim) or not finite.
    """
    data = Path(data)
    digest = hashlib.sha256()
    arrays = _read_arrays(data, digest)
    names = signature.input_names
    if data.suffix == ".npy":
        if len(names) != 1:
            raise EvaluationError(f"{data}: a .npy holds one array but the model has inputs {names}; use a .npz")
        arrays = {names[0]: arrays[""]}
    missing = [n for n in names if n not in arrays]
    if missing:
        raise EvaluationError(f"{data}: no array for input(s) {missing}; the .npz holds {sorted(arrays)}")
    inputs = {sig.name: _cast(arrays[sig.name], sig.dtype, f"{data}: input {sig.name!r}") for sig in signature.inputs}
    try:
        signature.check_feeds(inputs)
    except FeedError as e:
        raise EvaluationError(f"{data}: {e}") from None
    label_array = _side_array(labels, "labels", data, arrays, digest)
    group_array = _side_array(groups, "groups", data, arrays, digest) if groups else None
    return Dataset(inputs, label_array, group_array, digest.hexdigest())


def check_labels(
    metric: Metric, scores: np.ndarray, labels: np.ndarray, groups: np.ndarray | None, *, where: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """`labels` (and `groups`) checked against the model's `scores` for `metric`; returned ready to use.

    Raises:
        EvaluationError: count, shape, dtype or values do not fit the metric (named with `where`).
    """
    n = len(scores) if scores.ndim else 1
    if labels.ndim == 0 or len(labels) != n:
        raise EvaluationError(f"{where}: {_describe(labels)} labels for {n} examples; give one label per example")
    if groups is not None and (groups.shape != (n,) or groups.dtype.kind not in "iu"):
        raise EvaluationError(f"{where}: groups must be {n} integer query ids, found {_describe(groups)}")
    if metric.kind == "cosine":
        if labels.dtype.kind != "f" or labels.reshape(n, -1).shape != scores.reshape(n, -1).shape:
            raise EvaluationError(
                f"{where}: cosine compares with reference embeddings of shape {list(scores.shape)} (float), "
                f"found {_describe(labels)}"
            )
        _finite(labels, where)
        return labels, groups
    if metric.kind == "top":
        classes = scores.shape[-1] if scores.ndim >= 2 else 0
        if labels.dtype.kind not in "iu" or labels.shape != scores.shape[:-1]:
            raise EvaluationError(
                f"{where}: {metric.name} needs integer class ids of shape {list(scores.shape[:-1])} "
                f"(the output without its class axis), found {_describe(labels)}"
            )
        if classes < metric.k:
            raise EvaluationError(f"{where}: {metric.name} needs at least {metric.k} classes; the output has {classes}")
        bad = (labels < 0) | (labels >= classes)
        if bad.any():
            raise EvaluationError(
                f"{where}: class ids must lie in [0, {classes}), found {labels[bad].reshape(-1)[0]} "
                f"({int(bad.sum())} out of range)"
            )
        return labels, groups
    per_example = labels.reshape(n, -1) if labels.size == n else None
    if per_example is None or scores.size != n:
        raise EvaluationError(
            f"{where}: {metric.name} needs one score and one label per example; the output is "
            f"{list(scores.shape)}, the labels {_describe(labels)}"
        )
    if labels.dtype.kind not in "biuf":
        raise EvaluationError(f"{where}: labels must be numbers, found {_describe(labels)}")
    _finite(labels, where)
    if metric.kind == "auc" and not np.isin(labels, (0, 1)).all():
        raise EvaluationError(f"{where}: AUC needs labels 0 or 1, found values {np.unique(labels)[:5].tolist()}")
    if metric.kind == "ndcg" and (labels < 0).any():
        raise EvaluationError(f"{where}: NDCG needs relevance labels >= 0, found {labels.min()}")
    return labels.reshape(n), groups


def _describe(array: np.ndarray) -> str:
    return f"{array.dtype}{list(array.shape)}"


def _finite(array: np.ndarray, where: str) -> None:
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise EvaluationError(f"{where}: {int((~np.isfinite(array)).sum())} non-finite value(s) (NaN or Inf)")


def _cast(array: np.ndarray, dtype: str, where: str) -> np.ndarray:
    """`array` as `dtype` when no value changes meaning (float to float, int to a wide enough int)."""
    want = np.dtype(dtype)
    if array.dtype == want:
        cast = array
    elif array.dtype.kind == "f" and want.kind == "f":
        cast = array.astype(want)
    elif array.dtype.kind in "iu" and want.kind in "iu" and array.size:
        info = np.iinfo(want)
        if array.min() < info.min or array.max() > info.max:
            raise EvaluationError(f"{where}: values [{array.min()}, {array.max()}] do not fit the model's {dtype}")
        cast = array.astype(want)
    elif array.dtype.kind in "iu" and want.kind in "iu":
        cast = array.astype(want)
    else:
        raise EvaluationError(f"{where}: dtype {array.dtype} where the model takes {dtype}; convert the array first")
    _finite(cast, where)
    return cast


def _side_array(
    given: str, role: str, data: Path, arrays: Mapping[str, np.ndarray], digest: hashlib._Hash
) -> np.ndarray:
    """Labels or groups: a file (``.npy``, or a ``.npz`` of one array or one named `role`) or a key in `data`."""
    path = Path(given)
    if path.suffix in (".npy", ".npz") and (path.exists() or given not in arrays):
        found = _read_arrays(path, digest)
        if len(found) == 1:
            return next(iter(found.values()))
        if role in found:
            return found[role]
        raise EvaluationError(f"{path}: holds {sorted(found)}; a {role} .npz holds one array, or one named {role!r}")
    if given in arrays:
        return arrays[given]
    where = f"arrays in {data}: {sorted(arrays)}" if data.suffix == ".npz" else f"{data} is a .npy"
    raise EvaluationError(f"--{role} {given!r} is neither a .npy/.npz file nor an array of the data ({where})")


def _read_arrays(path: Path, digest: hashlib._Hash) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` by name, or a ``.npy``'s one array under ''; never unpickled."""
    if path.suffix not in (".npz", ".npy"):
        raise EvaluationError(f"{path}: expected a .npz (one array per input) or a .npy file")
    try:
        size = path.stat().st_size
        if size > MAX_DATA_BYTES:
            raise EvaluationError(f"{path}: {size} bytes, more than the {MAX_DATA_BYTES} evaluate reads")
        raw = path.read_bytes()
    except OSError as e:
        raise EvaluationError(f"{path}: cannot read the data file: {e.strerror}") from None
    digest.update(hashlib.sha256(raw).digest())
    try:
        if path.suffix == ".npy":
            return {"": parse_npy(raw, where=str(path))}
        return _npz_members(path)
    except PackageError as e:
        raise EvaluationError(str(e)) from None


def _npz_members(path: Path) -> dict[str, np.ndarray]:
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
            if len(members) > _MAX_MEMBERS:
                raise EvaluationError(f"{path}: {len(members)} arrays, more than the {_MAX_MEMBERS} evaluate reads")
            unpacked = sum(info.file_size for info in members)
            if unpacked > MAX_DATA_BYTES:
                raise EvaluationError(
                    f"{path}: its arrays would unpack to {unpacked} bytes, more than the {MAX_DATA_BYTES} "
                    "evaluate reads"
                )
            arrays = {}
            for info in members:
                name = info.filename.removesuffix(".npy")
                if not info.filename.endswith(".npy") or "/" in name or name in arrays:
                    raise EvaluationError(f"{path}: member {info.filename!r} is not an array that np.savez writes")
                with archive.open(info) as member:
                    # NOTE: read at most the declared size (+1 to see a lie): a zip bomb stops there.
                    data = member.read(info.file_size + 1)
                arrays[name] = parse_npy(data, where=f"{path}: array {name!r}")
            return arrays
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, NotImplementedError) as e:
        raise EvaluationError(f"{path}: not a readable .npz archive: {e}") from None
