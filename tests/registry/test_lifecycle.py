from __future__ import annotations

import http.client
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import zoo  # noqa: F401 - registers the zoo's models
from tests.registry.postgres import postgres_cluster, registry_uri  # noqa: F401 - fixtures
from toolchain.build.pipeline import export_package
from toolchain.cli import app
from toolchain.core.spec import SPECS
from toolchain.package.format import load_array, open_package

pytest.importorskip("mlflow")
pytest.importorskip("fastapi")
from toolchain.registry.store import ModelRegistry
from toolchain.serve.app import create_app
from toolchain.serve.follow import RegistryFollower, follow_registry
from toolchain.serve.repository import Repository, ServeOptions
from toolchain.serve.server import BackgroundServer

runner = CliRunner()
NAME = "face.match_lr"
CLIENTS = 16


@pytest.fixture(scope="session")
def versions(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three exports of one zoo model; ``big`` ships the legacy ONNX path beside the torch.export one (size)."""
    out = tmp_path_factory.mktemp("lifecycle")
    spec = SPECS.get(NAME)
    built = {
        "v1": export_package(spec, out / "v1", formats=("onnx",), seed=11),
        "v2": export_package(spec, out / "v2", formats=("onnx",), seed=12),
        "big": export_package(spec, out / "big", formats=("onnx", "onnx_legacy"), seed=13),
    }
    assert all(built.values())
    return {key: out / key for key in built}


def _body(package: Path) -> tuple[bytes, dict[str, np.ndarray]]:
    """An infer request made from the package's first golden sample, and that sample's expected outputs."""
    opened = open_package(package)
    sample = opened.samples[0]
    feeds = {k: load_array(opened.file(v)) for k, v in sample["inputs"].items()}
    expected = {k: load_array(opened.file(v)) for k, v in sample["expected"].items()}
    inputs = [
        {"name": k, "shape": list(v.shape), "datatype": "FP32", "data": v.ravel().tolist()} for k, v in feeds.items()
    ]
    return json.dumps({"inputs": inputs}).encode(), expected


def _until(condition: Callable[[], bool], what: str, *, seconds: float = 180) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@contextmanager
def _load(port: int, body: bytes, *, clients: int = CLIENTS) -> Iterator[list[tuple[int, str, list[float]]]]:
    """`clients` threads sending `body` until the block ends; every answer is (status, version, data)."""
    answers: list[tuple[int, str, list[float]]] = []
    stop = threading.Event()

    def client() -> None:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        while not stop.is_set():
            try:
                connection.request("POST", f"/v2/models/{NAME}/infer", body=body)
                response = connection.getresponse()
                answer = json.loads(response.read())
                data = answer.get("outputs", [{}])[0].get("data", [])
                answers.append((response.status, answer.get("model_version", repr(answer)), data))
            except (OSError, http.client.HTTPException, ValueError) as e:
                answers.append((-1, repr(e), []))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    try:
        yield answers
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)


@contextmanager
def _serving(uri: str, **follow: object) -> Iterator[tuple[Repository, RegistryFollower, BackgroundServer]]:
    repository = Repository(options=ServeOptions(max_batch=8))
    follower = follow_registry(repository, uri, poll_s=0.2, **follow)  # type: ignore[arg-type]
    try:
        with BackgroundServer(create_app(repository)) as server:
            yield repository, follower, server
    finally:
        follower.close()
        repository.close()


def _cli(*args: str, code: int = 0) -> str:
    result = runner.invoke(app, ["registry", *args])
    assert result.exit_code == code, result.output
    return result.output


def test_lifecycle_end_to_end(registry_uri: str, versions: dict[str, Path], monkeypatch, tmp_path: Path) -> None:  # noqa: F811
    monkeypatch.setenv("TOOLCHAIN_REGISTRY_URI", registry_uri)
    monkeypatch.setenv("TOOLCHAIN_USER", "alice")
    for key in ("v1", "v2", "big"):
        assert "registered face.match_lr" in _cli("add", str(versions[key]))
    table = _cli("compare", NAME).splitlines()
    assert [line.split()[0] for line in table[1:4]] == ["1", "2", "3"]
    assert "promoted face.match_lr version 1 to production" in _cli("promote", NAME, "1")
    assert "at least 20 shadowed requests" in _cli("budget", NAME, "--min-shadowed", "20", "--reason", "explore")
    refused = _cli("promote", NAME, "2", code=1)
    assert "answered 0 request(s) beside production, the rule asks for 20" in refused
    assert "not promoted: version 3 vs production 1: size" in _cli("promote", NAME, "3", code=1)

    body, expected = _body(versions["v1"])
    registry = ModelRegistry(registry_uri)
    with _serving(registry_uri, candidate="candidate") as (repository, _follower, server):
        _until(lambda: repository.ready() and repository.resolve(NAME).name == "1", "version 1 serving")
        with _load(server.port, body) as answers:
            _until(lambda: len(answers) > 50, "answers from version 1")
            assert "to candidate" in _cli("promote", NAME, "2", "--to", "candidate", "--reason", "shadow it")

            def shadowed() -> int:
                return int(registry.get(NAME, "2").tags.get("toolchain.explore.requests", "0"))

            _until(lambda: shadowed() >= 20, "20 shadowed requests recorded in the registry")
            assert repository.resolve(NAME).name == "1"  # NOTE: a shadow never answers
            assert "promoted face.match_lr version 2 to production" in _cli("promote", NAME, "2")
            _until(lambda: repository.resolve(NAME).name == "2", "version 2 serving after the promotion")
            seen = len(answers)
            _until(lambda: len(answers) > seen + 4 * CLIENTS, "answers after the swap")
        assert not [a for a in answers if a[0] != 200], [a for a in answers if a[0] != 200][:5]
        served = [version for _, version, _ in answers]
        assert served[0] == "1" and set(served[-CLIENTS:]) == {"2"} and set(served) == {"1", "2"}
        for _, _, data in answers:
            np.testing.assert_allclose(data, expected["probability"].ravel(), rtol=1e-5, atol=1e-6)
        assert {v.name: v.state for v in repository.models[NAME].versions.values()} == {"1": "ready", "2": "ready"}

    explored = registry.get(NAME, "2").tags
    assert explored["toolchain.explore.against"] == "1" and explored["toolchain.explore.mode"] == "shadow"
    assert float(explored["toolchain.explore.worst_ratio"]) <= 1.0  # same weights: within tolerance
    assert float(explored["toolchain.explore.p50_ms"]) > 0
    shown = _cli("compare", NAME)
    row = next(line for line in shown.splitlines() if line.split()[:2] == ["2", "shadow"])
    assert int(row.split()[3]) >= 20
    assert "retired face.match_lr version 3" in _cli("retire", NAME, "3", "--reason", "ships two ONNX copies")

    steps = [line.split(" ", 2)[2] for line in _cli("log", NAME).splitlines()]
    actions = [s.split(":")[0].split(" (")[0].split(" [")[0] for s in steps]
    assert actions == [
        "add 1", "add 2", "add 3", "promote 1", "budget -", "refused 2", "refused 3",
        "alias candidate 2", "promote 2", "retire 3",
    ]  # fmt: skip
    assert steps[-1] == "retire 3: ships two ONNX copies"
    assert all(line.split(" ", 2)[1] == "alice" for line in _cli("log", NAME).splitlines())
