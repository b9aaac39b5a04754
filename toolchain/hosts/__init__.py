"""Verifiers of a package outside Python: Node.js, a browser and C++, driven from Python.

Each host reads the manifest, checks the exact file set and every sha256, and replays every golden
sample under the package's tolerances with the same parity rule as `toolchain.package.verify`; its
JSON result is parsed into a `HostResult`. Sources of the hosts live beside this file (``js/``,
``node/``, ``browser/``, ``cpp/``); what they need is installed on first use (`toolchain.hosts.install`).
"""

from toolchain.hosts.result import ArtifactOutcome, HostResult
from toolchain.hosts.verify import HOSTS, host_table, verify_on

__all__ = ["HOSTS", "ArtifactOutcome", "HostResult", "host_table", "verify_on"]
