from __future__ import annotations

import socket
from pathlib import Path

import numpy as np
import pytest

from tests.serve.conftest import triton_inputs
from toolchain.serve.ray_app import build_application

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'toolchain[ray]'")
serve = pytest.importorskip("ray.serve", reason="Ray Serve is missing: pip install 'ray[serve]'")
tritonclient_http = pytest.importorskip("tritonclient.http")


@pytest.mark.slow
def test_the_same_app_runs_as_a_ray_serve_application(tiny_package: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    root = str(Path(__file__).parents[2])
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"PYTHONPATH": root}})
    try:
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        application = build_application([tiny_package], replicas=1, max_replicas=2)
        serve.run(application, name="toolchain", route_prefix="/", blocking=False)
        client = tritonclient_http.InferenceServerClient(f"127.0.0.1:{port}")
        assert client.is_server_ready()
        assert client.get_model_metadata("test.tiny")["inputs"][0]["shape"] == [-1, 4]
        x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
        y = client.infer("test.tiny", triton_inputs({"x": x}, binary=True)).as_numpy("y")
        assert y.shape == (3, 2) and np.isfinite(y).all()
        deployment = serve.status().applications["toolchain"].deployments["toolchain"]
        assert deployment.status == "HEALTHY"
    finally:
        serve.shutdown()
        ray.shutdown()
