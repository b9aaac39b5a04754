from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from exporters.torchscript import TorchScriptExporter
from runtimes.eager import EagerSession
from runtimes.torchscript import TorchScriptRuntime
from tests.conftest import TINY
from toolchain.core.artifact import Artifact
from toolchain.core.errors import ExportError
from toolchain.core.parity import compare
from toolchain.core.samples import generate_samples
from toolchain.core.signature import Signature, TensorSig
from toolchain.core.spec import Dim, Input, ModelSpec


def _spec(factory: Any, name: str) -> ModelSpec:
    return ModelSpec(
        name=name,
        factory=factory,
        inputs={"x": Input.normal(("batch", 4))},
        outputs=("y",),
        dims={"batch": Dim(example=3)},
    )


def _signature(out_features: int) -> Signature:
    return Signature(
        inputs=(TensorSig("x", "float32", ("batch", 4)),),
        outputs=(TensorSig("y", "float32", ("batch", out_features)),),
    )


def _export(spec: ModelSpec, workdir: Path) -> tuple[nn.Module, Artifact]:
    model = spec.build().eval()
    return model, TorchScriptExporter().export(model, spec, generate_samples(spec)[0], workdir)


def _assert_matches_eager(spec: ModelSpec, model: nn.Module, path: Path, out_features: int) -> None:
    signature = _signature(out_features)
    session = TorchScriptRuntime().load(path, signature=signature)
    eager = EagerSession(model, signature=signature)
    samples = generate_samples(spec)
    assert len({s.sizes["batch"] for s in samples}) >= 3
    for sample in samples:
        report = compare(eager.run(sample.feeds), session.run(sample.feeds), spec.tolerance, sample=sample.name)
        assert report, str(report)


class Unscriptable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        return torch.tanh(self.fc(x))


class BranchesOnData(nn.Module):
    def forward(self, x: torch.Tensor, **kwargs: Any) -> torch.Tensor:
        if x.sum() > 1000:
            return x * 0
        return x * 2


class Untraceable(nn.Module):
    def forward(self, x: torch.Tensor, **kwargs: Any) -> str:
        return str(x.shape)


def test_scriptable_model_is_scripted_and_matches_eager_on_every_size(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model, artifact = _export(TINY, tmp_path)
    assert artifact.format == "torchscript"
    assert artifact.exporter == "torch.jit.script"
    assert artifact.path == "torchscript/model.pt"
    assert artifact.files == ("torchscript/model.pt",)
    assert artifact.opset == 0
    assert artifact.export_seconds > 0
    assert not [f for f in artifact.findings if f.kind in ("script-failed", "traced")]
    assert (tmp_path / artifact.path).is_file()
    _assert_matches_eager(TINY, model, tmp_path / artifact.path, 2)


def test_unscriptable_model_falls_back_to_trace_with_findings(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = _spec(Unscriptable, "test.unscriptable")
    model, artifact = _export(spec, tmp_path)
    assert artifact.exporter == "torch.jit.trace"
    kinds = {f.kind: f for f in artifact.findings}
    assert kinds["script-failed"].message.startswith("NotSupportedError: ")
    assert "\n" not in kinds["script-failed"].message
    assert kinds["traced"].message.startswith("traced: control flow and Python-side shapes were frozen")
    _assert_matches_eager(spec, model, tmp_path / artifact.path, 2)


def test_trace_freezes_a_data_dependent_branch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    spec = _spec(BranchesOnData, "test.branch")
    model, artifact = _export(spec, tmp_path)
    assert artifact.exporter == "torch.jit.trace"
    tracer = [f for f in artifact.findings if f.kind == "warning" and "TracerWarning" in f.message]
    assert tracer, artifact.findings
    assert all("test_torchscript.py:" in f.source for f in tracer)
    assert "site-packages" not in tracer[0].source

    signature = _signature(4)
    session = TorchScriptRuntime().load(tmp_path / artifact.path, signature=signature)
    eager = EagerSession(model, signature=signature)
    rng = np.random.default_rng(0)
    export_branch = {"x": rng.standard_normal((3, 4)).astype(np.float32)}
    assert compare(eager.run(export_branch), session.run(export_branch), spec.tolerance)
    other_branch = {"x": (rng.standard_normal((3, 4)) + 1000).astype(np.float32)}
    report = compare(eager.run(other_branch), session.run(other_branch), spec.tolerance)
    assert not report, str(report)


@pytest.mark.filterwarnings("error")  # a warning escaping the capture fails the test
@pytest.mark.parametrize("factory", [TINY.factory, Unscriptable, BranchesOnData])
def test_export_prints_nothing(tmp_path: Path, capfd: pytest.CaptureFixture[str], factory: Any) -> None:
    torch.manual_seed(0)
    spec = _spec(factory, "test.quiet")
    capfd.readouterr()
    _, artifact = _export(spec, tmp_path)
    captured = capfd.readouterr()
    assert captured.out == ""
    assert captured.err == ""
    # TorchScript is deprecated: the notice is kept out of the terminal but recorded.
    assert any(f.kind == "deprecation" and "torch.jit" in f.message for f in artifact.findings)


def test_model_that_neither_scripts_nor_traces_is_an_export_error(tmp_path: Path) -> None:
    spec = _spec(Untraceable, "test.untraceable")
    with pytest.raises(
        ExportError,
        match=r"test\.untraceable: torch\.jit\.script and torch\.jit\.trace both failed: "
        r"script: NotSupportedError: .*; trace: RuntimeError: Only tensors",
    ):
        _export(spec, tmp_path)
    assert not (tmp_path / "torchscript/model.pt").exists()


def test_the_trace_path_traces_a_scriptable_model_and_says_so(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = TINY.build().eval()
    exporter = TorchScriptExporter(trace=True)
    artifact = exporter.export(model, TINY, generate_samples(TINY)[0], tmp_path)
    assert exporter.name == "torchscript_trace" and artifact.format == "torchscript"
    assert artifact.path == "torchscript_trace/model.pt" and artifact.exporter == "torch.jit.trace"
    kinds = {f.kind for f in artifact.findings}
    assert "traced" in kinds and "script-failed" not in kinds
    _assert_matches_eager(TINY, model, tmp_path / artifact.path, 2)


def test_a_model_that_does_not_trace_is_an_export_error_on_the_trace_path(tmp_path: Path) -> None:
    spec = _spec(Untraceable, "test.untraceable")
    with pytest.raises(ExportError, match=r"test.untraceable: torch.jit.trace failed: "):
        TorchScriptExporter(trace=True).export(spec.build().eval(), spec, generate_samples(spec)[0], tmp_path)


def test_a_scripted_archive_is_the_same_whatever_the_string_hashing(tmp_path: Path) -> None:
    import hashlib
    import os
    import subprocess
    import sys

    # NOTE: in a file, so torch.jit.script can read the source (a model from `python -c` is traced).
    (tmp_path / "hashing_model.py").write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.emb = torch.nn.Embedding(50, 8)\n"
        "        self.norm = torch.nn.LayerNorm(8)\n"
        "    def forward(self, ids):\n"
        "        return self.norm(self.emb(ids))\n"
    )
    code = (
        "import sys, pathlib, torch\n"
        "torch.manual_seed(0)\n"
        "from hashing_model import M\n"
        "from exporters.torchscript import TorchScriptExporter\n"
        "from toolchain.core.samples import generate_samples\n"
        "from toolchain.core.spec import ModelSpec, Input, Dim\n"
        "spec = ModelSpec(name='t.m', factory=M, inputs={'ids': Input.ids(('batch', 5), high=50)},"
        " outputs=('y',), dims={'batch': Dim(example=2)})\n"
        "sample = generate_samples(spec)[0]\n"
        "artifact = TorchScriptExporter().export(M().eval(), spec, sample, pathlib.Path(sys.argv[1]))\n"
        "assert artifact.exporter == 'torch.jit.script', artifact.exporter\n"
    )
    digests = set()
    for seed in ("1", "2", "3"):
        out = tmp_path / seed
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": f"{Path(__file__).resolve().parents[2]}:{tmp_path}"}
        subprocess.run([sys.executable, "-c", code, str(out)], env=env, check=True, capture_output=True)
        digests.add(hashlib.sha256((out / "torchscript" / "model.pt").read_bytes()).hexdigest())
    assert len(digests) == 1
