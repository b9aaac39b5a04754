from __future__ import annotations

from toolchain.core.text import printable


def test_control_characters_become_visible_escapes() -> None:
    assert printable("a\x1b[2Kb\r\n\t\x00\x7f\x9b") == "a\\x1b[2Kb\\r\\n\\t\\x00\\x7f\\x9b"
    assert printable("left\u202eright\u2028") == "left\\u202eright\\u2028"
    assert printable("plain ünïcode / path.onnx") == "plain ünïcode / path.onnx"
