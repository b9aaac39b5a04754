"""The gate's result cache: a content key per model, and checked results stored under that key.

The key is a sha256 over everything that can move a model's numbers: the source of the modules that
define it (the factory's module and the module of every non-torch submodule class), the spec's fields
and sample sets, the built model's weights and buffers, the gate options (export paths, seed), the
versions of python, torch, onnx, onnxscript, onnxruntime, numpy and toolchain, and the toolchain's own
source. A model whose key is unchanged is not exported again; its stored result is reused. Results
live as JSON in ``$TOOLCHAIN_HOME/gate-cache/<key>.json``.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import inspect
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.core.spec import ModelSpec
from toolchain.package.trust import toolchain_home

__all__ = ["cache_dir", "content_key", "load_result", "store_result"]

_CODE_PACKAGES = ("toolchain", "exporters", "runtimes")


def cache_dir() -> Path:
    """Where checked results are stored: ``$TOOLCHAIN_HOME/gate-cache``."""
    return toolchain_home() / "gate-cache"


def content_key(spec: ModelSpec, *, options: Mapping[str, Any]) -> str:
    """The sha256 (hex) that changes whenever anything that can move `spec`'s parity changes.

    Builds the model (to hash its weights). `options` are the gate's own settings that change the
    work done (export paths, seed); they must be JSON-able.
    """
    from toolchain.build.record import library_versions

    model = spec.build()
    digest = hashlib.sha256()
    _feed(digest, "options", json.dumps(dict(options), sort_keys=True, default=str).encode())
    _feed(digest, "spec", json.dumps(_spec_fields(spec), sort_keys=True, default=str).encode())
    for name, feeds in sorted(spec.samples.items()):
        for key, array in sorted(feeds.items()):
            _feed(digest, f"sample {name}/{key}", _array_bytes(np.asarray(array)))
    modules = {getattr(spec.factory, "__module__", "")} | {type(m).__module__ for m in model.modules()}
    for name in sorted(m for m in modules if m and m.split(".")[0] != "torch"):
        _feed(digest, f"module {name}", _module_source(name))
    for name, tensor in sorted(model.state_dict().items()):
        _feed(digest, f"tensor {name}", _tensor_bytes(tensor))
    _feed(digest, "versions", json.dumps(library_versions(), sort_keys=True).encode())
    _feed(digest, "toolchain source", _toolchain_source_digest().encode())
    return digest.hexdigest()


def load_result(key: str) -> dict[str, Any] | None:
    """The result stored under `key`, or None (also for an unreadable entry, which is then ignored)."""
    try:
        data = json.loads((cache_dir() / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) and data.get("key") == key else None


def store_result(key: str, result: Mapping[str, Any]) -> bool:
    """Store `result` under `key` atomically; False when the cache folder cannot be written."""
    folder = cache_dir()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.tmp"
        tmp.write_text(json.dumps({**result, "key": key}, sort_keys=True), encoding="utf-8")
        tmp.replace(folder / f"{key}.json")
    except OSError:
        return False
    return True


def _feed(digest: Any, label: str, data: bytes) -> None:
    # NOTE: length-prefixed so that no two different sequences of fields hash alike.
    digest.update(f"{label}:{len(data)}:".encode())
    digest.update(data)


def _spec_fields(spec: ModelSpec) -> dict[str, Any]:
    return {
        "name": spec.name,
        "source": spec.source,
        "inputs": {k: v.to_dict() for k, v in spec.inputs.items()},
        "outputs": list(spec.outputs),
        "dims": {s: spec.dim(s).to_dict() for s in spec.symbols()},
        "tolerance": spec.tolerance.to_dict(),
        "formats": list(spec.formats),
        "version": spec.version,
        "seed": spec.seed,
    }


def _module_source(name: str) -> bytes:
    module = sys.modules.get(name)
    file = getattr(module, "__file__", None)
    if file:
        try:
            return Path(file).read_bytes()
        except OSError:
            pass
    try:
        return inspect.getsource(module).encode() if module is not None else b""
    except (OSError, TypeError):
        return b""  # NOTE: no source to read (a REPL class); the weights and spec still key it.


def _array_bytes(array: np.ndarray) -> bytes:
    return f"{array.dtype.str}{array.shape}".encode() + np.ascontiguousarray(array).tobytes()


def _tensor_bytes(tensor: Any) -> bytes:
    import torch

    flat = tensor.detach().cpu().contiguous().reshape(-1)
    raw = flat.view(torch.uint8) if flat.numel() else flat.to(torch.uint8)
    data: bytes = raw.numpy().tobytes()
    return f"{flat.dtype}{tuple(tensor.shape)}".encode() + data


@functools.cache
def _toolchain_source_digest() -> str:
    """sha256 over the toolchain's own source, so an edited exporter or runtime re-checks every model."""
    digest = hashlib.sha256()
    for package in _CODE_PACKAGES:
        found = importlib.util.find_spec(package)
        for root in map(Path, (found.submodule_search_locations or []) if found else []):
            for path in sorted(root.rglob("*.py")):
                _feed(digest, f"{package}/{path.relative_to(root).as_posix()}", path.read_bytes())
    return digest.hexdigest()
