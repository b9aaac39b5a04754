"""The package format and its production side: atomic writes, integrity, trust, verify, reports; imports no torch."""

__all__: list[str] = []
