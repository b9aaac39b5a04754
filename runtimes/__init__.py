"""Runtimes that load artifacts into sessions, collected in `RUNTIMES`.

Each module keeps its heavy imports (onnxruntime, torch) inside functions, so importing this package
is cheap and works on hosts without torch.
"""

from __future__ import annotations

from runtimes.exported_program import ExportedProgramRuntime
from runtimes.ort import OrtRuntime
from runtimes.torchscript import TorchScriptRuntime
from toolchain.core.protocols import Runtime
from toolchain.core.registry import Registry

__all__ = ["RUNTIMES", "runtime_for"]

RUNTIMES: Registry[Runtime] = Registry("runtime")
RUNTIMES.register("ort", OrtRuntime())
RUNTIMES.register("torchscript", TorchScriptRuntime())
RUNTIMES.register("exported_program", ExportedProgramRuntime())


def runtime_for(fmt: str) -> Runtime | None:
    """The first available runtime that runs artifacts of format `fmt`, if any."""
    for name in RUNTIMES:
        runtime = RUNTIMES.get(name)
        if fmt in runtime.formats and runtime.available():
            return runtime
    return None
