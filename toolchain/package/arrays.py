"""Golden ``.npy`` samples read from untrusted bytes: the header is checked before anything is allocated."""

from __future__ import annotations

import io
import math
from collections.abc import Mapping

import numpy as np

from toolchain.core.errors import PackageError
from toolchain.core.signature import TensorSig
from toolchain.core.text import printable

__all__ = ["parse_npy"]

_KINDS = "biufc"
"""Plain numeric and bool dtypes; objects (pickles), structures, strings and voids are refused."""


def parse_npy(
    data: bytes, *, where: str, tensor: TensorSig | None = None, sizes: Mapping[str, int] | None = None
) -> np.ndarray:
    """The array in `data`, a ``.npy`` file, never unpickled.

    The header is checked first: a plain numeric dtype, a shape whose byte count is exactly what
    the file holds after the header, and (given `tensor`) the dtype, rank and sizes of the
    signature, with symbolic dims bound by `sizes`.

    Raises:
        PackageError: naming `where` and what is wrong.
    """
    stream = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(stream)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"format version {version} is not one this toolchain writes")
    except (ValueError, OSError, SyntaxError, TypeError) as e:
        raise PackageError(f"{where}: not a readable .npy array: {printable(str(e))[:200]}") from e
    if dtype.hasobject or dtype.names is not None or dtype.subdtype is not None or dtype.kind not in _KINDS:
        raise PackageError(f"{where}: dtype {printable(str(dtype))} is not a plain numeric dtype; refusing it")
    offset = stream.tell()
    needed = math.prod(shape) * dtype.itemsize
    if needed != len(data) - offset:
        raise PackageError(
            f"{where}: header claims shape {list(shape)} of {dtype} ({needed} bytes) but the file holds "
            f"{len(data) - offset} bytes of data"
        )
    if tensor is not None:
        _check_signature(where, dtype, shape, tensor, sizes or {})
    flat = np.frombuffer(data, dtype=dtype, count=math.prod(shape), offset=offset)
    return flat.reshape(shape, order="F" if fortran else "C").copy()


def _check_signature(
    where: str, dtype: np.dtype, shape: tuple[int, ...], tensor: TensorSig, sizes: Mapping[str, int]
) -> None:
    if dtype.name != tensor.dtype:
        name = printable(repr(tensor.name))
        raise PackageError(f"{where}: dtype {dtype.name} where the signature of {name} says {tensor.dtype}")
    if len(shape) != len(tensor.shape):
        raise PackageError(f"{where}: shape {list(shape)} where the signature says {list(tensor.shape)}")
    for size, dim in zip(shape, tensor.shape, strict=True):
        want = sizes.get(dim) if isinstance(dim, str) else dim
        if want is not None and size != want:
            raise PackageError(
                f"{where}: shape {list(shape)} where the signature says {list(tensor.shape)} (sizes {dict(sizes)})"
            )
