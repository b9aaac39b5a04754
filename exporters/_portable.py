"""Artifacts without the exporting host's paths: source locations the exporters record, made portable.

The torch.export-based exporter writes each node's Python stack trace into the ONNX graph, ``.pt2``
programs keep it in their JSON, and TorchScript archives keep the source file of every scripted or
traced line in their ``.debug_pkl`` records. Each names files by absolute path (the checkout, the
virtualenv, the home folder); a shipped package must not. Rewritten right after the export, before the
artifact is verified, so the bytes checked against eager are the bytes shipped.
"""

from __future__ import annotations

import json
import os
import pickletools
import shutil
import struct
from pathlib import Path
from typing import Any

from toolchain.core.portable import portable

__all__ = ["portable_archive", "portable_onnx"]


def portable_onnx(path: Path) -> None:
    """Rewrite the absolute paths in an ONNX file's doc strings and metadata (node stack traces) in place."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    changed = _portable_proto(model) | _portable_proto(model.graph)
    for function in model.functions:
        changed |= _portable_proto(function)
    for graph in _graphs(model.graph):
        for node in graph.node:
            changed |= _portable_proto(node)
    if changed:
        onnx.save(model, str(path))


def _graphs(graph: Any) -> list[Any]:
    """`graph` and every subgraph (If / Loop / Scan bodies) inside it."""
    found = [graph]
    for node in graph.node:
        for attribute in node.attribute:
            for sub in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                found += _graphs(sub)
    return found


def _portable_proto(proto: Any) -> bool:
    changed = False
    if getattr(proto, "doc_string", "") and "/" in proto.doc_string:
        new = portable(proto.doc_string)
        changed, proto.doc_string = new != proto.doc_string, new
    for prop in getattr(proto, "metadata_props", []):
        if "/" in prop.value:
            new = portable(prop.value)
            changed |= new != prop.value
            prop.value = new
    return changed


def portable_archive(path: Path) -> None:
    """Rewrite the absolute paths in a TorchScript (``.pt``) or ``.pt2`` archive's debug and JSON records.

    NOTE: torch's own archive writer rewrites it (64-byte aligned records, the same archive name), so
    torch loads the result as it would the original; records other than source locations are copied.
    """
    import torch

    reader = torch._C.PyTorchFileReader(str(path))
    records = [(name, reader.get_record(name)) for name in reader.get_all_records()]
    rewritten = [(name, _portable_record(name, data)) for name, data in records]
    if all(new is data for (_, data), (_, new) in zip(records, rewritten, strict=True)):
        return
    # NOTE: the writer names the archive after the file it writes, so the scratch file keeps the name.
    scratch = path.parent / f".{path.name}.portable" / path.name
    scratch.parent.mkdir(exist_ok=True)
    try:
        writer = torch._C.PyTorchFileWriter(str(scratch))
        for name, data in rewritten:
            writer.write_record(name, data, len(data))
        writer.write_end_of_file()
        del writer
        os.replace(scratch, path)
    finally:
        shutil.rmtree(scratch.parent, ignore_errors=True)


def _portable_record(name: str, data: bytes) -> bytes:
    if name.endswith(".debug_pkl"):
        return _portable_debug(data)
    if name.endswith(".json") and b"/" in data:
        value = json.loads(data)
        new = portable(value)
        return data if new == value else json.dumps(new).encode()
    return data


def _portable_debug(data: bytes) -> bytes:
    """A ``.debug_pkl`` record with its file names made portable (source text and offsets untouched).

    NOTE: edited opcode by opcode, not unpickled and pickled again: torch's pickles tag int lists with
    ``torch.jit._pickle.build_intlist``, which a round trip through Python's pickle loses.
    """
    out, last, changed = bytearray(), 0, False
    ops = list(pickletools.genops(data))
    for (op, arg, pos), (_, _, end) in zip(ops, [*ops[1:], (None, None, len(data))], strict=True):
        if op.name in _STRINGS and isinstance(arg, str) and arg.startswith("/"):
            # NOTE: file names, and the frames of a trace ("/path/file.py(12): forward"); source text is left alone.
            encoded = portable(arg).encode()
            out += data[last:pos] + b"X" + struct.pack("<I", len(encoded)) + encoded
            last, changed = end or len(data), True
    return bytes(out + data[last:]) if changed else data


_STRINGS = ("BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8")
