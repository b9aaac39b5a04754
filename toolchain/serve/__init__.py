"""Serving verified packages: open what bench recommended, and an OIP v2 server (`app`, needs the serve extra).

Importing this package stays light: the server modules (FastAPI, uvicorn, prometheus-client) load
only when imported themselves.
"""

from toolchain.serve.recommended import open_recommended

__all__ = ["open_recommended"]
