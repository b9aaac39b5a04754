"""Helpers for the hostile-package tests: hostile ONNX models built at test time (x: float[batch, 4] ->
y: float[batch, 2]), a real package to damage, a canary beside it, the CLI."""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from toolchain.cli import app

_X = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4])
_Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 2])
_W = numpy_helper.from_array(np.ones((4, 2), dtype=np.float32), "w")


def _model(nodes: list[onnx.NodeProto], inits: list[TensorProto], *, opsets: dict[str, int] | None = None) -> bytes:
    graph = helper.make_graph(nodes, "hostile", [_X], [_Y], [_W, *inits])
    imports = [helper.make_opsetid(domain, v) for domain, v in {"": 17, **(opsets or {})}.items()]
    return helper.make_model(graph, opset_imports=imports, ir_version=8).SerializeToString()


def constant_of_shape(elements: int) -> bytes:
    """``y = x @ w + sum(ConstantOfShape([elements]))``: a few hundred bytes that ask for 4*elements bytes."""
    shape = numpy_helper.from_array(np.array([elements], dtype=np.int64), "shape")
    nodes = [
        helper.make_node(
            "ConstantOfShape", ["shape"], ["big"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])
        ),
        helper.make_node("ReduceSum", ["big"], ["total"], keepdims=0),
        helper.make_node("MatMul", ["x", "w"], ["xw"]),
        helper.make_node("Add", ["xw", "total"], ["y"]),
    ]
    return _model(nodes, [shape])


def endless_loop(steps: int) -> bytes:
    """``y = Loop(steps){x + 0} @ w``: a Loop whose trip count is `steps`."""
    zero = numpy_helper.from_array(np.zeros((), dtype=np.float32), "zero")
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["v_in", "zero"], ["v_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("v_out", TensorProto.FLOAT, None),
        ],
    )
    trips = numpy_helper.from_array(np.array(steps, dtype=np.int64), "trips")
    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [
        helper.make_node("Loop", ["trips", "cond", "x"], ["looped"], body=body),
        helper.make_node("MatMul", ["looped", "w"], ["y"]),
    ]
    return _model(nodes, [trips, cond, zero])


def custom_domain() -> bytes:
    """``y = com.evil.Backdoor(x) @ w``: an operator only a custom-op library would implement."""
    nodes = [
        helper.make_node("Backdoor", ["x"], ["z"], domain="com.evil"),
        helper.make_node("MatMul", ["z", "w"], ["y"]),
    ]
    return _model(nodes, [], opsets={"com.evil": 1})


def untyped_input() -> bytes:
    """A model whose input has no type at all."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "hostile",
        [helper.make_value_info("x", onnx.TypeProto())],
        [_Y],
        [_W],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8).SerializeToString()


def hostile_package(source: Path, dest: Path, model: bytes, **manifest_extra: object) -> Path:
    """A copy of `source` (an exported package) whose only artifact is `model` at onnx/model.onnx, re-hashed.

    The manifest changes, so the package is no longer one this machine exported (untrusted).
    """
    shutil.copytree(source, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    keep = "onnx/model.onnx"
    for art in manifest["artifacts"]:
        if art["path"] != keep:
            (dest / art["path"]).unlink()
    manifest["artifacts"] = [a for a in manifest["artifacts"] if a["path"] == keep]
    manifest["parity"] = {k: v for k, v in manifest.get("parity", {}).items() if k == keep}
    (dest / keep).write_bytes(model)
    manifest.update(manifest_extra)
    rehash_all(dest, manifest)
    return dest


def rehash_all(package: Path, manifest: dict) -> None:
    """Write `manifest` with a fresh file list of everything in `package` (as a forger would).

    Folders left empty (an artifact's, once its files were deleted) are removed too: containment
    refuses a folder that holds no listed file.
    """
    for folder in sorted((p for p in package.rglob("*") if p.is_dir() and not p.is_symlink()), reverse=True):
        if not any(folder.iterdir()):
            folder.rmdir()
    manifest["files"] = [
        {
            "path": p.relative_to(package).as_posix(),
            "size": p.stat().st_size,
            "sha256": hashlib.sha256(p.read_bytes()).hexdigest(),
        }
        for p in sorted(package.rglob("*"))
        if p.is_file() and p.name != "manifest.json" and p.name != "model.sig"
    ]
    (package / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True))


MANIFEST = "manifest.json"
runner = CliRunner()

_OPENED: list[str] = []
_HOOKED = False


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "open" and args and isinstance(args[0], str | bytes | Path):
        _OPENED.append(str(args[0]))


def opened() -> list[str]:
    """Paths (as given: relative to a folder descriptor or absolute) opened through Python since the hook went in."""
    global _HOOKED
    if not _HOOKED:
        sys.addaudithook(_audit)  # NOTE: audit hooks cannot be removed; one for the whole session.
        _HOOKED = True
    return _OPENED


@dataclass
class Canary:
    """A file beside the package that a hostile package points at; it must be neither opened nor changed."""

    path: Path
    content: bytes
    mtime_ns: int = 0
    start: int = field(default=0)

    def arm(self) -> Canary:
        self.path.write_bytes(self.content)
        self.mtime_ns = self.path.stat().st_mtime_ns
        self.start = len(opened())
        return self

    def assert_untouched(self) -> None:
        touched = [p for p in opened()[self.start :] if Path(p).name == self.path.name]
        assert touched == [], f"the canary was opened: {touched}"
        assert self.path.read_bytes() == self.content
        assert self.path.stat().st_mtime_ns == self.mtime_ns


def restamp(pkg: Path, *, keep: tuple[str, ...] = ()) -> None:
    """Rewrite the manifest's file list from what is on disk (so only the damage under test is left).

    Files named in `keep` keep their recorded entry; new regular files are listed.
    """
    manifest = json.loads((pkg / MANIFEST).read_text())
    old = {e["path"]: e for e in manifest["files"]}
    entries = []
    for p in sorted(pkg.rglob("*")):
        rel = p.relative_to(pkg).as_posix()
        if rel in keep:
            entries.append(old[rel])
            continue
        if rel == MANIFEST or p.is_symlink() or not p.is_file():
            continue
        data = p.read_bytes()
        entries.append({"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    manifest["files"] = entries
    (pkg / MANIFEST).write_text(json.dumps(manifest, indent=2))


def edit_manifest(pkg: Path, edit: Callable[[dict[str, Any]], Any]) -> None:
    manifest = json.loads((pkg / MANIFEST).read_text())
    edit(manifest)
    (pkg / MANIFEST).write_text(json.dumps(manifest, indent=2))


def copy_package(src: Path, parent: Path, name: str = "pkg") -> Path:
    dest = parent / name
    shutil.copytree(src, dest, symlinks=True)
    return dest


def to_external(pkg: Path, *, location: str = "model.onnx.data") -> None:
    """Move the initializers of ``onnx/model.onnx`` to an external-data file, as the exporter does for big models."""
    model_path = pkg / "onnx/model.onnx"
    model = onnx.load(str(model_path))
    onnx.save(model, str(model_path), save_as_external_data=True, location=location, size_threshold=0)

    def add_file(manifest: dict[str, Any]) -> None:
        for artifact in manifest["artifacts"]:
            if artifact["path"] == "onnx/model.onnx":
                artifact["files"] = sorted({*artifact["files"], f"onnx/{location}"})

    edit_manifest(pkg, add_file)
    restamp(pkg)


def point_external(pkg: Path, **fields: str) -> None:
    """Set external-data fields of the first external tensor of ``onnx/model.onnx`` and re-hash the package."""
    model_path = pkg / "onnx/model.onnx"
    model = onnx.load(str(model_path), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL)
    entries = {e.key: e.value for e in tensor.external_data} | fields
    del tensor.external_data[:]
    for key, value in entries.items():
        tensor.external_data.add(key=key, value=value)
    model_path.write_bytes(model.SerializeToString())
    restamp(pkg)


def first_initializer(pkg: Path) -> np.ndarray:
    model = onnx.load(str(pkg / "onnx/model.onnx"), load_external_data=False)
    return numpy_helper.to_array(model.graph.initializer[0], base_dir=str(pkg / "onnx"))


def cli(*args: str) -> Any:
    """Run the CLI in-process; the result has exit_code, stdout and stderr."""
    return runner.invoke(app, list(args))


def fail_lines(result: Any) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(("FAIL ", "error: "))]


def verify_measured(pkg: Path) -> tuple[Any, int]:
    """`toolchain verify PKG` on the cpu provider, and the peak of Python's allocations while it ran."""
    tracemalloc.start()
    try:
        result = cli("verify", str(pkg), "--provider", "cpu")
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
