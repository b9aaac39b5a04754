"""Which packages this machine exported itself: those may load artifacts that run code.

TorchScript and ``.pt2`` artifacts execute code when loaded. A package whose manifest hash is in this
machine's trust list (written when `toolchain export` commits a package here) is trusted; any other
package needs an explicit ``--trust`` before such artifacts are loaded. The list lives in
``$TOOLCHAIN_HOME/trusted-manifests.txt`` (default ``~/.cache/toolchain``).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from toolchain.package.format import MANIFEST

__all__ = ["is_trusted", "remember", "toolchain_home", "trust_list_path"]

_KEEP = 5000


def toolchain_home() -> Path:
    """This machine's toolchain folder: ``$TOOLCHAIN_HOME``, default ``~/.cache/toolchain``."""
    return Path(os.environ.get("TOOLCHAIN_HOME") or "~/.cache/toolchain").expanduser()


def trust_list_path() -> Path:
    """The file holding the sha256 of every manifest this machine exported."""
    return toolchain_home() / "trusted-manifests.txt"


def remember(package: Path) -> bool:
    """Record `package` (just written here) as trusted; keeps the newest entries only.

    Returns False when the trust list cannot be written (the package is fine; verifying its
    TorchScript and ``.pt2`` artifacts then needs ``--trust``).
    """
    path = trust_list_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        entries = _entries(path)
        entries.append(_manifest_hash(package))
        tmp = path.with_suffix(f".tmp-{os.getpid()}")
        tmp.write_text("\n".join(entries[-_KEEP:]) + "\n", encoding="ascii")
        tmp.replace(path)
    except OSError:
        return False
    return True


def is_trusted(package: Path) -> bool:
    """True when this machine exported exactly this manifest (and so, after integrity checks, these files)."""
    manifest = Path(package) / MANIFEST
    return manifest.is_file() and _manifest_hash(package) in set(_entries(trust_list_path()))


def _entries(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text(encoding="ascii").split() if len(line) == 64]
    except (OSError, UnicodeDecodeError):
        return []


def _manifest_hash(package: Path) -> str:
    return hashlib.sha256((Path(package) / MANIFEST).read_bytes()).hexdigest()
