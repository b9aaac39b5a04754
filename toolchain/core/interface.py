"""A spec's signature: its declared inputs, and its outputs as eager produced them at every sample size."""

from __future__ import annotations

import numpy as np

from toolchain.core.samples import SampleSet
from toolchain.core.signature import Signature, TensorSig
from toolchain.core.spec import ModelSpec

__all__ = ["input_signature", "package_signature"]


def input_signature(spec: ModelSpec) -> Signature:
    """The spec's inputs; output names only (their dtypes and shapes come from eager)."""
    return Signature(
        inputs=tuple(TensorSig(k, v.dtype, v.shape) for k, v in spec.inputs.items()),
        outputs=tuple(TensorSig(n, "?", ()) for n in spec.outputs),
    )


def package_signature(spec: ModelSpec, samples: list[SampleSet], expected: list[dict[str, np.ndarray]]) -> Signature:
    """Inputs from the spec; output dtypes and symbolic shapes read off eager's outputs at every size."""
    outputs = []
    for name in spec.outputs:
        shapes = [exp[name].shape for exp in expected]
        dims: list[int | str] = []
        for axis in range(len(shapes[0])):
            sizes = [s[axis] if axis < len(s) else -1 for s in shapes]
            if len(set(sizes)) == 1:
                dims.append(sizes[0])
                continue
            match = [
                sym for sym in spec.symbols() if all(x.sizes[sym] == n for x, n in zip(samples, sizes, strict=True))
            ]
            dims.append(match[0] if match else "?")
        outputs.append(TensorSig(name, str(expected[0][name].dtype), tuple(dims)))
    verified = {sym: tuple(sorted({s.sizes[sym] for s in samples})) for sym in spec.symbols()}
    return Signature(input_signature(spec).inputs, tuple(outputs), verified)
