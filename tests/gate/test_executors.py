from __future__ import annotations

import os
import textwrap
from pathlib import Path
from typing import Any

import pytest

from tests.gate.test_runner import MODELS, _forget
from toolchain.core.errors import GateError
from toolchain.gate.executors import InlineExecutor, LocalExecutor, RayExecutor, make_executor
from toolchain.gate.runner import judge, run_gate, select_specs


def _echo(task: dict[str, Any]) -> dict[str, Any]:
    if task["n"] == 1:
        raise ValueError("bad task")
    if task["n"] == 2:
        os._exit(3)  # a worker killed mid-task
    return {"status": "passed", "n": task["n"]}


def test_make_executor() -> None:
    assert isinstance(make_executor("local", jobs=0), InlineExecutor)
    assert make_executor("local", jobs=3) == LocalExecutor(3)
    with pytest.raises(GateError, match="at least 1 worker"):
        LocalExecutor(0)
    with pytest.raises(GateError, match="no executor named 'spark'; known: local, ray"):
        make_executor("spark")


def test_a_failing_task_is_an_error_result_and_the_others_go_on() -> None:
    results = dict(InlineExecutor().run(_echo, [{"n": 0}, {"n": 1}, {"n": 3}]))
    assert results[0] == {"status": "passed", "n": 0} and results[2]["n"] == 3
    assert results[1]["status"] == "error" and "ValueError: bad task" in results[1]["detail"]


def test_a_dead_worker_is_an_error_result() -> None:
    results = dict(LocalExecutor(1).run(_echo, [{"n": 2}]))
    assert results[0]["status"] == "error"
    assert "the worker failed" in results[0]["detail"]


@pytest.mark.slow
def test_ray_gives_the_local_pool_verdicts(tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    path = tmp_path / "ray_models.py"
    path.write_text(textwrap.dedent(MODELS.format(limit=2)))  # one model passes, one fails
    try:
        selected = select_specs([str(path)])
        local = judge(run_gate(selected, cache=False, executor=LocalExecutor(1)))
        ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
        try:
            remote = judge(run_gate(selected, cache=False, executor=RayExecutor()))
        finally:
            ray.shutdown()
    finally:
        _forget(path)
    verdicts = [(c.model, c.artifact, c.outcome) for c in local.cases]
    assert verdicts == [("alpha.linear", "onnx", "passed"), ("zeta.branch", "onnx", "failed")]
    assert [(c.model, c.artifact, c.outcome) for c in remote.cases] == verdicts
    assert [r["kept"] for r in remote.results] == [r["kept"] for r in local.results]
