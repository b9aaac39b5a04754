"""One purpose-built model per hazard that silently breaks exports elsewhere.

For each model and each export path, the toolchain must either keep an artifact that really matches
eager at every declared size (re-checked here on fresh inputs it never saw) or reject the path with
a reason. No path may pass silently with wrong numbers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from runtimes import runtime_for
from runtimes.eager import EagerSession
from toolchain.build.pipeline import ALL_FORMATS, export_package
from toolchain.core.errors import SpecError
from toolchain.core.interface import input_signature, package_signature
from toolchain.core.parity import compare
from toolchain.core.registry import Registry
from toolchain.core.samples import generate_samples
from toolchain.core.spec import Dim, Input, ModelSpec, exportable

HAZARDS: Registry[ModelSpec] = Registry("hazard")
X = {"x": Input.normal(("batch", 4))}
DIMS = {"batch": Dim(example=3, max=16)}
POS, NEG = np.full((2, 4), 1.5, np.float32), np.full((2, 4), -1.5, np.float32)


@exportable(
    name="hazard.value_branch", inputs=X, dims=DIMS, samples={"pos": {"x": POS}, "neg": {"x": NEG}}, registry=HAZARDS
)
class ValueBranch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x * 2
        return x - 1


@exportable(name="hazard.item_as_size", inputs=X, dims=DIMS, registry=HAZARDS)
class ItemAsSize(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = int(x.abs().argmax(dim=1)[0].item()) + 1
        return x[:, :k] * 2


@exportable(
    name="hazard.hard_coded_view",
    inputs={"x": Input.normal(("batch", 8))},
    dims={"batch": Dim(example=4, min=2, max=16)},
    registry=HAZARDS,
)
class HardCodedView(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(4, -1) + 1


@exportable(name="hazard.loop_over_batch", inputs=X, dims=DIMS, registry=HAZARDS)
class LoopOverBatch(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = [x[i] * float(i + 1) for i in range(x.size(0))]
        return torch.stack(rows)


@exportable(name="hazard.train_mode", inputs=X, dims=DIMS, registry=HAZARDS)
class TrainMode(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)
        self.drop = nn.Dropout(0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.bn(self.fc(x)))


@exportable(name="hazard.inplace_view", inputs=X, dims=DIMS, registry=HAZARDS)
class InplaceOnView(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        view = y[:, 1:3]
        view.index_put_((torch.tensor([0]),), torch.ones(1, 2))
        return y * 3


@exportable(name="hazard.value_mean", inputs={"x": Input.normal(("batch", 16))}, dims=DIMS, registry=HAZARDS)
class ValueMean(nn.Module):
    """A branch on a value that the plain draws all take one way (the mean of h sits near 0.25)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(16, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x))
        if h.mean() > 0.3:
            h = h * 1.5
        return h


@exportable(
    name="hazard.shrinking_window",
    inputs={"x": Input.normal(("batch", "seq", 8))},
    dims={"batch": Dim(example=2, max=8), "seq": Dim(example=4, min=1, max=9)},
    registry=HAZARDS,
)
class ShrinkingWindow(nn.Module):
    """A forward that changes an attribute when the input is smaller than its window (as Swin-style blocks do)."""

    def __init__(self) -> None:
        super().__init__()
        self.window = 4
        self.fc = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] < self.window:
            self.window = x.shape[1]
        return self.fc(x)[:, : self.window].mean(1)


class _Encoder(nn.Module):
    """Two ``nn.TransformerEncoder`` layers taking PyTorch's key-padding mask (True at padding)."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.enc(x, src_key_padding_mask=mask)


ENCODED = {"x": Input.normal(("batch", "seq", 16))}
# NOTE: an arbitrary 0/1 mask may pad a whole row, which the fast path cannot take: it declares seq from 2
# (from 1, the export stops at the reference, naming Input.key_padding_mask; tested below).
for _name, _mask, _min, _ignored in (
    ("hazard.transformer_key_padding", Input.key_padding_mask(("batch", "seq")), 1, {}),
    ("hazard.transformer_any_mask", Input.mask(("batch", "seq")), 2, {}),
    ("hazard.transformer_padding_ignored", Input.key_padding_mask(("batch", "seq")), 1, {"output": "mask"}),
):
    exportable(
        name=_name,
        inputs={**ENCODED, "mask": _mask},
        dims={"batch": Dim(example=2, max=8), "seq": Dim(example=6, min=_min, max=12)},
        ignore_padded=_ignored,
        registry=HAZARDS,
    )(type(_name.split(".")[1], (_Encoder,), {}))


@exportable(
    name="hazard.packed_lengths",
    inputs={"x": Input.normal(("batch", "seq", 8)), "lengths": Input.lengths(("batch",), over="seq")},
    dims={"batch": Dim(example=3, max=8), "seq": Dim(example=8, min=1, max=8)},
    registry=HAZARDS,
)
class PackedLengths(nn.Module):
    """A GRU over rows packed by their lengths: a length beyond `seq` is an input it never sees."""

    def __init__(self) -> None:
        super().__init__()
        self.rnn = nn.GRU(8, 8, batch_first=True)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, h = self.rnn(packed)
        return h[0]


class SameEitherWay(nn.Module):
    """A value branch whose two sides compute the same numbers through different ops."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x + x
        return x * 2


# What each path does with each hazard on torch 2.13 (kept = matched eager everywhere; rejected = refused).
EXPECTED_KEPT = {
    "hazard.value_branch": {"torchscript"},
    "hazard.value_mean": {"torchscript"},
    "hazard.shrinking_window": {"onnx", "onnx_legacy", "torchscript_trace"},
    # NOTE: the .pt2 from the ONNX exporter's capture keeps the data-dependent size (20 fresh draws agree).
    "hazard.item_as_size": {"onnx", "torchscript", "exported_program"},
    # NOTE: the .pt2 comes from the ONNX exporter's capture (size-oblivious), which keeps view(4, -1) symbolic.
    "hazard.hard_coded_view": {"onnx", "onnx_legacy", "torchscript", "torchscript_trace", "exported_program"},
    "hazard.loop_over_batch": {"torchscript"},
    "hazard.train_mode": set(ALL_FORMATS),
    "hazard.inplace_view": {"onnx", "torchscript", "torchscript_trace", "exported_program"},
    "hazard.transformer_key_padding": {"torchscript"},
    "hazard.transformer_any_mask": {"torchscript"},
    "hazard.transformer_padding_ignored": {"onnx", "torchscript", "torchscript_trace", "exported_program"},
    "hazard.packed_lengths": {"torchscript", "torchscript_trace"},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", HAZARDS.names())
def test_no_path_passes_silently_and_no_kept_artifact_is_wrong_on_20_fresh_draws(name: str, tmp_path: Path) -> None:
    spec = HAZARDS.get(name)
    result = export_package(spec, tmp_path / "pkg")
    for path in result.paths:
        if path.status == "rejected":
            assert path.reason, path.exporter
            continue
        assert path.status == "kept"
        assert path.artifact is not None
        _recheck_on_unseen_inputs(spec, tmp_path / "pkg" / path.artifact.path, path.artifact.format)
    assert {p.exporter for p in result.kept} == EXPECTED_KEPT[name], [(p.exporter, p.reason) for p in result.paths]
    draws = _fresh_draws(spec, 20, seed=2026)
    with torch.no_grad():  # NOTE: a model freshly built for each draw is the reference, never the exported one.
        expected = [spec.build().eval()(*(torch.from_numpy(d[n]) for n in spec.inputs)).numpy() for d in draws]
    for path in result.kept:
        assert path.artifact is not None
        runtime = runtime_for(path.artifact.format)
        assert runtime is not None and result.signature is not None
        session = runtime.load(tmp_path / "pkg" / path.artifact.path, signature=result.signature)
        for i, (feeds, exp) in enumerate(zip(draws, expected, strict=True)):
            actual = session.run(feeds)
            report = compare({spec.outputs[0]: exp}, actual, spec.tolerance, sample=f"fresh-{i}", feeds=feeds)
            assert report, f"{path.exporter} kept but wrong on fresh draw {i}: {report}"


def test_a_value_branch_keeps_only_the_scripted_path_and_names_the_line(tmp_path: Path) -> None:
    result = export_package(HAZARDS.get("hazard.value_mean"), tmp_path / "pkg")
    assert {p.exporter for p in result.kept} == {"torchscript"}
    line = f"{__file__}:{ValueMean.forward.__code__.co_firstlineno + 2}"
    for name in ("onnx_legacy", "torchscript_trace"):
        reason = result.path(name).reason
        assert line in reason and "if h.mean() > 0.3:" in reason, reason
    for name in ("onnx", "exported_program"):  # torch.export's real error and the line, not its advice
        reason = result.path(name).reason
        assert "GuardOnDataDependentSymNode: Could not guard on data-dependent expression" in reason, reason
        assert f"(at {line} (`if h.mean() > 0.3:`))" in reason, reason
        assert "Next steps" not in reason and "step 1/3" not in reason, reason


def test_a_trace_that_froze_a_value_is_rejected_on_evidence_even_when_its_numbers_match(tmp_path: Path) -> None:
    registry: Registry[ModelSpec] = Registry("hazard")
    for name, allow in (("strict", False), ("allowed", True)):
        exportable(
            name=name, inputs=X, dims=DIMS, formats=["torchscript_trace"], allow_frozen_values=allow, registry=registry
        )(type(name, (SameEitherWay,), {}))
    trace = export_package(registry.get("strict"), tmp_path / "strict").path("torchscript_trace")
    assert trace.status == "rejected"
    assert "records another graph" in trace.reason and "if x.sum() > 0:" in trace.reason
    assert "allow_frozen_values=True" in trace.reason
    kept = export_package(registry.get("allowed"), tmp_path / "allowed").path("torchscript_trace")
    assert kept.status == "kept" and kept.artifact is not None
    assert any(f.kind == "frozen-value" and "spec allows" in f.message for f in kept.artifact.findings)


def _fresh_draws(spec: ModelSpec, count: int, *, seed: int) -> list[dict[str, np.ndarray]]:
    """Inputs drawn here, not by the toolchain: sizes anywhere in the declared range, values as real data has.

    Floats mix plain normal draws with real-looking ones (a few large activations, sparse zeros, a
    constant offset), so a branch on a statistic goes both ways. Masks and lengths look like a
    tokenizer's batch: every row padded at the end (PyTorch's convention: True at padding), lengths
    anywhere from 1 to the sequence.
    """
    rng = np.random.default_rng(seed)
    draws = []
    for i in range(count):
        sizes = {}
        for sym in spec.symbols():
            dim = spec.dim(sym)
            sizes[sym] = int(rng.integers(dim.min, (dim.max or dim.example * 4) + 1))
        feeds = {}
        for key, inp in spec.inputs.items():
            shape = tuple(sizes[d] if isinstance(d, str) else d for d in inp.shape)
            if inp.domain == "normal":
                x = rng.standard_normal(shape) * rng.choice([0.3, 1.0, 2.5]) + rng.choice([0.0, 0.0, 0.7, -0.7])
                if i % 4 == 3:
                    x[rng.random(shape) < 0.3] = 0.0
            elif inp.domain == "lengths":
                x = rng.integers(1, sizes[inp.over] + 1, shape)
            else:
                assert inp.domain in ("mask", "padding_mask"), "extend _fresh_draws for this domain"
                seq = shape[-1]
                valid = rng.integers(1, seq + 1, shape[:-1])[..., None]
                x = np.arange(seq) >= valid  # True at padding, at the end of each row
                if inp.domain == "padding_mask" and inp.pad == 0:
                    x = ~x
            feeds[key] = x.astype(inp.dtype)
        draws.append(feeds)
    return draws


def test_a_forward_that_changes_its_module_is_named_and_never_leaks_into_an_export(tmp_path: Path) -> None:
    result = export_package(HAZARDS.get("hazard.shrinking_window"), tmp_path / "pkg")
    stateful = [f for f in result.findings if f.kind == "stateful-forward"]
    assert stateful and "sample 'seq-1'" in stateful[0].message and "window: 4 -> 1" in stateful[0].message
    for path in result.paths:
        if path.status == "rejected" and "parity failed" in path.reason:
            assert "forward changed the model" in path.reason and "window: 4 -> 1" in path.reason, path.reason
    assert "traced: control flow" not in " ".join(p.reason for p in result.paths)


def test_the_model_is_retraced_once_per_export_for_every_trace_based_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from toolchain.build import paths

    calls = []
    real = paths.retrace_differs
    monkeypatch.setattr(paths, "retrace_differs", lambda *a: calls.append(1) or real(*a))
    # NOTE: one process: calls made in an export's worker process are not counted here.
    result = export_package(HAZARDS.get("hazard.shrinking_window"), tmp_path / "pkg", workers=1)
    assert {"onnx_legacy", "torchscript_trace"} <= {p.exporter for p in result.kept}
    assert len(calls) == 1


def test_rejection_names_the_sample_and_the_likely_cause(tmp_path: Path) -> None:
    result = export_package(HAZARDS.get("hazard.loop_over_batch"), tmp_path / "pkg", formats=["onnx", "onnx_legacy"])
    onnx = result.path("onnx")
    assert "sample 'batch-1' (batch=1)" in onnx.reason
    assert "likely cause: [specialized-dim]" in onnx.reason
    report = (tmp_path / "pkg" / "report.md").read_text() if (tmp_path / "pkg").exists() else ""
    assert report == ""  # every path rejected: nothing written
    legacy = result.path("onnx_legacy")
    assert "sample 'batch-1'" in legacy.reason


def _recheck_on_unseen_inputs(spec: ModelSpec, artifact: Path, fmt: str) -> None:
    samples = generate_samples(spec, seed=12345)
    signature = input_signature(spec)
    expected = [EagerSession(spec.build().eval(), signature=signature).run(s.feeds) for s in samples]
    runtime = runtime_for(fmt)
    assert runtime is not None
    session = runtime.load(artifact, signature=package_signature(spec, samples, expected))
    for sample, exp in zip(samples, expected, strict=True):
        report = compare(exp, session.run(sample.feeds), spec.tolerance, sample=sample.name, feeds=sample.feeds)
        assert report, f"{fmt} kept but wrong on inputs it never saw: {report}"


def test_train_mode_is_exported_in_eval_mode_and_said(tmp_path: Path) -> None:
    result = export_package(HAZARDS.get("hazard.train_mode"), tmp_path / "pkg", formats=["onnx"])
    assert result
    assert any(f.kind == "training-mode" and "drop" in f.message for f in result.findings)


def test_misspelled_dynamic_dim_is_refused_when_declared() -> None:
    with pytest.raises(SpecError, match="'bacth'"):
        exportable(name="hazard.typo", inputs=X, dims={"bacth": Dim()}, registry=HAZARDS)


def test_an_eager_fast_path_is_named_with_where_it_differs_and_how_to_opt_in(tmp_path: Path) -> None:
    result = export_package(HAZARDS.get("hazard.transformer_key_padding"), tmp_path / "pkg", formats=["onnx"])
    reason = result.path("onnx").reason
    assert "likely cause: [eager-fast-path] eager ran the fast path of enc (nn.TransformerEncoder)" in reason, reason
    assert "only at positions input 'mask' marks as padding" in reason, reason
    assert "ignore_padded={'output': 'mask'}" in reason, reason
    assert "traced" not in reason


def test_the_padding_opt_in_is_recorded_in_the_package_and_replayed_by_verify(tmp_path: Path) -> None:
    import json

    from toolchain.package.verify import verify_package

    result = export_package(HAZARDS.get("hazard.transformer_padding_ignored"), tmp_path / "pkg", formats=["onnx"])
    assert result, result.path("onnx").reason
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    assert manifest["tolerance"]["ignore_padded"] == {"output": {"input": "mask", "pad": 1}}
    ignored = [o.ignored for r in result.path("onnx").reports for o in r.outputs]
    assert all(n > 0 for n in ignored[:1]) and sum(ignored) > 0
    assert all(verify_package(tmp_path / "pkg").checks)


def test_a_length_beyond_a_declared_size_is_never_generated_and_ids_get_a_hint(tmp_path: Path) -> None:
    registry: Registry[ModelSpec] = Registry("hazard")
    exportable(
        name="as_ids",
        inputs={"x": Input.normal(("batch", "seq", 8)), "lengths": Input.ids(("batch",), low=1, high=9)},
        dims={"batch": Dim(example=3, max=8), "seq": Dim(example=8, min=1, max=8)},
        registry=registry,
    )(type("AsIds", (PackedLengths,), {}))
    result = export_package(registry.get("as_ids"), tmp_path / "pkg", formats=["torchscript"])
    stage = result.failed_stage
    assert stage is not None and stage.name == "reference"
    assert "Input.lengths(..., over='seq')" in stage.detail, stage.detail
    for sample in generate_samples(HAZARDS.get("hazard.packed_lengths")):
        lengths, seq = sample.feeds["lengths"], sample.sizes["seq"]
        assert lengths.min() >= 1 and lengths.max() <= seq, (sample.name, lengths, seq)


def test_a_mask_that_may_pad_a_whole_row_stops_at_the_reference_naming_the_padding_declaration(tmp_path: Path) -> None:
    registry: Registry[ModelSpec] = Registry("hazard")
    inputs = {**ENCODED, "mask": Input.mask(("batch", "seq"))}
    dims = {"batch": Dim(example=2, max=8), "seq": Dim(example=6, min=1, max=12)}
    exportable(name="any", inputs=inputs, dims=dims, registry=registry)(type("Any", (_Encoder,), {}))
    result = export_package(registry.get("any"), tmp_path / "pkg", formats=["onnx"])
    stage = result.failed_stage
    assert stage is not None and stage.name == "reference", result.stages
    assert (
        "sample 'seq-1'" in stage.detail and "declare it Input.padding_mask (or Input.key_padding_mask)" in stage.detail
    )
