"""``torch.export`` programs saved as ``.pt2`` (``torch.export.export`` + ``torch.export.save``)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from exporters._capture import capture_findings, summarize_error
from exporters._portable import portable_archive
from exporters._shapes import exported_program_findings
from exporters._speedups import export_speedups
from exporters.onnx import _dynamic_shapes
from toolchain.core.artifact import Artifact
from toolchain.core.errors import ExportError
from toolchain.core.samples import SampleSet
from toolchain.core.spec import ModelSpec

if TYPE_CHECKING:
    from torch.export import ExportedProgram

__all__ = ["ExportedProgramExporter"]


class ExportedProgramExporter:
    """Captures with ``torch.export.export``; symbolic dims become ``torch.export.Dim``s.

    Loading the ``.pt2`` it writes unpickles and runs code: only load packages you trust.
    """

    name = "exported_program"
    format = "exported_program"

    def export(
        self,
        model: Any,
        spec: ModelSpec,
        sample: SampleSet,
        workdir: Path,
        *,
        program: ExportedProgram | None = None,
    ) -> Artifact:
        """Export `model` into ``workdir/exported_program/model.pt2``.

        Args:
            model: the eager module, in eval mode.
            spec: its spec; symbolic dims are exported with their declared ranges.
            sample: inputs to capture on (the export sizes).
            workdir: folder the artifact is written under.
            program: a program already captured from `model` (by this exporter's rules); saved as is,
                so one capture can feed several formats.

        Raises:
            ExportError: when capture or saving fails, with torch's reason.
        """
        import torch

        rel = "exported_program/model.pt2"
        target = Path(workdir) / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        with capture_findings() as findings, export_speedups():
            try:
                if program is None:
                    args = tuple(torch.from_numpy(sample.feeds[n].copy()) for n in spec.inputs)
                    program = torch.export.export(model, args, dynamic_shapes=_dynamic_shapes(spec))
                torch.export.save(program, str(target))
                portable_archive(target)
            except Exception as e:
                raise ExportError(f"{spec.name}: torch.export.export failed: {summarize_error(e)}") from e
        seconds = time.perf_counter() - start
        return Artifact(
            format=self.format,
            path=rel,
            files=(rel,),
            exporter="torch.export.export",
            export_seconds=seconds,
            findings=(*findings, *exported_program_findings(program, spec)),
        )
