from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from tests.conftest import TINY
from toolchain.build.pipeline import export_package
from toolchain.diagnose.bisect import first_divergence


def _scaled_without_metadata(src: Path, dst: Path, weight: str) -> None:
    model = onnx.load(str(src))
    init = next(t for t in model.graph.initializer if t.name == weight)
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(1.5), init.name))
    for node in model.graph.node:
        del node.metadata_props[:]
    onnx.save(model, str(dst))


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bisect") / "pkg"
    assert export_package(TINY, out, formats=["onnx"], optimize=False)
    return out / "onnx" / "model.onnx"


@pytest.mark.parametrize(("weight", "module"), [("fc1.weight", "fc1"), ("fc2.weight", "fc2")])
def test_bisection_finds_the_first_node_and_names_the_reference_scope(
    exported: Path, tmp_path: Path, weight: str, module: str
) -> None:
    bad = tmp_path / "bad.onnx"
    _scaled_without_metadata(exported, bad, weight)
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)}
    found = first_divergence(exported, bad, feeds, limit=1e-4)
    assert found is not None
    assert found.module == module and found.op_type in ("Gemm", "MatMul")
    assert f"in module `{module}`" in str(found) and found.runs >= 2


def test_identical_graphs_have_no_divergence(exported: Path) -> None:
    feeds = {"x": np.ones((2, 4), np.float32)}
    assert first_divergence(exported, exported, feeds, limit=1e-6) is None


def test_a_variant_without_scopes_is_localised_by_bisection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from toolchain.build import precision

    def broken(src: Path, dst: Path, keep: frozenset[str], calibration: object) -> None:
        _scaled_without_metadata(src, dst, "fc2.weight")

    monkeypatch.setitem(precision.VARIANTS, "fp16", precision.Variant("fp16", "fp16", broken, lambda op: False))
    result = export_package(TINY, tmp_path / "pkg", formats=["onnx"], precisions=["fp16"])
    fp16 = result.variant("fp16")
    assert fp16.status == "rejected"
    assert "first divergence from the reference graph at node" in fp16.reason
    assert "in module `fc2`" in fp16.reason
