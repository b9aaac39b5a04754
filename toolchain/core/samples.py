"""Seeded input sets generated from a spec: the export size, then other sizes of every symbolic dim."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from toolchain.core.errors import SpecError
from toolchain.core.spec import Input, ModelSpec

__all__ = ["SampleSet", "generate_samples", "make_feed"]


@dataclass(frozen=True)
class SampleSet:
    """One named set of inputs, with the size each symbolic dim takes in it."""

    name: str
    sizes: Mapping[str, int]
    feeds: Mapping[str, np.ndarray]


def generate_samples(spec: ModelSpec, *, seed: int = 0) -> list[SampleSet]:
    """Input sets for `spec`: ``export`` at every dim's example size, then one set per other size.

    Each extra set moves a single symbolic dim (``batch-1``, ``batch-9``) and keeps the others at their
    export size, so a failure points at one dim. Values respect each input's domain. The spec's own
    named sample sets come last.
    """
    base = {sym: spec.dim(sym).example for sym in spec.symbols()}
    plans: list[tuple[str, dict[str, int]]] = [("export", base)]
    for sym in spec.symbols():
        plans.extend((f"{sym}-{size}", {**base, sym: size}) for size in spec.dim(sym).sizes()[1:])
    sets = []
    for name, sizes in plans:
        # NOTE: seeded by the set's name, so adding or dropping a size leaves the other sets' values alone.
        rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
        feeds = {key: make_feed(inp, sizes, rng) for key, inp in spec.inputs.items()}
        sets.append(SampleSet(name=name, sizes=sizes, feeds=feeds))
    generated = {s.name for s in sets}
    for name, given in spec.samples.items():
        if name in generated:
            raise SpecError(f"sample set name {name!r} of {spec.name} clashes with a generated one; rename it")
        sets.append(SampleSet(name=name, sizes=_bind_sizes(spec, name, given), feeds=dict(given)))
    return sets


def _bind_sizes(spec: ModelSpec, name: str, feeds: Mapping[str, np.ndarray]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for key, inp in spec.inputs.items():
        for dim, size in zip(inp.shape, feeds[key].shape, strict=True):
            if isinstance(dim, str) and sizes.setdefault(dim, size) != size:
                raise SpecError(f"sample set {name!r}: dim {dim!r} is {size} in {key!r} but {sizes[dim]} elsewhere")
    return sizes


def make_feed(inp: Input, sizes: Mapping[str, int], rng: np.random.Generator) -> np.ndarray:
    """One array for `inp` with symbolic dims resolved from `sizes`."""
    shape = tuple(sizes[d] if isinstance(d, str) else d for d in inp.shape)
    dtype = np.dtype(inp.dtype)
    if inp.domain == "normal":
        return rng.standard_normal(shape).astype(dtype)
    if inp.domain == "uniform":
        values = rng.uniform(inp.low, inp.high, shape).astype(dtype)
        # NOTE: rounding to a narrow float can reach `high`; keep the promised half-open range.
        below = np.nextafter(dtype.type(inp.high), dtype.type(inp.low))
        return np.where(values >= dtype.type(inp.high), below, values).astype(dtype)
    if inp.domain == "ids":
        return rng.integers(int(inp.low), int(inp.high), shape).astype(dtype)
    if inp.domain == "padding_mask":
        keep = rng.integers(1, shape[-1] + 1, (*shape[:-1], 1))
        return (np.arange(shape[-1]) < keep).astype(dtype)
    if inp.domain == "offsets":
        starts = np.sort(rng.integers(0, sizes[inp.over] + 1, shape[0] - 1))
        return np.concatenate([[0], starts]).astype(dtype)
    return rng.integers(0, 2, shape).astype(dtype)  # mask
