from __future__ import annotations

import numpy as np
import pytest
import torch

from toolchain.core.spec import SPECS
from zoo.integrity import (
    DEPTH,
    FEATURES,
    TREES,
    GBDTLogisticRegression,
    candidate_thresholds,
    fit_gbdt,
    synthetic_data,
    walk_trees,
)

SPEC = SPECS.get("integrity.gbdt_lr")


@pytest.fixture(scope="module")
def model() -> GBDTLogisticRegression:
    built = SPEC.build()
    assert isinstance(built, GBDTLogisticRegression)
    return built.eval()


@pytest.fixture(scope="module")
def fitted() -> tuple[float, list]:
    return fit_gbdt(*synthetic_data())


def _run(model: GBDTLogisticRegression, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        probability, score = model(torch.from_numpy(rows))
    return probability.numpy(), score.numpy()


def _rows(seed: int, count: int = 512) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((count, FEATURES)).astype(np.float32)


def test_buffers_hold_the_fitted_trees(model: GBDTLogisticRegression, fitted: tuple[float, list]) -> None:
    base, trees = fitted
    nodes = model.feature.numel() // TREES
    offsets = np.arange(TREES)[:, None] * nodes
    assert model.base.item() == pytest.approx(base)
    np.testing.assert_array_equal(model.feature.view(TREES, -1).numpy(), np.stack([t.feature for t in trees]))
    np.testing.assert_array_equal(model.threshold.view(TREES, -1).numpy(), np.stack([t.threshold for t in trees]))
    np.testing.assert_array_equal(model.left.view(TREES, -1).numpy(), np.stack([t.left for t in trees]) + offsets)
    np.testing.assert_array_equal(model.right.view(TREES, -1).numpy(), np.stack([t.right for t in trees]) + offsets)
    np.testing.assert_array_equal(model.value.view(TREES, -1).numpy(), np.stack([t.value for t in trees]))


@pytest.mark.parametrize("rows", ["random", "on-thresholds", "on-thresholds-staggered"])
def test_compiled_trees_equal_a_numpy_walk(
    model: GBDTLogisticRegression, fitted: tuple[float, list], rows: str
) -> None:
    base, trees = fitted
    x = _rows(seed=7) if rows == "random" else SPEC.samples[rows]["features"]
    _, score = _run(model, x)
    np.testing.assert_allclose(score[:, 0], base + walk_trees(x, trees), rtol=0, atol=1e-5)


def test_every_tree_reaches_a_leaf_within_depth(fitted: tuple[float, list]) -> None:
    _, trees = fitted
    for tree in trees:
        internal = np.flatnonzero(tree.left != np.arange(len(tree.left)))
        assert internal.size > 0 and internal.max() < 2**DEPTH - 1
        assert (tree.left[internal] != tree.right[internal]).all()


def test_threshold_samples_tie_every_split(fitted: tuple[float, list]) -> None:
    _, trees = fitted
    rows = np.concatenate([SPEC.samples[name]["features"] for name in ("on-thresholds", "on-thresholds-staggered")])
    for tree in trees:
        for node in np.flatnonzero(tree.left != np.arange(len(tree.left))):
            assert (rows[:, tree.feature[node]] == tree.threshold[node]).any(), (tree.feature[node], node)


def test_one_float_step_above_the_thresholds_still_equals_the_walk(
    model: GBDTLogisticRegression, fitted: tuple[float, list]
) -> None:
    base, trees = fitted
    on = SPEC.samples["on-thresholds"]["features"]
    above = np.nextafter(on, np.float32(np.inf))
    _, score_on = _run(model, on)
    _, score_above = _run(model, above)
    np.testing.assert_allclose(score_above[:, 0], base + walk_trees(above, trees), rtol=0, atol=1e-5)
    assert not np.allclose(score_on, score_above)  # the ties really sit on branch boundaries


def test_probability_is_strictly_between_zero_and_one(model: GBDTLogisticRegression) -> None:
    probability, score = _run(model, _rows(seed=3, count=2048))
    assert probability.shape == (2048, 1) and score.shape == (2048, 1)
    assert ((probability > 0) & (probability < 1)).all()


def test_model_separates_held_out_rows(model: GBDTLogisticRegression) -> None:
    x, y = synthetic_data(rows=2000, seed=11)
    probability, _ = _run(model, x)
    assert ((probability[:, 0] > 0.5) == (y > 0.5)).mean() > 0.7


def test_two_builds_give_identical_buffers_and_weights() -> None:
    first, second = SPEC.build().state_dict(), SPEC.build().state_dict()
    assert first.keys() == second.keys()
    for key in first:
        assert torch.equal(first[key], second[key]), key


def test_candidate_thresholds_are_sorted_float32() -> None:
    thresholds = candidate_thresholds(synthetic_data()[0])
    assert thresholds.dtype == np.float32 and thresholds.shape[0] == FEATURES
    assert (np.diff(thresholds, axis=1) > 0).all()


def test_scripting_keeps_the_model() -> None:
    model = SPEC.build().eval()
    x = torch.from_numpy(_rows(seed=5, count=33))
    scripted = torch.jit.script(model)
    for got, want in zip(scripted(x), model(x), strict=True):
        assert torch.equal(got, want)
