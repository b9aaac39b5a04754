from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import zoo.face
from toolchain.core.samples import generate_samples
from toolchain.core.spec import FORMATS, SPECS

MATCHERS = ["face.match_lr", "face.match_svm"]


def _build(name: str) -> nn.Module:
    model: nn.Module = SPECS.get(name).build()
    return model.eval()


def _unit(rows: int, seed: int) -> torch.Tensor:
    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((rows, zoo.face.EMBED)).astype(np.float32))
    return nn.functional.normalize(x, dim=1)


def test_face_models_are_registered_with_every_path() -> None:
    for name in ["face.embedder", *MATCHERS]:
        assert SPECS.get(name).formats == FORMATS


@pytest.mark.parametrize(
    ("name", "low", "high"), [("face.embedder", 100_000, 1_000_000), *[(m, 100, 200) for m in MATCHERS]]
)
def test_parameter_count_in_range(name: str, low: int, high: int) -> None:
    assert low <= sum(p.numel() for p in _build(name).parameters()) <= high


def test_builds_are_reproducible() -> None:
    first, second = _build("face.embedder").state_dict(), _build("face.embedder").state_dict()
    assert all(torch.equal(first[k], second[k]) for k in first)


@pytest.mark.parametrize("size", [32, 64, 129, 160])
def test_embedder_rows_have_unit_norm_at_every_crop_size(size: int) -> None:
    torch.manual_seed(0)
    face = torch.rand(3, 3, size, size) * 2 - 1
    with torch.no_grad():
        embedding = _build("face.embedder")(face)
    assert embedding.shape == (3, zoo.face.EMBED)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(3))


def test_embedder_batch_norm_stats_are_not_the_identity() -> None:
    norms = [m for m in _build("face.embedder").modules() if isinstance(m, nn.BatchNorm1d | nn.BatchNorm2d)]
    assert len(norms) == 5
    for bn in norms:
        assert bn.running_mean is not None and bn.running_var is not None
        assert bn.running_mean.abs().max() > 0.1 and (bn.running_var - 1).abs().max() > 0.1


def test_embedder_prelu_slopes_are_per_channel() -> None:
    slopes = [m.weight for m in _build("face.embedder").modules() if isinstance(m, nn.PReLU)]
    assert len(slopes) == 4 and all(s.numel() > 1 and s.std() > 0 for s in slopes)


def test_embedder_is_deterministic_per_row() -> None:
    torch.manual_seed(1)
    face = torch.rand(4, 3, 64, 64) * 2 - 1
    model = _build("face.embedder")
    with torch.no_grad():
        batch, single = model(face), model(face[2:3])
    torch.testing.assert_close(batch[2:3], single)


def test_lr_probability_is_in_open_unit_interval_on_every_sample_set() -> None:
    spec, model = SPECS.get("face.match_lr"), _build("face.match_lr")
    for sample in generate_samples(spec):
        with torch.no_grad():
            p = model(*(torch.from_numpy(sample.feeds[k]) for k in spec.inputs))
        assert p.shape == (sample.sizes["batch"], 1)
        assert bool(((p > 0) & (p < 1)).all()), sample.name


def test_lr_scores_identical_pairs_above_random_pairs() -> None:
    a, b = _unit(64, 0), _unit(64, 1)
    model = _build("face.match_lr")
    with torch.no_grad():
        same, other = model(a, a), model(a, b)
    assert same.mean() > 0.9 > 0.1 > other.mean()
    assert bool((same > other).all())


@pytest.mark.parametrize("name", MATCHERS)
def test_matchers_are_symmetric_in_the_pair(name: str) -> None:
    a, b = _unit(16, 2), _unit(16, 3)
    model = _build(name)
    with torch.no_grad():
        torch.testing.assert_close(model(a, b), model(b, a))


def test_svm_margin_sign_equals_sign_of_linear_score() -> None:
    model = _build("face.match_svm")
    linear = model.get_submodule("linear")
    assert isinstance(linear, nn.Linear)
    w, bias = linear.weight.detach().numpy()[0].astype(np.float64), float(linear.bias.detach()[0])
    a = _unit(32, 4)
    b = torch.cat([a[:8], _unit(8, 5), nn.functional.normalize(a[16:] + 0.3 * _unit(16, 6), dim=1)])
    with torch.no_grad():
        margin = model(a, b).numpy()[:, 0]
    an, bn = a.numpy().astype(np.float64), b.numpy().astype(np.float64)
    score = np.concatenate([np.abs(an - bn), an * bn], axis=1) @ w + bias
    np.testing.assert_allclose(margin, score, atol=1e-5)
    assert np.array_equal(np.sign(margin), np.sign(score))
    assert (margin[:8] > 0).all() and margin[8:16].mean() < 0  # identical pairs accepted, random ones mostly not


@pytest.mark.parametrize("name", MATCHERS)
def test_matcher_extra_samples_are_unit_norm_with_an_identical_pair(name: str) -> None:
    samples = SPECS.get(name).samples
    assert np.array_equal(samples["unit-identical"]["a"], samples["unit-identical"]["b"])
    for feeds in samples.values():
        for x in feeds.values():
            np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
