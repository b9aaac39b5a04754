"""Reference models for the workloads a large social network runs, one module per service.

Importing this package registers every zoo model in `toolchain.SPECS`.
"""

from __future__ import annotations

from zoo import face, feed, image, integrity, search, speech, translation

__all__ = ["face", "feed", "image", "integrity", "search", "speech", "translation"]
