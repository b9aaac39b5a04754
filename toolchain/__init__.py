"""toolchain: export PyTorch models, prove parity with eager on every declared size, ship packages.

The public API is the core's (`toolchain.core`): the names here import neither torch nor onnxruntime.
"""

from __future__ import annotations

from toolchain.core import *  # noqa: F403 - re-exports the core's public API
from toolchain.core import __all__ as __all__

__version__ = "0.1.0"
