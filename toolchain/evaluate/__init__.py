"""Evaluation on the user's labelled data: the spec's task metric with the artifact the package runs as.

Importing this package loads numpy and ONNX Runtime's wrapper, never torch.
"""

from toolchain.evaluate.metrics import Metric, compute, metric_for
from toolchain.evaluate.run import Evaluation, evaluate_package

__all__ = ["Evaluation", "Metric", "compute", "evaluate_package", "metric_for"]
