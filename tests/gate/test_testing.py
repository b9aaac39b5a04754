from __future__ import annotations

import numpy as np
import pytest
import torch

from toolchain.core.parity import Tolerance
from toolchain.gate.testing import assert_parity


def test_matching_outputs_pass_and_return_the_report() -> None:
    x = np.linspace(0, 1, 10, dtype=np.float32)
    report = assert_parity(x, x + 1e-7)
    assert report and report.outputs[0].name == "output"


def test_mismatch_raises_with_the_parity_table() -> None:
    with pytest.raises(AssertionError, match=r"(?s)parity failed.*score: FAIL max_abs=0\.1 .*allowed atol=1e-05"):
        assert_parity({"score": np.zeros(3, np.float32)}, {"score": np.full(3, 0.1, np.float32)}, sample="s1")


def test_tensors_sequences_and_tolerance() -> None:
    a = torch.ones(2, 3)
    assert_parity((a, a * 2), (a + 0.01, a * 2), tolerance=Tolerance(atol=0.02, rtol=0))
    with pytest.raises(AssertionError, match="output0: FAIL"):
        assert_parity((a, a * 2), (a + 0.01, a * 2))


def test_shape_mismatch_fails() -> None:
    with pytest.raises(AssertionError, match=r"shape \(2,\) != expected \(3,\)"):
        assert_parity(np.zeros(3), np.zeros(2))
