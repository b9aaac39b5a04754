"""Serving verified packages on a production host: open what bench recommended, as it was timed; no torch."""

from toolchain.serve.recommended import open_recommended

__all__ = ["open_recommended"]
