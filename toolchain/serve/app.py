"""The HTTP app: Open Inference Protocol v2 over a `Repository`, with limits, a token and metrics.

Endpoints: ``/v2``, ``/v2/health/live``, ``/v2/health/ready`` (strict), ``/v2/models/{name}[/versions/{v}]``
(metadata), ``.../ready``, ``.../infer`` (JSON and binary tensor data), ``/v2/repository/index``,
``/v2/repository/models/{name}/load|unload|rollback`` and ``/metrics``. Built on FastAPI and uvicorn
with handlers that read the raw body themselves: the size limit holds while it streams in, also for
chunked bodies without Content-Length, and a body that trickles in is cut off at ``body_timeout_s``.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from toolchain.core.errors import ToolchainError
from toolchain.serve.batching import Closed, QueueFull
from toolchain.serve.limits import RequestError
from toolchain.serve.metrics import CONTENT_TYPE
from toolchain.serve.protocol import HEADER_LENGTH, decode_request, encode_response, tensor_metadata
from toolchain.serve.repository import Model, ModelVersion, Repository

__all__ = ["create_app"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
InferHandler = Callable[[Scope, Receive, str, str | None], Awaitable[tuple[bytes, dict[str, str]]]]
_OFFLOAD_BYTES = 256 << 10
"""Bodies at least this large are decoded in a thread, so the event loop (and liveness) never waits on them."""
_OPEN = ("/v2/health/live", "/v2/health/ready")
_HEADER_LENGTH = HEADER_LENGTH.encode()


def create_app(repository: Repository, *, token: str = "") -> FastAPI:
    """The OIP v2 app serving `repository`; with `token`, every endpoint but health needs ``Bearer token``."""
    app = _Front(title="toolchain serve", docs_url=None, redoc_url=None, openapi_url=None)
    limits = repository.options.limits
    metrics = repository.metrics

    @app.exception_handler(RequestError)
    async def refused(request: Request, error: RequestError) -> Response:
        return _error(error)

    @app.get("/v2")
    async def server_metadata() -> dict[str, Any]:
        return {"name": "toolchain", "version": _version(), "extensions": ["binary_tensor_data", "model_repository"]}

    @app.get("/v2/health/live")
    async def live() -> Response:
        return Response(status_code=200)

    @app.get("/v2/health/ready")
    async def ready() -> Response:
        return Response(status_code=200 if repository.ready() else 503)

    @app.get("/v2/models/{name}")
    async def model_metadata(name: str) -> dict[str, Any]:
        return _metadata(repository.get(name), None)

    @app.get("/v2/models/{name}/versions/{version}")
    async def version_metadata(name: str, version: str) -> dict[str, Any]:
        return _metadata(repository.get(name), version)

    @app.get("/v2/models/{name}/ready")
    async def model_ready(name: str) -> Response:
        repository.resolve(name)
        return Response(status_code=200)

    @app.get("/v2/models/{name}/versions/{version}/ready")
    async def version_ready(name: str, version: str) -> Response:
        repository.resolve(name, version)
        return Response(status_code=200)

    async def infer(scope: Scope, receive: Receive, name: str, version: str | None) -> tuple[bytes, dict[str, str]]:
        started = time.monotonic()
        try:
            target = repository.resolve(name, version)
        except RequestError as e:
            metrics.unrouted.labels(str(e.status)).inc()
            raise
        try:
            answer = await _infer(scope, receive, target, name, version, started)
        except RequestError as e:
            target.metrics.request(e.status, time.monotonic() - started)
            raise
        target.metrics.request(200, time.monotonic() - started)
        return answer

    async def _infer(
        scope: Scope, receive: Receive, target: ModelVersion, name: str, pinned: str | None, started: float
    ) -> tuple[bytes, dict[str, str]]:
        declared, header_length = _headers(scope)
        # NOTE: without the binary extension the whole body is JSON, bounded tighter (see Limits)
        most = limits.max_body_bytes if header_length is not None else min(limits.max_body_bytes, limits.max_json_bytes)
        body = await _receive_body(receive, declared, most, limits.body_timeout_s)
        deadline = started + limits.timeout_s
        decoded, signature = None, None
        while True:
            runner, batcher = target.runner, target.batcher
            if runner is None or batcher is None:  # NOTE: unloaded or failed a reload since resolved
                target = repository.resolve(name, pinned)
                continue
            if runner.signature != signature:
                signature = runner.signature
                if len(body) >= _OFFLOAD_BYTES:
                    decoded = await run_in_threadpool(
                        decode_request, body, signature, limits, header_length=header_length
                    )
                else:
                    decoded = decode_request(body, signature, limits, header_length=header_length)
            assert decoded is not None
            try:
                future = batcher.submit_async(decoded.feeds, deadline=deadline)
                submitted = time.monotonic()
                break
            except Closed:  # NOTE: swapped out since resolved: the new serving version takes it
                target = repository.resolve(name, pinned)
            except QueueFull as e:
                raise RequestError(
                    503, f"model {name!r} is busy: {e}", headers={"retry-after": str(limits.retry_after_s)}
                ) from None
        try:
            # NOTE: asyncio.timeout, not wait_for: on 3.11 wait_for adds a waiter future and callbacks per call
            async with asyncio.timeout(max(deadline - time.monotonic(), 0.0)):
                outputs = await future
        except TimeoutError:
            raise RequestError(504, f"model {name!r} did not answer within {limits.timeout_s:g}s") from None
        except ToolchainError as e:
            raise RequestError(500, f"model {name!r} version {target.name} failed: {e}") from None
        if repository.explorer is not None and pinned is None:
            _explore(repository.explorer, target, decoded.feeds, outputs, time.monotonic() - submitted)
        if sum(v.nbytes for v in outputs.values()) >= _OFFLOAD_BYTES:
            return await run_in_threadpool(encode_response, name, target.name, decoded, outputs)
        return encode_response(name, target.name, decoded, outputs)

    @app.post("/v2/repository/index")
    async def index(request: Request) -> list[dict[str, Any]]:
        await _read_body(request, 1 << 16, limits.body_timeout_s)
        return repository.index()

    @app.post("/v2/repository/models/{name}/load")
    async def load(request: Request, name: str) -> Response:
        _refuse_content(await _read_body(request, 1 << 16, limits.body_timeout_s))
        model = await run_in_threadpool(repository.load, name)
        if model.serving is None:
            reasons = "; ".join(f"version {v.name}: {v.reason}" for v in model.versions.values() if v.reason)
            raise RequestError(400, f"model {name!r} has no verified version: {reasons or 'none found'}")
        return JSONResponse({})

    @app.post("/v2/repository/models/{name}/unload")
    async def unload(request: Request, name: str) -> Response:
        await _read_body(request, 1 << 16, limits.body_timeout_s)
        repository.unload(name)
        return JSONResponse({})

    @app.post("/v2/repository/models/{name}/rollback")
    async def rollback(request: Request, name: str) -> Response:
        await _read_body(request, 1 << 16, limits.body_timeout_s)
        return JSONResponse({"version": repository.rollback(name)})

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(content=metrics.render(), media_type=CONTENT_TYPE)

    front: ASGIApp = _InferFastPath(app.routed, handler=infer)
    app.front = _BearerToken(front, token=token) if token else front
    return app


_log = logging.getLogger("toolchain.serve")


def _explore(explorer: Any, answered: ModelVersion, feeds: Any, outputs: Any, seconds: float) -> None:
    """Hand an answered request to the exploration of a candidate (shadow or share); never fails the request.

    NOTE: the comparison runs on the other version's workers, off this response path; here only a
    copy is queued (or dropped and counted when that version's queue is full).
    """
    try:
        explorer.observe(answered, feeds, outputs, seconds)
    except Exception:
        _log.exception("exploring a candidate failed; the answer is unaffected")


class _Front(FastAPI):
    """FastAPI behind `front`: the token check and the infer fast path run before its middleware stack.

    NOTE: FastAPI's own layers (its call, Starlette's, the error middleware's send wrapper) cost about
    30 us of CPU per request (0.126 against 0.089 ms for an empty app at 32 clients); infer skips them.
    """

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Enter through `front` (set by `create_app`)."""
        await (self.front or self.routed)(scope, receive, send)

    async def routed(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own handling: middleware stack, routing, exception handlers."""
        await super().__call__(scope, receive, send)


_INFER = re.compile(r"^/v2/models/([^/]+)(?:/versions/([^/]+))?/infer$")


class _InferFastPath:
    """ASGI middleware: ``POST .../infer`` is answered here in raw ASGI, past routing and FastAPI's wrappers.

    NOTE: on a small model the HTTP stack costs ten times the model run; this path skips routing,
    Request/Response objects and the exception middleware for the one endpoint that is hot. Any
    other method on an infer path falls through to the router, which knows no such route (404).
    """

    def __init__(self, app: ASGIApp, *, handler: InferHandler) -> None:
        self.app = app
        self.handler = handler

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _INFER.match(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        try:
            content, headers = await self.handler(scope, receive, match[1], match[2])
            status = 200
        except RequestError as e:
            status, content, headers = e.status, _error_body(e), {**e.headers, "content-type": "application/json"}
        raw = [(b"content-length", str(len(content)).encode())]
        raw.extend((k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items())
        await send({"type": "http.response.start", "status": status, "headers": raw})
        await send({"type": "http.response.body", "body": content})


class _BearerToken:
    """ASGI middleware: every path but the health probes needs ``Authorization: Bearer <token>``."""

    def __init__(self, app: ASGIApp, *, token: str) -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] not in _OPEN:
            given = dict(scope["headers"]).get(b"authorization", b"")
            if not hmac.compare_digest(given, self._expected):
                response = _error(
                    RequestError(401, "missing or wrong bearer token", headers={"www-authenticate": "Bearer"})
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def _read_body(request: Request, limit: int, timeout_s: float) -> bytes:
    """The whole body of `request` (see `_receive_body`)."""
    return await _receive_body(request.receive, request.headers.get("content-length"), limit, timeout_s)


async def _receive_body(receive: Receive, declared: str | None, limit: int, timeout_s: float) -> bytes:
    """The whole body, refused (413) as soon as it passes `limit` bytes, and (408) past `timeout_s`.

    Args:
        receive: the ASGI receive channel.
        declared: the Content-Length header, if any (checked before a byte is read).
        limit: the most bytes taken.
        timeout_s: the whole body must arrive within this.
    """
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise RequestError(413, f"request body of {declared[:20]} bytes is over the limit of {limit}", headers=_CLOSE)
    chunks, size = [], 0
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise RequestError(400, "the client disconnected before sending the whole body", headers=_CLOSE)
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise RequestError(413, f"request body is over the limit of {limit} bytes", headers=_CLOSE)
                chunks.append(chunk)
                if not message.get("more_body", False):
                    break
    except TimeoutError:
        raise RequestError(408, f"request body did not arrive within {timeout_s:g}s", headers=_CLOSE) from None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def _headers(scope: Scope) -> tuple[str | None, str | None]:
    """The Content-Length and Inference-Header-Content-Length headers of a raw ASGI scope (last one wins)."""
    length = header_length = None
    for key, value in scope["headers"]:
        if key == b"content-length":
            length = value.decode("latin-1")
        elif key == _HEADER_LENGTH:
            header_length = value.decode("latin-1")
    return length, header_length


_CLOSE = {"connection": "close"}


def _refuse_content(body: bytes) -> None:
    """The load endpoint takes a name only: no config or files from the request (no code, no paths)."""
    if not body.strip():
        return
    try:
        request = json.loads(body)
    except ValueError:
        raise RequestError(400, "load request body must be JSON") from None
    params = request.get("parameters") if isinstance(request, dict) else None
    if not isinstance(request, dict) or set(request) - {"parameters"} or (params and not isinstance(params, dict)):
        raise RequestError(400, "load takes no content: models load only from the server's repository")
    if params:
        raise RequestError(
            400, f"load parameters {sorted(params)[:5]} refused: models load only from the server's repository"
        )


def _metadata(model: Model, version: str | None) -> dict[str, Any]:
    chosen = model.serving if version is None else model.versions.get(version)
    if version is not None and chosen is None:
        raise RequestError(404, f"model {model.name!r} has no version {version[:40]!r}")
    runner = chosen.runner if chosen is not None else None
    states = {v.name: {"state": v.state.upper(), "reason": v.reason} for v in model.versions.values()}
    return {
        "name": model.name,
        "versions": model.ready_versions() if version is None else [version],
        "platform": "onnxruntime_onnx",
        "inputs": [tensor_metadata(t) for t in runner.signature.inputs] if runner else [],
        "outputs": [tensor_metadata(t) for t in runner.signature.outputs] if runner else [],
        "parameters": {
            "serving_version": model.serving.name if model.serving else "",
            "artifact": runner.artifact if runner else "",
            "version_states": json.dumps(states),
        },
    }


def _error(error: RequestError) -> Response:
    return Response(_error_body(error), status_code=error.status, headers=error.headers, media_type="application/json")


def _error_body(error: RequestError) -> bytes:
    return orjson.dumps({"error": str(error)})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("toolchain")
    except PackageNotFoundError:
        return "0"
