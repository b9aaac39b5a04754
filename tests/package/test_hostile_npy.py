"""CHECKLIST row 14: golden ``.npy`` files with an object dtype, a lying header, or a dtype/shape off the signature."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest

from tests.package.hostile import fail_lines, restamp, verify_measured
from toolchain.core.errors import PackageError
from toolchain.core.signature import TensorSig
from toolchain.package.arrays import parse_npy
from toolchain.package.format import load_array

GOLDEN = "samples/export/inputs/a.npy"


def _npy(array: np.ndarray, *, allow_pickle: bool = False) -> bytes:
    out = io.BytesIO()
    np.save(out, array, allow_pickle=allow_pickle)
    return out.getvalue()


def _header_lie(shape: tuple[int, ...]) -> bytes:
    """A valid .npy header claiming `shape` (float32) followed by 16 bytes of data."""
    out = io.BytesIO()
    np.lib.format.write_array_header_1_0(out, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return out.getvalue() + bytes(16)


class Evil:
    def __reduce__(self):
        return (print, ("unpickled!",))


CASES = {
    "object dtype": (lambda a: _npy(np.array([Evil()], dtype=object), allow_pickle=True), "dtype object"),
    "256 TiB header": (lambda a: _header_lie((1 << 24, 1 << 24, 1 << 22)), "header claims shape"),
    "short header": (lambda a: _header_lie((a.shape[0], 65)), "header claims shape"),
    "wrong dtype": (lambda a: _npy(a.astype(np.float64)), "dtype float64 where the signature of 'a' says float32"),
    "wrong rank": (lambda a: _npy(a.reshape(-1)), "where the signature says ['batch', 64]"),
    "wrong size": (lambda a: _npy(a[:, :32]), "where the signature says ['batch', 64]"),
    "other batch": (lambda a: _npy(np.concatenate([a, a])), "(sizes {'batch': 8})"),
    "structured": (lambda a: _npy(np.zeros(2, dtype=[("x", "<f4")])), "is not a plain numeric dtype"),
    "not npy": (lambda a: b"\x93NUMPY\x09\x00garbage", "not a readable .npy array"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_golden_array_is_refused_naming_the_file(zoo_package: Path, hostile, canary, capsys, case: str) -> None:
    pkg = hostile(zoo_package)
    make, message = CASES[case]
    (pkg / GOLDEN).write_bytes(make(np.load(pkg / GOLDEN)))
    restamp(pkg)
    result, peak = verify_measured(pkg)
    assert result.exit_code == 1
    lines = fail_lines(result)
    assert len(lines) == 1 and f"{GOLDEN}: " in lines[0] and message in lines[0], result.stderr
    assert peak < 256 << 20
    assert "unpickled!" not in result.stdout + capsys.readouterr().out


def test_parse_npy_round_trips_and_checks_symbolic_sizes() -> None:
    array = np.arange(12, dtype=np.int64).reshape(3, 4)
    sig = TensorSig("ids", "int64", ("batch", 4))
    np.testing.assert_array_equal(parse_npy(_npy(array), where="x.npy", tensor=sig, sizes={"batch": 3}), array)
    fortran = np.asfortranarray(array)
    np.testing.assert_array_equal(parse_npy(_npy(fortran), where="x.npy"), array)
    with pytest.raises(PackageError, match=r"x\.npy: shape \[3, 4\]"):
        parse_npy(_npy(array), where="x.npy", tensor=sig, sizes={"batch": 2})


def test_load_array_refuses_a_link(tmp_path: Path) -> None:
    (tmp_path / "real.npy").write_bytes(_npy(np.zeros(3, np.float32)))
    (tmp_path / "link.npy").symlink_to(tmp_path / "real.npy")
    with pytest.raises(PackageError, match="is a symbolic link"):
        load_array(tmp_path / "link.npy")
    assert load_array(tmp_path / "real.npy").shape == (3,)
