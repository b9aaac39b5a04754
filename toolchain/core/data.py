"""The user's real data as sample sets: batches from an iterable or DataLoader, checked against the spec."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.core.errors import SpecError
from toolchain.core.spec import ModelSpec

__all__ = ["MAX_DATA_BATCHES", "checked_data", "load_data", "with_data"]

MAX_DATA_BATCHES = 8
"""Real batches taken from the start of a user's data: each is replayed on every artifact and shipped."""


def checked_data(spec: ModelSpec, batches: Sequence[Any]) -> tuple[dict[str, np.ndarray], ...]:
    """`batches` as feeds, each checked against the declared inputs; a misfit is a `SpecError` naming it.

    A batch is a mapping of input name to array or tensor, a tuple or list in ``forward``'s order, or
    one array or tensor for a model with one input. Checked: the input names, the dtype kind, the
    fixed dims and the range of every symbolic dim.
    """
    checked = []
    for index, batch in enumerate(batches):
        feeds = _feeds(spec, batch, index)
        _sizes(spec, feeds, index)
        checked.append(feeds)
    return tuple(checked)


def with_data(spec: ModelSpec, batches: Sequence[Any]) -> ModelSpec:
    """`spec` with `batches` (the first `MAX_DATA_BATCHES`) as its real data, replacing any it had."""
    return replace(spec, data=checked_data(spec, list(batches)[:MAX_DATA_BATCHES]))


def load_data(path: Path, *, limit: int = MAX_DATA_BATCHES) -> list[dict[str, np.ndarray]]:
    """Batches from ``FILE.npz`` (one batch: an array per input name) or a folder of them.

    From a folder, the first `limit` files by name; the rest are never read.
    """
    path = Path(path)
    files = sorted(path.glob("*.npz"))[:limit] if path.is_dir() else [path]
    if not files:
        raise SpecError(f"--data {path}: the folder holds no .npz files (one batch each, an array per input)")
    batches = []
    for file in files:
        try:
            with np.load(file, allow_pickle=False) as npz:
                batches.append({key: npz[key] for key in npz.files})
        except (OSError, ValueError) as e:
            raise SpecError(f"--data {file}: not a readable .npz file of arrays: {e}") from e
    return batches


def _feeds(spec: ModelSpec, batch: Any, index: int) -> dict[str, np.ndarray]:
    names = list(spec.inputs)
    if isinstance(batch, Mapping):
        missing, extra = sorted(set(names) - set(batch)), sorted(set(batch) - set(names))
        if missing or extra:
            raise SpecError(f"data batch {index}: inputs {missing or ''} missing, {extra or ''} unknown; needs {names}")
        values = [batch[n] for n in names]
    elif isinstance(batch, tuple | list):
        if len(batch) != len(names):
            raise SpecError(f"data batch {index} holds {len(batch)} values; the model takes {len(names)}: {names}")
        values = list(batch)
    else:
        if len(names) != 1:
            raise SpecError(f"data batch {index} is one array; the model takes {len(names)} inputs: {names}")
        values = [batch]
    feeds = {}
    for name, value in zip(names, values, strict=True):
        array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        declared = spec.inputs[name]
        want = np.dtype(declared.dtype)
        if array.dtype.kind != want.kind and not (want.kind == "b" and array.dtype.kind in "iu"):
            raise SpecError(f"data batch {index}: input {name!r} is {array.dtype}, declared {declared.dtype}")
        if array.ndim != len(declared.shape):
            raise SpecError(f"data batch {index}: input {name!r} has shape {array.shape}, declared {declared.shape}")
        feeds[name] = np.ascontiguousarray(array.astype(want, copy=False))
    return feeds


def _sizes(spec: ModelSpec, feeds: Mapping[str, np.ndarray], index: int) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for name, declared in spec.inputs.items():
        for axis, (dim, size) in enumerate(zip(declared.shape, feeds[name].shape, strict=True)):
            if isinstance(dim, int):
                if dim != size:
                    raise SpecError(f"data batch {index}: input {name!r} axis {axis} is {size}, declared {dim}")
                continue
            if sizes.setdefault(dim, size) != size:
                raise SpecError(f"data batch {index}: dim {dim!r} is {size} in {name!r} but {sizes[dim]} elsewhere")
            bound = spec.dim(dim)
            if size < bound.min or (bound.max and size > bound.max):
                raise SpecError(
                    f"data batch {index}: input {name!r} axis {axis} ({dim}) is {size}, outside the declared "
                    f"range [{bound.min}, {bound.max or 'unbounded'}]; widen Dim({dim!r}) or trim the batch"
                )
    return sizes
