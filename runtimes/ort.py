"""ONNX Runtime: load an ONNX artifact, check feeds against its signature, run. Never imports torch."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.errors import InferenceError, RuntimeLoadError, first_line
from toolchain.signature import Signature, TensorSig

__all__ = ["OrtOptions", "OrtRuntime", "OrtSession"]

_ORT_DTYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(double)": "float64",
    "tensor(int64)": "int64",
    "tensor(int32)": "int32",
    "tensor(bool)": "bool",
    "tensor(int8)": "int8",
    "tensor(uint8)": "uint8",
}


@dataclass(frozen=True)
class OrtOptions:
    """Session options exposed by the toolchain.

    Args:
        providers: execution providers in order of preference.
        intra_op_threads: threads per op; 0 lets ONNX Runtime choose.
    """

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0


class OrtSession:
    """An ONNX Runtime inference session that checks feeds before running."""

    def __init__(self, path: Path, *, signature: Signature | None, options: OrtOptions) -> None:
        import onnxruntime as ort

        missing = [p for p in options.providers if p not in ort.get_available_providers()]
        if missing:
            raise RuntimeLoadError(
                f"execution provider(s) {missing} not available here; available: {ort.get_available_providers()}"
            )
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.log_severity_level = 4  # NOTE: errors come back as exceptions; keep ORT's own log quiet.
        try:
            self._session = ort.InferenceSession(str(path), sess_options=so, providers=list(options.providers))
        except Exception as e:
            raise RuntimeLoadError(f"{path}: ONNX Runtime could not load it: {first_line(e)}") from e
        self.path = path
        self.signature = signature or self._native_signature()
        self._output_names = [o.name for o in self._session.get_outputs()]

    def _native_signature(self) -> Signature:
        def sig(arg: Any) -> TensorSig:
            shape = tuple(d if isinstance(d, int) else (d or "?") for d in arg.shape)
            return TensorSig(arg.name, _ORT_DTYPES.get(arg.type, arg.type), shape)

        return Signature(
            inputs=tuple(sig(i) for i in self._session.get_inputs()),
            outputs=tuple(sig(o) for o in self._session.get_outputs()),
        )

    def native_signature(self) -> Signature:
        """The signature as ONNX Runtime reads it from the model file."""
        return self._native_signature()

    def run(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Check `feeds` against the signature, then run; outputs by name."""
        self.signature.check_feeds(feeds)
        try:
            values = self._session.run(self._output_names, dict(feeds))
        except Exception as e:
            raise InferenceError(f"{self.path}: ONNX Runtime failed: {first_line(e)}") from e
        return {name: np.asarray(v) for name, v in zip(self._output_names, values, strict=True)}


class OrtRuntime:
    """Runs ``onnx`` artifacts with ONNX Runtime."""

    name = "ort"
    formats: tuple[str, ...] = ("onnx",)
    runs_code = False

    def __init__(self, options: OrtOptions = OrtOptions()) -> None:
        self.options = options

    def available(self) -> bool:
        """True when onnxruntime imports."""
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    def load(self, path: Path, *, signature: Signature | None = None) -> OrtSession:
        """Load the ONNX file at `path`."""
        if not Path(path).is_file():
            raise RuntimeLoadError(f"{path}: no such ONNX file")
        return OrtSession(Path(path), signature=signature, options=self.options)
