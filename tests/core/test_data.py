from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from toolchain.core.data import MAX_DATA_BATCHES, load_data, with_data
from toolchain.core.errors import SpecError
from toolchain.core.registry import Registry
from toolchain.core.samples import generate_samples
from toolchain.core.spec import Dim, Input, ModelSpec, exportable


class Scorer(nn.Module):
    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return x.sum(1) + ids.float().sum(1)


def _declare(data: object = ()) -> ModelSpec:
    registry: Registry[ModelSpec] = Registry("model")
    exportable(
        name="data.scorer",
        inputs={"x": ("batch", 4), "ids": Input.ids(("batch", 3), high=10)},
        dims={"batch": Dim(example=4, max=32)},
        data=data,
        registry=registry,
    )(Scorer)
    return registry.get("data.scorer")


def _batch(n: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {"x": rng.standard_normal((n, 4)).astype(np.float32), "ids": rng.integers(0, 10, (n, 3))}


def test_real_batches_become_named_sample_sets_after_the_generated_ones() -> None:
    rng = np.random.default_rng(0)
    loader = [_batch(n, rng) for n in (5, 9)] + [(torch.randn(2, 4), torch.zeros(2, 3, dtype=torch.int64))]
    spec = _declare(loader)
    sets = generate_samples(spec)
    assert [s.name for s in sets][-3:] == ["data-0", "data-1", "data-2"]
    assert [s.sizes["batch"] for s in sets[-3:]] == [5, 9, 2]
    np.testing.assert_array_equal(sets[-3].feeds["x"], loader[0]["x"])


def test_only_the_first_batches_of_an_endless_loader_are_taken() -> None:
    rng = np.random.default_rng(1)

    def endless():  # type: ignore[no-untyped-def]
        while True:
            yield _batch(3, rng)

    assert len(_declare(endless()).data) == MAX_DATA_BATCHES


@pytest.mark.parametrize(
    ("batch", "match"),
    [
        ({"x": np.zeros((2, 4), np.float32)}, r"data batch 0: inputs \['ids'\] missing"),
        ({"x": np.zeros((2, 5), np.float32), "ids": np.zeros((2, 3), np.int64)}, "axis 1 is 5, declared 4"),
        ({"x": np.zeros((40, 4), np.float32), "ids": np.zeros((40, 3), np.int64)}, r"outside the declared range"),
        ({"x": np.zeros((2, 4), np.int64), "ids": np.zeros((2, 3), np.int64)}, "'x' is int64, declared float32"),
        ((np.zeros((2, 4), np.float32),), "holds 1 values; the model takes 2"),
    ],
)
def test_a_batch_that_does_not_fit_the_declaration_is_refused_naming_it(batch: object, match: str) -> None:
    with pytest.raises(SpecError, match=match):
        _declare([batch])


def test_npz_files_and_folders_load_as_batches(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    for i in range(3):
        np.savez(tmp_path / f"b{i}.npz", **_batch(i + 1, rng))
    batches = load_data(tmp_path)
    assert [b["x"].shape[0] for b in batches] == [1, 2, 3]
    assert len(with_data(_declare(), batches).data) == 3
    assert len(load_data(tmp_path / "b1.npz")) == 1
    assert [b["x"].shape[0] for b in load_data(tmp_path, limit=2)] == [1, 2]
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(SpecError, match=r"bad.npz: not a readable .npz"):
        load_data(tmp_path)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SpecError, match=r"holds no \.npz files"):
        load_data(tmp_path / "empty")
