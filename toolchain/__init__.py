"""toolchain: export PyTorch models, prove parity with eager on every declared size, ship packages.

The public API is the core's (`toolchain.core`): the names here import neither torch nor onnxruntime.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from toolchain.core import *  # noqa: F403 - re-exports the core's public API
from toolchain.core import __all__ as _core_names

if TYPE_CHECKING:  # NOTE: for type checkers and editors; at run time `export` loads lazily (`__getattr__`)
    from toolchain.build.instance import export_instance as export

__all__ = [*_core_names, "export"]
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # NOTE: `toolchain.export` (toolchain.build.instance.export_instance) is imported on first use, so
    # `import toolchain` stays free of torch and of the build layer.
    if name == "export":
        from toolchain.build.instance import export_instance

        return export_instance
    raise AttributeError(f"module 'toolchain' has no attribute {name!r}")
