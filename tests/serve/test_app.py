from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.serve.conftest import request, samples, serving, triton_inputs
from toolchain.core.parity import compare
from toolchain.package.format import open_package

tritonclient_http = pytest.importorskip("tritonclient.http")


def test_metadata_lists_the_signature_with_symbolic_dims_as_minus_one(tiny_server) -> None:
    _, server = tiny_server
    client = tritonclient_http.InferenceServerClient(server.url)
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("test.tiny") and client.is_model_ready("test.tiny", "1")
    meta = client.get_model_metadata("test.tiny")
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 4]}]
    assert meta["outputs"] == [{"name": "y", "datatype": "FP32", "shape": [-1, 2]}]
    assert meta["versions"] == ["1"] and meta["parameters"]["artifact"].endswith(".onnx")
    assert client.get_model_metadata("test.tiny", "1")["inputs"] == meta["inputs"]
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]


@pytest.mark.parametrize("binary", [True, False], ids=["binary", "json"])
def test_answers_equal_the_golden_samples(dlrm_package: Path, binary: bool) -> None:
    tolerance = open_package(dlrm_package).tolerance
    with serving([dlrm_package]) as (_, server):
        client = tritonclient_http.InferenceServerClient(server.url)
        for name, feeds, expected in samples(dlrm_package):
            outputs = [tritonclient_http.InferRequestedOutput(n, binary_data=binary) for n in expected]
            result = client.infer("feed.dlrm_small", triton_inputs(feeds, binary=binary), outputs=outputs)
            actual = {n: result.as_numpy(n) for n in expected}
            assert compare(expected, actual, tolerance, sample=name), name
        # no outputs named: tritonclient asks for every output as binary data
        _, feeds, expected = samples(dlrm_package)[0]
        result = client.infer("feed.dlrm_small", triton_inputs(feeds, binary=binary), request_id="r-1")
        assert result.get_response()["id"] == "r-1" and result.get_response()["model_version"] == "1"
        assert compare(expected, {"score": result.as_numpy("score")}, tolerance)


def test_metrics_count_requests_latency_queue_and_batches_per_model_and_version(tiny_server) -> None:
    _, server = tiny_server
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    client = tritonclient_http.InferenceServerClient(server.url)
    client.infer("test.tiny", triton_inputs({"x": x}, binary=True))
    status, headers, body = request(server, "GET", "/metrics")
    text = body.decode()
    assert status == 200 and headers["content-type"].startswith("text/plain")
    labels = 'model="test.tiny",version="1"'
    assert f'toolchain_requests_total{{{labels[:17]},status="200",version="1"}}' in text
    for metric in ("toolchain_request_seconds_bucket", "toolchain_queue_depth", "toolchain_batch_size_bucket"):
        assert metric in text
    assert f'toolchain_model_version_state{{{labels},state="ready"}} 1.0' in text.replace(
        'model="test.tiny",state="ready",version="1"', f'{labels},state="ready"'
    )


def test_bearer_token_guards_everything_but_health(tiny_package: Path) -> None:
    with serving([tiny_package], token="s3cret") as (_, server):
        assert request(server, "GET", "/v2/health/live")[0] == 200
        assert request(server, "GET", "/v2/health/ready")[0] == 200
        status, headers, body = request(server, "GET", "/v2/models/test.tiny")
        assert status == 401 and headers["www-authenticate"] == "Bearer" and b"bearer token" in body
        assert request(server, "GET", "/metrics", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert request(server, "GET", "/v2/models/test.tiny", headers={"Authorization": "Bearer s3cret"})[0] == 200
        client = tritonclient_http.InferenceServerClient(server.url)
        with pytest.raises(tritonclient_http.InferenceServerException, match="bearer"):
            client.get_model_metadata("test.tiny")


def test_repository_index_unload_and_load(tiny_package: Path) -> None:
    with serving([tiny_package]) as (_, server):
        client = tritonclient_http.InferenceServerClient(server.url)
        index = client.get_model_repository_index()
        assert index == [{"name": "test.tiny", "version": "1", "state": "READY", "reason": ""}]
        client.unload_model("test.tiny")
        assert not client.is_model_ready("test.tiny")
        status, _, body = request(server, "POST", "/v2/models/test.tiny/infer", {"inputs": []})
        assert status == 404 and b"unknown model" in body
        client.load_model("test.tiny")
        assert client.is_model_ready("test.tiny") and client.is_server_ready()
        x = np.ones((2, 4), np.float32)
        assert client.infer("test.tiny", triton_inputs({"x": x}, binary=True)).as_numpy("y").shape == (2, 2)
        # loading from content sent with the request (Triton's config/file overrides) is refused
        with pytest.raises(tritonclient_http.InferenceServerException, match="load only from the server"):
            client.load_model("test.tiny", config=json.dumps({"backend": "python"}))
        with pytest.raises(tritonclient_http.InferenceServerException, match="no model"):
            client.load_model("other")


def test_the_cli_imports_no_server_library_and_binds_loopback_by_default() -> None:
    import subprocess
    import sys

    from typer.testing import CliRunner

    from toolchain.cli import app
    from toolchain.serve.server import is_loopback

    code = (
        "import sys, toolchain.cli; print([m for m in ('fastapi', 'uvicorn', 'prometheus_client') if m in sys.modules])"
    )
    root = str(Path(__file__).parents[2])
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    assert out.stdout.strip() == "[]"
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.0.0.1")
    help_text = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"}).output
    assert "[default: 127.0.0.1]" in help_text
