"""Open Inference Protocol v2 tensors: decode a request against a signature, encode the answer.

Both encodings of the protocol are read: JSON ``data`` and the binary tensor data extension (a JSON
header of ``Inference-Header-Content-Length`` bytes followed by raw little-endian tensors, what
``tritonclient`` sends by default). Every shape, datatype and size is checked against the package's
signature and the limits *before* a tensor is allocated; a datatype is accepted only where the cast
to the signature's dtype loses nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from toolchain.core.signature import Signature, TensorSig
from toolchain.serve.limits import Limits, RequestError

__all__ = [
    "DATATYPES",
    "HEADER_LENGTH",
    "InferRequest",
    "decode_request",
    "encode_response",
    "tensor_metadata",
]

HEADER_LENGTH = "inference-header-content-length"
DATATYPES = {
    "BOOL": "bool",
    "UINT8": "uint8",
    "UINT16": "uint16",
    "UINT32": "uint32",
    "UINT64": "uint64",
    "INT8": "int8",
    "INT16": "int16",
    "INT32": "int32",
    "INT64": "int64",
    "FP16": "float16",
    "FP32": "float32",
    "FP64": "float64",
}
"""OIP datatypes with a numpy dtype (``BYTES`` has none: no package takes strings)."""
_TO_OIP = {v: k for k, v in DATATYPES.items()}
_OIP_OF = {np.dtype(v): k for k, v in DATATYPES.items()}
_DTYPE_OF = {k: np.dtype(v) for k, v in DATATYPES.items()}
_RANGE = {d: (int(np.iinfo(d).min), int(np.iinfo(d).max)) for d in _DTYPE_OF.values() if d.kind in "iu"}
"""The same by dtype (no ``str(dtype)``, which runs Python code in numpy, per answer)."""
_JSON_NUMPY = frozenset(
    np.dtype(d)
    for d in ("bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "float32", "float64")
)
"""Output dtypes orjson writes straight from the array (float32 as its shortest round-tripping decimal)."""
_DUMPS = orjson.OPT_SERIALIZE_NUMPY


@dataclass(frozen=True)
class InferRequest:
    """A decoded request: feeds in the signature's dtypes, and which outputs to return how.

    Args:
        id: the client's request id, echoed back.
        feeds: input name -> array, exactly the signature's inputs.
        outputs: output name -> True for binary data, in the order to return them.
    """

    id: str | None
    feeds: dict[str, np.ndarray]
    outputs: dict[str, bool]


def tensor_metadata(sig: TensorSig) -> dict[str, Any]:
    """``{"name", "datatype", "shape"}`` with every symbolic dim as -1."""
    return {
        "name": sig.name,
        "datatype": _TO_OIP.get(sig.dtype, sig.dtype.upper()),
        "shape": [d if isinstance(d, int) else -1 for d in sig.shape],
    }


def decode_request(
    body: bytes, signature: Signature, limits: Limits, *, header_length: str | None = None
) -> InferRequest:
    """Parse and check an infer request body; raise `RequestError` (400) naming the first problem.

    Args:
        body: the whole request body (already bounded by ``limits.max_body_bytes``).
        signature: the served version's signature, with the verified range of each symbolic dim.
        limits: the element cap.
        header_length: the ``Inference-Header-Content-Length`` header, when the binary extension is used.
    """
    header, binary = _split(body, header_length)
    if len(header) > limits.max_json_bytes:
        raise RequestError(
            413,
            f"the request's JSON is {len(header)} bytes, over the limit of {limits.max_json_bytes}; "
            "send large tensors with the binary tensor data extension",
        )
    request = _parse_json(header)
    if not isinstance(request, dict):
        raise RequestError(400, "request body must be a JSON object with 'inputs'")
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or not all(isinstance(i, dict) for i in inputs):
        raise RequestError(400, "'inputs' must be a list of objects with name, shape, datatype and data")
    names = signature.input_names
    by_name = _inputs_by_name(inputs, names)
    shapes = _check_shapes(by_name, signature, limits)
    feeds: dict[str, np.ndarray] = {}
    offset = 0
    sigs = {t.name: t for t in signature.inputs}
    # NOTE: binary tensors follow each other in the order the request lists its inputs, not the signature's.
    for sig in (sigs[name] for name in by_name):
        tensor, shape = by_name[sig.name], shapes[sig.name]
        wanted = _dtype(sig.dtype)
        declared = _declared_dtype(tensor, sig, wanted)
        size = _param(tensor, "binary_data_size")
        if size is not None:
            want = math.prod(shape) * declared.itemsize
            if isinstance(size, bool) or not isinstance(size, int) or size != want:
                raise RequestError(
                    400, f"input {sig.name!r}: binary_data_size {size!r} != {want} bytes for shape {shape}"
                )
            if offset + size > len(binary):
                raise RequestError(400, f"input {sig.name!r}: binary data ends after {len(binary) - offset} bytes")
            raw = np.frombuffer(binary, dtype=declared.newbyteorder("<"), count=math.prod(shape), offset=offset)
            if declared.kind == "b" and size and np.frombuffer(binary, np.uint8, size, offset).max() > 1:
                raise RequestError(400, f"input {sig.name!r}: BOOL bytes must be 0 or 1")
            offset += size
            array = raw.reshape(shape)
        else:
            array = _from_json(sig.name, tensor.get("data"), shape, declared)
        feeds[sig.name] = _cast(sig.name, array, wanted)
    if offset != len(binary):
        raise RequestError(400, f"{len(binary) - offset} bytes of binary data follow the last input; none expected")
    ordered = {name: feeds[name] for name in names}
    return InferRequest(_request_id(request), ordered, _outputs(request, signature))


def encode_response(
    model: str, version: str, request: InferRequest, outputs: Mapping[str, np.ndarray]
) -> tuple[bytes, dict[str, str]]:
    """The response body and its headers: JSON, or a JSON header then binary outputs where asked."""
    described, chunks = [], []
    for name, binary in request.outputs.items():
        value = np.ascontiguousarray(outputs[name])
        entry: dict[str, Any] = {
            "name": name,
            "datatype": _OIP_OF.get(value.dtype) or str(value.dtype).upper(),
            "shape": list(value.shape),
        }
        if binary:
            raw = value.astype(value.dtype.newbyteorder("<"), copy=False).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            # NOTE: orjson writes numpy arrays in C (0.1-0.3 ms less per answer than .tolist() + json);
            # like any strict JSON writer it writes a non-finite float as null.
            entry["data"] = value.ravel() if value.dtype in _JSON_NUMPY else value.ravel().tolist()
        described.append(entry)
    head: dict[str, Any] = {"model_name": model, "model_version": version, "outputs": described}
    if request.id is not None:
        head["id"] = request.id
    header = orjson.dumps(head, option=_DUMPS)
    if not chunks:
        return header, {"content-type": "application/json"}
    headers = {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}
    return b"".join([header, *chunks]), headers


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    text = header_length.strip()
    if not text.isdigit() or len(text) > 19 or int(text) > len(body):
        raise RequestError(
            400, f"Inference-Header-Content-Length {header_length[:40]!r} must be a byte count <= the body's"
        )
    return body[: int(text)], body[int(text) :]


_CONSTANTS = (b"NaN", b"Infinity", b"-Infinity")


def _parse_json(header: bytes) -> Any:
    """The parsed header: strict JSON (no NaN or Infinity tokens, numbers that fit a double, UTF-8)."""
    try:
        return orjson.loads(header)
    except orjson.JSONDecodeError as e:
        # NOTE: orjson stops at depth 1024 without recursing; its message says "depth limit exceeded"
        if "depth limit" in str(e):
            raise RequestError(400, "request JSON is nested too deeply") from None
        # NOTE: at "-Infinity" orjson's position is past the sign
        token = next((t for at in (e.pos - 1, e.pos) for t in _CONSTANTS if header.startswith(t, max(at, 0))), None)
        if token is not None:
            raise RequestError(
                400, f"{token.decode()} is not a JSON number; send non-finite values with the binary extension"
            ) from None
        raise RequestError(400, f"request body is not valid JSON: {str(e)[:200]}") from None


def _inputs_by_name(inputs: list[dict[str, Any]], names: list[str]) -> dict[str, dict[str, Any]]:
    by_name: dict[str, dict[str, Any]] = {}
    for tensor in inputs:
        name = tensor.get("name")
        if not isinstance(name, str):
            raise RequestError(400, "every input needs a string 'name'")
        if name not in names:
            raise RequestError(400, f"unknown input {name[:100]!r}; the model takes {names}")
        if name in by_name:
            raise RequestError(400, f"input {name!r} given twice")
        by_name[name] = tensor
    missing = [n for n in names if n not in by_name]
    if missing:
        raise RequestError(400, f"missing input(s) {missing}; the model takes {names}")
    return by_name


def _check_shapes(
    by_name: Mapping[str, Mapping[str, Any]], signature: Signature, limits: Limits
) -> dict[str, tuple[int, ...]]:
    """Every input's shape, checked against the signature, the verified sizes and the element cap."""
    shapes: dict[str, tuple[int, ...]] = {}
    bound: dict[str, int] = {}
    total = 0
    for sig in signature.inputs:
        shape = by_name[sig.name].get("shape")
        if not isinstance(shape, list) or len(shape) != len(sig.shape):
            raise RequestError(
                400, f"input {sig.name!r}: shape must be a list of {len(sig.shape)} sizes, got {shape!r}"[:300]
            )
        for axis, (want, got) in enumerate(zip(sig.shape, shape, strict=True)):
            if type(got) is not int or got < 0:  # NOTE: JSON gives int, never a subclass but bool
                raise RequestError(
                    400, f"input {sig.name!r}: shape[{axis}] must be a non-negative integer, got {got!r}"[:300]
                )
            if isinstance(want, int) and want != got:
                raise RequestError(
                    400, f"input {sig.name!r}: shape[{axis}] must be {want} ({sig.describe()}), got {got}"
                )
            if isinstance(want, str) and want != "?":
                verified = signature.verified_sizes.get(want)
                if verified and not min(verified) <= got <= max(verified):
                    raise RequestError(
                        400,
                        f"input {sig.name!r}: dim {want!r} (shape[{axis}]) is {got}; "
                        f"the package was verified for {min(verified)}..{max(verified)}",
                    )
                if bound.setdefault(want, got) != got:
                    raise RequestError(
                        400, f"input {sig.name!r}: dim {want!r} is {got} here but {bound[want]} in another input"
                    )
        total += math.prod(shape)
        if total > limits.max_elements:
            raise RequestError(
                400, f"input {sig.name!r}: shape {shape} brings the request over {limits.max_elements} elements"
            )
        shapes[sig.name] = tuple(shape)
    return shapes


def _dtype(name: str) -> np.dtype[Any]:
    """`np.dtype(name)`, looked up (the constructor parses the name every time)."""
    found = _DTYPES.get(name)
    if found is None:
        found = _DTYPES[name] = np.dtype(name)
    return found


_DTYPES: dict[str, np.dtype[Any]] = {}


def _declared_dtype(tensor: Mapping[str, Any], sig: TensorSig, wanted: np.dtype[Any]) -> np.dtype[Any]:
    datatype = tensor.get("datatype")
    if datatype == "BYTES":
        raise RequestError(400, f"input {sig.name!r}: BYTES given; the model takes {tensor_metadata(sig)['datatype']}")
    if not isinstance(datatype, str) or datatype not in DATATYPES:
        raise RequestError(400, f"input {sig.name!r}: datatype {datatype!r} is not one of {sorted(DATATYPES)}"[:300])
    declared = _DTYPE_OF[datatype]
    if declared != wanted and not np.can_cast(declared, wanted, "safe") and not _both_integer(declared, wanted):
        raise RequestError(
            400,
            f"input {sig.name!r}: datatype {datatype} cannot be cast to {_TO_OIP.get(sig.dtype, sig.dtype)} "
            "without loss; send the model's datatype",
        )
    return declared


def _both_integer(a: np.dtype[Any], b: np.dtype[Any]) -> bool:
    return a.kind in "iu" and b.kind in "iu"


def _from_json(name: str, data: Any, shape: tuple[int, ...], declared: np.dtype[Any]) -> np.ndarray:
    """The ``data`` list (flat, or nested exactly as `shape`) as an array of the declared dtype."""
    if not isinstance(data, list):
        raise RequestError(400, f"input {name!r}: 'data' must be a list (or use binary_data_size)")
    # NOTE: JSON values are exactly int, float, bool, str, None, list or dict: a set of types, built in C
    types = set(map(type, data))
    flat = data if list not in types else _flatten(name, data, shape)
    if len(flat) != math.prod(shape):
        raise RequestError(400, f"input {name!r}: {len(flat)} values for shape {list(shape)} ({math.prod(shape)})")
    kinds = _KINDS.get(declared.kind, _INTEGER)
    if not kinds.issuperset(types if flat is data else map(type, flat)):
        value = next(v for v in flat if type(v) not in kinds)
        raise RequestError(
            400, f"input {name!r}: value {repr(value)[:40]} is not a {_TO_OIP[str(declared)]} JSON value"
        )
    if declared.kind in "iu":
        low, high = _RANGE[declared]
        if flat and not (low <= min(flat) and max(flat) <= high):
            raise RequestError(400, f"input {name!r}: a value lies outside the {_TO_OIP[str(declared)]} range")
    if declared.kind != "f":
        return np.array(flat, dtype=declared).reshape(shape)
    try:
        with np.errstate(all="ignore"):
            array = np.array(flat, dtype=declared).reshape(shape)
    except OverflowError:
        array = np.array([np.inf])
    if not np.isfinite(array).all():
        raise RequestError(400, f"input {name!r}: a value lies outside the {_TO_OIP[str(declared)]} range")
    return array


_INTEGER = frozenset((int,))
_KINDS = {"b": frozenset((bool,)), "f": frozenset((int, float))}


def _flatten(name: str, data: list[Any], shape: tuple[int, ...]) -> list[Any]:
    """Values of a nested list, refused unless every level has exactly the shape's length (no recursion)."""
    if not shape:
        raise RequestError(400, f"input {name!r}: a scalar takes one value, not a nested list")
    flat: list[Any] = []
    stack: list[tuple[list[Any], int]] = [(data, 0)]
    while stack:
        level, depth = stack.pop()
        if len(level) != shape[depth]:
            raise RequestError(
                400, f"input {name!r}: ragged data: {len(level)} values at depth {depth}, shape {list(shape)}"
            )
        if depth == len(shape) - 1:
            if any(isinstance(v, list) for v in level):
                raise RequestError(400, f"input {name!r}: data nested deeper than shape {list(shape)}")
            flat.extend(level)
            continue
        if not all(isinstance(v, list) for v in level):
            raise RequestError(400, f"input {name!r}: ragged data: a value where a list of {shape[depth + 1]} belongs")
        stack.extend((v, depth + 1) for v in reversed(level))
    return flat


def _cast(name: str, array: np.ndarray, wanted: np.dtype[Any]) -> np.ndarray:
    """`array` in `wanted`, only when no value changes (integer narrowing is checked value by value)."""
    if array.dtype == wanted:
        return array
    if array.size and _both_integer(array.dtype, wanted) and not np.can_cast(array.dtype, wanted, "safe"):
        info = np.iinfo(wanted)
        if array.min() < info.min or array.max() > info.max:
            raise RequestError(
                400, f"input {name!r}: values beyond the {_TO_OIP[str(wanted)]} range; the cast would change them"
            )
    return array.astype(wanted)


def _param(tensor: Mapping[str, Any], key: str) -> Any:
    params = tensor.get("parameters")
    if params is None:
        return None
    if not isinstance(params, dict):
        raise RequestError(400, "'parameters' must be an object")
    return params.get(key)


def _request_id(request: Mapping[str, Any]) -> str | None:
    value = request.get("id")
    if value is not None and not isinstance(value, str):
        raise RequestError(400, "'id' must be a string")
    return value[:256] if value is not None else None


def _outputs(request: Mapping[str, Any], signature: Signature) -> dict[str, bool]:
    default = _param(request, "binary_data_output")
    if default is not None and not isinstance(default, bool):
        raise RequestError(400, "parameters.binary_data_output must be true or false")
    asked = request.get("outputs")
    if asked is None:
        return dict.fromkeys(signature.output_names, bool(default))
    if not isinstance(asked, list) or not all(isinstance(o, dict) for o in asked):
        raise RequestError(400, "'outputs' must be a list of objects with a name")
    chosen: dict[str, bool] = {}
    for tensor in asked:
        name = tensor.get("name")
        if not isinstance(name, str) or name not in signature.output_names:
            raise RequestError(400, f"unknown output {str(name)[:100]!r}; the model gives {signature.output_names}")
        if name in chosen:
            raise RequestError(400, f"output {name!r} asked twice")
        binary = _param(tensor, "binary_data")
        chosen[name] = bool(default) if binary is None else binary is True
    return chosen
