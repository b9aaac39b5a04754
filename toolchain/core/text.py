"""Text from untrusted sources made safe to print: control characters become visible escapes."""

from __future__ import annotations

import re

__all__ = ["printable"]

# NOTE: C0 and C1 controls, DEL, and the Unicode line/paragraph separators and bidirectional overrides:
# any of them in a package's names could move the cursor, erase a line (``ESC[2K``) or reorder what a
# terminal shows, e.g. hide the FAIL line that precedes them.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069\u200e\u200f\u061c]")


def printable(text: str) -> str:
    r"""`text` with every control character shown as an escape (``\x1b``, ``\n``, ``\u202e``).

    Backslashes are left alone: the result is for reading, not for parsing back.
    """
    return _UNSAFE.sub(_escape, text)


def _escape(match: re.Match[str]) -> str:
    char = match.group(0)
    escaped = char.encode("unicode_escape").decode("ascii")
    return escaped if escaped != char else f"\\u{ord(char):04x}"
