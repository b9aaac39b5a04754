"""Time localisation on zoo-sized models with a seeded fault (one initializer scaled in the ONNX).

Run: ``python bench/localize_time.py``. Prints, per model, the module found and the seconds taken;
the target is under a minute per model on 2 cores.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import onnx
import torch
from onnx import numpy_helper

import zoo  # noqa: F401 - registers the zoo
from exporters.onnx import OnnxExporter
from toolchain.core.samples import generate_samples
from toolchain.core.spec import SPECS
from toolchain.diagnose.localize import localize

MODELS = ("feed.dlrm_small", "image.resnet_small", "image.mobilenetv2_small", "search.text_encoder", "speech.ctc_small")


def main() -> None:
    """Export each model, scale its largest matrix initializer by 1.05, localise, print the time."""
    torch.set_num_threads(2)
    print(f"{'model':<26} {'scaled initializer':<34} {'seconds':>7}  finding")
    for name in (m for m in MODELS if m in SPECS):
        spec = SPECS.get(name)
        model = spec.build().eval()
        sample = generate_samples(spec)[0]
        with tempfile.TemporaryDirectory() as tmp:
            artifact = OnnxExporter().export(model, spec, sample, Path(tmp))
            proto = onnx.load(str(Path(tmp) / artifact.path))
            init = max(
                (i for i in proto.graph.initializer if len(i.dims) == 2),
                key=lambda i: int(numpy_helper.to_array(i).size),
            )
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.05, init.name))
            faulty = Path(tmp) / "faulty.onnx"
            onnx.save(proto, str(faulty))
            start = time.perf_counter()
            finding = localize(spec, model, faulty, sample, tolerance=spec.tolerance)
            seconds = time.perf_counter() - start
        where = f"`{finding.module}` at {finding.source}" if finding else "nothing localised"
        print(f"{name:<26} {init.name[:34]:<34} {seconds:7.2f}  {where}")


if __name__ == "__main__":
    main()
