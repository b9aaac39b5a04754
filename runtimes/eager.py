"""Torch modules as sessions: the eager reference, and modules loaded from TorchScript or ``.pt2`` files."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from toolchain.core.errors import InferenceError, SpecError, first_line
from toolchain.core.signature import FeedGuard, Signature

__all__ = ["EagerSession", "flatten_outputs", "one_thread", "torch_available"]


class EagerSession:
    """Runs a torch module (in eval mode, without grad) on numpy feeds.

    Args:
        model: the module, already in eval mode (or a loaded TorchScript / ``.pt2`` module).
        signature: input order and output names.
        source: what is running, for error messages.
    """

    def __init__(self, model: Any, *, signature: Signature, source: str = "eager model") -> None:
        self.model = model
        self.signature = signature
        self.source = source
        self._guard = FeedGuard(signature)

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the module positionally in signature order; outputs by the spec's names."""
        import torch

        self._guard.check(feeds)
        args = [torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in self.signature.input_names]
        try:
            with torch.no_grad():
                result = self.model(*args)
        except Exception as e:
            raise InferenceError(f"{self.source} failed: {first_line(e)}") from e
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


def torch_available() -> bool:
    """True when torch imports (runtimes of torch-saved formats need it)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@contextmanager
def one_thread() -> Iterator[None]:
    """While open, torch runs on one intra-op thread (then as many as before).

    NOTE: a reduction split over threads sums in another order; outputs that go into a package (golden
    samples, drift in its report) must not depend on the host's cores or on which process of an export
    computed them (a lane's child runs on one thread).
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
