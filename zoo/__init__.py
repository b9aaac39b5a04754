"""Reference models for the workloads a large social network runs, one module per service.

Importing this package registers every zoo model in `toolchain.SPECS`.
"""

from __future__ import annotations

from zoo import feed, image

__all__ = ["feed", "image"]
