from __future__ import annotations

import contextlib
import http.client
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from toolchain.package.format import load_array, open_package
from toolchain.serve.app import create_app
from toolchain.serve.repository import Repository, ServeOptions
from toolchain.serve.server import BackgroundServer

OIP = {"float32": "FP32", "int64": "INT64", "int32": "INT32", "bool": "BOOL", "float16": "FP16", "float64": "FP64"}


@contextlib.contextmanager
def serving(
    packages: list[Path] = (),  # type: ignore[assignment]
    *,
    root: Path | None = None,
    options: ServeOptions | None = None,
    token: str = "",
    wait: bool = True,
) -> Iterator[tuple[Repository, BackgroundServer]]:
    repository = Repository(packages=list(packages), root=root, options=options)
    repository.start(wait=wait)
    try:
        limits = repository.options.limits
        app = create_app(repository, token=token)
        with BackgroundServer(
            app, header_timeout_s=limits.header_timeout_s, max_header_bytes=limits.max_header_bytes
        ) as server:
            yield repository, server
    finally:
        repository.close()


def samples(package: Path) -> list[tuple[str, dict[str, np.ndarray], dict[str, np.ndarray]]]:
    opened = open_package(package)
    out = []
    for sample in opened.samples:
        feeds = {k: load_array(opened.file(v)) for k, v in sample["inputs"].items()}
        expected = {k: load_array(opened.file(v)) for k, v in sample["expected"].items()}
        out.append((str(sample["name"]), feeds, expected))
    return out


def triton_inputs(feeds: dict[str, np.ndarray], *, binary: bool) -> list[Any]:
    import tritonclient.http as th

    inputs = []
    for name, value in feeds.items():
        tensor = th.InferInput(name, list(value.shape), OIP[str(value.dtype)])
        tensor.set_data_from_numpy(value, binary_data=binary)
        inputs.append(tensor)
    return inputs


def request(
    server: BackgroundServer,
    method: str,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], bytes]:
    """A raw HTTP request (what a hostile client sends, without a client library's checks)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=60)
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    # the server may answer (413) before reading the whole body: its answer is still there to read
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        connection.request(method, path, body=data, headers=headers or {})
    response = connection.getresponse()
    answer = response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    connection.close()
    return answer


def live(server: BackgroundServer) -> bool:
    return request(server, "GET", "/v2/health/live")[0] == 200


@pytest.fixture(scope="module")
def tiny_server(tiny_package: Path) -> Iterator[tuple[Repository, BackgroundServer]]:
    with serving([tiny_package]) as pair:
        yield pair
