"""Find every tensor of a serialized ONNX model that names external data, reading the protobuf wire format.

The production side runs without the ``onnx`` package (numpy and onnxruntime only), so this walks the
wire format itself, descending only into the fields that can hold a tensor: graphs, nodes, attributes,
functions, training info, sparse tensors. A singular field given twice (which protobuf would merge)
and malformed or truncated input are refused instead of being interpreted.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["EXTERNAL", "ExternalTensor", "WireError", "external_tensors"]

EXTERNAL = 1
"""``TensorProto.DataLocation.EXTERNAL``."""
MAX_NESTING = 64
"""Deepest chain of graphs in graphs (If, Loop, Scan bodies) accepted."""

# NOTE: field numbers from onnx.proto (checked against onnx's descriptors in tests/package). Per message:
# field -> (message kind it holds, repeated?). Other fields are skipped by wire type.
_MODEL, _GRAPH, _NODE, _ATTRIBUTE, _FUNCTION, _TRAINING, _SPARSE, _TENSOR = range(8)
_FIELDS: dict[int, dict[int, tuple[int, bool]]] = {
    _MODEL: {7: (_GRAPH, False), 20: (_TRAINING, True), 25: (_FUNCTION, True)},
    _GRAPH: {1: (_NODE, True), 5: (_TENSOR, True), 15: (_SPARSE, True)},
    _NODE: {5: (_ATTRIBUTE, True)},
    _ATTRIBUTE: {
        5: (_TENSOR, False),
        6: (_GRAPH, False),
        10: (_TENSOR, True),
        11: (_GRAPH, True),
        22: (_SPARSE, False),
        23: (_SPARSE, True),
    },
    _FUNCTION: {7: (_NODE, True), 11: (_ATTRIBUTE, True)},
    _TRAINING: {1: (_GRAPH, False), 2: (_GRAPH, False)},
    _SPARSE: {1: (_TENSOR, False), 2: (_TENSOR, False)},
}
_TENSOR_NAME, _TENSOR_EXTERNAL, _TENSOR_LOCATION = 8, 13, 14
_MODEL_IR_VERSION, _MODEL_OPSET = 1, 8


class WireError(ValueError):
    """The bytes are not a well-formed ONNX model."""


@dataclass(frozen=True)
class ExternalTensor:
    """A tensor that has external-data entries or is marked as stored externally."""

    name: str
    entries: tuple[tuple[str, str], ...]
    data_location: int


def external_tensors(blob: bytes) -> list[ExternalTensor]:
    """Every tensor in the ONNX model `blob` that refers to external data, in the order they appear.

    Raises:
        WireError: malformed, truncated, nested too deep, a singular field repeated, or no graph,
            IR version or opset.
    """
    view = memoryview(blob)
    seen = _fields(view, 0, len(view))
    if not any(f == 7 and w == 2 for f, w, _, _ in seen) or not any(f == _MODEL_IR_VERSION for f, *_ in seen):
        raise WireError(f"no graph or IR version in its {len(blob)} bytes")
    if not any(f == _MODEL_OPSET and w == 2 for f, w, _, _ in seen):
        raise WireError("no opset import")
    found: list[ExternalTensor] = []
    stack = [(_MODEL, 0, len(view), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > MAX_NESTING * 4:
            raise WireError(f"messages nested more than {MAX_NESTING} graphs deep")
        fields = seen if kind == _MODEL and start == 0 else _fields(view, start, end)
        if kind == _TENSOR:
            tensor = _tensor(view, fields)
            if tensor is not None:
                found.append(tensor)
            continue
        singular: set[int] = set()
        for number, wire, lo, hi in reversed(fields):
            holds = _FIELDS[kind].get(number)
            if holds is None:
                continue
            if wire != 2:
                raise WireError(f"field {number} has wire type {wire}, expected a message")
            if not holds[1]:
                if number in singular:
                    raise WireError(f"singular field {number} given twice")
                singular.add(number)
            stack.append((holds[0], lo, hi, depth + 1))
    return found


def _tensor(view: memoryview, fields: list[tuple[int, int, int, int]]) -> ExternalTensor | None:
    name, entries, location, locations = "", [], 0, 0
    for number, wire, lo, hi in fields:
        if number == _TENSOR_NAME and wire == 2:
            name = _text(view, lo, hi)
        elif number == _TENSOR_EXTERNAL and wire == 2:
            key = value = ""
            for sub, sub_wire, a, b in _fields(view, lo, hi):
                if sub_wire == 2 and sub in (1, 2):
                    key, value = (_text(view, a, b), value) if sub == 1 else (key, _text(view, a, b))
            entries.append((key, value))
        elif number == _TENSOR_LOCATION:
            locations += 1
            location = lo if wire == 0 else -1
    if locations > 1 or location < 0:
        raise WireError(f"tensor {name!r}: data_location given twice or not a number")
    if not entries and location != EXTERNAL:
        return None
    return ExternalTensor(name, tuple(entries), location)


def _text(view: memoryview, lo: int, hi: int) -> str:
    try:
        return bytes(view[lo:hi]).decode("utf-8")
    except UnicodeDecodeError as e:
        raise WireError("a string is not UTF-8") from e


def _fields(view: memoryview, start: int, end: int) -> list[tuple[int, int, int, int]]:
    """(field number, wire type, start, end) of each field in ``view[start:end]``; a varint's value as start."""
    out = []
    pos = start
    while pos < end:
        key, pos = _varint(view, pos, end)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise WireError("field number 0")
        if wire == 0:
            value, pos = _varint(view, pos, end)
            out.append((number, wire, value, pos))
            continue
        if wire == 2:
            size, pos = _varint(view, pos, end)
            lo, pos = pos, pos + size
        elif wire in (1, 5):
            lo, pos = pos, pos + (8 if wire == 1 else 4)
        else:
            raise WireError(f"wire type {wire} (groups or invalid)")
        if pos > end:
            raise WireError("truncated")
        out.append((number, wire, lo, pos))
    return out


def _varint(view: memoryview, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    for _ in range(10):
        if pos >= end:
            raise WireError("truncated")
        byte = view[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
    raise WireError("a varint longer than 10 bytes")
