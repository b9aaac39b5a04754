from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from toolchain.hosts.browser import serve_package

pytestmark = pytest.mark.crossplatform


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


def test_server_serves_only_regular_files_inside_the_package(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "onnx").mkdir(parents=True)
    (package / "onnx" / "model.onnx").write_bytes(b"model")
    canary = tmp_path / "canary.txt"
    canary.write_text("secret")
    (package / "link.txt").symlink_to(canary)
    (package / "dirlink").symlink_to(tmp_path)
    os.mkfifo(package / "pipe")
    with serve_package(package) as base:
        assert _get(f"{base}/pkg/onnx/model.onnx") == (200, b"model")
        for path in (
            "/pkg/link.txt",
            "/pkg/dirlink/canary.txt",
            "/pkg/../canary.txt",
            "/pkg/%2e%2e/canary.txt",
            "/pkg/pipe",
            "/pkg/",
            "/elsewhere/canary.txt",
            "/pkg/onnx//model.onnx",
        ):
            assert _get(base + path)[0] == 404, path
        status, body = _get(f"{base}/pkg-listing.json")
        listing = json.loads(body)
    assert status == 200
    assert listing["files"] == ["onnx/model.onnx"]
    assert sorted(listing["links"]) == ["dirlink", "link.txt"]
    assert listing["others"] == ["pipe"]
