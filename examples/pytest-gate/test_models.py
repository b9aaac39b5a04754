"""The project's own tests; ``pytest --toolchain-gate`` adds one parity item per model to them."""

from __future__ import annotations

import torch
from models import Scorer

from toolchain.gate.testing import assert_parity


def test_scorer_is_a_probability() -> None:
    """Scores lie in (0, 1)."""
    torch.manual_seed(0)
    with torch.no_grad():
        score = Scorer().eval()(torch.randn(5, 8))
    assert score.shape == (5, 1)
    assert bool(((score > 0) & (score < 1)).all())


def test_traced_scorer_matches_eager() -> None:
    """assert_parity works in any test: here a TorchScript trace against eager."""
    torch.manual_seed(0)
    model, x = Scorer().eval(), torch.randn(5, 8)
    with torch.no_grad():
        assert_parity(model(x), torch.jit.trace(model, x)(x))
