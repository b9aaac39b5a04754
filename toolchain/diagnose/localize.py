"""When an ONNX artifact disagrees with eager, name the first PyTorch module that diverges.

Eager forward hooks record every submodule's inputs and output in execution order (hooks fire as a
module returns, so a child reports before its parent). The ONNX graph's nodes carry the module scope
they came from (``pkg.torch.onnx.name_scopes`` from the torch.export-based exporter, ``/a/a.0/Op``
node names from the TorchScript-based one); the values leaving each scope are exposed as extra
outputs on a copy of the model, run on the failing sample, and compared with the hooks' tensors.
The first module whose output diverges while its inputs still agree is the culprit.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.core.parity import Tolerance, compare
from toolchain.core.samples import SampleSet
from toolchain.core.spec import ModelSpec

__all__ = ["Localization", "localize", "node_scopes", "run_exposed"]

_FX_CALL = re.compile(
    r"^%(?P<out>\w+) : .*call_function\[target=(?P<target>[\w.]+)\]\(args = \((?P<args>.*)\), kwargs = \{\}\)$"
)
_FRAME = re.compile(r'File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>\S+)')
# NOTE: a shipped graph names library files from the library's folder (``torch/nn/modules/linear.py``,
# `toolchain.core.portable`); a fresh export in a scratch folder still has the full path.
_LIBRARY = re.compile(r"(?:^|[/\\](?:site-packages|dist-packages)[/\\])(?:torch|onnxscript|onnx_ir)[/\\]")


@dataclass(frozen=True)
class Localization:
    """The first module whose output diverges from eager, with the evidence."""

    module: str
    module_class: str
    op_types: tuple[str, ...]
    source: str
    output_error: float
    input_error: float
    inputs_agree: bool
    sample: str
    allowed: str
    modules_compared: int

    def __str__(self) -> str:
        ops = ", ".join(self.op_types[:6]) + (" ..." if len(self.op_types) > 6 else "")
        inputs = (
            f"its inputs agree (max_abs={self.input_error:.3g})"
            if self.inputs_agree
            else f"its inputs already differ by {self.input_error:.3g}"
        )
        return (
            f"first divergence at module `{self.module}` ({self.module_class}; ONNX ops: {ops}) "
            f"at {self.source or 'unknown source'}: output max_abs={self.output_error:.3g} "
            f"({self.allowed}) on sample {self.sample!r} while {inputs}"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}


@dataclass
class _Record:
    name: str
    module: Any
    inputs: list[np.ndarray]
    output: np.ndarray


def localize(
    spec: ModelSpec, model: Any, onnx_path: Path, sample: SampleSet, *, tolerance: Tolerance
) -> Localization | None:
    """The first diverging module of `model` in the ONNX file at `onnx_path` on `sample`, if found.

    Works on a temporary copy; the artifact itself is never changed. Returns None when no module
    with a matching ONNX value diverges (e.g. the graph carries no scope information).
    """
    import onnx

    records = _eager_records(model, spec, sample)
    modules = dict(model.named_modules())
    proto = onnx.load(str(onnx_path))
    proto_copy = onnx.ModelProto()
    proto_copy.CopyFrom(proto)
    nodes = list(proto.graph.node)
    scopes = [node_scopes(node) for node in nodes]
    boundaries = {r.name: _boundary(proto, nodes, scopes, r.name) for r in records}
    exposed = sorted({v for ins, outs in boundaries.values() for v in (*ins, *outs)})
    values = run_exposed(proto, exposed, sample.feeds)
    atol, rtol = tolerance.atol, tolerance.rtol
    compared = 0
    fallback: Localization | None = None
    for index, record in enumerate(records):
        ins, outs = boundaries[record.name]
        candidate = next((values[v] for v in outs if v in values and values[v].shape == record.output.shape), None)
        if candidate is None:
            continue
        compared += 1
        if _agrees(record.output, candidate, atol, rtol) or _fused_into_next(
            records[index + 1 :], boundaries, candidate, atol, rtol
        ):
            continue
        input_error, inputs_agree = _input_error(record, ins, values, atol, rtol)
        culprit = _culprit_node(proto_copy, nodes, scopes, record.name, sample, atol, rtol) if inputs_agree else None
        finding = Localization(
            module=record.name or "<root>",
            module_class=f"{type(record.module).__module__}.{type(record.module).__qualname__}",
            op_types=tuple(dict.fromkeys(n.op_type for n, s in zip(nodes, scopes, strict=True) if record.name in s)),
            source=_trace_source(culprit) if culprit is not None else _source(nodes, scopes, record, modules),
            output_error=float(np.max(np.abs(candidate.astype(np.float64) - record.output))),
            input_error=input_error,
            inputs_agree=inputs_agree,
            sample=sample.name,
            allowed=f"allowed atol={atol:g} rtol={rtol:g}",
            modules_compared=compared,
        )
        if inputs_agree:
            return finding
        fallback = fallback or finding
    return fallback


def _eager_records(model: Any, spec: ModelSpec, sample: SampleSet) -> list[_Record]:
    import torch

    records: list[_Record] = []
    seen: set[str] = set()

    def hook(name: str) -> Any:
        def record(module: Any, args: tuple[Any, ...], output: Any) -> None:
            out = output[0] if isinstance(output, tuple | list) and output else output
            if name in seen or not isinstance(out, torch.Tensor):
                return
            seen.add(name)
            tensors = [a.detach().numpy().copy() for a in args if isinstance(a, torch.Tensor)]
            records.append(_Record(name, module, tensors, out.detach().numpy().copy()))

        return record

    handles = [m.register_forward_hook(hook(n)) for n, m in model.named_modules()]
    try:
        with torch.no_grad():
            model(*(torch.from_numpy(sample.feeds[n].copy()) for n in spec.inputs))
    finally:
        for handle in handles:
            handle.remove()
    return records


def node_scopes(node: Any) -> tuple[str, ...]:
    """Qualified names of the modules a node was exported from, outermost first."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            names = [s.strip().strip("'\"") for s in prop.value.strip("[]").split(",")]
            return ("", *(n for n in names[1:-1] if n))
    if node.name.startswith("/"):
        return ("", *node.name.split("/")[1:-1])
    return ()


def _boundary(proto: Any, nodes: list[Any], scopes: list[tuple[str, ...]], name: str) -> tuple[list[str], list[str]]:
    """Values entering and leaving the nodes of module `name`."""
    inside = [n for n, s in zip(nodes, scopes, strict=True) if name in s]
    produced = {v for n in inside for v in n.output}
    initializers = {i.name for i in proto.graph.initializer}
    entering = [v for n in inside for v in n.input if v and v not in produced and v not in initializers]
    used_outside = {v for n, s in zip(nodes, scopes, strict=True) if name not in s for v in n.input}
    used_outside |= {o.name for o in proto.graph.output}
    leaving = [v for n in inside for v in n.output if v in used_outside]
    return list(dict.fromkeys(entering)), leaving


def run_exposed(proto: Any, names: Sequence[str], feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run `proto` unoptimised on `feeds` with the values `names` exposed as extra outputs (adds them to `proto`)."""
    import onnx
    import onnxruntime as ort

    present = {o.name for o in proto.graph.output}
    graph_inputs = {i.name for i in proto.graph.input}
    extra = [n for n in names if n not in present and n not in graph_inputs]
    proto.graph.output.extend(onnx.helper.make_empty_tensor_value_info(n) for n in extra)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "exposed.onnx"
        onnx.save(proto, str(path))
        options = ort.SessionOptions()
        options.log_severity_level = 4
        # NOTE: no graph optimisation, so the exposed values are those of the exported graph.
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        given = {i.name: feeds[i.name] for i in session.get_inputs()}
        outputs = [o.name for o in session.get_outputs()]
        values = dict(zip(outputs, session.run(outputs, given), strict=True))
    values.update({k: v for k, v in feeds.items() if k in graph_inputs})
    return {k: np.asarray(v) for k, v in values.items()}


def _agrees(expected: np.ndarray, actual: np.ndarray, atol: float, rtol: float) -> bool:
    report = compare({"v": expected}, {"v": actual.astype(expected.dtype)}, Tolerance(atol, rtol))
    return bool(report)


def _fused_into_next(
    later: list[_Record],
    boundaries: dict[str, tuple[list[str], list[str]]],
    value: np.ndarray,
    atol: float,
    rtol: float,
) -> bool:
    """Whether `value` is the output of the modules right after, which have no nodes of their own.

    NOTE: exporters fold batch norm into the convolution before it; the convolution's node then
    yields the batch norm's output, and that is no divergence.
    """
    for record in later:
        if boundaries[record.name][1]:
            return False
        if record.output.shape == value.shape and _agrees(record.output, value, atol, rtol):
            return True
    return False


def _input_error(
    record: _Record, entering: list[str], values: dict[str, np.ndarray], atol: float, rtol: float
) -> tuple[float, bool]:
    """Largest input difference, and whether every input agrees within tolerance."""
    worst, agree = 0.0, True
    for expected in record.inputs:
        matches = [values[v] for v in entering if v in values and values[v].shape == expected.shape]
        if not matches or expected.dtype.kind != "f":
            continue
        errors = [float(np.max(np.abs(m.astype(np.float64) - expected))) if m.size else 0.0 for m in matches]
        best = int(np.argmin(errors))
        worst = max(worst, errors[best])
        agree = agree and _agrees(expected, matches[best], atol, rtol)
    return worst, agree


def _culprit_node(
    proto: Any, nodes: list[Any], scopes: list[tuple[str, ...]], name: str, sample: SampleSet, atol: float, rtol: float
) -> Any | None:
    """The first node inside module `name` whose ONNX output differs from its torch op run on the same inputs.

    The torch.export-based exporter records each node's FX call (target and argument names, which
    are also the ONNX value names); calls whose arguments are all ONNX values or literals are
    replayed with torch. Nodes that cannot be replayed are skipped.
    """
    import onnx
    import torch

    inside = [n for n, s in zip(nodes, scopes, strict=True) if name in s]
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    values = run_exposed(copy, sorted({v for n in inside for v in (*n.input, *n.output) if v}), sample.feeds)
    for node in inside:
        call = _FX_CALL.match(next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.fx_node"), ""))
        if call is None or call["out"] not in values:
            continue
        args = [_literal(token, values) for token in call["args"].split(", ")] if call["args"] else []
        target: Any = torch
        for part in call["target"].split(".")[1:]:
            target = getattr(target, part, None)
        if target is None or any(a is _SKIP for a in args):
            continue
        with torch.no_grad():
            expected = target(*(torch.from_numpy(a.copy()) if isinstance(a, np.ndarray) else a for a in args))
        if isinstance(expected, torch.Tensor) and not _agrees(expected.numpy(), values[call["out"]], atol, rtol):
            return node
    return None


_SKIP = object()


def _literal(token: str, values: dict[str, np.ndarray]) -> Any:
    token = token.strip().rstrip(",")
    if token.startswith("%"):
        return values.get(token[1:], _SKIP)
    try:
        return int(token)
    except ValueError:
        pass
    try:
        return float(token)
    except ValueError:
        return _SKIP


def _trace_source(node: Any) -> str:
    trace = next((p.value for p in node.metadata_props if p.key == "pkg.torch.onnx.stack_trace"), "")
    frames = [m for m in _FRAME.finditer(trace) if not _LIBRARY.search(m["file"])]
    return f"{frames[-1]['file']}:{frames[-1]['line']}" if frames else ""


def _source(nodes: list[Any], scopes: list[tuple[str, ...]], record: _Record, modules: dict[str, Any]) -> str:
    """``file:line`` of the innermost user-code frame that called into the module's ops.

    Without a stack trace in the graph, the ``forward`` of the module or of its nearest ancestor
    defined outside torch.
    """
    for node, scope in zip(nodes, scopes, strict=True):
        if record.name not in scope:
            continue
        source = _trace_source(node)
        if source:
            return source
    import inspect

    parts = record.name.split(".") if record.name else []
    for depth in range(len(parts), -1, -1):
        module = modules.get(".".join(parts[:depth]))
        if module is None:
            continue
        try:
            forward = type(module).forward
            file = inspect.getsourcefile(forward) or ""
            if not _LIBRARY.search(file):
                return f"{file}:{inspect.getsourcelines(forward)[1]}"
        except (OSError, TypeError):
            continue
    return ""
