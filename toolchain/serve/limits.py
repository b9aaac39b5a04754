"""What a server accepts by default, and the error a request gets when it breaks a rule.

Every limit is on unless raised explicitly: a request is bounded in bytes, elements, queueing and time
before it can cost the host memory or a worker (``../shared/CHECKLIST.md``, server rows 18-21).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from toolchain.core.errors import ToolchainError

__all__ = ["Limits", "RequestError"]


class RequestError(ToolchainError):
    """A request the server refuses; carries the HTTP status and headers of the answer.

    Args:
        status: 400 malformed, 401 unauthorised, 404 unknown model, 408 body too slow, 413 too large,
            500 model failed, 503 busy or not ready, 504 inference past the timeout.
        message: what was expected, what was found; names the offending input or field.
        headers: extra response headers (``Retry-After`` on 503).
    """

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = dict(headers or {})


@dataclass(frozen=True)
class Limits:
    """Bounds applied to every request.

    Args:
        max_body_bytes: request body size, counted while it streams in (also without Content-Length).
        max_json_bytes: the JSON part of a request (all of it without the binary extension): parsed
            JSON costs about 10x its size in Python objects, raw binary tensors 1x.
        max_elements: total tensor elements of one request, checked from the declared shapes before any
            tensor is allocated.
        max_queue: requests waiting or running per model version; one more gets 503 with Retry-After.
        timeout_s: from arrival to answer; past it the client gets 504 and a queued request is dropped.
        body_timeout_s: the whole body must arrive within this (a client sending 1 byte/s gets 408).
        retry_after_s: the Retry-After a 503 suggests.
        header_timeout_s: a request's line and headers must arrive within this (from the connection's
            start, or the request's first byte on a kept-alive one); else the connection is closed.
        max_header_bytes: a request's line and headers together; more gets 431 and a closed connection.
    """

    max_body_bytes: int = 64 << 20
    max_json_bytes: int = 8 << 20
    max_elements: int = 1 << 24
    max_queue: int = 256
    timeout_s: float = 30.0
    body_timeout_s: float = 10.0
    retry_after_s: int = 1
    header_timeout_s: float = 10.0
    max_header_bytes: int = 64 << 10

    def __post_init__(self) -> None:
        for name in (
            "max_body_bytes",
            "max_json_bytes",
            "max_elements",
            "max_queue",
            "retry_after_s",
            "max_header_bytes",
        ):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"Limits.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("timeout_s", "body_timeout_s", "header_timeout_s"):
            value = float(getattr(self, name))
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"Limits.{name} must be a positive number of seconds, got {value}")
