"""A forward that changes its module: state compared before and after each reference run.

A model whose forward writes to its own attributes, parameters or buffers (a window shrunk for a small
input, a running statistic, a cache) is not one function: the run on one sample changes what the next
computes, and an exporter that captures the model after the reference ran captures another model.
The reference therefore runs each sample set on a model in its state as built, the exporters get
copies never run, and every attribute a run changed is named.
"""

from __future__ import annotations

import copy
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from toolchain.core.artifact import Finding
from toolchain.core.samples import SampleSet

__all__ = ["StateReference", "reference_outputs", "state_of"]

_SIMPLE = (int, float, bool, str, bytes, type(None))


def state_of(model: Any) -> dict[str, str]:
    """Every parameter, buffer and plain attribute of every submodule, as ``qualified name -> fingerprint``."""
    import torch

    state: dict[str, str] = {}
    for prefix, module in model.named_modules():
        for key, value in vars(module).items():
            if key.startswith("_") or key == "training":
                continue
            name = f"{prefix}.{key}" if prefix else key
            if isinstance(value, torch.Tensor):
                state[name] = _fingerprint(value)
            elif isinstance(value, _SIMPLE) or (
                isinstance(value, tuple | list) and all(isinstance(v, _SIMPLE) for v in value)
            ):
                state[name] = repr(value)
        for key, tensor in [*module._parameters.items(), *module._buffers.items()]:
            if tensor is not None:
                state[f"{prefix}.{key}" if prefix else key] = _fingerprint(tensor)
    return state


def _is_simple(value: Any) -> bool:
    return isinstance(value, _SIMPLE) or (
        isinstance(value, tuple | list) and all(isinstance(v, _SIMPLE) for v in value)
    )


def _fingerprint(tensor: Any) -> str:
    import torch

    data = tensor.detach().cpu().contiguous()
    raw = data.flatten().view(torch.uint8).numpy().tobytes()  # NOTE: bytes, so any dtype (bf16 too) hashes
    return f"tensor{tuple(data.shape)}:{data.dtype}:{hashlib.blake2b(raw, digest_size=8).hexdigest()}"


@dataclass
class StateReference:
    """Eager outputs of every sample set, each from the model as built, and what the runs changed."""

    expected: list[dict[str, np.ndarray]]
    changed: dict[str, list[str]]
    """Sample set -> ``attribute: before -> after`` of every attribute its run changed."""
    replay_drift: float
    """Largest difference of the export sample's outputs, run again after every other set (0: same)."""

    def causes(self) -> dict[str, Finding]:
        """Sample set -> the ``stateful-forward`` finding of its run, for each set whose run changed the model."""
        return {
            sample: Finding(
                "stateful-forward",
                f"forward changed the model on sample {sample!r}: {', '.join(changes[:5])}"
                + (f" and {len(changes) - 5} more" if len(changes) > 5 else "")
                + "; exporters capture the model as built, so artifacts may differ from eager where it changes",
            )
            for sample, changes in self.changed.items()
        }

    def findings(self) -> list[Finding]:
        """The `causes`, and a finding when the export sample run again gives other outputs."""
        found = list(self.causes().values())
        if self.replay_drift > 0:
            found.append(
                Finding(
                    "stateful-forward",
                    f"the export sample run again after the other sample sets gives other outputs "
                    f"(max abs difference {self.replay_drift:.3g}): forward depends on more than its inputs",
                )
            )
        return found


def reference_outputs(
    model: Any, samples: Sequence[SampleSet], run: Callable[[Any, SampleSet], dict[str, np.ndarray]]
) -> StateReference:
    """Run every sample set with `run(model, sample)`, from `model`'s state as built; `model` stays unrun.

    One working copy runs the sets in order; after a run that changed it, it is replaced by a fresh
    copy, so each set's outputs are those of the model as built. The export sample (the first) is run
    once more at the end on the working copy, which catches state the fingerprints do not see.
    """
    built = state_of(model)
    working = copy.deepcopy(model)
    expected, changed = [], {}
    for sample in samples:
        expected.append(run(working, sample))
        now = state_of(working)
        if now != built:
            changed[sample.name] = _diff(built, now)
            working = copy.deepcopy(model)
    again = run(working, samples[0]) if samples else {}
    return StateReference(expected, changed, _largest_difference(expected[0] if expected else {}, again))


def _diff(before: Mapping[str, str], after: Mapping[str, str]) -> list[str]:
    names = sorted(set(before) | set(after))
    return [
        f"{n}: {_short(before.get(n, 'unset'))} -> {_short(after.get(n, 'unset'))}"
        for n in names
        if before.get(n) != after.get(n)
    ]


def _short(value: str) -> str:
    return "tensor changed" if value.startswith("tensor") else value[:40]


def _largest_difference(first: Mapping[str, np.ndarray], again: Mapping[str, np.ndarray]) -> float:
    worst = 0.0
    for name, a in first.items():
        b = again.get(name)
        if b is None or a.shape != b.shape:
            return float("inf")
        if a.size and a.dtype.kind in "fc":
            both = np.isfinite(a) & np.isfinite(b)
            if not np.array_equal(np.isfinite(a), np.isfinite(b)):
                return float("inf")
            worst = max(worst, float(np.max(np.abs(a[both] - b[both]), initial=0.0)))
        elif a.size and not np.array_equal(a, b):
            return float("inf")
    return worst
