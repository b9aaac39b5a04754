from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnxscript.function_libs.torch_lib.ops.core import aten_embedding_bag_padding_idx
from torch import nn

import zoo  # noqa: F401 - registers the zoo
from exporters.onnx import OnnxExporter
from runtimes.ort import OrtRuntime
from toolchain.core.parity import compare
from toolchain.core.samples import SampleSet, generate_samples, make_feed
from toolchain.core.spec import SPECS, Dim, Input, ModelSpec

ROWS, WIDTH, BAG, PAD = 12, 3, 4, 7

# NOTE: bags [0:0] empty, [0:3], [3:4] of one padding id, [4:4] empty, [4:9], [9:10] of one id, then two
# empty bags at the end (one starts at N).
EDGE_IDS = np.array([3, 5, 1, PAD, 2, PAD, 4, 0, 9, 11], dtype=np.int64)
EDGE_OFFSETS = np.array([0, 0, 3, 4, 4, 9, 10, 10], dtype=np.int64)
EDGE_FIXED = np.array([[PAD, PAD, PAD, PAD], [1, PAD, 2, 3], [4, 4, 0, 11]], dtype=np.int64)


def _bags(mode: str, padding_idx: int | None = None, include_last_offset: bool = False) -> nn.EmbeddingBag:
    bags = nn.EmbeddingBag(ROWS, WIDTH, mode=mode, padding_idx=padding_idx, include_last_offset=include_last_offset)
    nn.init.normal_(bags.weight)  # NOTE: also the padding row, which would otherwise be zero and hide mistakes
    return bags


class RaggedBags(nn.Module):
    def __init__(self, mode: str = "sum", padding_idx: int | None = None, include_last_offset: bool = False) -> None:
        super().__init__()
        self.bags = _bags(mode, padding_idx, include_last_offset)

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        if self.bags.include_last_offset:
            offsets = torch.cat([offsets, offsets.new_full((1,), ids.shape[0])])
        return self.bags(ids, offsets)


class WeightedRaggedBags(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bags = _bags("sum")

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.bags(ids, offsets, per_sample_weights=weights)


class FixedBags(nn.Module):
    def __init__(self, mode: str = "sum", padding_idx: int | None = None) -> None:
        super().__init__()
        self.bags = _bags(mode, padding_idx)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.bags(ids)


class WeightedFixedBags(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.bags = _bags("sum")

    def forward(self, ids: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.bags(ids, per_sample_weights=weights)


class PrivateOpBags(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(ROWS, WIDTH))

    def forward(self, ids: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        # NOTE: in ``_embedding_bag`` a padding_idx of -1 means none, unlike in ``embedding_bag.padding_idx``.
        return torch.ops.aten._embedding_bag(self.weight, ids, offsets, False, 1, False, None, False, -1)[0]


def _ragged_spec(name: str, factory: Callable[[], nn.Module], *, weighted: bool = False) -> ModelSpec:
    inputs = {"ids": Input.ids(("nnz",), high=ROWS), "offsets": Input.offsets(("bags",), over="nnz")}
    edges: dict[str, np.ndarray] = {"ids": EDGE_IDS, "offsets": EDGE_OFFSETS}
    if weighted:
        inputs["weights"] = Input.normal(("nnz",))
        edges["weights"] = np.linspace(-1, 2, len(EDGE_IDS), dtype=np.float32)
    return ModelSpec(
        name=name,
        factory=factory,
        inputs=inputs,
        outputs=("pooled",),
        dims={"nnz": Dim(example=10), "bags": Dim(example=5, max=9)},
        samples={"edges": edges},
    )


def _fixed_spec(name: str, factory: Callable[[], nn.Module], *, weighted: bool = False) -> ModelSpec:
    inputs = {"ids": Input.ids(("batch", BAG), high=ROWS)}
    edges: dict[str, np.ndarray] = {"ids": EDGE_FIXED}
    if weighted:
        inputs["weights"] = Input.normal(("batch", BAG))
        edges["weights"] = np.linspace(-1, 2, EDGE_FIXED.size, dtype=np.float32).reshape(EDGE_FIXED.shape)
    return ModelSpec(
        name=name,
        factory=factory,
        inputs=inputs,
        outputs=("pooled",),
        dims={"batch": Dim(example=3, max=17)},
        samples={"edges": edges},
    )


def _export(spec: ModelSpec, workdir: Path, exporter: OnnxExporter | None = None) -> tuple[nn.Module, Path]:
    model = spec.build().eval()
    artifact = (exporter or OnnxExporter()).export(model, spec, generate_samples(spec)[0], workdir)
    return model, workdir / artifact.path


def _eager(model: nn.Module, spec: ModelSpec, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.no_grad():
        result = model(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in spec.inputs))
    return {spec.outputs[0]: result.numpy()}


def _at_batch_sizes(spec: ModelSpec, *sizes: int) -> list[SampleSet]:
    export = generate_samples(spec)[0]
    rng = np.random.default_rng(0)
    resized = [{**export.sizes, "batch": size} for size in sizes]
    feeds = [{n: make_feed(inp, s, rng) for n, inp in spec.inputs.items()} for s in resized]
    return [export, *(SampleSet(f"batch-{b}", s, f) for b, s, f in zip(sizes, resized, feeds, strict=True))]


def _assert_matches_eager(
    spec: ModelSpec, model: nn.Module, path: Path, *, samples: list[SampleSet] | None = None
) -> None:
    session = OrtRuntime().load(path)
    for sample in generate_samples(spec) if samples is None else samples:
        report = compare(
            _eager(model, spec, sample.feeds), session.run(sample.feeds), spec.tolerance, sample=sample.name
        )
        assert report, str(report)


def _op_types(path: Path) -> set[str]:
    model = onnx.load(str(path), load_external_data=False)
    return {n.op_type for n in model.graph.node} | {n.op_type for f in model.functions for n in f.node}


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, PAD])
@pytest.mark.parametrize("include_last_offset", [False, True])
def test_ragged_bags_match_eager_without_a_loop(
    mode: str, padding_idx: int | None, include_last_offset: bool, tmp_path: Path
) -> None:
    spec = _ragged_spec("test.ragged", lambda: RaggedBags(mode, padding_idx, include_last_offset))
    model, path = _export(spec, tmp_path)
    assert "Loop" not in _op_types(path)
    _assert_matches_eager(spec, model, path)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
@pytest.mark.parametrize("padding_idx", [None, PAD])
def test_fixed_bags_match_eager_without_a_loop(mode: str, padding_idx: int | None, tmp_path: Path) -> None:
    spec = _fixed_spec("test.fixed", lambda: FixedBags(mode, padding_idx))
    model, path = _export(spec, tmp_path)
    ops = _op_types(path)
    assert "Loop" not in ops
    if padding_idx is None:
        assert "ScatterND" not in ops  # NOTE: fixed-length bags reduce over a reshape, no scatter needed
    _assert_matches_eager(spec, model, path)


@pytest.mark.parametrize(
    "spec",
    [
        _ragged_spec("test.weighted_ragged", WeightedRaggedBags, weighted=True),
        _fixed_spec("test.weighted_fixed", WeightedFixedBags, weighted=True),
    ],
    ids=["ragged", "fixed"],
)
def test_per_sample_weights_match_eager(spec: ModelSpec, tmp_path: Path) -> None:
    model, path = _export(spec, tmp_path)
    assert "Loop" not in _op_types(path)
    _assert_matches_eager(spec, model, path)


def test_private_op_reads_negative_padding_idx_as_none(tmp_path: Path) -> None:
    spec = _ragged_spec("test.private", PrivateOpBags)
    model, path = _export(spec, tmp_path)
    assert "Loop" not in _op_types(path)
    _assert_matches_eager(spec, model, path, samples=[s for s in generate_samples(spec) if s.name == "edges"])


def test_users_translation_wins_and_the_default_can_be_turned_off(tmp_path: Path) -> None:
    spec = _ragged_spec("test.ragged", RaggedBags)
    table = {torch.ops.aten.embedding_bag.padding_idx: aten_embedding_bag_padding_idx}
    _, users = _export(spec, tmp_path / "users", OnnxExporter(custom_translation_table=table))
    _, off = _export(spec, tmp_path / "off", OnnxExporter(loop_free_embedding_bag=False))
    assert "Loop" in _op_types(users)
    assert "Loop" in _op_types(off)


@pytest.mark.parametrize("name", ["feed.dlrm_small", "feed.dlrm_ragged"])
def test_dlrm_exports_without_a_loop_and_matches_eager_at_other_sizes(name: str, tmp_path: Path) -> None:
    spec = SPECS.get(name)
    model, path = _export(spec, tmp_path)
    assert "Loop" not in _op_types(path)
    _assert_matches_eager(spec, model, path, samples=_at_batch_sizes(spec, 1, 17))
