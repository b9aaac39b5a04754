from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from toolchain.build.fastpath import fast_path_causes, fast_path_modules
from toolchain.core.registry import Registry
from toolchain.core.samples import SampleSet, generate_samples
from toolchain.core.spec import Dim, Input, ModelSpec, exportable


class Attend(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(8, 2, batch_first=True)
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.attn(x, x, x, key_padding_mask=mask, need_weights=False)[0]


def test_only_the_outermost_fast_path_module_is_named() -> None:
    encoder = nn.TransformerEncoder(nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 2)
    assert fast_path_modules(nn.Sequential(encoder)) == ["0 (nn.TransformerEncoder)"]
    assert fast_path_modules(Attend()) == ["attn (nn.MultiheadAttention)"]
    assert fast_path_modules(nn.Linear(2, 2)) == []


def _spec(factory: Any) -> ModelSpec:
    registry: Registry[ModelSpec] = Registry("model")
    inputs = {"x": Input.normal(("batch", "seq", 8)), "mask": Input.key_padding_mask(("batch", "seq"))}
    exportable(name="m", inputs=inputs, dims={"batch": Dim(example=2), "seq": Dim(example=5)}, registry=registry)(
        factory
    )
    return registry.get("m")


def _eager(model: Any, sample: SampleSet) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = model(*(torch.from_numpy(np.ascontiguousarray(sample.feeds[n])) for n in ("x", "mask")))
    return {"output": out.numpy()}


def test_a_model_without_fast_path_modules_is_not_run_again() -> None:
    class Plain(nn.Module):
        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return x * 2

    spec = _spec(Plain)
    samples = generate_samples(spec)
    calls: list[str] = []
    causes = fast_path_causes(spec.build(), spec, samples, [{}] * len(samples), lambda m, s: calls.append(s.name) or {})
    assert causes == {} and calls == []


def test_a_fast_path_that_agrees_with_the_plain_path_is_not_a_cause_and_the_switch_is_restored() -> None:
    spec = _spec(Attend)
    model = spec.build().eval()
    samples = generate_samples(spec)
    expected = [_eager(model, s) for s in samples]
    assert fast_path_causes(model, spec, samples, expected, _eager) == {}
    assert torch.backends.mha.get_fastpath_enabled()

    def broken(model: Any, sample: SampleSet) -> dict[str, np.ndarray]:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        fast_path_causes(model, spec, samples, expected, broken)
    assert torch.backends.mha.get_fastpath_enabled()


def test_outputs_that_differ_from_the_plain_path_name_the_module_and_the_sample() -> None:
    spec = _spec(Attend)
    model = spec.build().eval()
    samples = generate_samples(spec)
    expected = [{"output": _eager(model, s)["output"] + 1.0} for s in samples]  # as a fast path that moved them
    causes = fast_path_causes(model, spec, samples, expected, _eager)
    assert set(causes) == {s.name for s in samples}
    message = causes["export"].message
    assert "fast path of attn (nn.MultiheadAttention)" in message and "sample 'export'" in message
    assert "by up to 1" in message and "ignore_padded" not in message  # it differs at valid positions too
