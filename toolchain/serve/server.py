"""Run the app on uvicorn: in the foreground (the CLI) or in a background thread (tests, benchmarks)."""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from toolchain.core.errors import ToolchainError

__all__ = ["BackgroundServer", "is_loopback", "make_server"]

_log = logging.getLogger("toolchain.serve")


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses: nothing off this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def make_server(app: Any, *, host: str = "127.0.0.1", port: int = 8000, log_level: str = "warning") -> uvicorn.Server:
    """A uvicorn server for `app`; header size and idle keep-alive bounded."""
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_keep_alive=5,
        h11_max_incomplete_event_size=64 << 10,
        # NOTE: past this many open connections and tasks uvicorn answers 503 instead of accepting
        # more: idle sockets cannot exhaust the process's file descriptors.
        limit_concurrency=2048,
    )
    return uvicorn.Server(config)


class BackgroundServer:
    """`make_server` in a daemon thread, as a context manager: ``with BackgroundServer(app) as s: s.url``."""

    def __init__(self, app: Any, *, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server = make_server(app, host=host, port=port)
        self._thread = threading.Thread(target=self.server.run, daemon=True, name="toolchain-serve-http")
        self.port = port

    @property
    def url(self) -> str:
        """``127.0.0.1:<port>`` (tritonclient's form, no scheme)."""
        return f"127.0.0.1:{self.port}"

    def __enter__(self) -> BackgroundServer:
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise ToolchainError("the HTTP server did not start (port taken?)")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.server.should_exit = True
        self._thread.join(10)


def serve(
    packages: list[Any],
    *,
    root: Any = None,
    options: Any = None,
    host: str = "127.0.0.1",
    port: int = 8000,
    token: str = "",
    watch_s: float = 0.0,
    log_level: str = "info",
    follow: Any = None,
) -> None:
    """Verify and serve `packages` and/or the repository `root` until interrupted (the ``serve`` command).

    Refuses to listen beyond this machine without a token unless the operator chose so explicitly
    (the CLI passes ``token`` or a non-loopback ``host`` only when asked). `follow`, when given, is called
    with the repository before serving and returns what to ``close()`` at exit (`follow_registry`).
    """
    from toolchain.serve.app import create_app
    from toolchain.serve.repository import Repository

    logging.basicConfig(level=getattr(logging, log_level.upper(), logging.INFO), format="%(levelname)s %(message)s")
    repository = Repository(packages=packages, root=root, options=options)
    if not is_loopback(host) and not token:
        _log.warning("listening on %s without a bearer token: anyone who can reach it can run the models", host)
    repository.start(wait=False)
    if watch_s > 0:
        repository.watch(watch_s)
    follower = follow(repository) if follow is not None else None
    try:
        make_server(create_app(repository, token=token), host=host, port=port, log_level=log_level).run()
    finally:
        if follower is not None:
            follower.close()
        repository.close()
