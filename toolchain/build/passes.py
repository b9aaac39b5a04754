"""The optimisation passes, in the order they run: a literal list over well-kept libraries.

Each pass reads an artifact file and writes the optimised file; `toolchain.build.optimize` checks parity
and speed after every one. We add no rewrite of our own here: what a pass does is its library's.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ORT_OFFLINE_LEVEL", "PASSES", "GraphPass", "quiet_libraries"]

ORT_OFFLINE_LEVEL = "ORT_ENABLE_BASIC"
"""Offline ONNX Runtime optimisation is saved at the level whose rewrites are valid on any host and
provider; the extended and layout levels (contrib fusions, NCHWc) stay online, done at load time."""


@dataclass(frozen=True)
class GraphPass:
    """One optimisation pass: reads an artifact file, writes the optimised one.

    Args:
        name: short key shown in reports (``"onnxscript-optimizer"``).
        formats: artifact formats it applies to.
        apply: ``apply(src, dst)`` writes the optimised artifact at `dst`; raises on failure.
        detail: what it does and at which level, recorded beside the result.
        applies: whether the pass is worth trying on this file (e.g. it contains attention).
        fallback_of: try this pass only when the named pass was not kept (a milder configuration).
        done_by: exporters (`Artifact.exporter`) that apply this very pass as the last step of their export,
            so it cannot change their files: not run on them.
    """

    name: str
    formats: tuple[str, ...]
    apply: Callable[[Path, Path], None]
    detail: str = ""
    applies: Callable[[Path], bool] = field(default=lambda path: True)
    fallback_of: str = ""
    done_by: tuple[str, ...] = ()


@contextlib.contextmanager
def quiet_libraries() -> Iterator[None]:
    """Keep the libraries' INFO/WARNING chatter (deduplication notes, quantiser advice) off the console."""
    loggers = [logging.getLogger(n) for n in ("", "onnx_ir", "onnxscript", "onnxruntime")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        # NOTE: the float16 tool and the quantiser also print() their notes; they are not ours to show.
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def onnxscript_optimizer(src: Path, dst: Path) -> None:
    """Constant folding, the default rewrite rules (fusions), dead-code removal and CSE, by onnxscript."""
    import onnx
    import onnxscript.optimizer

    onnx.save(onnxscript.optimizer.optimize(onnx.load(str(src))), str(dst))


def onnxscript_ort_fusions(src: Path, dst: Path) -> None:
    """The ONNX Runtime fusions of onnxscript: SDPA / MultiHeadAttention, SkipLayerNormalization, BiasGelu.

    NOTE: ONNX Runtime's own transformer optimiser finds no Attention in torch.export-based graphs
    (scaled_dot_product_attention with a boolean mask, opset 18; nor in the legacy exporter's opset
    17 graph, with or without ``use_multi_head_attention``); these rules were written for exactly those
    graphs and fuse every attention block of the zoo's encoders and decoders.
    """
    import onnx_ir as ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = ir.load(str(src))
    fused, _ = optimize_for_ort(model)
    ir.save(fused, str(dst))


def ort_offline(src: Path, dst: Path) -> None:
    """ONNX Runtime's graph optimisation at `ORT_OFFLINE_LEVEL`, saved to a file.

    ONNX Runtime drops node metadata when it saves; the module scopes the exporter recorded are put
    back on every node that kept its name, so localisation still works on the optimised graph.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, ORT_OFFLINE_LEVEL)
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    _restore_metadata(src, dst)


def _restore_metadata(src: Path, dst: Path) -> None:
    import onnx

    before = onnx.load(str(src), load_external_data=False)
    props = {n.name: list(n.metadata_props) for n in before.graph.node if n.name and n.metadata_props}
    if not props:
        return
    after = onnx.load(str(dst))
    for node in after.graph.node:
        if node.name in props and not node.metadata_props:
            node.metadata_props.extend(props[node.name])
    onnx.save(after, str(dst))


def _has_attention(path: Path) -> bool:
    import onnx

    ops = {n.op_type for n in onnx.load(str(path), load_external_data=False).graph.node}
    return "Softmax" in ops and "MatMul" in ops and bool(ops & {"LayerNormalization", "ReduceMean"})


def _transformer_optimizer(**disabled: bool) -> Callable[[Path, Path], None]:
    def apply(src: Path, dst: Path) -> None:
        from onnxruntime.transformers.fusion_options import FusionOptions
        from onnxruntime.transformers.optimizer import optimize_model

        options = FusionOptions("bert")
        for key, value in disabled.items():
            setattr(options, key, value)
        # NOTE: opt_level=0 applies only the Python fusions; ONNX Runtime's own online optimisation
        # still runs when the file is loaded, so nothing host-specific is baked into the file.
        model: Any = optimize_model(str(src), model_type="bert", optimization_options=options, opt_level=0)
        model.save_model_to_file(str(dst))

    return apply


def torchscript_freeze(src: Path, dst: Path) -> None:
    """``torch.jit.freeze``: weights and attributes become constants, dead code goes."""
    import torch

    module = torch.jit.load(str(src), map_location="cpu")  # type: ignore[no-untyped-call]
    torch.jit.save(torch.jit.freeze(module.eval()), str(dst))


def torchscript_optimize_for_inference(src: Path, dst: Path) -> None:
    """``torch.jit.optimize_for_inference`` on a frozen module (conv/bn folding, MKLDNN layouts)."""
    import torch

    module = torch.jit.load(str(src), map_location="cpu")  # type: ignore[no-untyped-call]
    torch.jit.save(torch.jit.optimize_for_inference(torch.jit.freeze(module.eval())), str(dst))


PASSES: tuple[GraphPass, ...] = (
    GraphPass(
        "onnxscript-optimizer",
        ("onnx",),
        onnxscript_optimizer,
        "onnxscript.optimizer.optimize: constant folding, default rewrite rules, dead code, CSE",
        # NOTE: torch.onnx.export(dynamo=True) ends with this very optimiser (its optimize=True default).
        done_by=("torch.onnx.export(dynamo=True)",),
    ),
    GraphPass(
        "onnxscript-ort-fusions",
        ("onnx",),
        onnxscript_ort_fusions,
        "onnxscript.rewriter.ort_fusions: attention -> MultiHeadAttention, skip layer norm, bias gelu",
        applies=_has_attention,
    ),
    GraphPass("ort-offline", ("onnx",), ort_offline, f"onnxruntime offline optimisation at {ORT_OFFLINE_LEVEL}"),
    GraphPass(
        "ort-transformers",
        ("onnx",),
        _transformer_optimizer(),
        "onnxruntime.transformers.optimizer (bert fusions: attention, layer norm, gelu)",
        applies=_has_attention,
    ),
    GraphPass(
        "ort-transformers-no-skip-layernorm",
        ("onnx",),
        _transformer_optimizer(enable_skip_layer_norm=False, enable_bias_skip_layer_norm=False),
        "the transformer optimiser without SkipLayerNormalization (slower than plain Add + LayerNorm here)",
        applies=_has_attention,
        fallback_of="ort-transformers",
    ),
    GraphPass("torchscript-freeze", ("torchscript",), torchscript_freeze, "torch.jit.freeze"),
    GraphPass(
        "torchscript-optimize-for-inference",
        ("torchscript",),
        torchscript_optimize_for_inference,
        "torch.jit.optimize_for_inference (host-specific MKLDNN rewrites; often not serialisable)",
    ),
)
