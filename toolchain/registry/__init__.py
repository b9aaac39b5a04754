"""Lifecycle of packages: versions with their evidence on MLflow's Model Registry, promotion rules, audit log.

Importing this package stays light: MLflow loads only when a `ModelRegistry` is made.
"""

from toolchain.registry.evidence import Evidence, Latency, read_evidence
from toolchain.registry.rules import DEFAULT_BUDGETS, Budgets, PromotionCheck, check_promotion
from toolchain.registry.store import PRODUCTION, LogEntry, ModelRegistry, Version, default_uri

__all__ = [
    "DEFAULT_BUDGETS",
    "PRODUCTION",
    "Budgets",
    "Evidence",
    "Latency",
    "LogEntry",
    "ModelRegistry",
    "PromotionCheck",
    "Version",
    "check_promotion",
    "default_uri",
    "read_evidence",
]
