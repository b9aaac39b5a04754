from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from toolchain.core.checks import TaskCheck
from toolchain.core.parity import PaddedBy, Tolerance, compare
from toolchain.hosts.install import SOURCE

pytestmark = [
    pytest.mark.crossplatform,
    pytest.mark.skipif(shutil.which("node") is None, reason="Node.js is installed by scripts/setup-hosts.sh"),
]

# NOTE: the JS core is imported as plain ES modules; no npm package is needed for these checks.
SCRIPT = """
import { readFileSync } from "node:fs";
const [core, parity, folder] = process.argv.slice(1);
const { parseNpy } = await import(core);
const { compare, evaluateCheck } = await import(parity);
const load = (n) => parseNpy(new Uint8Array(readFileSync(`${folder}/${n}.npy`)), n);
const spec = JSON.parse(readFileSync(`${folder}/case.json`, "utf8"));
const feeds = spec.mask ? { mask: load("mask") } : {};
const outputs = compare({ y: load("expected") }, { y: load("actual") }, spec.tolerance, feeds);
const checks = (spec.checks || []).map((c) => evaluateCheck(c, { y: load("expected") }, { y: load("actual") }));
const finite = (k, v) => (typeof v === "number" && !Number.isFinite(v) ? String(v) : v);
console.log(JSON.stringify({ outputs, checks }, finite));
"""


def _run_js(folder: Path) -> dict:
    proc = subprocess.run(
        [
            "node",
            "--input-type=module",
            "-e",
            SCRIPT,
            str(SOURCE / "js" / "npy.mjs"),
            str(SOURCE / "js" / "parity.mjs"),
            str(folder),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


rng = np.random.default_rng(0)
BASE = rng.normal(size=(3, 4, 5)).astype(np.float32)


def _nan_inf() -> tuple[np.ndarray, np.ndarray]:
    e = BASE.copy()
    e[0, 0, 0], e[1, 1, 1], e[2, 2, 2] = np.nan, np.inf, -np.inf
    a = e + np.float32(3e-5)
    a[2, 2, 2] = np.inf  # sign differs
    a[0, 1, 0] = np.nan  # NaN where the reference is finite
    return e, a


CASES = {
    "close": (BASE, BASE + np.float32(1e-6), {}),
    "far": (BASE, BASE * np.float32(1.01), {}),
    "nan-inf": (*_nan_inf(), {}),
    "float16": (BASE.astype(np.float16), (BASE * 1.001).astype(np.float16), {}),
    "int64-exact": (
        np.arange(12, dtype=np.int64).reshape(3, 4),
        np.arange(12, dtype=np.int64).reshape(3, 4) + (np.arange(12).reshape(3, 4) == 5),
        {},
    ),
    "bool": (BASE > 0, BASE > 0.1, {}),
    "dtype": (BASE, BASE.astype(np.float64), {}),
    "shape": (BASE, BASE[:2], {}),
    "padded": (BASE, np.where(np.arange(4)[None, :, None] >= 2, 0, BASE).astype(np.float32), {"mask": True}),
    "per-output": (BASE, BASE * np.float32(1.001), {"per_output": True}),
    "checks": (BASE, BASE[..., ::-1].copy(), {"checks": True}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_js_parity_matches_python(case: str, tmp_path: Path) -> None:
    expected, actual, extra = CASES[case]
    tolerance = Tolerance(1e-5, 1e-4)
    feeds = None
    if extra.get("mask"):
        mask = np.zeros((3, 4), dtype=np.bool_)
        mask[:, 2:] = True
        np.save(tmp_path / "mask.npy", mask)
        tolerance = Tolerance(1e-5, 1e-4, ignore_padded={"y": PaddedBy("mask", 1)})
        feeds = {"mask": mask}
    if extra.get("per_output"):
        tolerance = Tolerance(1e-5, 1e-4, per_output={"y": Tolerance(1e-2, 1e-2)})
    checks = [TaskCheck.top1("y"), TaskCheck.cosine("y"), TaskCheck.ranking("y")] if extra.get("checks") else []
    np.save(tmp_path / "expected.npy", expected)
    np.save(tmp_path / "actual.npy", actual)
    spec = {"tolerance": tolerance.to_dict(), "mask": bool(feeds), "checks": [c.to_dict() for c in checks]}
    (tmp_path / "case.json").write_text(json.dumps(spec))
    report = compare({"y": expected}, {"y": actual}, tolerance, checks=checks, feeds=feeds)
    js = _run_js(tmp_path)
    want = report.outputs[0].to_dict()
    got = js["outputs"]["y"]
    for key in ("passed", "nonfinite_mismatches", "ignored", "reason", "atol", "rtol"):
        assert got[key] == want[key], (key, got[key], want[key])
    for key in ("worst_ratio", "max_abs", "max_rel", "mismatch_fraction"):
        assert float(got[key]) == pytest.approx(want[key], rel=1e-12, abs=0), key
    for mine, theirs in zip(js["checks"], report.checks, strict=True):
        assert mine["passed"] == bool(theirs)
        assert mine["achieved"] == pytest.approx(theirs.achieved, rel=1e-9)


HOSTILE = {
    "lying-header": b"\x93NUMPY\x01\x00v\x00{'descr': '<f4', 'fortran_order': False, 'shape': (1099511627776, 256), }",
    "object": b"\x93NUMPY\x01\x00v\x00{'descr': '|O', 'fortran_order': False, 'shape': (1,), }",
    "big-endian": b"\x93NUMPY\x01\x00v\x00{'descr': '>f4', 'fortran_order': False, 'shape': (1,), }",
    "truncated": b"\x93NUMPY\x01\x00",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_js_npy_reader_refuses_hostile_files(name: str, tmp_path: Path) -> None:
    data = HOSTILE[name]
    if len(data) > 10:
        header = data[10:].ljust(118, b" ") + b"\n"
        data = data[:8] + len(header).to_bytes(2, "little") + header + b"\x00" * 8
    (tmp_path / "bad.npy").write_bytes(data)
    npy, bad = json.dumps(str(SOURCE / "js" / "npy.mjs")), json.dumps(str(tmp_path / "bad.npy"))
    script = (
        f"import {{ readFileSync }} from 'node:fs'; const {{ parseNpy }} = await import({npy});"
        f"try {{ parseNpy(new Uint8Array(readFileSync({bad})), 'bad.npy'); console.log('parsed'); }}"
        " catch (e) { console.log(e.message); }"
    )
    proc = subprocess.run(
        ["node", "--input-type=module", "-e", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert proc.stdout.startswith("bad.npy: not a readable .npy array"), proc.stdout + proc.stderr
