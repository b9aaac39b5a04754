from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import TINY
from toolchain.build.optimize import PassResult, graph_digest, optimize_artifact
from toolchain.build.passes import PASSES, GraphPass, onnxscript_optimizer
from toolchain.build.paths import Replayer
from toolchain.build.pipeline import export_package
from toolchain.core.parity import ParityReport
from toolchain.core.samples import generate_samples
from toolchain.package.format import load_array, open_package
from toolchain.package.verify import verify_package


def _scale_first_weight(src: Path, dst: Path) -> None:
    model = onnx.load(str(src))
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.01), init.name))
    onnx.save(model, str(dst))


def _crash(src: Path, dst: Path) -> None:
    raise RuntimeError("this pass always crashes")


def _resave(src: Path, dst: Path) -> None:
    model = onnx.load(str(src))
    model.producer_name = "a pass that rewrites the file but not the graph"
    onnx.save(model, str(dst))


def _add_identity(src: Path, dst: Path) -> None:
    model = onnx.load(str(src))
    out = model.graph.output[0].name
    producer = next(n for n in model.graph.node if out in n.output)
    producer.output[list(producer.output).index(out)] = f"{out}_before_identity"
    model.graph.node.append(onnx.helper.make_node("Identity", [f"{out}_before_identity"], [out]))
    onnx.save(model, str(dst))


def _rename_nodes(src: Path, dst: Path) -> None:
    model = onnx.load(str(src))
    for i, node in enumerate(model.graph.node):
        node.name = f"renamed_{i}"
    onnx.save(model, str(dst))


FAULTY = GraphPass("scale-weights", ("onnx",), _scale_first_weight, "a deliberately wrong pass")
CRASHING = GraphPass("crash", ("onnx",), _crash, "a pass that raises")
RESAVE = GraphPass("resave", ("onnx",), _resave, "changes the file, not the graph")
GROW = GraphPass("grow", ("onnx",), _add_identity, "adds an Identity node")
RENAME = GraphPass("rename", ("onnx",), _rename_nodes, "renames every node")


def test_a_pass_that_breaks_parity_is_skipped_and_reported(tmp_path: Path) -> None:
    passes = (PASSES[0], FAULTY, CRASHING, *PASSES[1:])
    result = export_package(TINY, tmp_path / "pkg", formats=["onnx"], passes=passes)
    assert result, result.failed_stage
    steps = {p.name: p for p in result.path("onnx").passes}
    assert steps["scale-weights"].status == "skipped"
    assert "breaks parity on sample 'export'" in steps["scale-weights"].reason
    assert "first divergence at module `fc1`" in steps["scale-weights"].reason
    assert steps["crash"].status == "failed" and "always crashes" in steps["crash"].reason
    assert steps["onnxscript-optimizer"].status in ("kept", "no change")
    artifact = result.path("onnx").artifact
    assert artifact is not None and "scale-weights" not in artifact.passes
    assert verify_package(tmp_path / "pkg")
    report = (tmp_path / "pkg" / "report.md").read_text()
    assert "| onnx | scale-weights | skipped |" in report
    assert "## Stage drift against eager" in report
    manifest = json.loads((tmp_path / "pkg" / "manifest.json").read_text())
    assert manifest["artifacts"][0]["passes"] == list(artifact.passes)


def test_passes_are_judged_by_structure_and_parity_never_by_timing(tmp_path: Path) -> None:
    result = export_package(TINY, tmp_path / "pkg", formats=["onnx"], passes=(RESAVE, GROW, RENAME))
    assert result, result.failed_stage
    steps = {p.name: p for p in result.path("onnx").passes}
    assert steps["resave"].status == "no change"
    assert steps["resave"].reason == "the graph is the same as before the pass"
    assert steps["grow"].status == "skipped"
    assert (
        steps["grow"].reason
        == f"grows the graph from {steps['grow'].nodes_before} to {steps['grow'].nodes_after} nodes"
    )
    assert steps["rename"].status == "kept" and all(steps["rename"].reports)
    assert result.path("onnx").artifact is not None and result.path("onnx").artifact.passes == ("rename",)
    shipped = onnx.load(str(tmp_path / "pkg" / "onnx" / "model.onnx"))
    assert all(n.name.startswith("renamed_") for n in shipped.graph.node)


def test_pass_messages_carry_no_latency_or_speed_ratio(tmp_path: Path) -> None:
    result = export_package(TINY, tmp_path / "pkg", formats=["onnx"], passes=(RENAME, GROW))
    assert result, result.failed_stage
    for step in result.path("onnx").passes:
        assert " ms" not in str(step) and "x speed" not in str(step), str(step)
        assert not {"latency_before_ms", "latency_after_ms", "speedup", "seconds"} & set(step.to_dict())
    report = (tmp_path / "pkg" / "report.md").read_text()
    assert "latency ms" not in report and "slower on this host" not in report
    drift = json.loads((tmp_path / "pkg" / "report.json").read_text())["paths"][0]["drift"]
    assert drift and all("latency" not in d for d in drift)


def test_graph_digest_ignores_the_file_around_the_graph(tmp_path: Path) -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) {
        y = Relu(x)
    }
    """
    a, b, c = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    onnx.save(onnx.parser.parse_model(text), str(a))
    _resave(a, b)
    _rename_nodes(a, c)
    assert a.read_bytes() != b.read_bytes()
    assert graph_digest(a, "onnx") == graph_digest(b, "onnx") != graph_digest(c, "onnx")
    assert graph_digest(tmp_path / "missing.onnx", "onnx") == ""


def test_no_optimize_leaves_the_exported_graph(tmp_path: Path) -> None:
    result = export_package(TINY, tmp_path / "pkg", formats=["onnx"], optimize=False)
    assert result
    assert result.path("onnx").passes == []
    assert result.stage("optimize").detail == "skipped (--no-optimize)"


def test_onnxscript_pass_folds_constants(tmp_path: Path) -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2] x) => (float[2] y) {
        two = Constant <value = float[2] {1.0, 1.0}> ()
        c = Add(two, two)
        y = Mul(x, c)
    }
    """
    src, dst = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(onnx.parser.parse_model(text), str(src))
    onnxscript_optimizer(src, dst)
    ops = [n.op_type for n in onnx.load(str(dst)).graph.node]
    assert ops == ["Mul"]


@pytest.mark.parametrize("name", [p.name for p in PASSES])
def test_every_pass_has_a_detail_for_the_report(name: str) -> None:
    graph_pass = next(p for p in PASSES if p.name == name)
    assert graph_pass.detail and graph_pass.formats


def test_attention_is_fused_into_multi_head_attention_and_still_matches(tmp_path: Path) -> None:
    import torch
    import torch.nn.functional as F
    from torch import nn

    from toolchain import Dim, Input, exportable
    from toolchain.core.registry import Registry

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = nn.LayerNorm(32)
            self.qkv = nn.Linear(32, 96)
            self.proj = nn.Linear(32, 32)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            b, s, _ = x.shape
            qkv = self.qkv(self.norm(x)).reshape(b, s, 3, 4, 8).permute(2, 0, 3, 1, 4)
            att = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
            return x + self.proj(att.transpose(1, 2).reshape(b, s, 32))

    registry: Registry = Registry("model")
    exportable(
        name="t.attention",
        inputs={"x": Input.normal(("batch", "seq", 32))},
        dims={"batch": Dim(example=2, max=8), "seq": Dim(example=6, max=16)},
        registry=registry,
    )(Attention)
    result = export_package(registry.get("t.attention"), tmp_path / "pkg", formats=["onnx"])
    assert result, result.failed_stage
    fusion = next(p for p in result.path("onnx").passes if p.name == "onnxscript-ort-fusions")
    assert fusion.status in ("kept", "skipped") and "parity" not in fusion.reason, fusion.reason
    assert fusion.nodes_after < fusion.nodes_before
    if fusion.status == "kept":
        ops = {n.op_type for n in onnx.load(str(tmp_path / "pkg" / "onnx" / "model.onnx")).graph.node}
        assert "MultiHeadAttention" in ops


def test_a_variant_that_cannot_be_repaired_names_the_stage_and_module_that_drift(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from toolchain.build import precision

    def scale_fc2(src: Path, dst: Path, keep: frozenset[str], calibration: object) -> None:
        model = onnx.load(str(src))
        init = next(t for t in model.graph.initializer if t.name == "fc2.weight")
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.5), init.name))
        onnx.save(model, str(dst))

    broken = precision.Variant("fp16", "fp16", scale_fc2, lambda op: False)
    monkeypatch.setitem(precision.VARIANTS, "fp16", broken)
    result = export_package(TINY, tmp_path / "pkg", formats=["onnx"], precisions=["fp16"])
    assert result
    fp16 = result.variant("fp16")
    assert fp16.status == "rejected"
    assert "exported and optimised graphs match eager, the fp16 variant drifts first" in fp16.reason
    assert fp16.localization is not None and fp16.localization.module == "fc2"
    assert not (tmp_path / "pkg" / "onnx" / "model.fp16.onnx").exists()


def _tag_doc(src: Path, dst: Path) -> None:
    model = onnx.load(str(src))
    node = model.graph.node[0]
    node.name = node.name + "_tagged"
    onnx.save(model, str(dst))


TAG = GraphPass("tag", ("onnx",), _tag_doc, "renames the first node")


def _replays(passes: tuple[GraphPass, ...], tmp_path: Path) -> tuple[list[Path], list[PassResult]]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    package = tmp_path / "pkg"
    assert export_package(TINY, package, formats=["onnx"], optimize=False)
    model = tmp_path / "model.onnx"
    model.write_bytes((package / "onnx" / "model.onnx").read_bytes())
    replayed: list[Path] = []
    opened = open_package(package)
    samples = generate_samples(TINY)
    expected = [{k: load_array(package / v) for k, v in s["expected"].items()} for s in opened.samples]
    replayer = Replayer(TINY, samples, expected, opened.signature)

    def check(path: Path) -> list[ParityReport]:
        replayed.append(path)
        return replayer.checker("onnx")(path)

    return replayed, optimize_artifact(model, "onnx", check=check, passes=passes)


def test_passes_that_keep_parity_are_replayed_once_together(tmp_path: Path) -> None:
    replayed, steps = _replays((RENAME, TAG), tmp_path)
    assert [s.status for s in steps] == ["kept", "kept"]
    assert len(replayed) == 1
    assert steps[0].reason == "replayed together with the passes after it" and all(steps[0].reports)


def test_a_breaking_pass_in_a_run_is_skipped_and_the_passes_after_it_run_again(tmp_path: Path) -> None:
    _, steps = _replays((RENAME, FAULTY, TAG), tmp_path)
    assert [(s.name, s.status) for s in steps] == [("rename", "kept"), ("scale-weights", "skipped"), ("tag", "kept")]
    assert "breaks parity on sample 'export'" in steps[1].reason
    shipped = onnx.load(str(tmp_path / "model.onnx"))
    assert all(n.name.startswith("renamed_") for n in shipped.graph.node)
    assert shipped.graph.node[0].name.endswith("_tagged")
    weights = {t.name: numpy_helper.to_array(t) for t in shipped.graph.initializer}
    original = onnx.load(str(tmp_path / "pkg" / "onnx" / "model.onnx"))
    assert all(np.array_equal(weights[t.name], numpy_helper.to_array(t)) for t in original.graph.initializer)


def test_a_milder_fallback_runs_only_where_the_full_pass_broke_the_graph(tmp_path: Path) -> None:
    milder = GraphPass("milder", ("onnx",), _rename_nodes, "renames every node", fallback_of="full")
    _, steps = _replays((GraphPass("full", ("onnx",), _resave, "rewrites nothing"), milder), tmp_path / "a")
    assert [(s.name, s.status) for s in steps] == [("full", "no change")]
    _, steps = _replays((GraphPass("full", ("onnx",), _scale_first_weight, "breaks parity"), milder), tmp_path / "b")
    assert [(s.name, s.status) for s in steps] == [("full", "skipped"), ("milder", "kept")]


def test_a_pass_the_exporter_already_applied_is_not_run_again(tmp_path: Path) -> None:
    calls: list[str] = []

    def counted(src: Path, dst: Path) -> None:
        calls.append(src.parent.parent.name)
        onnxscript_optimizer(src, dst)

    optimizer = GraphPass("onnxscript-optimizer", ("onnx",), counted, done_by=("torch.onnx.export(dynamo=True)",))
    result = export_package(TINY, tmp_path / "pkg", formats=["onnx", "onnx_legacy"], passes=(optimizer,), workers=1)
    assert result, result.failed_stage
    dynamo = result.path("onnx").passes[0]
    assert dynamo.status == "no change" and dynamo.reason == "not run: torch.onnx.export(dynamo=True) applied it"
    assert dynamo.nodes_before == dynamo.nodes_after > 0
    # NOTE: the legacy exporter does not end with the optimiser, so there it runs.
    assert result.path("onnx_legacy").passes[0].status in ("kept", "no change")
    assert len(calls) == 1


def test_a_pass_whose_file_does_not_load_back_fails_without_naming_a_scratch_file(tmp_path: Path) -> None:
    def unloadable(src: Path, dst: Path) -> None:
        dst.write_bytes(b"PK\x03\x04 not a TorchScript archive")

    passes = (PASSES[-2], GraphPass("unloadable", ("torchscript",), unloadable, "writes what no reader takes"))
    result = export_package(TINY, tmp_path / "pkg", formats=["torchscript"], passes=passes, workers=1)
    assert result, result.failed_stage
    freeze, broken = result.path("torchscript").passes
    assert freeze.status == "kept"
    assert broken.status == "failed"
    assert broken.reason.startswith("the file it wrote does not load back (RuntimeError: ")
    assert ".model-passes" not in broken.reason and str(tmp_path) not in broken.reason
    assert not broken.reports  # NOTE: judged on reading the file, no replay
    report = (tmp_path / "pkg" / "report.md").read_text()
    assert f"| torchscript | unloadable | failed | {broken.nodes_before} -> - |" in report
