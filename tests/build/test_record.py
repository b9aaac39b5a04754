from __future__ import annotations

import json
import os
import sys
import sysconfig
import textwrap
from pathlib import Path

import pytest

from toolchain.build.pipeline import export_package
from toolchain.build.record import is_noise, portable, portable_path
from toolchain.core.spec import SPECS
from toolchain.core.target import resolve_target

REPO = Path(__file__).resolve().parents[2]

MODEL = """
import torch
from torch import nn
from toolchain import Dim, exportable

@exportable(name="record.user", inputs={"x": ("batch", 4)}, outputs=["y"], dims={"batch": Dim(example=3)})
class UserModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return self.fc(x) * 100.0
"""


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("record")
    file = folder / "user_model.py"
    file.write_text(textwrap.dedent(MODEL))
    try:
        spec = resolve_target(f"{file}:UserModel")
        result = export_package(spec, folder / "pkg", formats=["onnx", "onnx_legacy"], precisions=("fp32", "fp16"))
    finally:
        SPECS.unregister("record.user")
    assert result, result.stages
    return folder / "pkg"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/tmp/pytest-of-me/pytest-1/t0/.pkg.onnx-ab12_x9z/onnx/model.onnx", "onnx/model.onnx"),
        ("/tmp/tmpk2j_a8zq/model.py", "model.py"),
        ("/opt/venv/lib/python3.11/site-packages/torch/jit/_trace.py", "torch/jit/_trace.py"),
        (str(Path(sysconfig.get_paths()["stdlib"]) / "copyreg.py"), "copyreg.py"),
        (str(REPO / "exporters" / "onnx_legacy.py"), "exporters/onnx_legacy.py"),
        (str(Path.cwd() / "models" / "ranker.py"), "models/ranker.py"),
        (str(Path.home() / "elsewhere-xyz" / "m.py"), "~/elsewhere-xyz/m.py"),
        ("/srv/data/models/m.py", "m.py"),
    ],
)
def test_portable_path_drops_the_hosts_folders(path: str, expected: str) -> None:
    if Path(path).is_relative_to(Path.cwd()) and expected.startswith("~"):
        pytest.skip("the working directory is under the home folder here")
    assert portable_path(path) == expected


def test_portable_rewrites_paths_inside_text_and_leaves_the_rest() -> None:
    text = (
        "ValueError: bad (at /tmp/x/y/model.py:12 (`if h.mean() > 0.3:`)); see https://docs.pytorch.org/docs/a.html, "
        "ratio a/b, 'x' /tmp/tmpab12cd34/onnx/model.onnx"
    )
    assert portable({"reason": text, "n": [1, text]}) == {
        "reason": (
            "ValueError: bad (at model.py:12 (`if h.mean() > 0.3:`)); see https://docs.pytorch.org/docs/a.html, "
            "ratio a/b, 'x' onnx/model.onnx"
        ),
        "n": [1, portable(text)],
    }


def test_noise_is_what_is_not_about_the_users_code(tmp_path: Path) -> None:
    torch_file = str(Path(sys.modules["torch"].__file__ or "").parent / "onnx" / "_registration.py")
    assert is_noise({"kind": "deprecation", "message": "DeprecationWarning: x", "source": str(tmp_path / "m.py:3")})
    assert is_noise({"kind": "log", "message": "torch.onnx: Failed to infer", "source": f"{torch_file}:83"})
    stdlib = Path(sysconfig.get_paths()["stdlib"]) / "copyreg.py"
    assert is_noise({"kind": "warning", "message": "FutureWarning: x", "source": f"{stdlib}:105"})
    assert is_noise({"kind": "log", "message": "native output: graph(%x)", "source": ""})
    assert not is_noise({"kind": "warning", "message": "TracerWarning: x", "source": f"{tmp_path / 'm.py'}:3"})
    assert not is_noise({"kind": "specialized-dim", "message": "batch", "source": f"{torch_file}:1"})


def test_no_shipped_file_names_a_host_folder(exported: Path) -> None:
    prefixes = {str(exported.parent), "/tmp/", os.getcwd(), str(Path.home()), sys.prefix, str(REPO)}
    for file in ("manifest.json", "report.json", "report.md"):
        text = (exported / file).read_text()
        leaked = sorted(p for p in prefixes if p in text)
        assert not leaked, f"{file} names {leaked}"
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["source"] == "user_model.py:UserModel"
    assert "toolchain_target_" not in (exported / "report.md").read_text()


def test_fp16_drift_is_shown_against_the_fp32_tolerance(exported: Path) -> None:
    report = json.loads((exported / "report.json").read_text())
    drift = {d["stage"]: d for d in report["paths"][0]["drift"]}
    fp16 = [o for outs in drift["fp16"]["worst"].values() for o in outs.values()]
    exported_stage = [o for outs in drift["exported"]["worst"].values() for o in outs.values()]
    assert all(o["atol"] == 1e-2 for o in fp16) and all(o["atol"] == 1e-5 for o in exported_stage)
    assert max(o["spec_ratio"] for o in fp16) > 10 * max(o["worst_ratio"] for o in fp16)
    assert all(o["spec_ratio"] == o["worst_ratio"] for o in exported_stage)
    assert "| x fp32 tol | own allowed | x own |" in (exported / "report.md").read_text()


def test_the_embedding_bag_registration_log_is_not_a_finding(exported: Path) -> None:
    report = json.loads((exported / "report.json").read_text())
    messages = [f["message"] for p in report["paths"] for f in (p["artifact"] or {}).get("findings", [])]
    assert messages and not any("Failed to infer the signature" in m for m in messages)
