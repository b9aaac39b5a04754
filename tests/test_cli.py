from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolchain.cli import app
from toolchain.core.errors import SpecError, TargetError
from toolchain.core.spec import SPECS
from toolchain.core.target import resolve_target

runner = CliRunner()

USER_MODEL = """
import torch
from torch import nn
from toolchain import Dim, exportable

@exportable(name="{name}", inputs={{"x": ("batch", 4)}}, outputs=["y"], dims={{"batch": Dim(example=3)}})
class UserModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x):
        return {body}
"""


def _user_file(tmp_path: Path, name: str, body: str = "self.fc(x)") -> Path:
    path = tmp_path / f"{name.replace('.', '_')}.py"
    path.write_text(textwrap.dedent(USER_MODEL.format(name=name, body=body)))
    return path


@pytest.fixture
def cleanup_specs():
    import zoo  # noqa: F401 - the CLI imports the zoo for bare names; its models are not the test's own

    before = set(SPECS.names())
    yield
    for name in set(SPECS.names()) - before:
        SPECS.unregister(name)


def test_help_is_instant_and_imports_no_torch() -> None:
    heavy = "{'torch', 'onnxruntime', 'onnx', 'mlflow'}"
    code = f"import sys, toolchain.cli; bad = {heavy} & set(sys.modules); assert not bad, bad"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("export", "verify", "inspect", "zoo"):
        assert command in result.output


def test_export_and_verify_a_user_file(tmp_path: Path, cleanup_specs) -> None:
    path = _user_file(tmp_path, "user.linear")
    out = tmp_path / "pkg"
    result = runner.invoke(app, ["export", f"{path}:UserModel", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "package written" in result.output
    result = runner.invoke(app, ["verify", str(out)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["inspect", str(out)])
    assert "dim    batch: verified at [1, 3, 7]" in result.output
    assert re.search(r"artifact onnx/model.onnx .* parity passed on \[.*\] \(ort/cpu\)", result.output), result.output


def test_export_with_precision_variants_and_without_optimisation(tmp_path: Path, cleanup_specs) -> None:
    path = _user_file(tmp_path, "user.variants")
    out = tmp_path / "pkg"
    args = ["export", f"{path}:UserModel", "--out", str(out), "--formats", "onnx", "--no-optimize"]
    result = runner.invoke(app, [*args, "--precision", "fp32,fp16"])
    assert result.exit_code == 0, result.output
    assert "onnx:fp16" in result.output and "pass " not in result.output
    assert (out / "onnx" / "model.fp16.onnx").is_file()
    result = runner.invoke(app, ["verify", str(out)])
    assert result.exit_code == 0 and "onnx/model.fp16.onnx on ort" in result.output, result.output
    result = runner.invoke(app, [*args, "--force", "--precision", "bf16"])
    assert result.exit_code == 1 and "unknown precision(s) ['bf16']" in result.output


def test_export_that_fails_parity_writes_no_package_but_the_reasons(tmp_path: Path, cleanup_specs) -> None:
    path = _user_file(tmp_path, "user.noisy", body="self.fc(x) + torch.rand_like(self.fc(x))")
    out = tmp_path / "pkg"
    args = ["export", f"{path}:UserModel", "--out", str(out), "--formats", "onnx,torchscript"]
    result = runner.invoke(app, args)
    assert result.exit_code == 1
    assert "FAILED at stage 'export': every path was rejected" in result.output
    assert "parity failed on sample 'export'" in result.output
    assert not out.exists()
    report = tmp_path / "pkg.report.md"
    assert f"the reasons are in {report}" in result.output
    text = report.read_text()
    assert "- **onnx rejected**: " in text and "- **torchscript rejected**: " in text
    assert "parity failed on sample 'export'" in text
    assert "Model source: `user_noisy.py:UserModel`" in text
    assert str(tmp_path) not in text and ".pkg.onnx-" not in text + result.output
    chosen = tmp_path / "reasons" / "why.md"
    result = runner.invoke(app, [*args, "--report", str(chosen)])
    assert result.exit_code == 1 and f"the reasons are in {chosen}" in result.output
    assert "- **onnx rejected**: " in chosen.read_text()


def test_export_progress_is_flushed_line_by_line_into_a_pipe(tmp_path: Path, cleanup_specs) -> None:
    path = _user_file(tmp_path, "user.piped")
    out = tmp_path / "pkg"
    command = [sys.executable, "-m", "toolchain.cli", "export", f"{path}:UserModel", "--out", str(out)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as proc:
        assert proc.stderr is not None
        first = proc.stderr.readline()
        # NOTE: the package lands at the very end; had the line been buffered to exit, it would be there.
        arrived_before_the_package = not out.exists()
        rest, _ = proc.communicate(timeout=600)
    assert first.strip() == "... user.piped: build", first
    assert arrived_before_the_package
    assert proc.returncode == 0 and "package written" in rest


def test_errors_name_the_users_file_not_a_hashed_module(tmp_path: Path, cleanup_specs) -> None:
    path = tmp_path / "make_model.py"
    path.write_text(
        "from toolchain import exportable\n\n"
        "@exportable(name='user.not_a_module', inputs={'x': (2, 4)})\n"
        "def make_model():\n"
        "    return 3\n"
    )
    result = runner.invoke(app, ["export", f"{path}:make_model", "--out", str(tmp_path / "pkg")])
    assert result.exit_code == 1
    assert "make_model.py:make_model returned int" in result.output, result.output
    assert "toolchain_target_" not in result.output


@pytest.mark.parametrize(
    ("tamper", "named"),
    [
        (lambda p: _flip_byte(p / "onnx/model.onnx"), "onnx/model.onnx"),
        (lambda p: (p / "samples/batch-1/inputs/x.npy").unlink(), "samples/batch-1/inputs/x.npy"),
        (lambda p: (p / "notes.txt").write_text("hi"), "notes.txt"),
    ],
)
def test_verify_fails_naming_the_tampered_file(tiny_package: Path, copy_of, tamper, named: str) -> None:
    pkg = copy_of(tiny_package)
    tamper(pkg)
    result = runner.invoke(app, ["verify", str(pkg)])
    assert result.exit_code == 1
    assert named in result.output


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-10] ^= 0x01
    path.write_bytes(bytes(data))


def test_toolchain_error_is_one_line_and_exit_1(tmp_path: Path) -> None:
    result = runner.invoke(app, ["export", "no.such.model", "--out", str(tmp_path / "x")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("error: no model named 'no.such.model'; known: ")
    assert "feed.dlrm_small" in lines[0]


def test_zoo_lists_the_registered_models() -> None:
    result = runner.invoke(app, ["zoo"])
    assert result.exit_code == 0
    assert "feed.dlrm_small" in result.output
    assert "image.cnn_small" in result.output


def test_resolve_registered_name_and_module_attr_agree() -> None:
    assert resolve_target("feed.dlrm_small") is resolve_target("zoo.feed:DLRMSmall")


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("zoo.feed:Nothing", "has no attribute 'Nothing'"),
        ("zoo.feed:nn", "not declared for export"),
        ("no_such_module_xyz:Model", "cannot import module"),
        ("missing/file.py:Model", "no such Python file"),
        (":Model", "must look like"),
    ],
)
def test_resolve_errors(target: str, message: str) -> None:
    with pytest.raises(TargetError, match=message):
        resolve_target(target)


def test_resolve_file_that_fails_to_import(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("import torch\nraise RuntimeError('broken research code')\n")
    with pytest.raises(TargetError, match="broken research code"):
        resolve_target(f"{bad}:Model")


def test_resolve_file_with_a_bad_declaration_keeps_the_spec_error(tmp_path: Path) -> None:
    bad = tmp_path / "baddecl.py"
    bad.write_text(
        "from toolchain import Dim, exportable\n"
        "@exportable(name='bad.decl', inputs={'x': ('batch', 4)}, dims={'bacth': Dim()})\n"
        "def build():\n    pass\n"
    )
    with pytest.raises(SpecError, match="'bacth'"):
        resolve_target(f"{bad}:build")


def test_readme_example_exports(tmp_path: Path, cleanup_specs) -> None:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    code = readme.split("```python\n", 1)[1].split("```", 1)[0]
    path = tmp_path / "readme_example.py"
    path.write_text(code)
    out = tmp_path / "pkg"
    result = runner.invoke(app, ["export", f"{path}:Ranker", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert runner.invoke(app, ["verify", str(out)]).exit_code == 0


def test_export_with_real_data_replays_and_ships_it(tmp_path: Path, cleanup_specs) -> None:
    import numpy as np

    path = _user_file(tmp_path, "user.with_data")
    data = tmp_path / "data"
    data.mkdir()
    for n in (2, 5):
        np.savez(data / f"batch{n}.npz", x=np.random.default_rng(n).standard_normal((n, 4)).astype(np.float32))
    out = tmp_path / "pkg"
    result = runner.invoke(app, ["export", f"{path}:UserModel", "--out", str(out), "--data", str(data)])
    assert result.exit_code == 0, result.output
    assert (out / "samples" / "data-1" / "inputs").is_dir()
    assert "Real data: 2 batch(es)" in (out / "report.md").read_text()
    bad = tmp_path / "bad.npz"
    np.savez(bad, y=np.zeros((2, 4), np.float32))
    result = runner.invoke(app, ["export", f"{path}:UserModel", "--out", str(tmp_path / "p2"), "--data", str(bad)])
    assert result.exit_code == 1 and "data batch 0: inputs ['x'] missing" in result.output, result.output
