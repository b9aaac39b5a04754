from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

import zoo  # noqa: F401
from toolchain.build.pipeline import export_package
from toolchain.cli import app
from toolchain.core.spec import FORMATS, SPECS
from toolchain.package.verify import verify_package

SERVICES = ("feed", "face", "image", "search", "translation", "integrity", "speech")
ZOO = [name for name in SPECS.names() if name.split(".")[0] in SERVICES]


def test_every_service_has_a_model() -> None:
    assert {name.split(".")[0] for name in ZOO} == set(SERVICES)


@pytest.mark.parametrize("name", ZOO)
def test_paths_left_out_are_explained_in_the_model_docstring(name: str) -> None:
    spec = SPECS.get(name)
    module_doc = importlib.import_module(spec.factory.__module__).__doc__ or ""
    assert module_doc, f"{spec.factory.__module__} needs a docstring naming its service and hazards"
    for fmt in set(FORMATS) - set(spec.formats):
        docs = (spec.factory.__doc__ or "") + module_doc
        assert re.search(rf"\b{fmt}\b", docs), f"{name} leaves out {fmt} without saying why in a docstring"


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_export_and_verify_every_zoo_model(name: str, tmp_path: Path) -> None:
    spec = SPECS.get(name)
    result = export_package(spec, tmp_path / "pkg", precisions=("fp32", "fp16", "int8"))
    assert result, [(s.name, s.status, s.detail) for s in result.stages]
    assert [v.variant for v in result.variants] == ["fp16", "int8-dynamic", "int8-static"]
    for variant in result.variants:
        assert variant.status == "kept" or variant.reason, variant.name
    for path in result.kept:
        assert path.drift and path.drift[0].stage == "exported"
        assert all(
            p.status in ("kept", "no change", "skipped", "failed") and (p.status == "kept" or p.reason)
            for p in path.passes
        )
    kept = [p.exporter for p in result.kept]
    assert kept == list(spec.formats), [(p.exporter, p.reason) for p in result.paths]
    for sym in spec.symbols():
        seen = sorted({s.sizes[sym] for s in result.samples})
        assert len(seen) >= 3 and min(seen) == spec.dim(sym).min, (sym, seen)
    report = verify_package(tmp_path / "pkg")
    assert report, report.failure_lines()
    assert [len(c.reports) for c in report.checks] == [len(result.samples)] * len(result.shipped)


def test_zoo_command_lists_params_flops_tags_and_paths() -> None:
    result = CliRunner().invoke(app, ["zoo"])
    assert result.exit_code == 0, result.output
    lines = {line.split()[0]: line for line in result.output.splitlines()[1:] if line.strip()}
    assert set(ZOO) <= set(lines)
    assert "135k" in lines["feed.dlrm_small"]  # parameters
    assert "22.4M" in lines["image.cnn_small"]  # FLOPs at the export size
    assert "ranking,feed" in lines["feed.dlrm_small"]
    assert "onnx,onnx_legacy,torchscript,torchscript_trace,exported_program" in lines["feed.dlrm_small"]
