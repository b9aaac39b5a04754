"""Per zoo model: export twice, each in a fresh process into a differently named folder, and list what differs.

Every artifact, sample, report and the manifest (less its `created` field) should be byte-identical.
Slow: two full exports per model. Run: ``python bench/reproducible.py [--precision fp32,fp16,int8] [name ...]``.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import zoo  # noqa: F401
from toolchain.core.spec import SPECS

REPO = Path(__file__).resolve().parents[1]


def _export(name: str, out: Path, precision: str) -> str:
    """Empty when the export wrote a package, else the tail of its output."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-c", "from toolchain.cli import main; main()", "export", name, "--out", str(out)]
    done = subprocess.run([*command, "--precision", precision], env=env, capture_output=True, text=True, check=False)
    return "" if done.returncode == 0 else (done.stdout + done.stderr).strip().splitlines()[-1][:200]


def _hashes(package: Path) -> dict[str, str]:
    return {
        f.relative_to(package).as_posix(): hashlib.sha256(f.read_bytes()).hexdigest()
        for f in sorted(package.rglob("*"))
        if f.is_file()
    }


def _manifest_fields(a: Any, b: Any, where: str = "") -> list[str]:
    """Paths of the manifest fields that differ, less `created`."""
    if isinstance(a, dict) and isinstance(b, dict):
        keys = sorted((set(a) | set(b)) - {"created"})
        return [d for k in keys for d in _manifest_fields(a.get(k), b.get(k), f"{where}.{k}")]
    if isinstance(a, list) and isinstance(b, list) and len(a) == len(b):
        return [d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _manifest_fields(x, y, f"{where}[{i}]")]
    return [] if a == b else [where]


def main(args: list[str]) -> None:
    """Export each named model (default: the whole zoo) twice and print one line per model."""
    precision = "fp32"
    if args[:1] == ["--precision"]:
        precision, args = args[1], args[2:]
    same = 0
    names = args or SPECS.names()
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            outs = [Path(tmp) / "one" / "pkg", Path(tmp) / "two" / "another"]
            failed = next((e for e in (_export(name, out, precision) for out in outs) if e), "")
            if failed:
                print(f"{name:28} export failed: {failed}")
                continue
            one, two = _hashes(outs[0]), _hashes(outs[1])
            files = sorted(p for p in one.keys() | two.keys() if one.get(p) != two.get(p) and p != "manifest.json")
            artifacts = files
            manifests = [json.loads((out / "manifest.json").read_text()) for out in outs]
            fields = _manifest_fields(*manifests)
        same += not artifacts and not fields
        verdict = "same" if not artifacts and not fields else "DIFFERS"
        print(
            f"{name:28} {verdict:7} {len(one)} files; differ: {', '.join(artifacts) or 'none'}; "
            f"manifest fields: {', '.join(fields) or 'none'}"
        )
    print(f"{same} of {len(names)} models exported byte-identical files and manifest (less created)")


if __name__ == "__main__":
    main(sys.argv[1:])
