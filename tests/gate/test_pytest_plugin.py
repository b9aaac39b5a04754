from __future__ import annotations

import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[2] / "examples" / "pytest-gate"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    target = tmp_path / "project"
    shutil.copytree(EXAMPLE, target, ignore=shutil.ignore_patterns("__pycache__", ".pytest_cache"))
    return target


def _pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", *args]
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=600)


def test_plugin_loads_without_torch_and_adds_only_options() -> None:
    code = (
        "import sys, toolchain.gate.pytest_plugin; bad = {'torch', 'onnxruntime', 'onnx'} & set(sys.modules); "
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_flag_adds_one_item_per_model(project: Path) -> None:
    plain = _pytest(project, "--collect-only")
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "toolchain_gate" not in plain.stdout
    gated = _pytest(project, "--collect-only", "--toolchain-gate")
    assert gated.returncode == 0, gated.stdout + gated.stderr
    items = [line for line in gated.stdout.splitlines() if "::" in line or line.startswith("toolchain_gate[")]
    assert items == [
        "test_models.py::test_scorer_is_a_probability",
        "test_models.py::test_traced_scorer_matches_eager",
        "toolchain_gate[example.branchy]",
        "toolchain_gate[example.scorer]",
    ]
    assert "4 tests collected" in gated.stdout


@pytest.mark.slow
def test_gate_items_pass_and_fail_like_the_gate(project: Path) -> None:
    run = _pytest(project, "--toolchain-gate", "--junitxml", "report.xml")
    assert run.returncode == 1, run.stdout + run.stderr
    verdicts = {}
    for case in ET.parse(project / "report.xml").getroot().iter("testcase"):
        verdicts[case.get("name")] = "failed" if case.find("failure") is not None else "passed"
    assert verdicts == {
        "test_scorer_is_a_probability": "passed",
        "test_traced_scorer_matches_eager": "passed",
        "toolchain_gate[example.branchy]": "failed",
        "toolchain_gate[example.scorer]": "passed",
    }
    assert "example.branchy / onnx: parity failed on sample 'batch-1' (batch=1)" in run.stdout
    assert "sample 'batch-1': FAILED" in run.stdout
    assert "models.py:" in run.stdout  # the localisation names the source line
    only_gate = _pytest(project, "--toolchain-gate", "-m", "toolchain_gate", "--toolchain-target", "models:Scorer")
    assert only_gate.returncode == 0, only_gate.stdout + only_gate.stderr
    assert "1 passed, 2 deselected" in only_gate.stdout


def test_bad_target_is_a_usage_error(project: Path) -> None:
    run = _pytest(project, "--collect-only", "--toolchain-gate", "--toolchain-target", "no_such_module_xyz")
    assert run.returncode == 4
    assert "--toolchain-gate: 'no_such_module_xyz' is neither a registered model" in run.stderr
