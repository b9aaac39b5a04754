from __future__ import annotations

import json

import numpy as np
import pytest

from toolchain.core.parity import PaddedBy, ParityReport, Tolerance, compare

TOL = Tolerance(atol=0.5, rtol=0.25)


def _one(expected: np.ndarray, actual: np.ndarray, tol: Tolerance = TOL):
    report = compare({"y": expected}, {"y": actual}, tol)
    return report, report.outputs[0]


def test_within_atol_plus_rtol_times_expected_passes() -> None:
    exp = np.array([1.0, -2.0, 0.0, 4.0])
    act = exp + np.array([0.7, -0.9, 0.5, -1.4])  # allowed: 0.75, 1.0, 0.5, 1.5
    report, out = _one(exp, act)
    assert report
    assert out.passed and out.mismatch_fraction == 0.0


def test_element_exactly_at_bound_passes_and_just_over_fails() -> None:
    exp = np.array([2.0])  # allowed = 0.5 + 0.25 * 2 = 1.0, exact in binary
    assert _one(exp, np.array([3.0]))[1].passed
    assert _one(exp, np.array([1.0]))[1].passed
    over = _one(exp, np.array([np.nextafter(3.0, np.inf)]))[1]
    assert not over.passed and over.worst_ratio > 1


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_matching_nonfinite_positions_pass(bad: float) -> None:
    exp = np.array([1.0, bad, 3.0], dtype=np.float32)
    report, out = _one(exp, exp.copy())
    assert report and out.nonfinite_mismatches == 0


def test_nan_at_different_positions_fails_and_is_counted() -> None:
    exp = np.array([np.nan, 1.0, 2.0, 3.0])
    act = np.array([1.0, np.nan, 2.0, 3.0])
    report, out = _one(exp, act)
    assert not report
    assert out.nonfinite_mismatches == 2
    assert out.mismatch_fraction == pytest.approx(0.5)
    assert "NaN/Inf" in out.reason


@pytest.mark.parametrize(
    ("expected", "actual"),
    [
        (np.inf, -np.inf),
        (-np.inf, np.inf),
        (1.0, np.inf),
        (1.0, -np.inf),
        (1.0, np.nan),
        (np.inf, np.nan),
        (np.nan, np.inf),
    ],
)
def test_mismatched_nonfinite_values_fail(expected: float, actual: float) -> None:
    report, out = _one(np.array([expected, 0.0]), np.array([actual, 0.0]), Tolerance(atol=1e6))
    assert not report
    assert out.nonfinite_mismatches == 1


@pytest.mark.parametrize(
    ("expected", "actual", "word"),
    [(np.zeros((2, 3)), np.zeros((3, 2)), "shape"), (np.zeros(3, np.float32), np.zeros(3, np.float64), "dtype")],
)
def test_shape_or_dtype_mismatch_fails_with_reason(expected: np.ndarray, actual: np.ndarray, word: str) -> None:
    report, out = _one(expected, actual)
    assert not report and word in out.reason


def test_missing_output_fails_and_extra_outputs_are_ignored() -> None:
    report = compare({"a": np.zeros(2), "b": np.zeros(2)}, {"a": np.zeros(2), "extra": np.ones(2)}, TOL)
    assert not report
    assert [o.name for o in report.failures] == ["b"]
    assert "missing" in report.failures[0].reason


def test_per_output_tolerance_applies_only_to_that_output() -> None:
    tol = Tolerance(atol=1e-5, rtol=0.0, per_output={"loose": Tolerance(atol=0.5, rtol=0.0)})
    exp = {"loose": np.zeros(4), "strict": np.zeros(4)}
    act = {"loose": np.full(4, 0.1), "strict": np.full(4, 0.1)}
    report = compare(exp, act, tol)
    by_name = {o.name: o for o in report.outputs}
    assert by_name["loose"].passed and by_name["loose"].atol == 0.5
    assert not by_name["strict"].passed and by_name["strict"].atol == 1e-5
    assert not report


@pytest.mark.parametrize("dtype", [np.int64, np.int32, np.uint8, np.bool_])
def test_integer_and_bool_outputs_must_match_exactly_despite_large_atol(dtype: type) -> None:
    tol = Tolerance(atol=100.0, rtol=1.0)
    exp = np.array([1, 0, 1, 1], dtype=dtype)
    assert _one(exp, exp.copy(), tol)[1].passed
    act = exp.copy()
    act[1] = 1
    report, out = _one(exp, act, tol)
    assert not report and out.mismatch_fraction == pytest.approx(0.25)


def test_mismatch_fraction_counts_failing_elements() -> None:
    act = np.zeros(8)
    act[[1, 5, 6]] = 10.0
    out = _one(np.zeros(8), act)[1]
    assert out.mismatch_fraction == pytest.approx(3 / 8)
    assert out.max_abs == pytest.approx(10.0)


def test_worst_ratio_at_most_one_when_passing_and_above_one_when_failing() -> None:
    exp = np.array([0.0, 4.0])
    passing = _one(exp, np.array([0.25, 4.5]))[1]
    assert passing.passed and 0 < passing.worst_ratio <= 1
    assert passing.worst_ratio == pytest.approx(0.5)  # max(0.25 / 0.5, 0.5 / 1.5)
    failing = _one(exp, np.array([1.0, 4.0]))[1]
    assert not failing.passed and failing.worst_ratio == pytest.approx(2.0)


def test_report_truthiness_and_failures() -> None:
    exp = {"a": np.ones(3), "b": np.ones(3)}
    good = compare(exp, {"a": np.ones(3), "b": np.ones(3)}, TOL)
    bad = compare(exp, {"a": np.ones(3), "b": np.ones(3) * 5}, TOL)
    assert bool(good) is True and good.failures == ()
    assert bool(bad) is False and [o.name for o in bad.failures] == ["b"]


def test_str_shows_achieved_and_allowed() -> None:
    tol = Tolerance(atol=0.001, rtol=0.02)
    text = str(compare({"y": np.zeros(2)}, {"y": np.array([0.0, 0.5])}, tol, sample="batch-1"))
    assert "batch-1" in text and "FAILED" in text
    assert "max_abs=0.5" in text
    assert "atol=0.001" in text and "rtol=0.02" in text


def test_could_not_run_report_is_falsy_and_mentions_error() -> None:
    report = ParityReport.could_not_run("boom", sample="export")
    assert not report and "boom" in str(report) and report.to_dict()["passed"] is False


@pytest.mark.parametrize("field", ["atol", "rtol"])
@pytest.mark.parametrize("value", [-1e-6, float("nan"), float("inf"), "0.1"])
def test_tolerance_rejects_bad_values(field: str, value: object) -> None:
    with pytest.raises(ValueError, match=field):
        Tolerance(**{field: value})


def test_tolerance_dict_round_trip_including_per_output() -> None:
    tol = Tolerance(atol=1e-3, rtol=2e-2, per_output={"logits": Tolerance(0.1, 0.2), "aux": Tolerance(0.0, 0.5)})
    data = json.loads(json.dumps(tol.to_dict()))
    back = Tolerance.from_dict(data)
    assert back == tol
    assert back.for_output("logits") == (0.1, 0.2)
    assert back.for_output("other") == (1e-3, 2e-2)


@pytest.mark.parametrize("shape", [(0,), (3, 0)])
def test_empty_arrays_pass(shape: tuple[int, ...]) -> None:
    report, out = _one(np.zeros(shape, dtype=np.float32), np.zeros(shape, dtype=np.float32))
    assert report and out.passed and out.max_abs == 0.0


PADDED = Tolerance(atol=1e-5, rtol=0.0, ignore_padded={"y": PaddedBy("mask", 1)})


def test_ignore_padded_skips_only_positions_the_mask_marks_as_padding() -> None:
    expected = np.zeros((2, 3, 4), np.float32)
    mask = np.array([[False, False, True], [False, True, True]])
    at_padding = expected.copy()
    at_padding[0, 2], at_padding[1, 1:] = 2.0, -7.0
    report = compare({"y": expected}, {"y": at_padding}, PADDED, feeds={"mask": mask})
    assert report and report.outputs[0].ignored == 12
    assert "12 padded element(s) not compared" in str(report)
    at_valid = at_padding.copy()
    at_valid[1, 0, 3] = 0.5
    assert not compare({"y": expected}, {"y": at_valid}, PADDED, feeds={"mask": mask})


def test_ignore_padded_without_feeds_compares_everything_and_a_misfit_mask_fails() -> None:
    expected, actual = np.zeros((2, 3), np.float32), np.ones((2, 3), np.float32)
    assert not compare({"y": expected}, {"y": actual}, PADDED)
    report = compare({"y": expected}, {"y": expected}, PADDED, feeds={"mask": np.ones((3, 2), bool)})
    assert not report and "does not lead the output's shape (2, 3)" in report.outputs[0].reason


def test_ignore_padded_round_trips_through_json() -> None:
    data = json.loads(json.dumps(PADDED.to_dict()))
    assert data["ignore_padded"] == {"y": {"input": "mask", "pad": 1}}
    assert Tolerance.from_dict(data) == PADDED
    assert "ignore_padded" not in Tolerance().to_dict()
