"""Hostile ONNX models and packages built at test time (x: float[batch, 4] -> y: float[batch, 2])."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

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
    """Write `manifest` with a fresh file list of everything in `package` (as a forger would)."""
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
