from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from exporters.exported_program import ExportedProgramExporter
from runtimes.eager import EagerSession
from runtimes.exported_program import ExportedProgramRuntime, ExportedProgramSession
from tests.conftest import TINY
from toolchain.core.errors import FeedError, InferenceError, RuntimeLoadError
from toolchain.core.parity import compare
from toolchain.core.samples import generate_samples
from toolchain.core.signature import Signature, TensorSig
from toolchain.core.spec import Dim, ModelSpec

SIGNATURE = Signature(
    inputs=(TensorSig("x", "float32", ("batch", 4)),),
    outputs=(TensorSig("y", "float32", ("batch", 2)),),
)


def _export(spec: ModelSpec, workdir: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = spec.build().eval()
    artifact = ExportedProgramExporter().export(model, spec, generate_samples(spec)[0], workdir)
    return model, workdir / artifact.path


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    return _export(TINY, tmp_path_factory.mktemp("pt2"))


@pytest.fixture
def session(exported: tuple[torch.nn.Module, Path]) -> ExportedProgramSession:
    return ExportedProgramRuntime().load(exported[1], signature=SIGNATURE)


def test_round_trip_matches_eager_at_every_size(
    exported: tuple[torch.nn.Module, Path], session: ExportedProgramSession
) -> None:
    eager = EagerSession(exported[0], signature=SIGNATURE)
    samples = generate_samples(TINY, seed=1)
    assert sorted({s.sizes["batch"] for s in samples}) == [1, 3, 7]
    for sample in samples:
        report = compare(eager.run(sample.feeds), session.run(sample.feeds), TINY.tolerance, sample=sample.name)
        assert report, report


def test_runtime_describes_itself() -> None:
    runtime = ExportedProgramRuntime()
    assert (runtime.name, runtime.formats, runtime.runs_code) == ("exported_program", ("exported_program",), True)
    assert runtime.available()


def test_wrong_dtype_is_a_feed_error(session: ExportedProgramSession) -> None:
    with pytest.raises(FeedError, match=r"input 'x': expected float32\[batch, 4\], got float64\[2, 4\]"):
        session.run({"x": np.ones((2, 4), np.float64)})


def test_size_outside_the_range_is_an_inference_error(tmp_path: Path) -> None:
    spec = ModelSpec(
        name="test.capped",
        factory=TINY.factory,
        inputs=TINY.inputs,
        outputs=("y",),
        dims={"batch": Dim(example=3, max=5)},
    )
    _, path = _export(spec, tmp_path)
    session = ExportedProgramRuntime().load(path, signature=SIGNATURE)
    assert session.run({"x": np.ones((5, 4), np.float32)})["y"].shape == (5, 2)
    with pytest.raises(InferenceError, match=r"model\.pt2: exported program failed: AssertionError: .*<= 5"):
        session.run({"x": np.ones((6, 4), np.float32)})


def test_load_errors(tmp_path: Path, exported: tuple[torch.nn.Module, Path], capfd: pytest.CaptureFixture[str]) -> None:
    runtime = ExportedProgramRuntime()
    with pytest.raises(RuntimeLoadError, match=r"absent\.pt2: no such exported program"):
        runtime.load(tmp_path / "absent.pt2", signature=SIGNATURE)
    garbage = tmp_path / "garbage.pt2"
    garbage.write_bytes(b"not a zip archive")
    with pytest.raises(RuntimeLoadError, match=r"garbage\.pt2: torch\.export\.load could not load it"):
        runtime.load(garbage, signature=SIGNATURE)
    captured = capfd.readouterr()
    assert captured.out + captured.err == ""
    with pytest.raises(RuntimeLoadError, match="need the package signature"):
        runtime.load(exported[1])


def test_each_symbolic_expression_is_parsed_once_per_load_with_the_same_program(
    exported: tuple[torch.nn.Module, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from torch._export.serde.serialize import GraphModuleDeserializer

    import runtimes.exported_program as module

    parsed: list[str] = []
    original = GraphModuleDeserializer._parse_sym_expr

    def counted(self, expr_str, hint=None):  # type: ignore[no-untyped-def]
        parsed.append(expr_str)
        return original(self, expr_str, hint)

    monkeypatch.setattr(GraphModuleDeserializer, "_parse_sym_expr", counted)
    plain = torch.export.load(str(exported[1]))
    plain_calls = len(parsed)
    parsed.clear()
    with module._parsed_once():
        once = torch.export.load(str(exported[1]))
    assert GraphModuleDeserializer._parse_sym_expr is counted
    assert 0 < len(parsed) < plain_calls
    assert str(once.graph) == str(plain.graph)
    assert once.range_constraints == plain.range_constraints
    x = torch.randn(5, 4)
    assert torch.equal(once.module()(x), plain.module()(x))
