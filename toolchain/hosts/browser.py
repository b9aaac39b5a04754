"""The browser host: the package served on 127.0.0.1 and replayed with onnxruntime-web in headless Chromium.

The server exposes exactly four things: the verifier page (``browser/`` and ``js/``), onnxruntime-web's
``dist`` folder, the package's regular files (never through a link, never outside it) with a listing
of the folder as the server sees it, and, for benchmarks, a folder of ``.npy`` feeds.
"""

from __future__ import annotations

import contextlib
import json
import threading
from collections.abc import Iterator
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlencode, urlsplit

from toolchain.core.errors import HostError
from toolchain.hosts.install import SOURCE, chromium, node_modules
from toolchain.hosts.result import HostResult, from_json

__all__ = ["bench_browser", "serve_package", "verify_browser"]

_START_MS = 180_000
_TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm"}


class _Handler(BaseHTTPRequestHandler):
    """GET only; every path maps into one of the served roots or is a 404."""

    def __init__(self, *args: Any, roots: dict[str, Path], package: Path, **kwargs: Any) -> None:
        self.roots = roots
        self.package = package
        super().__init__(*args, **kwargs)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the verifier's result says what happened."""

    def do_GET(self) -> None:
        """Serve a file from a root, or the package listing."""
        path = unquote(urlsplit(self.path).path)
        if path == "/pkg-listing.json":
            self._send(json.dumps(_listing(self.package)).encode(), ".json")
            return
        prefix, _, rel = path.lstrip("/").partition("/")
        root = self.roots.get(prefix)
        file = _contained(root, rel) if root is not None else None
        if file is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        self._send(file.read_bytes(), file.suffix)

    def _send(self, body: bytes, suffix: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", _TYPES.get(suffix, "application/octet-stream"))
        self.send_header("Content-Length", str(len(body)))
        # NOTE: cross-origin isolation lets onnxruntime-web use more than one WebAssembly thread.
        self.send_header("Cross-Origin-Opener-Policy", "same-origin")
        self.send_header("Cross-Origin-Embedder-Policy", "require-corp")
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)


def _contained(root: Path, rel: str) -> Path | None:
    """`root`/`rel` when it is a regular file reached without links, ``..`` or absolute parts."""
    parts = rel.split("/")
    if not rel or "\\" in rel or any(p in ("", ".", "..") for p in parts):
        return None
    file = root
    for part in parts:
        file = file / part
        if file.is_symlink():
            return None
    return file if file.is_file() else None


def _listing(package: Path) -> dict[str, list[str]]:
    """Regular files, links and anything else in `package`, relative and sorted (links are not followed)."""
    files, links, others = [], [], []
    for p in sorted(package.rglob("*")):
        rel = p.relative_to(package).as_posix()
        if p.is_symlink():
            links.append(rel)
        elif p.is_file():
            files.append(rel)
        elif not p.is_dir():
            others.append(rel)
    return {"files": files, "links": links, "others": others}


@contextlib.contextmanager
def serve_package(package: Path, *, feeds: Path | None = None) -> Iterator[str]:
    """Serve `package` (and the verifier page) on 127.0.0.1 at a free port; yields the base URL."""
    roots = {
        "host": SOURCE / "browser",
        "js": SOURCE / "js",
        "ort": node_modules() / "onnxruntime-web" / "dist",
        "pkg": Path(package).resolve(),
    }
    if feeds is not None:
        roots["feeds"] = Path(feeds)
    server = ThreadingHTTPServer(("127.0.0.1", 0), partial(_Handler, roots=roots, package=roots["pkg"]))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _run_page(url: str, *, screenshot: Path | None, timeout: float) -> str:
    """Open `url` in headless Chromium, wait for the verifier, return its JSON result."""
    try:
        from playwright.sync_api import Error as PlaywrightError
        from playwright.sync_api import sync_playwright
    except ImportError as e:
        raise HostError("the browser host needs Playwright for Python: pip install 'toolchain[hosts]'") from e
    executable = chromium()
    try:
        with sync_playwright() as p:
            # NOTE: --no-sandbox: Chromium's sandbox refuses to start as root, which CI runs as.
            # NOTE: generous start-up limits: on a loaded 2-core CI machine Chromium can take tens of seconds.
            browser = p.chromium.launch(
                executable_path=executable, headless=True, args=["--no-sandbox"], timeout=_START_MS
            )
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(url, timeout=_START_MS)
                page.wait_for_function("window.__toolchainDone === true", timeout=timeout * 1000)
                error = page.evaluate("window.__toolchainError || ''")
                if screenshot is not None:
                    screenshot.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(screenshot), full_page=True)
                if error:
                    raise HostError(f"browser verifier could not run: {error}")
                return str(page.evaluate("window.__toolchainResult"))
            finally:
                browser.close()
    except PlaywrightError as e:
        raise HostError(f"headless Chromium ({executable}) failed: {str(e).splitlines()[0][:400]}") from e


def verify_browser(
    package: Path, *, threads: int = 1, screenshot: Path | None = None, timeout: float = 900
) -> HostResult:
    """Verify `package` in headless Chromium; `screenshot` saves the page's parity table as a PNG."""
    package = Path(package).resolve()
    with serve_package(package) as base:
        text = _run_page(f"{base}/host/index.html?threads={threads}", screenshot=screenshot, timeout=timeout)
    return from_json(text, host="browser", package=package)


def bench_browser(package: Path, model: str, feeds: Path, *, threads: int, runs: int) -> dict[str, Any]:
    """Median latency of `model` in the browser on the ``.npy`` feeds in folder `feeds`."""
    inputs = ",".join(sorted(p.stem for p in Path(feeds).glob("*.npy")))
    query = urlencode({"model": model, "inputs": inputs, "threads": threads, "runs": runs})
    with serve_package(Path(package).resolve(), feeds=feeds) as base:
        text = _run_page(f"{base}/host/index.html?{query}", screenshot=None, timeout=600)
    data: dict[str, Any] = json.loads(text)
    return data
