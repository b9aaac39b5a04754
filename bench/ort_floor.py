"""The external-data hostile cases under the oldest ONNX Runtime the package allows, in a throwaway venv.

Builds a small real package here (a zoo model, ONNX only, its weights moved to external data), damages
copies of it the way CHECKLIST rows 8 and 9 describe, each with a canary file beside it, then creates a
venv with only ``onnxruntime==VERSION``, numpy and the CLI's own dependencies (no torch, no onnx),
installs this repository there without dependencies, and runs ``toolchain verify`` on every case under
an audit hook that records any Python-level open of the canary. Each case must exit 1 with "external
data escapes the package" (or the offset/key error), the canary unopened and unchanged; the intact
package must verify. For contrast it also loads each hostile model straight from its path with that
ONNX Runtime alone and says whether ORT itself refused it.

Run: ``python bench/ort_floor.py [--onnxruntime 1.24.1] [--keep DIR]``; exits 1 if any case is not handled.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.package.hostile import copy_package, point_external, restamp, to_external  # noqa: E402

DATA = "onnx/model.onnx.data"
CANARY = b"outside the package: never read\n" * 4

# NOTE: runs in the throwaway venv: verify through the CLI with an audit hook watching the canary.
RUNNER = """
import json, sys
from pathlib import Path
package, canary = sys.argv[1], sys.argv[2]
seen = []
def watch(event, args):
    if event == "open" and args and Path(str(args[0])).name == Path(canary).name:
        seen.append(str(args[0]))
sys.addaudithook(watch)
sys.argv = ["toolchain", "verify", package, "--provider", "cpu"]
from toolchain.cli import main
code = 0
try:
    main()
except SystemExit as e:
    code = e.code or 0
sys.stdout.flush()
print("@@" + json.dumps({"code": code, "opened": seen, "torch": "torch" in sys.modules, "onnx": "onnx" in sys.modules}))
"""
ORT_ALONE = """
import sys, onnxruntime as ort
try:
    ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
    print("loaded")
except Exception as e:
    print("refused: " + str(e).splitlines()[0][:120])
"""


def _replace_data(pkg: Path, make: Callable[[Path], None]) -> None:
    canary = pkg.parent / "secret.bin"
    canary.write_bytes((pkg / DATA).read_bytes())
    (pkg / DATA).unlink()
    make(canary)
    restamp(pkg, keep=(DATA,))


CASES: dict[str, tuple[Callable[[Path], None], str]] = {
    "intact": (lambda pkg: None, ""),
    "../../secret.bin": (lambda pkg: point_external(pkg, location="../../secret.bin"), "escapes the package"),
    "/abs/secret.bin": (
        lambda pkg: point_external(pkg, location=str(pkg.parent / "secret.bin")),
        "escapes the package",
    ),
    "sub/../../../secret.bin": (
        lambda pkg: point_external(pkg, location="sub/../../../secret.bin"),
        "escapes the package",
    ),
    "..\\..\\secret.bin": (lambda pkg: point_external(pkg, location="..\\..\\secret.bin"), "escapes the package"),
    "symlink to outside": (
        lambda pkg: _replace_data(pkg, lambda canary: (pkg / DATA).symlink_to(canary)),
        "escapes the package",
    ),
    "hard link to outside": (
        lambda pkg: _replace_data(pkg, lambda canary: os.link(canary, pkg / DATA)),
        "escapes the package",
    ),
    "offset -1": (lambda pkg: point_external(pkg, offset="-1"), "is not a non-negative integer"),
    "offset abc": (lambda pkg: point_external(pkg, offset="abc"), "is not a non-negative integer"),
    "length 2**50": (lambda pkg: point_external(pkg, length=str(2**50)), "lies past the end"),
    "unknown key": (lambda pkg: point_external(pkg, basepath="/etc"), "is unknown or repeated"),
}


def build_cases(root: Path) -> dict[str, Path]:
    """Export the base package (needs torch, here) and one damaged copy per case, each with its canary."""
    import zoo  # noqa: F401
    from toolchain.build.pipeline import export_package
    from toolchain.core.spec import SPECS

    base = root / "base" / "pkg"
    result = export_package(SPECS.get("face.match_lr"), base, formats=["onnx"], optimize=False)
    if not result:
        raise SystemExit(f"could not export the base package: {result.stages}")
    to_external(base)
    cases = {}
    for i, (name, (damage, _)) in enumerate(CASES.items()):
        folder = root / f"case{i}"
        folder.mkdir()
        pkg = copy_package(base, folder)
        if not (folder / "secret.bin").exists():
            (folder / "secret.bin").write_bytes(CANARY)
        damage(pkg)
        if not (folder / "secret.bin").exists():
            (folder / "secret.bin").write_bytes(CANARY)
        cases[name] = pkg
    return cases


def make_venv(root: Path, version: str) -> Path:
    """A venv with onnxruntime==`version`, numpy and the CLI's libraries, and this repository without deps."""
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    subprocess.run([*pip, f"onnxruntime=={version}", "numpy", "pydantic>=2.5", "typer>=0.12", "rich>=13"], check=True)
    # NOTE: installed from a copy, so the build leaves nothing (build/, *.egg-info) in the working tree.
    source = root / "source"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(".git", ".venv", "__pycache__", "*.egg-info", "build"))
    subprocess.run([*pip, "--no-deps", str(source)], check=True)
    return python


def run_case(python: Path, pkg: Path, expected: str) -> tuple[bool, str]:
    """Verify `pkg` in the venv: handled when it fails with `expected` (or verifies, for ""), canary untouched."""
    canary = pkg.parent / "secret.bin"
    before = (canary.read_bytes(), canary.stat().st_mtime_ns)
    proc = subprocess.run(
        [str(python), "-c", RUNNER, str(pkg), str(canary)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=pkg.parent,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    )
    tail = [line for line in proc.stdout.splitlines() if line.startswith("@@")]
    if not tail:
        return False, f"no result: {proc.stderr.strip()[-300:]}"
    result = json.loads(tail[-1][2:])
    fails = [line for line in proc.stderr.splitlines() if line.startswith(("FAIL ", "error: "))]
    untouched = (canary.read_bytes(), canary.stat().st_mtime_ns) == before and not result["opened"]
    state = f"exit {result['code']}, canary {'untouched' if untouched else 'TOUCHED'}"
    if not expected:
        ok = result["code"] == 0 and untouched and f"verified: {pkg}" in proc.stdout
        said = [line for line in proc.stdout.splitlines() if line.startswith(("verified:", "partly verified:"))]
        return ok, f"{state}: {said[-1] if said else ''}"
    ok = result["code"] == 1 and bool(fails) and expected in fails[0] and untouched and not result["torch"]
    return ok, f"{state}: {fails[0] if fails else ''}"


def main() -> int:
    """Build the cases, the venv, run them; print one line per case."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--onnxruntime", default="1.24.1", help="ONNX Runtime version to test (default: the floor)")
    parser.add_argument("--keep", type=Path, default=None, help="work in this folder and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="ort-floor-"))
    root.mkdir(parents=True, exist_ok=True)
    try:
        cases = build_cases(root)
        python = make_venv(root, args.onnxruntime)
        version = subprocess.run(
            [str(python), "-c", "import onnxruntime; print(onnxruntime.__version__)"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        print(f"onnxruntime {version} in a venv without torch or onnx; toolchain installed without dependencies")
        handled = 0
        for name, pkg in cases.items():
            ok, detail = run_case(python, pkg, CASES[name][1])
            alone = subprocess.run(
                [str(python), "-c", ORT_ALONE, str(pkg / "onnx/model.onnx")],
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
                cwd=pkg.parent,
            ).stdout.strip()
            handled += ok
            print(f"{'ok  ' if ok else 'FAIL'} {name:24} {detail}")
            print(f"     {'':24} ONNX Runtime alone, from the path: {alone or 'crashed'}")
        print(f"{handled}/{len(cases)} cases handled")
        return 0 if handled == len(cases) else 1
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
