"""Seeded input sets generated from a spec: the export size, other sizes of every symbolic dim, value draws."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolchain.core.errors import SpecError
from toolchain.core.spec import Input, ModelSpec

__all__ = ["VALUE_DRAWS", "SampleSet", "generate_samples", "make_feed"]

VALUE_DRAWS = ("wide", "shifted")
"""Value draws at the export size, beside the plain one: ``values-wide`` (floats at 3x the scale with
exact zeros, ids at both ends of their range, padding masks of full rows and the fewest valid
positions, 0/1 masks of runs from the start) and ``values-shifted`` (floats offset to mostly positive at
half the scale, ids crowded low with the padding id, padding masks of mixed lengths, 0/1 masks of runs
up to the end). A branch on a value (``if
h.mean() > 0.3``) that every plain draw takes the same way is taken the other way by one of them."""


@dataclass(frozen=True)
class SampleSet:
    """One named set of inputs, with the size each symbolic dim takes in it."""

    name: str
    sizes: Mapping[str, int]
    feeds: Mapping[str, np.ndarray]


def generate_samples(spec: ModelSpec, *, seed: int = 0) -> list[SampleSet]:
    """Input sets for `spec`: ``export`` at every dim's example size, one set per other size, value draws.

    Each size set moves a single symbolic dim (``batch-1``, ``batch-9``) and keeps the others at their
    export size, so a failure points at one dim. Then the `VALUE_DRAWS` at the export size, so a failure
    there points at values, not sizes. Values respect each input's domain. The spec's own named sample
    sets come last, then the user's real data (``data-0``, ...).
    """
    base = {sym: spec.dim(sym).example for sym in spec.symbols()}
    plans: list[tuple[str, dict[str, int], str]] = [("export", base, "plain")]
    for sym in spec.symbols():
        plans.extend((f"{sym}-{size}", {**base, sym: size}, "plain") for size in spec.dim(sym).sizes()[1:])
    plans.extend((f"values-{style}", base, style) for style in VALUE_DRAWS)
    sets = []
    for name, sizes, style in plans:
        # NOTE: seeded by the set's name, so adding or dropping a size leaves the other sets' values alone.
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        feeds = {key: make_feed(inp, sizes, rng, style=style) for key, inp in spec.inputs.items()}
        sets.append(SampleSet(name=name, sizes=sizes, feeds=feeds))
    generated = {s.name for s in sets}
    for name, given in spec.samples.items():
        if name in generated:
            raise SpecError(f"sample set name {name!r} of {spec.name} clashes with a generated one; rename it")
        sets.append(SampleSet(name=name, sizes=_bind_sizes(spec, name, given), feeds=dict(given)))
    for index, batch in enumerate(spec.data):
        name = f"data-{index}"
        sets.append(SampleSet(name=name, sizes=_bind_sizes(spec, name, batch), feeds=dict(batch)))
    return sets


def _bind_sizes(spec: ModelSpec, name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for key, inp in spec.inputs.items():
        for dim, size in zip(inp.shape, feeds[key].shape, strict=True):
            if isinstance(dim, str) and sizes.setdefault(dim, size) != size:
                raise SpecError(f"sample set {name!r}: dim {dim!r} is {size} in {key!r} but {sizes[dim]} elsewhere")
    return sizes


def make_feed(inp: Input, sizes: Mapping[str, int], rng: np.random.Generator, *, style: str = "plain") -> np.ndarray:
    """One array for `inp` with symbolic dims resolved from `sizes`, drawn in `style` (see `VALUE_DRAWS`)."""
    shape = tuple(sizes[d] if isinstance(d, str) else d for d in inp.shape)
    dtype = np.dtype(inp.dtype)
    if inp.domain == "normal":
        return _normal(shape, rng, style).astype(dtype)
    if inp.domain == "uniform":
        return _uniform(inp, shape, dtype, rng, style)
    if inp.domain == "ids":
        return _ids(inp, shape, rng, style).astype(dtype)
    if inp.domain == "padding_mask":
        return _padding_mask(inp, shape, rng, style).astype(dtype)
    if inp.domain == "lengths":
        return _lengths(inp, shape, sizes[inp.over], rng, style).astype(dtype)
    if inp.domain == "offsets":
        starts = np.sort(rng.integers(0, sizes[inp.over] + 1, shape[0] - 1))
        return np.concatenate([[0], starts]).astype(dtype)
    return _mask(shape, rng, style).astype(dtype)


def _normal(shape: tuple[int, ...], rng: np.random.Generator, style: str) -> np.ndarray:
    values = rng.standard_normal(shape)
    if style == "wide":
        values = values * 3.0
    elif style == "shifted":
        values = values * 0.5 + 1.0
    if style != "plain":
        values[rng.random(shape) < 0.125] = 0.0  # exact zeros: relu/abs/sign kinks, divisions, masks by value
    return values


def _uniform(
    inp: Input, shape: tuple[int, ...], dtype: np.dtype[Any], rng: np.random.Generator, style: str
) -> np.ndarray:
    low, high = inp.low, inp.high
    if style == "wide":  # both ends of the range, half of the values
        values = np.where(rng.random(shape) < 0.5, rng.choice([low, high], shape), rng.uniform(low, high, shape))
    elif style == "shifted":  # crowded into the lowest tenth, with exact zeros when the range holds 0
        values = rng.uniform(low, low + (high - low) / 10, shape)
        if low <= 0 < high:
            values[rng.random(shape) < 0.125] = 0.0
    else:
        values = rng.uniform(low, high, shape)
    values = values.astype(dtype)
    # NOTE: rounding to a narrow float (or the drawn end itself) can reach `high`; keep the half-open range.
    below = np.nextafter(dtype.type(high), dtype.type(low))
    return np.where(values >= dtype.type(high), below, values).astype(dtype)


def _ids(inp: Input, shape: tuple[int, ...], rng: np.random.Generator, style: str) -> np.ndarray:
    low, high = int(inp.low), int(inp.high)
    ids = rng.integers(low, high, shape)
    if style == "wide":  # the first and last id of the range, a quarter of the positions each
        ids = np.where(rng.random(shape) < 0.25, low, np.where(rng.random(shape) < 1 / 3, high - 1, ids))
    elif style == "shifted":  # a few low ids repeated (collisions in bags and lookups)
        ids = rng.integers(low, min(high, low + 4), shape)
    if style != "plain" and inp.pad is not None:
        ids = np.where(rng.random(shape) < 0.25, inp.pad, ids)
    return ids


def _padding_mask(inp: Input, shape: tuple[int, ...], rng: np.random.Generator, style: str) -> np.ndarray:
    """Rows of valid positions then padding (or padding first, ``side="start"``), never below `min_valid`."""
    seq = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    fewest = min(inp.min_valid, seq)
    lengths = rng.integers(fewest, seq + 1, rows)
    if style == "wide":  # full rows and rows with the fewest valid positions, alternating
        lengths = np.where(np.arange(rows) % 2 == 0, seq, fewest)
    elif style == "shifted" and rows:  # mixed lengths, with one full row and one as padded as allowed
        lengths[0], lengths[-1] = seq, fewest
    positions = np.arange(seq) if inp.side == "end" else np.arange(seq)[::-1]
    valid = positions[None, :] < lengths[:, None]
    pad = inp.pad or 0
    return np.where(valid, 1 - pad, pad).reshape(shape)


def _lengths(inp: Input, shape: tuple[int, ...], size: int, rng: np.random.Generator, style: str) -> np.ndarray:
    """Lengths in ``[min_valid, size]``: value draws alternate full and shortest rows, or mix them."""
    fewest = min(inp.min_valid, size)
    lengths = rng.integers(fewest, size + 1, shape)
    flat = lengths.reshape(-1)
    if style == "wide":
        flat[:] = np.where(np.arange(flat.size) % 2 == 0, size, fewest)
    elif style == "shifted" and flat.size:
        flat[0], flat[-1] = size, fewest
    return lengths


def _mask(shape: tuple[int, ...], rng: np.random.Generator, style: str) -> np.ndarray:
    """Arbitrary 0/1 values; value draws add the structured batches real masks come in along the last axis.

    ``wide``: every row a run of ones from the start, the first row all ones; ``shifted``: every row a
    run of ones up to the end, each row holding both values. A tokenizer pads a whole batch on one side,
    and eager fast paths check exactly that of the whole batch (``nn.TransformerEncoder`` takes its
    nested-tensor path only when every row of ``src_key_padding_mask`` is padded at the end).
    """
    bits = rng.integers(0, 2, shape)
    if style == "plain" or not shape:
        return bits
    seq = shape[-1]
    rows = int(np.prod(shape[:-1], dtype=np.int64))
    if style == "wide":
        runs = rng.integers(1, seq + 1, rows)
        runs[:1] = seq
        flat = np.arange(seq)[None, :] < runs[:, None]
    else:
        runs = rng.integers(1, max(seq, 2), rows)
        flat = np.arange(seq)[None, :] >= seq - runs[:, None]
    return flat.reshape(shape)
