"""Size and cost of a model at its export size: parameter count and FLOPs (torch's flop counter)."""

from __future__ import annotations

from dataclasses import dataclass

from toolchain.core.samples import generate_samples
from toolchain.core.spec import ModelSpec

__all__ = ["ModelStats", "human", "model_stats"]


@dataclass(frozen=True)
class ModelStats:
    """Parameter count and FLOPs of one forward pass at the export size."""

    params: int
    flops: int


def model_stats(spec: ModelSpec) -> ModelStats:
    """Build the model and count its parameters and the FLOPs of one forward at the export size.

    FLOPs are those of matmuls, convolutions and attention (``torch.utils.flop_counter``); embedding
    lookups and elementwise ops count as zero.
    """
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    model = spec.build().eval()
    sample = generate_samples(spec, seed=spec.seed)[0]
    args = [torch.from_numpy(sample.feeds[name].copy()) for name in spec.inputs]
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        model(*args)
    params = sum(p.numel() for p in model.parameters())
    return ModelStats(params=params, flops=int(counter.get_total_flops()))


def human(value: float) -> str:
    """``1234567`` -> ``1.23M``."""
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(value) >= scale:
            return f"{value / scale:.3g}{unit}"
    return f"{value:.3g}"
