from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

import pytest
from typer.testing import CliRunner

from tests.serve.conftest import request
from toolchain.cli import app
from toolchain.package.format import open_package
from toolchain.serve.server import BackgroundServer

tritonclient = pytest.importorskip("tritonclient")
runner = CliRunner()


def _model_config_pb2() -> ModuleType:
    """Triton's own ModelConfig protobuf, as shipped in tritonclient (loaded without the grpc client)."""
    path = Path(tritonclient.__file__).parent / "grpc" / "model_config_pb2.py"
    spec = importlib.util.spec_from_file_location("triton_model_config_pb2", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _parse(config: Path):  # type: ignore[no-untyped-def]
    from google.protobuf import text_format

    pb2 = _model_config_pb2()
    return pb2, text_format.Parse(config.read_text(), pb2.ModelConfig())


def test_writes_a_triton_model_repository_that_triton_config_parses(dlrm_package: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["triton", str(dlrm_package), "--repository", str(tmp_path), "--max-batch", "128"])
    assert result.exit_code == 0, result.output
    pb2, config = _parse(tmp_path / "feed.dlrm_small" / "config.pbtxt")
    assert config.name == "feed.dlrm_small" and config.backend == "onnxruntime"
    assert config.max_batch_size == 128
    inputs = {i.name: (i.data_type, list(i.dims)) for i in config.input}
    assert inputs == {"dense": (pb2.TYPE_FP32, [13]), "sparse": (pb2.TYPE_INT64, [8, 4])}
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("score", pb2.TYPE_FP32, [1])]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    assert config.instance_group[0].kind == pb2.ModelInstanceGroup.KIND_CPU
    onnx = tmp_path / "feed.dlrm_small" / "1" / "model.onnx"
    artifact = open_package(dlrm_package).file("onnx/model.onnx")
    assert hashlib.sha256(onnx.read_bytes()).digest() == hashlib.sha256(artifact.read_bytes()).digest()
    again = runner.invoke(app, ["triton", str(dlrm_package), "--repository", str(tmp_path)])
    assert again.exit_code == 1 and "exists; pass --force" in again.output


def test_batch_size_is_capped_at_the_verified_range(tiny_package: Path, tmp_path: Path) -> None:
    assert runner.invoke(app, ["triton", str(tiny_package), "--repository", str(tmp_path)]).exit_code == 0
    _, config = _parse(tmp_path / "test.tiny" / "config.pbtxt")
    verified = open_package(tiny_package).signature.verified_sizes["batch"]
    assert config.max_batch_size == max(verified) and [list(i.dims) for i in config.input] == [[4]]


def test_a_package_that_fails_verification_is_not_published(tiny_package: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_package, broken)
    manifest = json.loads((broken / "manifest.json").read_text())
    (broken / manifest["samples"][0]["expected"]["y"]).write_bytes(b"flipped")
    result = runner.invoke(app, ["triton", str(broken), "--repository", str(tmp_path / "repo")])
    assert result.exit_code == 1 and "failed verification, not published" in result.output
    assert not (tmp_path / "repo" / "test.tiny").exists() or not any((tmp_path / "repo" / "test.tiny").iterdir())


def test_serve_command_starts_on_loopback_and_answers(tiny_package: Path, tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("t0k\n")
    with socket.socket() as probe_socket:
        probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2])}
    command = [sys.executable, "-m", "toolchain.cli", "serve", str(tiny_package), "--port", str(port)]
    process = subprocess.Popen([*command, "--token-file", str(token)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        probe = BackgroundServer.__new__(BackgroundServer)
        probe.port = port
        deadline = time.monotonic() + 120
        while True:
            try:
                if request(probe, "GET", "/v2/health/ready")[0] == 200:
                    break
            except OSError:
                pass
            assert process.poll() is None and time.monotonic() < deadline
            time.sleep(0.2)
        assert request(probe, "GET", "/v2/models/test.tiny")[0] == 401
        status, _, body = request(probe, "GET", "/v2/models/test.tiny", headers={"Authorization": "Bearer t0k"})
        assert status == 200 and json.loads(body)["inputs"][0]["shape"] == [-1, 4]
    finally:
        process.terminate()
        process.wait(30)
    missing = subprocess.run(
        [sys.executable, "-m", "toolchain.cli", "serve"], env=env, capture_output=True, text=True, check=False
    )
    assert missing.returncode == 1 and "give PACKAGE folders, --repository DIR or --registry URI" in missing.stderr
