"""Eager's reference outputs on every sample set, and what running eager found."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from runtimes.eager import EagerSession, one_thread
from toolchain.build.fastpath import fast_path_causes
from toolchain.build.paths import sizes
from toolchain.build.state import reference_outputs
from toolchain.core.artifact import Finding
from toolchain.core.errors import InferenceError
from toolchain.core.interface import input_signature
from toolchain.core.samples import SampleSet
from toolchain.core.spec import ModelSpec

__all__ = ["Reference", "eager_reference"]


@dataclass
class Reference:
    """Eager's outputs on every sample set, and what running eager found (picklable: a lane sends it)."""

    expected: list[dict[str, np.ndarray]]
    findings: list[Finding]
    causes: dict[str, Finding]


def eager_reference(model: Any, spec: ModelSpec, samples: list[SampleSet]) -> Reference:
    """Run eager on every sample set from the model as built; raises `InferenceError` naming the set.

    Runs on one intra-op thread, whatever this process uses: a reduction split over threads sums in
    another order, and the golden outputs a package ships must not depend on the host's cores or on
    ``--workers`` (a lane's child computes them on one thread; translation.seq2seq's logits at batch 1
    differed in the last bits between ``--workers 1`` and 2 before).
    """
    with one_thread():
        return _eager_reference(model, spec, samples)


def _eager_reference(model: Any, spec: ModelSpec, samples: list[SampleSet]) -> Reference:
    signature = input_signature(spec)

    def run(working: Any, sample: SampleSet) -> dict[str, np.ndarray]:
        return _reference(EagerSession(working, signature=signature), sample, spec)

    state = reference_outputs(model, samples, run)
    fast = fast_path_causes(model, spec, samples, state.expected, run)
    # NOTE: a forward that changed the model explains more than a fast path does, so it wins on a shared set.
    return Reference(state.expected, [*state.findings(), *list(fast.values())[:1]], {**fast, **state.causes()})


def _reference(eager: EagerSession, sample: SampleSet, spec: ModelSpec) -> dict[str, np.ndarray]:
    try:
        return eager.run(sample.feeds)
    except InferenceError as e:
        hint = _impossible_hint(spec, sample)
        raise InferenceError(
            f"on sample {sample.name!r} ({sizes(sample)}), which the spec declares valid: {e}{hint}"
        ) from e


def _impossible_hint(spec: ModelSpec, sample: SampleSet) -> str:
    """What in the declaration may allow inputs the model never sees at this sample's sizes."""
    hints = []
    for name, inp in spec.inputs.items():
        if inp.domain == "ids":
            beyond = [sym for sym, size in sample.sizes.items() if size < inp.high - 1 and sym not in inp.symbols]
            if beyond:
                hints.append(
                    f"if {name!r} counts positions along {beyond[0]!r}, declare it Input.lengths(..., "
                    f"over={beyond[0]!r}) so no sample holds a length beyond the size of {beyond[0]!r}"
                )
        elif inp.domain == "mask":
            hints.append(
                f"if {name!r} is a padding mask, declare it Input.padding_mask (or Input.key_padding_mask) so no "
                "generated row is fully padded"
            )
        elif inp.domain in ("padding_mask", "lengths") and inp.min_valid == 0:
            hints.append(f"{name!r} allows rows with no valid position (min_valid=0); raise min_valid if it never has")
    return "; " + "; ".join(hints) if hints else ""
