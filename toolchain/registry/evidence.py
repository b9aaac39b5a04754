"""What a registered version carries: the evidence a package's manifest holds, in searchable form.

MLflow shows and searches a model version's tags and its run's metrics; `Evidence` is read from a
package once (`read_evidence`) and written as both (`Evidence.tags`, `Evidence.metrics`), plus the
whole record as one JSON tag that `Evidence.from_tags` reads back.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from toolchain.core.errors import RegistryError
from toolchain.package.format import Package

__all__ = ["EVIDENCE_TAG", "Evidence", "Latency", "read_evidence", "signature_hash"]

EVIDENCE_TAG = "toolchain.evidence"
"""The model version tag that holds the whole `Evidence` as JSON."""


@dataclass(frozen=True)
class Latency:
    """What `toolchain bench` recommended at one batch size, on the host it measured."""

    artifact: str
    runtime: str
    p50_ms: float
    host: str


@dataclass(frozen=True)
class Evidence:
    """The facts a promotion rule, ``compare`` and a search need about one package.

    Args:
        name: model name in the manifest.
        package_version: the version string the spec declared.
        created: when the package was exported.
        signature_sha256: hash of the inputs and outputs (names, dtypes, symbolic shapes); verified
            sizes are left out, so two exports of one interface hash alike.
        source: where the model class lives (``zoo.face:LogisticMatcher``).
        source_sha256: hash of the source file, when the manifest recorded one (else empty).
        weights_sha256: the manifest's weights hash, else one of the first ONNX artifact's initializers.
        kept: artifact paths the package ships.
        worst_ratio: per artifact, worst error over all outputs and sample sets as a share of the allowed.
        sizes: per artifact, bytes of its files.
        ops: node count of the first ONNX artifact (0 when none).
        latency: per batch size (as text), the recommended artifact and its p50, when bench recorded one.
    """

    name: str
    package_version: str
    created: str
    signature_sha256: str
    source: str
    source_sha256: str
    weights_sha256: str
    kept: tuple[str, ...]
    worst_ratio: dict[str, float]
    sizes: dict[str, int]
    ops: int
    latency: dict[str, Latency] = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        """Bytes of every artifact the package ships (samples and reports left out)."""
        return sum(self.sizes.values())

    @property
    def drift(self) -> float:
        """Worst error of any artifact, as a share of its allowed error (1.0 is the limit)."""
        return max(self.worst_ratio.values(), default=0.0)

    def to_json(self) -> str:
        """Compact JSON of every field."""
        return json.dumps(asdict(self), sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> Evidence:
        """Inverse of `to_json`."""
        data = json.loads(text)
        data["kept"] = tuple(data["kept"])
        data["latency"] = {b: Latency(**v) for b, v in data.get("latency", {}).items()}
        return cls(**data)

    @classmethod
    def from_tags(cls, tags: Mapping[str, str]) -> Evidence:
        """The evidence a model version was registered with (`tags` of the version)."""
        if EVIDENCE_TAG not in tags:
            raise RegistryError(
                f"model version has no {EVIDENCE_TAG!r} tag; it was not registered by `toolchain registry add`"
            )
        return cls.from_json(tags[EVIDENCE_TAG])

    def tags(self) -> dict[str, str]:
        """Model version tags: one per searchable fact, and the whole record as JSON."""
        tags = {
            EVIDENCE_TAG: self.to_json(),
            "toolchain.package_version": self.package_version,
            "toolchain.signature_sha256": self.signature_sha256,
            "toolchain.source": self.source,
            "toolchain.source_sha256": self.source_sha256 or "unrecorded",
            "toolchain.weights_sha256": self.weights_sha256,
            "toolchain.kept": ",".join(self.kept),
            "toolchain.size_bytes": str(self.size_bytes),
            "toolchain.ops": str(self.ops),
            "toolchain.drift": f"{self.drift:.6g}",
        }
        for batch, latency in self.latency.items():
            tags[f"toolchain.runtime.batch{batch}"] = f"{latency.runtime}:{latency.artifact}"
            tags[f"toolchain.latency_ms.batch{batch}"] = f"{latency.p50_ms:.6g}"
        return tags

    def metrics(self) -> dict[str, float]:
        """Run metrics, for the MLflow UI's charts and ``search_runs``."""
        metrics = {"size_bytes": float(self.size_bytes), "ops": float(self.ops), "drift": self.drift}
        metrics.update({f"worst_ratio/{path}": ratio for path, ratio in self.worst_ratio.items()})
        metrics.update({f"latency_ms/batch{b}": lat.p50_ms for b, lat in self.latency.items()})
        return metrics


def signature_hash(signature: Mapping[str, Any]) -> str:
    """sha256 of a manifest signature's inputs and outputs (verified sizes left out)."""
    interface = {"inputs": signature.get("inputs", []), "outputs": signature.get("outputs", [])}
    return hashlib.sha256(json.dumps(interface, sort_keys=True).encode()).hexdigest()


def read_evidence(package: Package) -> Evidence:
    """The evidence `package`'s manifest (and its ONNX artifact) holds; the package is opened already.

    Raises:
        RegistryError: a manifest field it reads is malformed (the message names the package).
    """
    try:
        return _read(package)
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise RegistryError(
            f"{package.path}: manifest field malformed ({type(e).__name__}: {e}); re-export or re-bench the package"
        ) from e


def _read(package: Package) -> Evidence:
    manifest = package.manifest
    artifacts = package.artifacts
    sizes_of = {str(f["path"]): int(f["size"]) for f in manifest["files"]}
    kept = tuple(str(a["path"]) for a in artifacts)
    parity = manifest.get("parity") or {}
    worst = {
        path: max((float(o.get("worst_ratio", 0.0)) for o in (parity.get(path) or {}).get("worst", {}).values()),
                  default=0.0)
        for path in kept
    }  # fmt: skip
    sizes = {str(a["path"]): sum(sizes_of.get(str(f), 0) for f in a.get("files", [a["path"]])) for a in artifacts}
    first_onnx = next((package.file(str(a["path"])) for a in artifacts if a.get("format") == "onnx"), None)
    source = manifest.get("source")
    source_name = str(source.get("name", "")) if isinstance(source, Mapping) else str(source or "")
    recorded = source if isinstance(source, Mapping) else {}
    weights = str(recorded.get("weights_sha256", "")) or (_initializer_hash(first_onnx) if first_onnx else "")
    latency = {
        str(batch): Latency(str(rec["artifact"]), str(rec.get("runtime", "")), float(rec["p50_ms"]),
                            str(rec.get("host", "")))
        for batch, rec in (manifest.get("recommended") or {}).items()
        if isinstance(rec, Mapping) and "p50_ms" in rec
    }  # fmt: skip
    return Evidence(
        name=package.name,
        package_version=str(manifest.get("version", "")),
        created=str(manifest.get("created", "")),
        signature_sha256=signature_hash(manifest.get("signature") or {}),
        source=source_name,
        source_sha256=str(recorded.get("source_sha256", "")),
        weights_sha256=weights,
        kept=kept,
        worst_ratio=worst,
        sizes=sizes,
        ops=_node_count(first_onnx) if first_onnx else 0,
        latency=latency,
    )


def _load_onnx(path: Path) -> Any:
    import onnx

    return onnx.load(str(path), load_external_data=False)


def _node_count(path: Path) -> int:
    """Nodes of an ONNX model, those of subgraphs and local functions included."""
    model = _load_onnx(path)
    graphs, count = [model.graph], sum(len(f.node) for f in model.functions)
    while graphs:
        graph = graphs.pop()
        count += len(graph.node)
        for node in graph.node:
            graphs.extend(a.g for a in node.attribute if a.HasField("g"))
            graphs.extend(g for a in node.attribute for g in a.graphs)
    return count


def _initializer_hash(path: Path) -> str:
    """sha256 over an ONNX model's initializers, by name: the weights, whatever the graph around them."""
    from onnx import numpy_helper

    digest = hashlib.sha256()
    for init in sorted(_load_onnx(path).graph.initializer, key=lambda t: t.name):
        digest.update(init.name.encode())
        digest.update(numpy_helper.to_array(init).tobytes())
    return digest.hexdigest()
