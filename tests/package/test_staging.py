from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.canary import Canary
from tests.conftest import TINY
from toolchain.build.pipeline import export_package
from toolchain.core.errors import PackageError
from toolchain.package import staging
from toolchain.package.format import MANIFEST, check_integrity
from toolchain.package.staging import PackageStaging, clean_stale, stage_package

STEPS = ("writing", "synced", "checked", "exchanged", "synced-parent", "removed-old")

_KILLED_EXPORT = """
import json, os, sys
from pathlib import Path
from toolchain.package import staging

dest, step = Path(sys.argv[1]), sys.argv[2]
staging._after_step = lambda name: os._exit(9) if name == step else None
with staging.stage_package(dest, force=True) as s:
    (s.scratch() / "work.bin").write_bytes(b"scratch")
    s.write_text("data.txt", "new " * 1000)
    s.write_text("nested/more.txt", "more")
    if step == "writing":
        os._exit(9)
    s.finalize(json.loads(sys.argv[3]))
    s.commit()
"""


def _manifest(name: str) -> dict[str, object]:
    """The smallest manifest the strict schema accepts (no artifact, no sample): these tests are about the folder."""
    return {
        "name": name,
        "version": "1",
        "signature": {"inputs": [], "outputs": []},
        "artifacts": [],
        "tolerance": {"atol": 0.0, "rtol": 0.0},
        "samples": [],
    }


def _package(dest: Path, name: str, *, force: bool = False) -> Path:
    with stage_package(dest, force=force) as s:
        s.write_text("data.txt", name)
        s.save_array("a.npy", np.arange(3))
        s.finalize(_manifest(name))
        return s.commit()


def _name(dest: Path) -> str:
    return str(json.loads((dest / MANIFEST).read_text())["name"])


def _leftovers(parent: Path) -> list[str]:
    kinds = (".staging-", ".replaced-", ".scratch-")
    return sorted(p.name for p in parent.iterdir() if any(k in p.name for k in kinds))


@pytest.mark.parametrize("step", STEPS)
def test_a_complete_package_is_at_out_whenever_the_export_is_killed(tmp_path: Path, step: str) -> None:
    dest = _package(tmp_path / "pkg", "old")
    canary = Canary(tmp_path / "canary.txt", allowed=("pkg", ".pkg."))
    new = json.dumps(_manifest("new"))
    run = subprocess.run([sys.executable, "-c", _KILLED_EXPORT, str(dest), step, new], capture_output=True, text=True)
    assert run.returncode == 9, run.stderr
    assert check_integrity(dest) == []
    assert _name(dest) == ("new" if STEPS.index(step) >= STEPS.index("exchanged") else "old")
    killed_leftovers = _leftovers(tmp_path)
    assert any(".scratch-" in name for name in killed_leftovers)  # NOTE: a kill runs no clean-up of its own
    assert any(".scratch-" not in name for name in killed_leftovers) == (step != "removed-old")
    # the next export cleans what the killed one left behind (its pid is dead) and replaces the package
    _package(dest, "next", force=True)
    assert _name(dest) == "next"
    assert check_integrity(dest) == []
    assert _leftovers(tmp_path) == []
    canary.assert_untouched()


def test_exchange_swaps_both_folders_in_one_step(tmp_path: Path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    new.mkdir()
    (old / "which").write_text("old")
    (new / "which").write_text("new")
    aside = staging.exchange(new, old)
    assert aside == new
    assert (old / "which").read_text() == "new"
    assert (new / "which").read_text() == "old"


def test_fallback_without_renameat2_replaces_and_restores_a_package_left_aside(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(staging, "_libc_renameat2", lambda: None)
    dest = _package(tmp_path / "pkg", "old")
    _package(dest, "new", force=True)
    assert _name(dest) == "new"
    assert _leftovers(tmp_path) == []
    # a fallback killed between its two renames: the old package is aside under a dead pid, --out is empty
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    aside = tmp_path / f".pkg.replaced-{int(dead.stdout)}-0123abcd"
    dest.rename(aside)
    assert clean_stale(dest) == []
    assert _name(dest) == "new"
    assert check_integrity(dest) == []


def test_staging_folders_of_live_processes_and_strangers_are_left_alone(tmp_path: Path) -> None:
    live = tmp_path / f".pkg.staging-{os.getppid()}-0123abcd"
    other = tmp_path / ".pkg.staging-notours"
    link = tmp_path / ".pkg.staging-999999999-0123abcd"
    for folder in (live, other):
        folder.mkdir()
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "keep.txt").write_text("keep")
    link.symlink_to(target)
    assert clean_stale(tmp_path / "pkg") == []
    assert live.is_dir() and other.is_dir() and (target / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize("fails", [False, True])
def test_the_scratch_folder_goes_when_the_staging_ends(tmp_path: Path, fails: bool) -> None:
    dest = tmp_path / "pkg"
    live = tmp_path / f".pkg.scratch-{os.getppid()}-0123abcd"  # NOTE: another export, still running
    live.mkdir()
    with pytest.raises(RuntimeError) if fails else contextlib.nullcontext(), stage_package(dest) as s:
        scratch = s.scratch()
        assert scratch.parent == tmp_path and scratch.name.startswith(f".pkg.scratch-{os.getpid()}-")
        assert s.scratch() == scratch
        (scratch / "work.onnx").write_bytes(b"never shipped")
        if fails:
            raise RuntimeError("the export failed")
        s.finalize(_manifest("new"))
        s.commit()
    assert not scratch.exists() and live.is_dir()
    assert dest.is_dir() != fails and not any(p.name == "work.onnx" for p in tmp_path.rglob("*"))


def test_out_that_is_a_symlink_is_refused_and_not_followed(tmp_path: Path) -> None:
    real = _package(tmp_path / "real", "real")
    before = (real / MANIFEST).read_bytes()
    link = tmp_path / "pkg"
    link.symlink_to(real)
    canary = Canary(tmp_path / "canary.txt", allowed=("real", "pkg"))
    with pytest.raises(PackageError, match=r"pkg: is a symbolic link; refusing to write through it"):
        _package(link, "new", force=True)
    assert link.is_symlink() and (real / MANIFEST).read_bytes() == before
    assert _leftovers(tmp_path) == []
    canary.assert_untouched()


def test_out_that_is_a_file_or_a_folder_of_other_things_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "notes.txt"
    file.write_text("mine")
    with pytest.raises(PackageError, match=r"notes.txt: exists and is not a package folder"):
        _package(file, "new", force=True)
    folder = tmp_path / "work"
    folder.mkdir()
    (folder / "thesis.tex").write_text("years")
    with pytest.raises(PackageError, match=r"work: exists, is not empty and holds no manifest.json"):
        _package(folder, "new", force=True)
    assert file.read_text() == "mine" and (folder / "thesis.tex").read_text() == "years"


def test_force_is_needed_over_a_package(tmp_path: Path) -> None:
    dest = _package(tmp_path / "pkg", "old")
    with pytest.raises(PackageError, match="pass --force to replace it"):
        _package(dest, "new")
    assert _name(dest) == "old"


@pytest.mark.parametrize("where", ["save_array", "body"])
def test_disk_full_is_a_clear_error_and_the_old_package_survives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    dest = _package(tmp_path / "pkg", "old")
    canary = Canary(tmp_path / "canary.txt", allowed=("pkg", ".pkg."))

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(staging.np, "save", full)
    message = r"pkg: no space left while writing .*old package there is intact"
    with pytest.raises(PackageError, match=message), stage_package(dest, force=True) as s:
        s.write_text("data.txt", "new")
        if where == "body":
            full()
        s.save_array("a.npy", np.arange(3))
    assert _name(dest) == "old" and check_integrity(dest) == []
    assert _leftovers(tmp_path) == []
    canary.assert_untouched()


def test_a_manifest_that_breaks_the_schema_is_refused_before_it_replaces_a_package(tmp_path: Path) -> None:
    dest = _package(tmp_path / "pkg", "old")
    broken = {**_manifest("new"), "recommended": {"16": 3}}
    message = r"pkg: the manifest built for this package breaks the schema .*recommended"
    with pytest.raises(PackageError, match=message), stage_package(dest, force=True) as s:
        s.write_text("data.txt", "new")
        s.finalize(broken)
        s.commit()
    assert _name(dest) == "old" and check_integrity(dest) == [] and _leftovers(tmp_path) == []


def test_commit_needs_finalize(tmp_path: Path) -> None:
    s = PackageStaging(tmp_path / "pkg", force=False)
    with pytest.raises(PackageError, match="finalize"):
        s.commit()


@pytest.mark.parametrize("kind", ["symlink", "folder"])
def test_export_refuses_such_an_out_with_one_line(tmp_path: Path, kind: str) -> None:
    from typer.testing import CliRunner

    from toolchain.cli import app

    real = _package(tmp_path / "real", "real")
    out = tmp_path / "out"
    if kind == "symlink":
        out.symlink_to(real)
    else:
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    canary = Canary(tmp_path / "canary.txt", allowed=("real", "out"))
    result = CliRunner().invoke(app, ["export", "feed.dlrm_small", "--out", str(out), "--force"])
    assert result.exit_code == 1
    expected = "is a symbolic link; refusing to write through it" if kind == "symlink" else "holds no manifest.json"
    assert result.output.count("\n") == 1 and result.output.startswith(f"error: {out}: ") and expected in result.output
    assert _name(real) == "real" and _leftovers(tmp_path) == []
    canary.assert_untouched()


_KILLED_REAL_EXPORT = """
import os, sys
from pathlib import Path
from tests.conftest import TINY
from toolchain.build.pipeline import export_package
from toolchain.package import staging

staging._after_step = lambda name: os._exit(9) if name == sys.argv[2] else None
export_package(TINY, Path(sys.argv[1]), formats=["onnx"], optimize=False, force=True)
os._exit(3)
"""


@pytest.mark.slow
@pytest.mark.parametrize("step", STEPS[1:])
def test_export_force_killed_at_each_commit_step_leaves_a_complete_package(
    tiny_package: Path, tmp_path: Path, step: str
) -> None:
    out = tmp_path / "pkg"
    shutil.copytree(tiny_package, out)
    old = json.loads((out / MANIFEST).read_text())["artifacts"]
    run = subprocess.run([sys.executable, "-c", _KILLED_REAL_EXPORT, str(out), step], capture_output=True, text=True)
    assert run.returncode == 9, run.stderr[-2000:]
    assert check_integrity(out) == []
    artifacts = [a["path"] for a in json.loads((out / MANIFEST).read_text())["artifacts"]]
    replaced = STEPS.index(step) >= STEPS.index("exchanged")
    assert artifacts == (["onnx/model.onnx"] if replaced else [a["path"] for a in old])
    # the export paths' work folders were left by the kill; the next export to the same --out removes them
    assert any(".pkg.scratch-" in name for name in _leftovers(tmp_path))
    assert export_package(TINY, out, formats=["onnx"], optimize=False, force=True)
    assert _leftovers(tmp_path) == [] and check_integrity(out) == []
