"""Evaluate a package on labelled data with the artifact it runs as in production, as an `Evaluation`.

The artifact is the one `toolchain bench` recommended on this host (`toolchain.serve.open_recommended`,
at the largest batch benchmarked, fed in chunks of that batch), else where nothing was recommended, or
the recommendation cannot run here, the portable ONNX one on ONNX Runtime's CPU provider, after the
checks `open_recommended` makes (integrity; verification unless the package is on the trust list).
No torch: evaluation runs where the package runs.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from runtimes.ort import OrtRuntime
from toolchain.core.errors import EvaluationError, FeedError, PackageError, RuntimeLoadError
from toolchain.core.signature import Signature
from toolchain.evaluate.data import check_labels, read_dataset
from toolchain.evaluate.metrics import compute, metric_for
from toolchain.package import trust as trust_list
from toolchain.package.format import check_integrity, open_package
from toolchain.package.verify import verify_package
from toolchain.serve.recommended import open_recommended

__all__ = ["DEFAULT_CHUNK", "Evaluation", "evaluate_package"]

DEFAULT_CHUNK = 256
"""Examples per run when the session is not planned for one batch size (capped by the dim's declared max)."""


@dataclass(frozen=True)
class Evaluation:
    """What a package achieved on labelled data, and how it was run."""

    package: str
    metric: str
    """``accuracy``, ``top5``, ``auc``, ``ndcg@10`` or ``cosine``."""
    output: str
    value: float
    examples: int
    artifact: str
    runtime: str
    chosen: str
    """Why this artifact: ``recommended at batch 16``, ``portable ONNX: no bench recorded``, ..."""
    metric_from: str
    data_sha256: str
    nonfinite: int = 0
    """Examples whose output held NaN or Inf (counted as wrong / lowest / dissimilar)."""

    def describe(self) -> str:
        """Metric, examples and artifact, one line each."""
        lines = [
            f"{self.metric}({self.output}) = {self.value:.6g} on {self.examples} examples",
            f"  artifact: {self.artifact} on {self.runtime} ({self.chosen})",
            f"  metric:   {self.metric_from}",
            f"  data:     sha256 {self.data_sha256[:16]}",
        ]
        if self.nonfinite:
            lines.append(f"  warning:  {self.nonfinite} example(s) produced NaN/Inf outputs, scored as wrong")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """JSON form."""
        return asdict(self)


def evaluate_package(
    path: Path,
    data: Path,
    labels: str,
    *,
    metric: str = "",
    groups: str = "",
    trust: bool = False,
) -> Evaluation:
    """Run `path`'s recommended (else portable ONNX) artifact on `data` and score it against `labels`.

    Args:
        path: the package folder.
        data: ``.npz`` (one array per input) or ``.npy`` (one-input models).
        labels: a ``.npy``/``.npz`` file, or the name of an array in `data`.
        metric: override the metric the spec declares (``top5:logits``, ``auc``, ``ndcg@10``, ``cosine``).
        groups: query ids for NDCG, a file or an array name in `data`.
        trust: allow a recommended TorchScript/``.pt2`` artifact of a package exported elsewhere.

    Raises:
        PackageError: the package is corrupted or does not verify here.
        EvaluationError: the data or labels do not fit the model or the metric.
    """
    path = Path(path)
    package = open_package(path)
    chosen, metric_from = metric_for(tuple(str(t) for t in package.manifest.get("tags", ())), override=metric)
    signature: Signature = package.signature
    output = chosen.output or signature.output_names[0]
    if output not in signature.output_names:
        raise EvaluationError(f"metric {chosen.name} reads output {output!r}; the model has {signature.output_names}")
    dataset = read_dataset(Path(data), labels, signature=signature, groups=groups)
    session, artifact, how = _open(path, package.manifest, trust=trust)
    scores = _run(session, dataset.inputs, package.manifest, signature, where=str(data))[output]
    label_array, group_array = check_labels(chosen, scores, dataset.labels, dataset.groups, where=str(labels))
    rows = scores.reshape(len(scores), -1) if scores.ndim else scores.reshape(1, 1)
    return Evaluation(
        package=str(path),
        metric=chosen.name,
        output=output,
        value=compute(chosen, scores, label_array, group_array),
        examples=len(rows),
        artifact=artifact,
        runtime=f"{type(session).__name__}:{getattr(session, 'provider', 'cpu')}",
        chosen=how,
        metric_from=metric_from,
        data_sha256=dataset.sha256,
        nonfinite=int((~np.isfinite(rows.astype(np.float64))).any(axis=1).sum()),
    )


def _open(path: Path, manifest: Mapping[str, Any], *, trust: bool) -> tuple[Any, str, str]:
    """The session, its artifact path in the package, and why it was chosen."""
    recorded = manifest.get("recommended") or {}
    why = "no bench recorded"
    if recorded:
        batch = max(int(b) for b in recorded)
        try:
            session = open_recommended(path, batch, trust=trust)
            # NOTE: only ONNX Runtime sessions know their file; a TorchScript/.pt2 one is the recorded artifact.
            loaded = _relative(path, session) or str(recorded[str(batch)].get("artifact", "?"))
            return session, loaded, f"recommended at batch {batch}"
        except RuntimeLoadError as e:
            why = f"the recommendation at batch {batch} cannot run here ({e})"
    # NOTE: the same checks open_recommended makes before it loads anything.
    problems = check_integrity(path)
    if problems:
        raise PackageError(f"{path}: {problems[0]}; re-export it or restore the file")
    if not trust_list.is_trusted(path):
        report = verify_package(path, trust=trust, providers=("cpu",))
        if not report:
            raise PackageError(f"{path}: does not verify here: {report.failure_lines()[0]}")
    artifacts = [a for a in manifest["artifacts"] if a.get("format") in ("onnx", "onnx_legacy")]
    # NOTE: the fp32 torch.export ONNX first: precision variants are held to a looser tolerance.
    artifacts.sort(key=lambda a: (a.get("variant", "fp32") != "fp32", a.get("format") != "onnx"))
    if not artifacts:
        raise PackageError(f"{path}: no ONNX artifact to evaluate portably; run `toolchain bench {path}` here first")
    rel = str(artifacts[0]["path"])
    package = open_package(path)
    session = OrtRuntime().load(package.file(rel), signature=package.signature)
    return session, rel, f"portable ONNX: {why}"


def _relative(path: Path, session: Any) -> str:
    loaded = getattr(session, "path", None)
    if loaded is None:
        return ""
    try:
        return Path(loaded).resolve().relative_to(path.resolve()).as_posix()
    except ValueError:
        return str(loaded)


def _run(
    session: Any, inputs: Mapping[str, np.ndarray], manifest: Mapping[str, Any], signature: Signature, *, where: str
) -> dict[str, np.ndarray]:
    """Outputs for every example: in chunks along the shared leading dim, the last one padded to a planned size."""
    first = signature.inputs[0].shape[0] if signature.inputs and signature.inputs[0].shape else None
    tensors = (*signature.inputs, *signature.outputs)
    chunkable = isinstance(first, str) and all(t.shape and t.shape[0] == first for t in tensors)
    declared = manifest.get("dims") or {}
    for symbol, bound in signature.check_feeds(inputs).items():
        size = int(bound)
        if symbol == first and chunkable:
            if not size:
                raise EvaluationError(f"{where}: no examples (dim {symbol!r} is 0)")
            continue
        low, high = int((declared.get(symbol) or {}).get("min", 1)), int((declared.get(symbol) or {}).get("max", 0))
        if size < low or (high and size > high):
            raise EvaluationError(
                f"{where}: dim {symbol!r} is {size}, outside [{low}, {high or 'unbounded'}] the package was "
                "verified for; resize the data or re-export with a wider Dim"
            )
    try:
        if not chunkable:
            return dict(session.run(dict(inputs)))
        total = len(next(iter(inputs.values())))
        dim = declared.get(first) or {}
        planned = dict(getattr(getattr(session, "options", None), "fixed_dims", ()) or ())
        chunk = int(planned.get(first) or min(DEFAULT_CHUNK, int(dim.get("max") or DEFAULT_CHUNK)))
        smallest = int(planned.get(first) or dim.get("min") or 1)
        parts: list[dict[str, np.ndarray]] = []
        for start in range(0, total, chunk):
            piece = {k: v[start : start + chunk] for k, v in inputs.items()}
            real = len(next(iter(piece.values())))
            if real < smallest:
                # NOTE: repeat the last example up to the size the session was planned for; its outputs are dropped.
                piece = {k: np.concatenate([v, np.repeat(v[-1:], smallest - real, axis=0)]) for k, v in piece.items()}
            out = session.run(piece)
            parts.append({k: np.asarray(v)[:real] for k, v in out.items()})
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]} if parts else {}
    except FeedError as e:
        raise EvaluationError(f"{where}: {e}") from None
