"""Run the app on uvicorn: in the foreground (the CLI) or in a background thread (tests, benchmarks).

uvicorn runs on httptools and uvloop, with two additions: a response goes out in one write (see
`_Corked`), and the request line and headers of every request must arrive within ``header_timeout_s``
and ``max_header_bytes``. uvicorn itself arms no timer until a
first response was sent and cancels its keep-alive timer on every byte, so a client trickling headers
one byte at a time (slowloris) would hold its connection for ever.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import threading
import time
from types import TracebackType
from typing import Any, cast

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from toolchain.core.errors import ToolchainError
from toolchain.serve.limits import Limits

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


_CORK_BYTES = 256 << 10


class _Corked:
    """A transport whose writes go out together: at the end of a response, past 256 KiB, or next loop turn.

    NOTE: uvicorn writes a response's head and body with two ``write`` calls, each a send on the socket.
    On loopback a send runs the receiver's TCP path in the sender's time; at 32 clients on 2 cores the
    two sends were uvicorn's largest cost (about a third of the event loop's time). One send per answer.
    """

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._pending: list[bytes] = []
        self._size = 0
        self._scheduled = False

    def write(self, data: bytes) -> None:
        """Hold `data` until the response is complete (or the buffer is large, or the loop turns)."""
        self._pending.append(data)
        self._size += len(data)
        if self._size >= _CORK_BYTES:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            self._loop.call_soon(self.flush)

    def flush(self) -> None:
        """Send everything held, in one write."""
        self._scheduled = False
        if not self._pending:
            return
        data = self._pending[0] if len(self._pending) == 1 else b"".join(self._pending)
        self._pending.clear()
        self._size = 0
        if not self._transport.is_closing():
            self._transport.write(data)

    def close(self) -> None:
        """Send what is held, then close."""
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)


class _ServeProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, one write per response; a connection slow to send headers is closed.

    The clock starts when the connection opens and when a request begins (after a keep-alive wait),
    and stops when the headers are complete; the body has its own bound (``Limits.body_timeout_s``).
    """

    header_timeout_s: float = Limits.header_timeout_s
    max_header_bytes: int = Limits.max_header_bytes
    _timer: asyncio.TimerHandle | None = None
    _header_bytes: int = 0

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        """Start the clock for the first request's headers; writes go through `_Corked`."""
        super().connection_made(cast(asyncio.Transport, _Corked(transport, self.loop)))
        self._arm()

    def on_response_complete(self) -> None:
        """Send the whole response (held by `_Corked`) now."""
        cast(_Corked, self.transport).flush()
        super().on_response_complete()

    def on_url(self, url: bytes) -> None:
        """Count the request line against the header bound."""
        self._count(len(url))
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        """Count every header against the header bound."""
        self._count(len(name) + len(value))
        super().on_header(name, value)

    def send_400_response(self, msg: str) -> None:
        """Answer a parse error as uvicorn does, or 431 where the error was headers past the bound."""
        if self._header_bytes <= self.max_header_bytes:
            super().send_400_response(msg)
            return
        self._disarm()
        self.transport.write(
            b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
        )
        self.transport.close()

    def on_message_begin(self) -> None:
        """Start the clock for this request's headers (a keep-alive connection's next request)."""
        super().on_message_begin()
        self._header_bytes = 0
        if self._timer is None:
            self._arm()

    def on_headers_complete(self) -> None:
        """Stop the clock: the headers arrived in time."""
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        """Stop the clock with the connection."""
        self._disarm()
        super().connection_lost(exc)

    def _count(self, size: int) -> None:
        self._header_bytes += size
        if self._header_bytes > self.max_header_bytes:
            # NOTE: raised inside a parser callback: httptools stops parsing and uvicorn answers a parse error
            raise ValueError(f"request headers are over {self.max_header_bytes} bytes")

    def _arm(self) -> None:
        self._timer = self.loop.call_later(self.header_timeout_s, self._expired)

    def _disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _expired(self) -> None:
        self._timer = None
        if not self.transport.is_closing():
            self.transport.close()


def make_server(
    app: Any,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "warning",
    header_timeout_s: float = Limits.header_timeout_s,
    max_header_bytes: int = Limits.max_header_bytes,
) -> uvicorn.Server:
    """A uvicorn server for `app`: headers bounded in time and size, idle keep-alive bounded, no access log.

    Args:
        app: the ASGI app.
        host: the address to bind.
        port: the port (0: any free one).
        log_level: uvicorn's log level.
        header_timeout_s: a request's line and headers must arrive within this, else the connection closes.
        max_header_bytes: a request's line and headers larger than this get 431 and the connection closes.
    """
    protocol = type(
        "ServeProtocol",
        (_ServeProtocol,),
        {"header_timeout_s": float(header_timeout_s), "max_header_bytes": int(max_header_bytes)},
    )
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_level=log_level,
        access_log=False,
        lifespan="off",
        http=protocol,
        # NOTE: "auto" picks uvloop where it is installed (the serve extra; not on Windows)
        loop="auto",
        # NOTE: no proxy header rewriting: nothing reads the client address, and it costs every request
        proxy_headers=False,
        timeout_keep_alive=5,
        # NOTE: past this many open connections and tasks uvicorn answers 503 instead of accepting
        # more: idle sockets cannot exhaust the process's file descriptors.
        limit_concurrency=2048,
    )
    return uvicorn.Server(config)


class BackgroundServer:
    """`make_server` in a daemon thread, as a context manager: ``with BackgroundServer(app) as s: s.url``."""

    def __init__(
        self,
        app: Any,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        header_timeout_s: float = Limits.header_timeout_s,
        max_header_bytes: int = Limits.max_header_bytes,
    ) -> None:
        self.server = make_server(
            app, host=host, port=port, header_timeout_s=header_timeout_s, max_header_bytes=max_header_bytes
        )
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
        app = create_app(repository, token=token)
        limits = repository.options.limits
        make_server(
            app,
            host=host,
            port=port,
            log_level=log_level,
            header_timeout_s=limits.header_timeout_s,
            max_header_bytes=limits.max_header_bytes,
        ).run()
    finally:
        if follower is not None:
            follower.close()
        repository.close()
