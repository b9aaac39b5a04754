"""ONNX Runtime: load an ONNX artifact, check feeds against its signature, run. Never imports torch."""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.core.errors import InferenceError, RuntimeLoadError, first_line
from toolchain.core.signature import FeedGuard, Signature, TensorSig

__all__ = [
    "DEVICE_ORDER",
    "PROVIDERS",
    "OrtOptions",
    "OrtRuntime",
    "OrtSession",
    "available_providers",
    "expand_providers",
    "resolve_providers",
    "short_name",
]

PROVIDERS = {
    "cpu": "CPUExecutionProvider",
    "cuda": "CUDAExecutionProvider",
    "tensorrt": "TensorrtExecutionProvider",
    "coreml": "CoreMLExecutionProvider",
    "openvino": "OpenVINOExecutionProvider",
    "dml": "DmlExecutionProvider",
    "rocm": "ROCMExecutionProvider",
    "qnn": "QNNExecutionProvider",
}
"""Short names accepted by ``--provider``, mapped to ONNX Runtime's execution provider names."""
DEVICE_ORDER = ("tensorrt", "cuda", "rocm", "dml", "coreml", "openvino", "qnn")
"""Accelerated providers, best first: ``--provider auto`` tries the available ones in this order, then cpu."""
_OUTPUT_DEVICE = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "cuda"}
"""Where an IO binding leaves outputs for each provider (copied to the host once, after the run)."""
_EXACT_DEFAULTS = {"CUDAExecutionProvider": (("use_tf32", "0"),)}
"""Provider options that keep fp32 exact unless the caller sets them: CUDA's TF32 default rounds fp32
matmul/conv inputs to 10 mantissa bits; on an H200 that put fp32 artifacts at 5.7-46x of their
allowed error (0.004-0.03x with it off), a different function than the one verified."""
_LEVELS = ("disable", "basic", "extended", "all")

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


def available_providers() -> list[str]:
    """Execution providers this onnxruntime build offers, as short names where we know them."""
    import onnxruntime as ort

    names = {v: k for k, v in PROVIDERS.items()}
    return [names.get(p, p) for p in ort.get_available_providers()]


def short_name(provider: str) -> str:
    """``cuda`` for ``CUDAExecutionProvider``; unknown names unchanged."""
    return {v: k for k, v in PROVIDERS.items()}.get(provider, provider)


def expand_providers(requested: Sequence[str]) -> tuple[str, ...]:
    """Short names to try, in order: ``auto`` becomes every available accelerated provider, then cpu.

    Any other name passes through unchanged (an unavailable one fails later, at load, with the list).
    """
    out: list[str] = []
    for name in requested:
        if name.lower() == "auto":
            here = set(available_providers())
            out += [p for p in DEVICE_ORDER if p in here] + ["cpu"]
        else:
            out.append(short_name(name) if name in PROVIDERS.values() else name.lower())
    return tuple(dict.fromkeys(out))


def resolve_providers(requested: tuple[str, ...]) -> tuple[str, ...]:
    """ONNX Runtime provider names for short or full names; `RuntimeLoadError` lists what is available.

    CPU is always appended as the fallback for operators a provider does not implement.
    """
    import onnxruntime as ort

    available = ort.get_available_providers()
    full = tuple(PROVIDERS.get(p.lower(), p) for p in requested)
    missing = [p for p, f in zip(requested, full, strict=True) if f not in available]
    if missing:
        raise RuntimeLoadError(
            f"execution provider(s) {missing} not available in this onnxruntime build; "
            f"available: {', '.join(available_providers())} (install onnxruntime-gpu or another build for more)"
        )
    return tuple(dict.fromkeys((*full, "CPUExecutionProvider")))


@dataclass(frozen=True)
class OrtOptions:
    """Session options exposed by the toolchain.

    Args:
        providers: execution providers in order of preference (full or short names, e.g. ``"cuda"``).
        intra_op_threads: threads per op; 0 lets ONNX Runtime choose.
        graph_optimization: ``"disable"``, ``"basic"``, ``"extended"`` or ``"all"`` (online, at load).
        memory_arena: let the CPU allocator keep an arena (faster, holds on to peak memory).
        provider_options: options for the first provider, e.g. ``(("device_id", "1"),)`` for CUDA.
            CUDA runs with ``use_tf32=0`` unless set here (see `_EXACT_DEFAULTS`).
        io_binding: bind inputs and outputs through an IO binding, outputs left on the provider's
            device and copied to the host once. Off by default: with host (numpy) feeds a plain run's
            latency was 0.92-1.02x a bound one's on CUDA (H200; ResNet, text encoder, DLRM, decoder).
        fixed_dims: ``(("batch", 16),)`` plans the graph for these sizes of its symbolic dims (ONNX
            Runtime's free-dimension override): shape arithmetic folds away, which pays on small
            graphs; a feed of any other size is refused by ONNX Runtime, never run wrongly.
    """

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    intra_op_threads: int = 0
    graph_optimization: str = "all"
    memory_arena: bool = True
    io_binding: bool = False
    provider_options: tuple[tuple[str, str], ...] = ()
    fixed_dims: tuple[tuple[str, int], ...] = ()

    def __post_init__(self) -> None:
        if self.graph_optimization not in _LEVELS:
            raise ValueError(f"OrtOptions.graph_optimization must be one of {_LEVELS}, got {self.graph_optimization!r}")


class OrtSession:
    """An ONNX Runtime inference session that checks feeds before running."""

    def __init__(
        self,
        path: Path,
        *,
        signature: Signature | None,
        options: OrtOptions,
        model: bytes | None = None,
        external: Mapping[str, bytes] | None = None,
    ) -> None:
        import onnxruntime as ort

        providers = resolve_providers(options.providers)
        so = ort.SessionOptions()
        so.intra_op_num_threads = options.intra_op_threads
        so.enable_cpu_mem_arena = options.memory_arena
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[options.graph_optimization]
        so.log_severity_level = 4  # NOTE: errors come back as exceptions; keep ORT's own log quiet.
        for dim, size in options.fixed_dims:
            so.add_free_dimension_override_by_name(dim, size)
        if external:
            if not hasattr(so, "add_external_initializers_from_files_in_memory"):
                raise RuntimeLoadError(
                    f"{path}: onnxruntime {ort.__version__} cannot take external data from memory; "
                    "install onnxruntime>=1.24.1 (the floor this toolchain declares)"
                )
            names = list(external)
            buffers = [np.frombuffer(external[n], dtype=np.uint8) for n in names]
            so.add_external_initializers_from_files_in_memory(names, buffers, [b.size for b in buffers])
        self.options = options
        first = providers[0]
        if first in _OUTPUT_DEVICE and hasattr(ort, "preload_dlls"):
            with contextlib.suppress(Exception):  # NOTE: finds CUDA/cuDNN pip wheels (torch's) if not on the path
                ort.preload_dlls()
        chosen: list[Any] = [(first, dict(_EXACT_DEFAULTS.get(first, ())) | dict(options.provider_options))]
        chosen += providers[1:]
        if first != "CPUExecutionProvider":
            # NOTE: device providers log cuDNN autotuning misses and library probes as errors on ORT's
            # process-wide logger; failures that matter reach us as exceptions instead.
            ort.set_default_logger_severity(4)
        printed = io.StringIO()
        try:
            # NOTE: a device provider that fails to start makes ONNX Runtime print "EP Error" and
            # fall back to CPU; the print is kept out of the user's output and becomes our error.
            with contextlib.redirect_stdout(printed), warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                source = str(path) if model is None else model
                self._session = ort.InferenceSession(source, sess_options=so, providers=chosen)
        except Exception as e:
            raise RuntimeLoadError(f"{path}: ONNX Runtime could not load it: {first_line(e)}") from e
        running = self._session.get_providers()
        if running[0] != first:
            said = [*printed.getvalue().splitlines(), *(str(w.message) for w in warned)]
            why = next((line.strip() for line in said if line.startswith("EP Error ") or "provider" in line), "")
            why = why.removeprefix("EP Error ").split(" when using [")[0]
            why = re.sub(r"^\S+\.cc:\d+ .*?\) ", "", why)  # NOTE: drops ORT's C++ source location
            raise RuntimeLoadError(
                f"{path}: ONNX Runtime could not start {short_name(first)} (it fell back to "
                f"{short_name(running[0])}): {why[:300] or 'no reason given'}; check that the libraries it "
                "needs (CUDA, cuDNN, TensorRT) match this onnxruntime build, or pick another --provider"
            )
        # NOTE: else a provider failing mid-run makes ONNX Runtime switch this session to CPU for good.
        self._session.disable_fallback()
        self.provider = short_name(first)
        self._bind = options.io_binding
        self._output_device = _OUTPUT_DEVICE.get(first, "cpu")
        self.path = path
        self.signature = signature or self._native_signature()
        self._output_names = [o.name for o in self._session.get_outputs()]
        self._guard = FeedGuard(self.signature)
        # NOTE: the public run() re-validates input names (the guard already did) and retries failed
        # device providers on CPU; on a CPU-only session its C++ run is the same call ~2.5 us sooner
        # (a quarter of a small model's run). Any other session goes through the public API.
        cpu_only = self._session.get_providers() == ["CPUExecutionProvider"]
        self._run = getattr(self._session, "_sess", self._session).run if cpu_only else self._session.run

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
        self._guard.check(feeds)
        try:
            if self._bind:
                values = self._run_bound(feeds)
            else:
                values = self._run(self._output_names, feeds if type(feeds) is dict else dict(feeds), None)
        except Exception as e:
            raise InferenceError(f"{self.path}: ONNX Runtime failed: {first_line(e)}") from e
        names = self._output_names
        return {n: v if type(v) is np.ndarray else np.asarray(v) for n, v in zip(names, values, strict=True)}

    def _run_bound(self, feeds: Mapping[str, np.ndarray]) -> list[Any]:
        """Run through an IO binding: outputs land where the provider put them, copied back once."""
        binding = self._session.io_binding()
        for name, value in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in self._output_names:
            binding.bind_output(name, self._output_device)
        self._session.run_with_iobinding(binding)
        return list(binding.copy_outputs_to_cpu())

    @property
    def providers(self) -> list[str]:
        """The providers the session actually runs on, in order."""
        return list(self._session.get_providers())


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

    def load_bytes(
        self,
        model: bytes,
        *,
        name: str,
        signature: Signature | None = None,
        external: Mapping[str, bytes] | None = None,
    ) -> OrtSession:
        """Load an ONNX model from memory; ONNX Runtime is given no path to read anything from.

        Args:
            model: the serialized model (already checked: see `toolchain.package.contain`).
            name: what error messages call it (the artifact's path in its package).
            signature: the recorded signature; read from the model when None.
            external: the external-data files the model refers to, by location, as bytes.
        """
        return OrtSession(Path(name), signature=signature, options=self.options, model=model, external=external)
