from __future__ import annotations

from pathlib import Path

import pytest

import zoo  # noqa: F401
from toolchain.pipeline import ALL_FORMATS, export_package
from toolchain.spec import SPECS
from toolchain.verify import verify_package

# Every path that applies, per model; a model module's docstring explains any path left out.
EXPECTED_KEPT = dict.fromkeys(("feed.dlrm_small", "image.cnn_small"), ALL_FORMATS)
ZOO = [name for name in SPECS.names() if name.split(".")[0] in {"feed", "image"}]


def test_zoo_registers_the_starting_models() -> None:
    assert {"feed.dlrm_small", "image.cnn_small"} <= set(ZOO)


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_export_and_verify_every_zoo_model(name: str, tmp_path: Path) -> None:
    spec = SPECS.get(name)
    result = export_package(spec, tmp_path / "pkg")
    assert result, [(s.name, s.status, s.detail) for s in result.stages]
    assert [p.exporter for p in result.kept] == list(EXPECTED_KEPT[name]), [
        (p.exporter, p.reason) for p in result.paths
    ]
    sizes = {sym: sorted({s.sizes[sym] for s in result.samples}) for sym in spec.symbols()}
    for sym, seen in sizes.items():
        assert len(seen) >= 3 and min(seen) == spec.dim(sym).min, (sym, seen)
    report = verify_package(tmp_path / "pkg")
    assert report, report.failure_lines()
    assert [len(c.reports) for c in report.checks] == [len(result.samples)] * len(ALL_FORMATS)
