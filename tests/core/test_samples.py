from __future__ import annotations

import numpy as np
import pytest

from toolchain.core.errors import SpecError
from toolchain.core.registry import Registry
from toolchain.core.samples import generate_samples
from toolchain.core.spec import Dim, Input, ModelSpec, exportable


def _spec(inputs: dict[str, Input | tuple[int | str, ...]], dims: dict[str, Dim] | None = None) -> ModelSpec:
    reg: Registry[ModelSpec] = Registry("model")

    def make() -> None:
        return None

    exportable(name="samples.model", inputs=inputs, dims=dims or {}, outputs=["out"], registry=reg)(make)
    return reg.get("samples.model")


@pytest.fixture
def spec() -> ModelSpec:
    return _spec(
        {
            "tokens": Input.ids(("batch", "seq"), low=3, high=50),
            "mask": Input.mask(("batch", "seq")),
            "dense": Input.uniform(("batch", 7), low=-2.0, high=0.5, dtype="float64"),
            "noise": ("seq", 3),
            "pos": Input.ids(("seq",), high=1000, dtype="int32"),
        },
        dims={"batch": Dim(example=3), "seq": Dim(example=6, min=2, max=10)},
    )


def test_first_set_is_export_with_every_dim_at_example_size(spec: ModelSpec) -> None:
    first = generate_samples(spec, seed=0)[0]
    assert first.name == "export"
    assert dict(first.sizes) == {"batch": 3, "seq": 6}


def test_every_symbolic_dim_gets_at_least_two_other_sizes_including_min(spec: ModelSpec) -> None:
    names = [s.name for s in generate_samples(spec, seed=0)]
    assert names == ["export", "batch-1", "batch-7", "seq-2", "seq-10", "values-wide", "values-shifted"]
    assert len(names) == len(set(names))


def test_default_dim_sizes_include_one() -> None:
    names = [s.name for s in generate_samples(_spec({"x": ("n", "m")}), seed=0)]
    assert names == ["export", "n-1", "n-9", "m-1", "m-9", "values-wide", "values-shifted"]


def test_each_size_set_changes_exactly_one_dim_and_value_draws_none(spec: ModelSpec) -> None:
    sets = generate_samples(spec, seed=0)
    base = sets[0].sizes
    for s in sets[1:]:
        changed = [sym for sym in base if s.sizes[sym] != base[sym]]
        if s.name.startswith("values-"):
            assert changed == []
            continue
        sym = s.name.rsplit("-", 1)[0]
        assert changed == [sym]
        assert s.name == f"{sym}-{s.sizes[sym]}"


def test_shapes_resolve_from_sizes(spec: ModelSpec) -> None:
    for s in generate_samples(spec, seed=0):
        b, n = s.sizes["batch"], s.sizes["seq"]
        assert s.feeds["tokens"].shape == (b, n)
        assert s.feeds["mask"].shape == (b, n)
        assert s.feeds["dense"].shape == (b, 7)
        assert s.feeds["noise"].shape == (n, 3)
        assert s.feeds["pos"].shape == (n,)
        assert list(s.feeds) == list(spec.inputs)


def test_dtypes_match_declared(spec: ModelSpec) -> None:
    for s in generate_samples(spec, seed=0):
        for key, inp in spec.inputs.items():
            assert s.feeds[key].dtype == np.dtype(inp.dtype), key


def test_values_respect_domains(spec: ModelSpec) -> None:
    for s in generate_samples(spec, seed=5):
        tokens, pos = s.feeds["tokens"], s.feeds["pos"]
        assert tokens.min() >= 3 and tokens.max() < 50
        assert pos.min() >= 0 and pos.max() < 1000
        assert set(np.unique(s.feeds["mask"].astype(np.int64))) <= {0, 1}
        dense = s.feeds["dense"]
        assert dense.min() >= -2.0 and dense.max() < 0.5
        assert np.isfinite(s.feeds["noise"]).all()


def test_large_sets_cover_the_whole_ids_range_and_both_mask_values() -> None:
    spec = _spec({"ids": Input.ids(("n", 256), high=5), "m": Input.mask(("n", 256), dtype="float32")})
    feeds = generate_samples(spec, seed=1)[0].feeds
    assert set(np.unique(feeds["ids"])) == {0, 1, 2, 3, 4}
    assert set(np.unique(feeds["m"])) == {0.0, 1.0}


@pytest.mark.parametrize("dtype", ["float32", "float64", "float16"])
def test_uniform_values_stay_below_high(dtype: str) -> None:
    spec = _spec({"u": Input.uniform(("n", 4096), low=0.0, high=1.0, dtype=dtype)})
    for s in generate_samples(spec, seed=0):
        assert s.feeds["u"].min() >= 0.0 and s.feeds["u"].max() < 1.0


def test_same_seed_is_identical_and_other_seed_differs(spec: ModelSpec) -> None:
    a, b, c = (generate_samples(spec, seed=s) for s in (7, 7, 8))
    for sa, sb, sc in zip(a, b, c, strict=True):
        assert sa.name == sb.name == sc.name
        for key in spec.inputs:
            np.testing.assert_array_equal(sa.feeds[key], sb.feeds[key])
        assert not np.array_equal(sa.feeds["noise"], sc.feeds["noise"])
        assert not np.array_equal(sa.feeds["dense"], sc.feeds["dense"])


def test_adding_a_size_leaves_the_other_sets_values_alone() -> None:
    def spec_with(dims: dict[str, Dim]) -> ModelSpec:
        return ModelSpec(name="t.stable", factory=object, inputs={"x": Input.normal(("batch", 4))}, dims=dims)

    small = {s.name: s for s in generate_samples(spec_with({"batch": Dim(example=3)}), seed=5)}
    large = {s.name: s for s in generate_samples(spec_with({"batch": Dim(example=3, max=40)}), seed=5)}
    assert set(large) - set(small) == {"batch-40"}
    for name, sample in small.items():
        np.testing.assert_array_equal(sample.feeds["x"], large[name].feeds["x"])


def _value_sets(spec: ModelSpec) -> dict[str, dict[str, np.ndarray]]:
    return {s.name: dict(s.feeds) for s in generate_samples(spec, seed=0) if s.name.startswith("values-")}


def test_value_draws_reach_other_scales_and_exact_zeros() -> None:
    spec = _spec({"x": Input.normal(("n", 64))}, dims={"n": Dim(example=8)})
    plain = generate_samples(spec, seed=0)[0].feeds["x"]
    draws = _value_sets(spec)
    assert set(draws) == {"values-wide", "values-shifted"}
    assert draws["values-wide"]["x"].std() > 2 * plain.std()
    assert draws["values-shifted"]["x"].mean() > 0.5 > abs(plain.mean())
    assert all((d["x"] == 0).any() for d in draws.values())


def test_value_draws_hold_both_ends_of_an_id_range_and_the_padding_id() -> None:
    spec = _spec({"ids": Input.ids(("n", 32), low=0, high=50, padding_id=7)}, dims={"n": Dim(example=4)})
    wide = _value_sets(spec)["values-wide"]["ids"]
    assert {0, 49, 7} <= set(wide.ravel().tolist())
    assert wide.min() >= 0 and wide.max() < 50
    with pytest.raises(SpecError, match="padding id 60"):
        Input.ids(("n",), high=50, padding_id=60)


@pytest.mark.parametrize(
    ("declared", "pad", "start"),
    [
        (Input.padding_mask(("b", "s")), 0, False),
        (Input.key_padding_mask(("b", "s")), 1, False),
        (Input.padding_mask(("b", "s"), side="start", min_valid=2), 0, True),
    ],
)
def test_padding_masks_keep_their_convention_in_every_set(declared: Input, pad: int, start: bool) -> None:
    spec = _spec({"m": declared}, dims={"b": Dim(example=6), "s": Dim(example=5, min=1, max=9)})
    lengths_seen = set()
    for s in generate_samples(spec, seed=0):
        mask = s.feeds["m"].astype(np.int64)
        valid = mask != pad
        seq = mask.shape[-1]
        lengths = valid.sum(-1)
        assert (lengths >= min(declared.min_valid, seq)).all(), s.name
        for row, n in zip(valid, lengths, strict=True):  # one contiguous valid run on the declared side
            expected = np.arange(seq)[::-1] < n if start else np.arange(seq) < n
            assert (row == expected).all(), s.name
        lengths_seen |= {(int(n), seq) for n in lengths}
    assert any(n == seq for n, seq in lengths_seen) and any(n < seq for n, seq in lengths_seen)


def test_an_arbitrary_mask_still_draws_all_valid_rows_and_runs_from_either_end() -> None:
    spec = _spec({"m": Input.mask(("b", 12))}, dims={"b": Dim(example=32)})
    rows = np.concatenate([d["m"] for d in _value_sets(spec).values()]).astype(bool)
    assert any(r.all() for r in rows)
    assert any(r[0] and not r[-1] and r.sum() == np.argmin(r) for r in rows)  # a run from the start
    assert any(r[-1] and not r[0] for r in rows)


def test_an_arbitrary_mask_pads_a_whole_value_draw_on_one_side_as_a_tokenizer_does() -> None:
    spec = _spec({"m": Input.mask(("b", 9))}, dims={"b": Dim(example=16)})
    draws = _value_sets(spec)
    for name, feeds in draws.items():
        rows = feeds["m"].astype(bool)
        if name == "values-wide":
            assert all(r.sum() >= 1 and r[: r.sum()].all() for r in rows), rows  # ones from the start
        else:
            assert all(r.any() and not r.all() and r[-r.sum() :].all() for r in rows), rows  # ones up to the end


def test_lengths_never_exceed_the_dim_they_count_in_any_set() -> None:
    spec = _spec(
        {"x": Input.normal(("b", "s", 2)), "n": Input.lengths(("b",), over="s", min_valid=2)},
        dims={"b": Dim(example=6), "s": Dim(example=5, min=1, max=9)},
    )
    seen = set()
    for s in generate_samples(spec, seed=3):
        n, size = s.feeds["n"], s.sizes["s"]
        assert n.dtype == np.int64 and n.min() >= min(2, size) and n.max() <= size, (s.name, n)
        seen |= {(int(v), size) for v in n}
    assert (5, 5) in seen and (2, 5) in seen and (1, 1) in seen
