"""Eager's reference outputs do not depend on the threads of the process that computes them."""

from __future__ import annotations

import torch
from torch import nn

from toolchain.build.reference import eager_reference
from toolchain.core.samples import generate_samples
from toolchain.core.spec import Dim, Input, ModelSpec

SEEN: list[int] = []


class Notes(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        SEEN.append(torch.get_num_threads())
        return x.sum(dim=1, keepdim=True)


def test_the_reference_runs_on_one_thread_and_gives_the_threads_back() -> None:
    spec = ModelSpec(
        name="test.notes", factory=Notes, inputs={"x": Input.normal(("batch", 4))}, dims={"batch": Dim(example=3)}
    )
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        SEEN.clear()
        eager_reference(Notes().eval(), spec, generate_samples(spec))
        assert SEEN and set(SEEN) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
