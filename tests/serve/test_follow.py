from __future__ import annotations

import json
import logging
import random
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from tests.conftest import TINY, Tiny, rehash
from tests.serve.conftest import request
from toolchain.build.pipeline import export_package
from toolchain.cli import app
from toolchain.core.parity import Tolerance
from toolchain.core.spec import ModelSpec
from toolchain.package.format import load_array, open_package

pytest.importorskip("fastapi")
pytest.importorskip("mlflow")
from toolchain.registry.store import ModelRegistry
from toolchain.serve.app import create_app
from toolchain.serve.follow import follow_registry
from toolchain.serve.repository import Repository, ServeOptions
from toolchain.serve.server import BackgroundServer
from toolchain.serve.shadow import drift

X = np.random.default_rng(5).standard_normal((2, 4)).astype(np.float32)
BODY = json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": X.ravel().tolist()}]})


def _shifted() -> Tiny:
    torch.manual_seed(77)
    model = Tiny()
    with torch.no_grad():
        model.fc2.bias.add_(0.5)
    return model


@pytest.fixture(scope="module")
def tiny_versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two packages of test.tiny with one signature and different functions (ONNX only: quick to verify)."""
    out = tmp_path_factory.mktemp("follow")
    other = ModelSpec(name="test.tiny", factory=_shifted, inputs=TINY.inputs, outputs=TINY.outputs, dims=TINY.dims)
    assert export_package(TINY, out / "a", formats=("onnx",), optimize=False)
    assert export_package(other, out / "b", formats=("onnx",), optimize=False)
    return {"a": out / "a", "b": out / "b"}


def _expected(package: Path) -> np.ndarray:
    import onnxruntime as ort

    opened = open_package(package)
    return ort.InferenceSession(str(opened.file(opened.artifacts[0]["path"]))).run(None, {"x": X})[0]


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _infer(server: BackgroundServer) -> tuple[str, np.ndarray]:
    status, _, body = request(server, "POST", "/v2/models/test.tiny/infer", BODY.encode())
    assert status == 200, body
    answer = json.loads(body)
    return answer["model_version"], np.asarray(answer["outputs"][0]["data"], np.float32)


def _registry(tmp_path: Path, *packages: Path) -> tuple[str, ModelRegistry]:
    uri = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = ModelRegistry(uri, artifacts=tmp_path / "artifacts")
    for package in packages:
        registry.add(package)
    return uri, registry


def test_a_promoted_version_that_fails_verification_never_serves(
    tiny_versions: dict[str, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    uri, registry = _registry(tmp_path, tiny_versions["a"], tiny_versions["b"])
    registry.promote("test.tiny", "1")
    stored = registry.local_path(registry.get("test.tiny", "2"))
    rel = open_package(stored).samples[0]["expected"]["y"]
    np.save(stored / rel, load_array(stored / rel) + 1.0, allow_pickle=False)
    rehash(stored, rel)  # NOTE: intact hashes, a replay that fails: only verification on the server catches it
    repository = Repository(options=ServeOptions(max_batch=1))
    follower = follow_registry(repository, uri, poll_s=0.1)
    try:
        with BackgroundServer(create_app(repository)) as server, caplog.at_level(logging.ERROR, "toolchain.serve"):
            _until(lambda: repository.ready(), "version 1 serving")
            assert _infer(server)[0] == "1"
            registry.promote("test.tiny", "2", force=True, reason="the replay is wrong, not the model")
            _until(lambda: "2" in repository.models["test.tiny"].versions, "version 2 offered")
            _until(lambda: repository.models["test.tiny"].versions["2"].state == "failed", "version 2 refused")
            version, data = _infer(server)
            assert version == "1"
            np.testing.assert_allclose(data, _expected(tiny_versions["a"]).ravel(), rtol=1e-5, atol=1e-6)
            states = json.loads(
                json.loads(request(server, "GET", "/v2/models/test.tiny")[2])["parameters"]["version_states"]
            )
            assert states["2"]["state"] == "FAILED" and "failed verification" in states["2"]["reason"]
            metrics = request(server, "GET", "/metrics")[2].decode()
            assert 'toolchain_verification_failures_total{model="test.tiny",version="2"} 1.0' in metrics
        assert any("version 2 never serves" in r.getMessage() for r in caplog.records)
        time.sleep(0.3)  # NOTE: later polls must not retry the same failed version
        assert repository.models["test.tiny"].versions["2"].state == "failed"
        registry.promote("test.tiny", "1", reason="back")
        _until(lambda: repository.models["test.tiny"].pinned == "1", "the alias followed back")
        assert repository.resolve("test.tiny").name == "1"
    finally:
        follower.close()
        repository.close()


def test_a_candidate_taking_a_share_answers_some_requests_and_its_drift_is_recorded(
    tiny_versions: dict[str, Path], tmp_path: Path
) -> None:
    uri, registry = _registry(tmp_path, tiny_versions["a"], tiny_versions["b"])
    registry.promote("test.tiny", "1")
    expected = {"1": _expected(tiny_versions["a"]).ravel(), "2": _expected(tiny_versions["b"]).ravel()}
    repository = Repository(options=ServeOptions(max_batch=1))
    follower = follow_registry(repository, uri, models=["test.tiny"], candidate="test.tiny@2", share=0.5, poll_s=0.1)
    assert follower.explorer is not None
    follower.explorer._random.seed(3)
    try:
        with BackgroundServer(create_app(repository)) as server:
            _until(lambda: repository.ready() and repository.models["test.tiny"].versions["2"].state == "ready", "both")
            answers = [_infer(server) for _ in range(60)]
            assert repository.resolve("test.tiny", "1").name == "1"
            picked = [draw.random() < 0.5 for draw in [random.Random(3)] for _ in range(60)]
            shared = sum(picked)
            _until(lambda: follower.explorer.snapshot()[0].requests == shared, "every answer of 2 compared")  # type: ignore[union-attr]
    finally:
        follower.close()
        repository.close()
    assert [v for v, _ in answers] == ["2" if p else "1" for p in picked] and 0 < shared < 60
    for version, data in answers:
        np.testing.assert_allclose(data, expected[version], rtol=1e-5, atol=1e-6)
    tags = registry.get("test.tiny", "2").tags
    assert tags["toolchain.explore.mode"] == "share" and tags["toolchain.explore.requests"] == str(shared)
    max_abs = float(np.abs(expected["2"] - expected["1"]).max())
    assert float(tags["toolchain.explore.max_abs"]) == pytest.approx(max_abs, rel=1e-5)
    assert float(tags["toolchain.explore.worst_ratio"]) > 1 and tags["toolchain.explore.beyond"] == str(shared)


def test_drift_against_production() -> None:
    tolerance = Tolerance(atol=1e-3, rtol=0.0)
    production = {"y": np.array([[1.0, 2.0], [0.0, np.nan]], np.float32)}
    close = {"y": production["y"] + np.float32(5e-4)}
    max_abs, max_rel, ratio = drift(close, production, tolerance)
    assert max_abs == pytest.approx(5e-4, rel=1e-3) and max_rel == pytest.approx(5e-4, rel=1e-3)
    assert ratio == pytest.approx(0.5, rel=1e-3)
    moved = {"y": np.array([[1.0, 2.0], [1.0, np.nan]], np.float32)}
    assert drift(moved, production, tolerance) == (1.0, 0.0, 1000.0)
    for hostile in ({"y": np.ones((2, 2), np.float32)}, {"y": production["y"][:1]}, {"z": production["y"]}):
        assert drift(hostile, production, tolerance) == (float("inf"),) * 3


def test_serve_registry_options_are_checked_before_anything_loads() -> None:
    runner = CliRunner()
    for args, message in (
        (["--share", "0.1"], "need --registry URI"),
        (["--registry", "sqlite:///x.db", "--share", "0.1"], "--share needs --shadow"),
        (["--registry", "sqlite:///x.db", "--shadow", "candidate", "--share", "1.5"], "--share 1.5: expected"),
        (["--registry", "sqlite:///x.db", "--poll", "0"], "--poll 0.0: expected"),
    ):
        result = runner.invoke(app, ["serve", *args])
        assert result.exit_code != 0 and message in result.output, result.output


def test_serving_without_a_registry_does_not_import_mlflow() -> None:
    code = (
        "import sys, toolchain.cli, toolchain.serve.server, toolchain.serve.app, toolchain.serve.repository;"
        "sys.exit('mlflow' in sys.modules)"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120, check=False).returncode == 0


def test_the_serve_command_follows_the_registry_and_records_the_shadow_at_shutdown(
    tiny_versions: dict[str, Path], tmp_path: Path
) -> None:
    import http.client
    import signal
    import socket

    uri, registry = _registry(tmp_path, tiny_versions["a"], tiny_versions["b"])
    registry.promote("test.tiny", "1")
    registry.set_alias("test.tiny", "2", "candidate")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [sys.executable, "-m", "toolchain.cli", "serve", "--registry", uri, "--shadow", "candidate"]
    server = subprocess.Popen(
        [*command, "--poll", "3600", "--port", str(port), "--max-batch", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip

    def post(path: str, body: str | None = None) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            connection.request("POST" if body else "GET", path, body=body)
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def ready() -> bool:
        assert server.poll() is None, server.stdout.read() if server.stdout else ""
        try:
            return post("/v2/health/ready")[0] == 200
        except OSError:
            return False

    try:
        _until(ready, "the server ready")
        index = json.loads(post("/v2/repository/index", "{}")[1])
        assert {(v["version"], v["state"]) for v in index} == {("1", "READY"), ("2", "READY")}
        for _ in range(5):
            status, body = post("/v2/models/test.tiny/infer", BODY)
            assert status == 200 and json.loads(body)["model_version"] == "1"
        assert "toolchain.explore.requests" not in registry.get("test.tiny", "2").tags
    finally:
        server.send_signal(signal.SIGINT)
        output = server.communicate(timeout=60)[0]
    # NOTE: uvicorn re-raises the SIGINT it handled once it shut down (exit 130); the flush ran before it
    assert server.returncode in (0, 130, -signal.SIGINT), output
    assert "candidate 2 from the registry" in output
    assert registry.get("test.tiny", "2").tags["toolchain.explore.requests"] == "5"


def test_a_candidate_replaced_by_another_is_unloaded(tiny_versions: dict[str, Path], tmp_path: Path) -> None:
    uri, registry = _registry(tmp_path, tiny_versions["a"], tiny_versions["b"], tiny_versions["b"])
    registry.promote("test.tiny", "1")
    registry.set_alias("test.tiny", "2", "candidate")
    repository = Repository(options=ServeOptions(max_batch=1))
    follower = follow_registry(repository, uri, candidate="candidate", poll_s=0.1)
    versions = lambda: {k: v.state for k, v in repository.models["test.tiny"].versions.items()}  # noqa: E731
    try:
        _until(lambda: versions() == {"1": "ready", "2": "ready"}, "production and candidate loaded")
        registry.set_alias("test.tiny", "3", "candidate")
        _until(lambda: versions() == {"1": "ready", "2": "unloaded", "3": "ready"}, "the new candidate only")
        assert repository.resolve("test.tiny").name == "1"
        registry.promote("test.tiny", "3")
        _until(lambda: repository.resolve("test.tiny").name == "3", "the candidate promoted")
        assert versions()["3"] == "ready" and "3" not in repository.models["test.tiny"].held
    finally:
        follower.close()
        repository.close()


def test_a_copy_the_candidate_cannot_take_is_dropped_and_counted() -> None:
    from toolchain.serve.batching import QueueFull
    from toolchain.serve.repository import Model, ModelVersion
    from toolchain.serve.shadow import Explorer
    from toolchain.serve.versions import VersionSpec

    class Full:
        def submit(self, feeds: object, *, deadline: float) -> None:
            raise QueueFull("1 requests are waiting or running (the limit)")

        def close(self) -> None:
            pass

    repository = Repository()
    model = Model("m")
    for name in ("1", "2"):
        version = ModelVersion(VersionSpec("m", name, Path(name)), repository.metrics.version("m", name), "ready")
        version.batcher = Full()  # type: ignore[assignment]
        model.versions[name] = version
    model.serving = model.versions["1"]
    repository.models["m"] = model
    explorer = Explorer(repository)
    explorer.set_candidate("m", "2")
    for _ in range(3):
        explorer.observe(model.serving, {"x": X}, {"y": X}, 0.001)
    (found,) = explorer.snapshot()
    assert (found.version, found.requests, found.dropped) == ("2", 0, 3)
    assert explorer.route(model, model.serving) is model.serving  # NOTE: shadow mode never answers by the candidate
    repository.close()


def test_shadow_counts_start_again_when_production_changes() -> None:
    from concurrent.futures import Future

    from toolchain.serve.repository import Model, ModelVersion
    from toolchain.serve.shadow import Explorer
    from toolchain.serve.versions import VersionSpec

    class Echo:
        def submit(self, feeds: dict[str, np.ndarray], *, deadline: float) -> Future[dict[str, np.ndarray]]:
            done: Future[dict[str, np.ndarray]] = Future()
            done.set_result({"y": feeds["x"]})
            return done

        def close(self) -> None:
            pass

    repository = Repository()
    model = Model("m")
    for name in ("1", "2", "3"):
        version = ModelVersion(VersionSpec("m", name, Path(name)), repository.metrics.version("m", name), "ready")
        version.batcher = Echo()  # type: ignore[assignment]
        model.versions[name] = version
    repository.models["m"] = model
    explorer = Explorer(repository)
    explorer.set_candidate("m", "3")
    model.serving = model.versions["1"]
    for _ in range(4):
        explorer.observe(model.serving, {"x": X}, {"y": X + 1.0}, 0.001)  # NOTE: production 1 differs by 1.0
    (found,) = explorer.snapshot()
    assert (found.against, found.requests, found.beyond) == ("1", 4, 4) and found.max_abs == pytest.approx(1.0)
    model.serving = model.versions["2"]  # NOTE: a promotion
    for _ in range(2):
        explorer.observe(model.serving, {"x": X}, {"y": X}, 0.001)
    (found,) = explorer.snapshot()
    assert (found.against, found.requests, found.beyond, found.max_abs) == ("2", 2, 0, 0.0)
    repository.close()
