from __future__ import annotations

import pytest

from exporters._capture import capture_findings, summarize_error


class Wrapper(Exception):
    pass


def _user_code(values: list[int]) -> int:
    return values[5]


def _raised() -> BaseException:
    try:
        try:
            _user_code([1, 2])
        except IndexError as inner:
            raise Wrapper(
                "Failed to export the model with torch.export. This is step 1/3 of exporting.\n"
                "Next steps:\n- Modify the model code for `torch.export.export` to succeed."
            ) from inner
    except Wrapper as e:
        return e
    pytest.fail("nothing raised")


def test_a_wrapped_error_is_summarised_by_its_innermost_cause_and_the_users_line() -> None:
    summary = summarize_error(_raised())
    assert summary.startswith("Wrapper caused by IndexError: list index out of range")
    line = _user_code.__code__.co_firstlineno + 1
    assert f"test_capture.py:{line} (`return values[5]`)" in summary
    assert "Next steps" not in summary


def test_an_error_with_no_user_frame_keeps_its_own_message() -> None:
    assert summarize_error(ValueError("bad shape | more")) == "ValueError: bad shape | more"


def test_a_listed_set_of_attributes_reads_the_same_in_every_process() -> None:
    import warnings

    names = ["self.b._flat_weights[1]", "self.a._flat_weights[0]", "self.c.w"]
    messages = []
    for order in (names, names[::-1]):
        with capture_findings() as findings:
            warnings.warn(f"The tensor attributes {', '.join(order)} were assigned during export.", stacklevel=1)
        messages.append(findings[0].message)
    assert messages[0] == messages[1]
    assert "self.a._flat_weights[0], self.b._flat_weights[1], self.c.w were assigned" in messages[0]
