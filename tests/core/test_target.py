"""CHECKLIST row 17: export targets that raise, exit or parse sys.argv when imported."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from toolchain.cli import app
from toolchain.core.errors import TargetError
from toolchain.core.target import import_source, resolve_target

runner = CliRunner()

TARGETS = {
    "exits": ("import sys\nsys.exit(0)\n", "exited (sys.exit(0))"),
    "exits with a message": ("raise SystemExit('bye from the target')\n", "exited (sys.exit('bye from the target'))"),
    "parses argv": (
        "import argparse\np = argparse.ArgumentParser()\np.add_argument('--data', required=True)\np.parse_args()\n",
        "exited (sys.exit(2)); it printed: ",
    ),
    "raises": ("raise ValueError('broken at import')\n", "failed: ValueError: broken at import"),
}


def _target(tmp_path: Path, case: str) -> Path:
    path = tmp_path / f"target_{case.replace(' ', '_')}.py"
    path.write_text(TARGETS[case][0])
    return path


@pytest.mark.parametrize("case", list(TARGETS))
def test_target_that_exits_or_raises_at_import_is_a_clear_error(tmp_path: Path, case: str) -> None:
    path = _target(tmp_path, case)
    out = tmp_path / "pkg"
    result = runner.invoke(app, ["export", f"{path}:Model", "--out", str(out), "--formats", "onnx"])
    assert result.exit_code == 1, result.output
    stderr = result.stderr.strip().splitlines()
    assert len(stderr) == 1, result.stderr
    assert stderr[0].startswith(f"error: importing {path} ") and TARGETS[case][1] in stderr[0]
    assert not out.exists()
    if case == "parses argv":
        assert "the following arguments are required: --data" in stderr[0]
        assert "usage:" not in result.stderr  # NOTE: the target's own usage line is not shown as ours


def test_exit_is_a_target_error_naming_the_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "exiting_module.py").write_text("import sys\nsys.exit(3)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TargetError, match=r"importing exiting_module exited \(sys\.exit\(3\)\)"):
        resolve_target("exiting_module:Model")
    assert "exiting_module" not in sys.modules


def test_target_sees_only_its_own_path_in_argv(tmp_path: Path) -> None:
    path = tmp_path / "argv_reader.py"
    path.write_text(
        textwrap.dedent(
            """
            import argparse, sys
            SEEN = list(sys.argv)
            ARGS = argparse.ArgumentParser().parse_known_args()[0]
            """
        )
    )
    argv = list(sys.argv)
    module = import_source(str(path))
    seen = module.SEEN
    assert seen == [str(path)]
    assert sys.argv == argv


def test_exit_at_import_through_the_installed_command(tmp_path: Path) -> None:
    path = _target(tmp_path, "exits")
    code = "import sys; from toolchain.cli import main; sys.argv = ['toolchain', *sys.argv[1:]]; main()"
    proc = subprocess.run(
        [sys.executable, "-c", code, "export", f"{path}:Model", "--out", str(tmp_path / "pkg")],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith(f"error: importing {path} exited (sys.exit(0))")
    assert not (tmp_path / "pkg").exists()
