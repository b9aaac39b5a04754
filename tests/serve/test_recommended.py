from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from runtimes.ort import OrtSession
from toolchain.core.errors import InferenceError, PackageError
from toolchain.package import trust as trust_list
from toolchain.package.format import open_package
from toolchain.perf.bench import BenchReport, BenchRow, record_bench
from toolchain.perf.timing import Timing
from toolchain.serve.recommended import open_recommended


def _benched(tiny_package: Path, tmp_path: Path) -> Path:
    """A copy of the tiny package with recorded recommendations: TorchScript fastest, ONNX planned for 5."""
    pkg = tmp_path / "pkg"
    shutil.copytree(tiny_package, pkg)
    formats = {a["format"]: a["path"] for a in open_package(pkg).artifacts}
    onnx, script = formats["onnx"], formats["torchscript"]
    report = BenchReport(pkg, "test.tiny", trusted=True)
    for batch in (1, 5):
        t = Timing.of([1e-4] * 3)
        report.rows += [
            BenchRow(
                onnx, "fp32", "ort", batch, t, True, 1, 0, 1.0, True, fixed_dims=(("batch", batch),), provider="cpu"
            ),
            BenchRow(script, "fp32", "torchscript", batch, Timing.of([5e-5] * 3), True, 1, 0, 1.0, True, True),
        ]
    record_bench(report)
    return pkg


def test_opens_the_recommended_session_as_it_was_timed(tiny_package: Path, tmp_path: Path) -> None:
    pkg = _benched(tiny_package, tmp_path)
    trusted = open_recommended(pkg, 5)  # exported here, so trusted: the faster TorchScript artifact
    assert not isinstance(trusted, OrtSession)
    x = np.ones((5, 4), np.float32)
    session = open_recommended(pkg, 5, portable=True)
    assert isinstance(session, OrtSession) and session.provider == "cpu"
    np.testing.assert_allclose(session.run({"x": x})["y"], trusted.run({"x": x})["y"], rtol=1e-5, atol=1e-6)
    with pytest.raises(InferenceError):  # planned for batch 5: another size is refused, never run wrongly
        session.run({"x": np.ones((3, 4), np.float32)})


def test_untrusted_packages_get_the_portable_choice(
    tiny_package: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pkg = _benched(tiny_package, tmp_path)
    monkeypatch.setattr(trust_list, "is_trusted", lambda path: False)
    assert isinstance(open_recommended(pkg, 1), OrtSession)
    assert not isinstance(open_recommended(pkg, 1, trust=True), OrtSession)


def test_missing_recommendations_and_corruption_are_named(tiny_package: Path, tmp_path: Path) -> None:
    with pytest.raises(PackageError, match="no recommendation recorded; run `toolchain bench"):
        open_recommended(tiny_package, 1)
    pkg = _benched(tiny_package, tmp_path)
    with pytest.raises(PackageError, match=r"no recommendation at batch 7; benchmarked at \['1', '5'\]"):
        open_recommended(pkg, 7)
    manifest = json.loads((pkg / "manifest.json").read_text())
    (pkg / manifest["artifacts"][0]["path"]).write_bytes(b"tampered")
    with pytest.raises(PackageError, match=manifest["artifacts"][0]["path"]):
        open_recommended(pkg, 1)
