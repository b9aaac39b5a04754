"""The export pipeline for one spec: reference, export every path, verify, optimise, precision variants, package."""

__all__: list[str] = []
