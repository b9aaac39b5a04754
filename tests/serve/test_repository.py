from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from tests.conftest import TINY, Tiny, rehash
from tests.serve.conftest import request, serving
from toolchain.build.pipeline import export_package
from toolchain.core.spec import ModelSpec
from toolchain.package.format import load_array, open_package
from toolchain.serve.repository import ServeOptions

pytest.importorskip("fastapi")
X = np.random.default_rng(3).standard_normal((2, 4)).astype(np.float32)
BODY = json.dumps({"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP32", "data": X.ravel().tolist()}]})


def _other_weights() -> Tiny:
    torch.manual_seed(1234)
    model = Tiny()
    with torch.no_grad():
        model.fc2.bias.add_(1.0)
    return model


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two packages of the same signature that compute different functions (ONNX only: quick to verify)."""
    out = tmp_path_factory.mktemp("versions")
    a, b = out / "a", out / "b"
    assert export_package(TINY, a, formats=("onnx",), optimize=False)
    other = ModelSpec(
        name="test.tiny", factory=_other_weights, inputs=TINY.inputs, outputs=TINY.outputs, dims=TINY.dims
    )
    assert export_package(other, b, formats=("onnx",), optimize=False)
    return {"a": a, "b": b}


def _expected(package: Path) -> np.ndarray:
    import onnxruntime as ort

    opened = open_package(package)
    session = ort.InferenceSession(str(opened.file(opened.artifacts[0]["path"])))
    return session.run(None, {"x": X})[0]


def _failing(package: Path, where: Path) -> Path:
    """A copy whose golden output was edited and re-hashed: intact, but its replay fails."""
    shutil.copytree(package, where)
    opened = open_package(where)
    rel = opened.samples[0]["expected"]["y"]
    np.save(where / rel, load_array(where / rel) + 1.0, allow_pickle=False)
    rehash(where, rel)
    return where


def _place(package: Path, model_dir: Path, version: str) -> None:
    """Copy a package in beside, then rename it into place (how a deploy puts a version down atomically)."""
    staging = model_dir / f".incoming-{version}"
    shutil.copytree(package, staging)
    staging.rename(model_dir / version)


def _until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 120
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def _infer(port: int) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    connection.request("POST", "/v2/models/test.tiny/infer", body=BODY)
    response = connection.getresponse()
    status, answer = response.status, json.loads(response.read())
    connection.close()
    return status, answer


def test_failed_verification_never_serves_and_is_visible(two_models: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(two_models["a"], root / "test.tiny" / "1")
    _failing(two_models["b"], root / "test.tiny" / "2")
    with serving(root=root) as (repository, server):
        status, answer = _infer(server.port)
        assert status == 200 and answer["model_version"] == "1"
        np.testing.assert_allclose(answer["outputs"][0]["data"], _expected(two_models["a"]).ravel(), rtol=1e-5)
        meta = json.loads(request(server, "GET", "/v2/models/test.tiny")[2])
        states = json.loads(meta["parameters"]["version_states"])
        assert meta["versions"] == ["1"] and states["2"]["state"] == "FAILED"
        assert "failed verification" in states["2"]["reason"] and "'y' on sample" in states["2"]["reason"]
        assert request(server, "POST", "/v2/models/test.tiny/versions/2/infer", BODY.encode())[0] == 503
        metrics = request(server, "GET", "/metrics")[2].decode()
        assert 'toolchain_model_version_state{model="test.tiny",state="failed",version="2"} 1.0' in metrics
        assert 'toolchain_verification_failures_total{model="test.tiny",version="2"} 1.0' in metrics
        assert repository.ready()


def test_hot_swap_in_flight_requests_finish_on_the_old_version_and_rollback(
    two_models: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    shutil.copytree(two_models["a"], root / "test.tiny" / "1")
    with serving(root=root) as (repository, server):
        old = repository.resolve("test.tiny")
        assert old.batcher is not None
        release, entered, run = threading.Event(), threading.Event(), old.batcher._run

        def held(feeds: Any) -> Any:
            entered.set()
            release.wait(30)
            return run(feeds)

        old.batcher._run = held
        results: list[tuple[int, dict[str, Any]]] = []
        in_flight = threading.Thread(target=lambda: results.append(_infer(server.port)))
        in_flight.start()
        assert entered.wait(30)
        _place(two_models["b"], root / "test.tiny", "2")
        client = __import__("tritonclient.http", fromlist=["x"]).InferenceServerClient(server.url)
        client.load_model("test.tiny")  # the repository extension: picks up version 2, verified, swapped in
        status, answer = _infer(server.port)
        assert status == 200 and answer["model_version"] == "2"
        np.testing.assert_allclose(answer["outputs"][0]["data"], _expected(two_models["b"]).ravel(), rtol=1e-5)
        release.set()
        in_flight.join(30)
        assert results[0][0] == 200 and results[0][1]["model_version"] == "1"
        np.testing.assert_allclose(results[0][1]["outputs"][0]["data"], _expected(two_models["a"]).ravel(), rtol=1e-5)
        status, _, body = request(server, "POST", "/v2/repository/models/test.tiny/rollback", b"")
        assert status == 200 and json.loads(body) == {"version": "1"}
        assert _infer(server.port)[1]["model_version"] == "1"
        assert request(server, "POST", "/v2/repository/models/test.tiny/rollback", b"")[0] == 400


@pytest.mark.slow
def test_five_swaps_under_32_clients_drop_no_request(two_models: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "repo"
    model_dir = root / "test.tiny"
    shutil.copytree(two_models["a"], model_dir / "1")
    expected = {"a": _expected(two_models["a"]), "b": _expected(two_models["b"])}
    source = {"1": "a"}
    bad = _failing(two_models["a"], tmp_path / "bad")
    answers: list[tuple[int, str, list[float]]] = []
    stop = threading.Event()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        while not stop.is_set():
            try:
                connection.request("POST", "/v2/models/test.tiny/infer", body=BODY)
                response = connection.getresponse()
                body = json.loads(response.read())
                answers.append(
                    (response.status, body.get("model_version", ""), body.get("outputs", [{}])[0].get("data"))
                )
            except (OSError, http.client.HTTPException, ValueError) as e:
                answers.append((-1, repr(e), []))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
        connection.close()

    with serving(root=root, options=ServeOptions(max_batch=8)) as (repository, server):
        repository.watch(0.1)
        threads = [threading.Thread(target=client) for _ in range(32)]
        for thread in threads:
            thread.start()
        try:
            for swap in range(2, 7):
                version = str(swap)
                source[version] = "b" if swap % 2 == 0 else "a"
                _place(two_models[source[version]], model_dir, version)
                if swap == 4:
                    _place(bad, model_dir, "90")  # newer, but fails verification: never answers
                _until(lambda v=version: repository.resolve("test.tiny").name == v, f"version {version} serving")
                seen = len(answers)
                _until(lambda n=seen: len(answers) > n + 32, "answers from the new version")
        finally:
            stop.set()
            for thread in threads:
                thread.join(60)
        assert repository.models["test.tiny"].versions["90"].state == "failed"
    failed = [a for a in answers if a[0] != 200]
    assert not failed, failed[:5]
    served = {version for _, version, _ in answers}
    assert served <= set(source) and "6" in served and "90" not in served
    for _, version, data in answers:
        np.testing.assert_allclose(data, expected[source[version]].ravel(), rtol=1e-5, atol=1e-6)


def test_an_artifact_changed_in_place_is_verified_again_and_refused(
    two_models: dict[str, Path], tmp_path: Path
) -> None:
    root = tmp_path / "repo"
    shutil.copytree(two_models["a"], root / "test.tiny" / "1")
    shutil.copytree(two_models["b"], root / "test.tiny" / "2")
    artifact = str(open_package(two_models["a"]).artifacts[0]["path"])
    with serving(root=root) as (repository, server):
        assert repository.resolve("test.tiny").name == "2" and repository.resolve("test.tiny", "1").state == "ready"
        assert repository.poll() == []  # nothing changed: nothing verified again
        # the manifest stays as it was; only the artifact's bytes change (another valid model's)
        (root / "test.tiny" / "1" / artifact).write_bytes((two_models["b"] / artifact).read_bytes())
        for future in repository.poll():
            future.result()
        older = repository.models["test.tiny"].versions["1"]
        assert older.state == "failed" and "failed verification" in older.reason
        assert request(server, "POST", "/v2/models/test.tiny/versions/1/infer", BODY.encode())[0] == 503
        assert request(server, "POST", "/v2/repository/models/test.tiny/rollback", b"")[0] == 400
        # the serving version's artifact changes: refused, and it keeps answering from the copy verified earlier
        (root / "test.tiny" / "2" / artifact).write_bytes((two_models["a"] / artifact).read_bytes())
        for future in repository.poll():
            future.result()
        assert repository.poll() == []  # refused once, not verified again on every look
        status, answer = _infer(server.port)
        assert status == 200 and answer["model_version"] == "2"
        np.testing.assert_allclose(answer["outputs"][0]["data"], _expected(two_models["b"]).ravel(), rtol=1e-5)
        index = json.loads(request(server, "POST", "/v2/repository/index", b"")[2])
        serving_row = next(row for row in index if row["version"] == "2")
        assert serving_row["state"] == "READY" and "changed and were refused" in serving_row["reason"]
        metrics = request(server, "GET", "/metrics")[2].decode()
        assert 'toolchain_verification_failures_total{model="test.tiny",version="2"} 1.0' in metrics
