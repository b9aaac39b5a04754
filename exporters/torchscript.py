"""TorchScript: ``torch.jit.script`` (falling back to a trace when scripting fails), or ``torch.jit.trace``.

Two export paths share this module: ``torchscript`` scripts, keeping control flow; ``torchscript_trace``
always traces. A trace is a flat graph of the ops one sample ran, often faster (a per-table Python loop
unrolled, no interpreted shape checks): measured 1.1-2.3x our scripted and frozen artifact on the
DLRMs, the GBDT and the SVM matcher. It is only as good as its verification at every declared size,
which drops a trace that froze a shape or a branch.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from exporters._capture import capture_findings, summarize_error
from exporters._portable import portable_archive
from toolchain.core.artifact import Artifact, Finding
from toolchain.core.errors import ExportError
from toolchain.core.samples import SampleSet
from toolchain.core.spec import ModelSpec

__all__ = ["TorchScriptExporter"]

_TRACED = (
    "traced: control flow and Python-side shapes were frozen at the export sizes; "
    "only the verification at other sizes proves it generalises"
)


class TorchScriptExporter:
    """Exports with ``torch.jit.script``; when that fails (or with `trace`), with ``torch.jit.trace``.

    A script keeps the model's control flow. A trace records the ops run on the export sample only,
    so the artifact says which one was used and a traced export carries a ``traced`` finding.

    Args:
        trace: trace without trying to script: the ``torchscript_trace`` path.
    """

    format = "torchscript"

    def __init__(self, *, trace: bool = False) -> None:
        self.trace = trace
        self.name = "torchscript_trace" if trace else "torchscript"

    def export(self, model: Any, spec: ModelSpec, sample: SampleSet, workdir: Path) -> Artifact:
        """Export `model` into ``workdir/<path name>/model.pt``.

        Args:
            model: the eager module, in eval mode.
            spec: names the inputs (in ``forward``'s order) and the model, for messages.
            sample: the inputs a trace is recorded on (unused when scripting succeeds).
            workdir: folder the artifact is written under.

        Raises:
            ExportError: when both scripting and tracing fail, with both reasons, or saving fails.
        """
        import torch

        rel = f"{self.name}/model.pt"
        target = Path(workdir) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with capture_findings() as findings:
            scripted, exporter, notes = self._script_or_trace(model, spec, sample)
            try:
                torch.jit.save(scripted, str(target))
                portable_archive(target)
            except Exception as e:
                raise ExportError(f"{spec.name}: torch.jit.save failed: {summarize_error(e)}") from e
        seconds = time.perf_counter() - start
        return Artifact(
            format="torchscript",
            path=rel,
            files=(rel,),
            exporter=exporter,
            opset=0,
            export_seconds=seconds,
            findings=(*notes, *findings),
        )

    def _script_or_trace(self, model: Any, spec: ModelSpec, sample: SampleSet) -> tuple[Any, str, list[Finding]]:
        """The compiled module, the exporter that made it and the findings about the choice."""
        import torch

        script_error: Exception | None = None
        if not self.trace:
            try:
                with _sorted_constants():
                    return torch.jit.script(model), "torch.jit.script", []
            except Exception as e:
                script_error = e
        args = tuple(torch.from_numpy(sample.feeds[n].copy()) for n in spec.inputs)
        try:
            # NOTE: torch.jit.trace is unannotated in torch; the ignore is for strict mypy only.
            traced = _on_a_fresh_stack(lambda: torch.jit.trace(model, args, check_trace=False))  # type: ignore[no-untyped-call]
        except Exception as e:
            if script_error is None:
                raise ExportError(f"{spec.name}: torch.jit.trace failed: {summarize_error(e)}") from e
            raise ExportError(
                f"{spec.name}: torch.jit.script and torch.jit.trace both failed: "
                f"script: {summarize_error(script_error)}; trace: {summarize_error(e)}"
            ) from e
        notes = [Finding("script-failed", summarize_error(script_error))] if script_error else []
        return traced, "torch.jit.trace", [*notes, Finding("traced", _TRACED)]


def _on_a_fresh_stack(trace: Callable[[], Any]) -> Any:
    """`trace()` run in a new thread (this thread's grad mode), its result or its exception.

    NOTE: a traced archive records the whole Python stack of the tracing call in its debug tables, the
    toolchain's callers included: the same model exported from the CLI, the library, the gate or an
    export's worker process gave different bytes. A new thread's stack starts here.
    """
    import torch

    grad = torch.is_grad_enabled()
    out: list[Any] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            with torch.set_grad_enabled(grad):
                out.append(trace())
        except BaseException as e:  # NOTE: re-raised in the caller's thread below
            error.append(e)

    thread = threading.Thread(target=run, name="toolchain-trace")
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return out[0]


class _SortedSet(set[Any]):
    """A set that iterates in sorted order when its items allow it."""

    def __iter__(self) -> Iterator[Any]:
        items = list(super().__iter__())
        with contextlib.suppress(TypeError):
            items.sort()
        return iter(items)


@contextlib.contextmanager
def _sorted_constants() -> Iterator[None]:
    """While open, scripting lists a module's constants (``__constants__``, ``Final``) in sorted order.

    NOTE: torch.jit._recursive collects them in a ``set`` and writes them into the archive's code in
    its iteration order, which follows the process's string hashing (PYTHONHASHSEED): the same model
    scripted in two processes gave two archives. A module-level ``set`` shadows the builtin there.
    """
    import torch.jit._recursive as recursive

    namespace = recursive.__dict__
    saved = namespace.get("set")
    namespace["set"] = _SortedSet
    try:
        yield
    finally:
        if saved is None:
            namespace.pop("set", None)
        else:
            namespace["set"] = saved
