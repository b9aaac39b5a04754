"""The converters behind each precision variant, and the checks that what they wrote is what was asked.

Each converter is a maintained library (ONNX Runtime's float16 converter and quantiser). Their
output is checked before anyone runs it: the file must be a valid ONNX model that ONNX Runtime
loads, and every node asked to stay in fp32 must really have stayed fp32. Either failure is an
`ExportError` that names the node and the artifact's package-relative path.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from toolchain.core.errors import ExportError

__all__ = ["NAMED_NODE", "QUANTIZABLE", "check_valid", "fp16", "int8_dynamic", "int8_static", "quantiser_names"]

QUANTIZABLE = frozenset({"MatMul", "Gemm", "Conv", "ConvTranspose", "Gather", "LSTM", "GRU", "Attention"})
NAMED_NODE = re.compile(r"node `([^`]+)`")
"""How a converter error names the node it is about (``node `name` ``)."""
_FLOAT, _FLOAT16 = 1, 10
_NARROW_INTS = frozenset({2, 3, 21, 22})  # UINT8, INT8, UINT4, INT4
_QUANTISED_OP = re.compile(r"^(QLinear|Q[A-Z]|DynamicQuantize|QuantizeLinear$|DequantizeLinear$)|Integer$")
_GEMM_PARTS = ("MatMul", "Add", "Transpose")

Feeds = Mapping[str, np.ndarray]


def fp16(src: Path, dst: Path, keep: frozenset[str], calibration: Sequence[Feeds]) -> None:
    """fp16 with fp32 inputs and outputs; the nodes in `keep` and the values between them stay fp32."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(src)), keep_io_types=True, node_block_list=sorted(keep))
    onnx.save(drop_round_trips(model), str(dst))


def drop_round_trips(model: Any) -> Any:
    """Remove ``Cast(to=fp16) -> Cast(to=fp32)`` pairs, so values stay fp32 between blocked nodes.

    Also sorts the nodes: the converter appends its casts at the end, out of topological order.

    NOTE: ONNX Runtime's converter (and onnxconverter-common's, for values with several consumers)
    casts every value leaving a blocked node to fp16 and back, even when only blocked nodes read
    it; a value beyond 65504 then becomes inf although every node touching it is kept in fp32.
    """
    import onnx_ir as ir
    from onnx_ir.passes.common import RemoveUnusedNodesPass, TopologicalSortPass

    ir_model = ir.from_proto(model)
    graph = ir_model.graph
    for node in list(graph):
        source = node.inputs[0].producer() if node.inputs and node.inputs[0] is not None else None
        if not (_casts_to(node, _FLOAT) and source is not None and _casts_to(source, _FLOAT16)):
            continue
        value, out = source.inputs[0], node.outputs[0]
        if value is None:
            continue
        if not out.is_graph_output():
            ir.convenience.replace_all_uses_with(out, value)
        elif not (value.is_graph_input() or value.is_graph_output() or value.is_initializer()):
            # NOTE: a graph output keeps its name (the signature and keep_io_types rely on it), so
            # the fp32 value takes it over; renaming the consumer alone left the output unproduced.
            name = out.name
            out.name = f"{name}__round_trip"
            ir.convenience.replace_all_uses_with(out, value, replace_graph_outputs=True)
            value.name = name
    RemoveUnusedNodesPass()(ir_model)
    TopologicalSortPass()(ir_model)
    return ir.to_proto(ir_model)


def _casts_to(node: Any, to: int) -> bool:
    attr = node.attributes.get("to")
    return bool(node.op_type == "Cast" and node.domain == "" and attr is not None and attr.as_int() == to)


def int8_dynamic(src: Path, dst: Path, keep: frozenset[str], calibration: Sequence[Feeds]) -> None:
    """Dynamic int8 of the matmul-like ops; the nodes in `keep` stay fp32 (checked)."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    proto = onnx.load(str(src))
    # NOTE: convolutions are left to static int8: ConvInteger runs ~30x slower than fp32 Conv here.
    ops = sorted(QUANTIZABLE - {"Conv", "ConvTranspose"})
    excluded = quantiser_names(proto, keep)
    quantize_dynamic(src, dst, op_types_to_quantize=ops, weight_type=QuantType.QInt8, nodes_to_exclude=excluded)
    _check_kept(proto, onnx.load(str(dst)), keep)


def int8_static(src: Path, dst: Path, keep: frozenset[str], calibration: Sequence[Feeds]) -> None:
    """Static QDQ int8 calibrated on `calibration`; the nodes in `keep` stay fp32 (checked)."""
    import onnx
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, quantize_static

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self._feeds = iter(calibration)

        def get_next(self) -> dict[str, np.ndarray] | None:
            feeds = next(self._feeds, None)
            return dict(feeds) if feeds is not None else None

    proto = onnx.load(str(src))
    excluded = quantiser_names(proto, keep)
    quantize_static(src, dst, Reader(), quant_format=QuantFormat.QDQ, per_channel=True, nodes_to_exclude=excluded)
    _check_kept(proto, onnx.load(str(dst)), keep)


def quantiser_names(proto: Any, keep: frozenset[str]) -> list[str]:
    """`keep` plus the names ONNX Runtime's quantiser gives those nodes when it rewrites them.

    NOTE: quantize_dynamic rewrites a Gemm (alpha = beta = 1, no transA) into ``<name>_MatMul`` (+
    ``<name>_Add`` for the bias, ``<name>_Transpose`` for a computed transB) before it reads
    `nodes_to_exclude` (``ONNXModel.replace_gemm_with_matmul``), so the Gemm's own name excludes nothing.
    """
    gemms = {n.name for n in proto.graph.node if n.op_type == "Gemm" and n.name in keep}
    return sorted(keep | {f"{g}_{part}" for g in gemms for part in _GEMM_PARTS})


def _check_kept(proto: Any, quantised: Any, keep: frozenset[str]) -> None:
    """Raise `ExportError` when a node of `keep` was quantised anyway."""
    ops = {n.name: n.op_type for n in proto.graph.node}
    weights = {t.name for t in proto.graph.initializer}
    bad = sorted(n for n in keep if n in ops and _was_quantised(n, ops[n], quantised, weights))
    if bad:
        names = ", ".join(f"node `{n}` ({ops[n]})" for n in bad)
        raise ExportError(
            f"ONNX Runtime's quantiser quantised {names} although asked to leave it in fp32 "
            "(it renames or rewrites some nodes before it reads the exclusion list), so this variant "
            "cannot be repaired and is left out; report it with your onnxruntime version"
        )


def _was_quantised(name: str, op_type: str, quantised: Any, weights: set[str]) -> bool:
    """Whether the node `name` of the fp32 graph (whose initializers are `weights`) runs quantised."""
    graph = quantised.graph
    # NOTE: a Gemm rewritten by the quantiser computes in its `<name>_MatMul`; its `<name>_Add` is fp32 either way.
    found = [n for n in graph.node if n.name == name]
    found = found or [n for n in graph.node if op_type == "Gemm" and n.name == f"{name}_MatMul"]
    if not found:
        return True
    producer = {o: n for n in graph.node for o in n.output}
    initializers = {t.name: t.data_type for t in graph.initializer}
    for node in found:
        if _QUANTISED_OP.search(node.op_type):
            return True
        # NOTE: only the node's own weights count: QDQ puts Q/DQ around an excluded node's activations
        # when its neighbours are quantised, and that is their quantisation, not this node's.
        feeds = [producer.get(i) for i in node.input if i]
        if any(p is not None and p.op_type == "DequantizeLinear" and p.input[0] in initializers for p in feeds):
            return True  # QDQ weights
        if any(initializers.get(i) in _NARROW_INTS and i not in weights for i in node.input):
            return True  # weights replaced by 8- or 4-bit integers (dynamic Gather)
    return False


def check_valid(path: Path, *, shown: str, reference: Any) -> None:
    """Raise `ExportError` unless `path` passes the ONNX checker and loads in ONNX Runtime.

    Args:
        path: the variant file.
        shown: its package-relative path, the only path the message names.
        reference: the fp32 graph it was built from, to name the node that produces a named value.
    """
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as e:
        detail = str(e).replace(str(path), shown).strip().splitlines()
        text = " ".join(line.strip() for line in detail)[:400]
        node = _named_node(text, reference)
        where = f" at node `{node}`" if node else ""
        raise ExportError(
            f"{shown} is not a valid ONNX model{where}: {text}; the converter built an invalid graph, "
            "so the variant is left out"
        ) from e


def _named_node(text: str, reference: Any) -> str:
    """The fp32 node an error is about: named itself, or the producer of a value it names."""
    nodes = {n.name for n in reference.graph.node if n.name}
    producer = {o: n.name for n in reference.graph.node for o in n.output if o}
    tokens = [t.rstrip(".") for t in re.findall(r"[\w./-]+", text)]
    named = [t for t in tokens if t in nodes] or [producer[t] for t in tokens if t in producer]
    return named[0] if named else ""
