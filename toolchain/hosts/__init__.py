"""Verifiers of a package outside Python: Node.js, a browser and C++, driven from Python."""
