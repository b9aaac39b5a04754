"""Publish a verified package to a Triton model repository: ``config.pbtxt`` and the portable ONNX artifact.

Layout written (Triton's): ``DIR/<model>/config.pbtxt`` and ``DIR/<model>/<version>/model.onnx`` (with
its external data files, if any). The config carries the signature (symbolic dims as -1; the batch dim
becomes ``max_batch_size``, capped at the size the package was verified up to), dynamic batching and
the ONNX Runtime backend. Only a package that `verify_package` passes here is written.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path, PurePosixPath

from toolchain.core.errors import PackageError
from toolchain.core.signature import Signature, TensorSig
from toolchain.package.format import MANIFEST, open_package
from toolchain.package.verify import verify_package
from toolchain.serve.batching import batch_plan
from toolchain.serve.versions import check_name, portable_artifact

__all__ = ["TRITON_TYPES", "triton_config", "write_triton_model"]

TRITON_TYPES = {
    "bool": "TYPE_BOOL",
    "uint8": "TYPE_UINT8",
    "uint16": "TYPE_UINT16",
    "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64",
    "int8": "TYPE_INT8",
    "int16": "TYPE_INT16",
    "int32": "TYPE_INT32",
    "int64": "TYPE_INT64",
    "float16": "TYPE_FP16",
    "float32": "TYPE_FP32",
    "float64": "TYPE_FP64",
}


def triton_config(
    name: str, signature: Signature, *, max_batch: int = 64, max_delay_us: int = 100, instances: int = 1
) -> str:
    """The ``config.pbtxt`` text for a model with `signature`."""
    plan = batch_plan(signature, max_batch=max_batch)
    skip = 1 if plan is not None else 0
    lines = [f"name: {json.dumps(name)}", 'backend: "onnxruntime"', f"max_batch_size: {plan.limit if plan else 0}"]
    for kind, tensors in (("input", signature.inputs), ("output", signature.outputs)):
        lines.append(f"{kind} [")
        lines.append(",\n".join(_tensor(t, skip) for t in tensors))
        lines.append("]")
    if plan is not None:
        lines += ["dynamic_batching {", f"  max_queue_delay_microseconds: {max_delay_us}", "}"]
    lines += [f"instance_group [ {{ count: {instances} kind: KIND_CPU }} ]"]
    lines += ["version_policy: { latest: { num_versions: 1 } }"]
    return "\n".join(lines) + "\n"


def _tensor(sig: TensorSig, skip: int) -> str:
    if sig.dtype not in TRITON_TYPES:
        raise PackageError(f"tensor {sig.name!r}: dtype {sig.dtype} has no Triton type")
    dims = ", ".join(str(d if isinstance(d, int) else -1) for d in sig.shape[skip:])
    return (
        f"  {{\n    name: {json.dumps(sig.name)}\n    data_type: {TRITON_TYPES[sig.dtype]}\n    dims: [ {dims} ]\n  }}"
    )


def write_triton_model(
    package: Path,
    repository: Path,
    *,
    max_batch: int = 64,
    max_delay_us: int = 100,
    instances: int = 1,
    force: bool = False,
) -> Path:
    """Verify `package`, then write it into the Triton `repository`; returns the model folder.

    Raises:
        PackageError: verification failed, the version exists (without `force`), or a name is unsafe.
    """
    report = verify_package(package)
    if not report:
        raise PackageError(f"{package}: failed verification, not published: {(report.failure_lines() or ['?'])[0]}")
    opened = open_package(package)
    name = check_name(opened.name, "model name")
    version = str(opened.manifest.get("version", "1"))
    if not version.isdigit():
        raise PackageError(f"{package}: version {version[:40]!r} is not a number; Triton versions are integers")
    artifact = portable_artifact(opened.artifacts, report)
    entry = next(a for a in opened.artifacts if str(a.get("path")) == artifact)
    model_dir = Path(repository) / name
    target = model_dir / str(int(version))
    if target.exists() and not force:
        raise PackageError(f"{target}: exists; pass --force to replace it")
    model_dir.mkdir(parents=True, exist_ok=True)
    staging = model_dir / f".staging-{uuid.uuid4().hex[:8]}"
    try:
        base = PurePosixPath(artifact).parent
        for rel in entry.get("files") or [artifact]:
            inside = PurePosixPath(str(rel)).relative_to(base)
            name_there = "model.onnx" if str(rel) == artifact else inside.as_posix()
            (staging / name_there).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(opened.file(str(rel)), staging / name_there)
        shutil.copyfile(package / MANIFEST, staging / "toolchain-manifest.json")
        config = triton_config(
            name, opened.signature, max_batch=max_batch, max_delay_us=max_delay_us, instances=instances
        )
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
        tmp = model_dir / f".config.pbtxt.{uuid.uuid4().hex[:8]}"
        tmp.write_text(config, encoding="utf-8")
        os.replace(tmp, model_dir / "config.pbtxt")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return model_dir
