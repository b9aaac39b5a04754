"""The eager PyTorch model as a runtime: the reference every artifact is compared with."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from toolchain.errors import InferenceError, SpecError
from toolchain.signature import Signature

__all__ = ["EagerSession", "flatten_outputs"]


class EagerSession:
    """Runs an `nn.Module` (in eval mode, without grad) on numpy feeds.

    Args:
        model: the module, already in eval mode.
        signature: input order and output names.
    """

    def __init__(self, model: Any, *, signature: Signature) -> None:
        self.model = model
        self.signature = signature

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the module positionally in signature order; outputs by the spec's names."""
        import torch

        self.signature.check_feeds(feeds)
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.signature.input_names]
        try:
            with torch.no_grad():
                result = self.model(*args)
        except Exception as e:
            raise InferenceError(f"eager model failed: {type(e).__name__}: {e}") from e
        return flatten_outputs(result, self.signature.output_names)


def flatten_outputs(result: Any, names: Sequence[str]) -> dict[str, np.ndarray]:
    """Map a forward result (tensor, tuple/list, or dict) to numpy arrays under `names`."""
    if isinstance(result, Mapping):
        if list(result) != list(names):
            raise SpecError(f"model returns a dict with keys {list(result)}, but outputs are declared as {list(names)}")
        values = list(result.values())
    elif isinstance(result, tuple | list):
        values = list(result)
    else:
        values = [result]
    if len(values) != len(names):
        raise SpecError(
            f"model returns {len(values)} output(s), but {len(names)} are declared ({list(names)}); "
            "fix `outputs=` in @exportable"
        )
    arrays = {}
    for name, value in zip(names, values, strict=True):
        if not hasattr(value, "detach"):
            raise SpecError(f"output {name!r} is a {type(value).__name__}, not a tensor")
        arrays[name] = value.detach().cpu().numpy()
    return arrays
