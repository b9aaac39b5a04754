"""Eager fast paths that exporters do not reproduce, found by running the reference again without them.

In eval mode without grad, ``nn.TransformerEncoder`` with a ``src_key_padding_mask`` packs its input
into a nested tensor and returns 0 at every padded position; ``nn.MultiheadAttention`` and
``nn.TransformerEncoderLayer`` switch to fused kernels. Exporters capture the plain (slow) path, so an
artifact can be right at every valid position and still differ from eager at padding. The reference
is therefore replayed once more with ``torch.backends.mha`` fast paths off, for models that hold such
a module; where the two disagree, the fast path is named as the cause, with where it differs.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

import numpy as np

from toolchain.core.artifact import Finding
from toolchain.core.parity import PaddedBy, Tolerance, compare
from toolchain.core.samples import SampleSet
from toolchain.core.spec import ModelSpec

__all__ = ["FAST_PATH_MODULES", "fast_path_causes", "fast_path_modules"]

FAST_PATH_MODULES = ("TransformerEncoder", "TransformerEncoderLayer", "MultiheadAttention")
"""``torch.nn`` classes whose eval-mode forward may take a fast path (``torch.backends.mha``)."""

Run = Callable[[Any, SampleSet], dict[str, np.ndarray]]


def fast_path_modules(model: Any) -> list[str]:
    """``name (Class)`` of every submodule that may take an eager fast path, outermost first."""
    found: list[tuple[str, str]] = []
    for name, module in model.named_modules():
        kind = type(module)
        inner = any(name.startswith(f"{outer}.") for outer, _ in found)
        if kind.__name__ in FAST_PATH_MODULES and kind.__module__.startswith("torch.nn") and not inner:
            found.append((name, kind.__name__))
    return [f"{name or '<root>'} (nn.{kind})" for name, kind in found]


def fast_path_causes(
    model: Any,
    spec: ModelSpec,
    samples: Sequence[SampleSet],
    expected: Sequence[Mapping[str, np.ndarray]],
    run: Run,
) -> dict[str, Finding]:
    """Sample set -> an ``eager-fast-path`` finding, for each set where eager's fast path changed outputs.

    Sets whose outputs the fast path leaves within the spec's tolerance (its ``ignore_padded``
    included) get none; a model without a fast-path module is not run again.
    """
    modules = fast_path_modules(model)
    if not modules:
        return {}
    import torch

    before = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        working = copy.deepcopy(model)
        slow = [run(working, sample) for sample in samples]
    finally:
        torch.backends.mha.set_fastpath_enabled(before)
    causes = {}
    for sample, fast, plain in zip(samples, expected, slow, strict=True):
        if compare(plain, fast, spec.tolerance, feeds=sample.feeds):
            continue
        causes[sample.name] = Finding("eager-fast-path", _describe(modules, spec, sample, fast, plain))
    return causes


def _describe(
    modules: Sequence[str],
    spec: ModelSpec,
    sample: SampleSet,
    fast: Mapping[str, np.ndarray],
    plain: Mapping[str, np.ndarray],
) -> str:
    strict = replace(spec.tolerance, ignore_padded={})
    failures = compare(plain, fast, strict).failures
    masks = {out.name: _padded_only(spec, strict, sample, out.name, fast, plain) for out in failures}
    parts = [
        f"output {out.name!r} by up to {out.max_abs:.3g}"
        + (f", only at positions input {masks[out.name]!r} marks as padding" if masks[out.name] else "")
        for out in failures
    ]
    shown = ", ".join(modules[:3]) + (f" and {len(modules) - 3} more" if len(modules) > 3 else "")
    text = (
        f"eager ran the fast path of {shown} (torch.backends.mha: fused kernels, nested tensors at padding) on "
        f"sample {sample.name!r}, and it differs from the same model without it in {'; '.join(parts)}; exporters "
        "capture the model without the fast path"
    )
    if masks and all(masks.values()):
        declared = ", ".join(f"{name!r}: {mask!r}" for name, mask in masks.items())
        text += (
            " (it returns 0 at padded positions, where exported graphs compute values). If no consumer reads padded "
            f"positions, declare @exportable(ignore_padded={{{declared}}}) to compare only valid ones"
        )
    return text


def _padded_only(
    spec: ModelSpec,
    strict: Tolerance,
    sample: SampleSet,
    output: str,
    fast: Mapping[str, np.ndarray],
    plain: Mapping[str, np.ndarray],
) -> str:
    """The padding-mask input outside whose padded positions `output` agrees, if any."""
    for name, inp in spec.inputs.items():
        if inp.domain != "padding_mask" or name not in sample.feeds:
            continue
        masked = replace(strict, ignore_padded={output: PaddedBy(name, int(inp.pad or 0))})
        if compare({output: plain[output]}, {output: fast[output]}, masked, feeds=sample.feeds):
            return name
    return ""
