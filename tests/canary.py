"""A canary file beside a package: proves that nothing outside the package was read or changed.

With ``existing=True`` it watches a file already there (a package's TorchScript file that must never
be opened without trust).

On Linux an inotify watch sees every open, read or write of the canary by any process (children
included); the folder holding it is compared before and after, so nothing new appears beside it.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import os
import secrets
import struct
import sys
from pathlib import Path

_IN_ACCESS, _IN_MODIFY, _IN_ATTRIB, _IN_OPEN = 0x1, 0x2, 0x4, 0x20
_IN_NONBLOCK = 0o4000


class Canary:
    """A file with fresh random bytes at `path`; `assert_untouched` fails if anything opened or changed it."""

    def __init__(self, path: Path, *, allowed: tuple[str, ...] = (), existing: bool = False) -> None:
        self.path = Path(path)
        self.content = self.path.read_bytes() if existing else secrets.token_bytes(64)
        if not existing:
            self.path.write_bytes(self.content)
        self.allowed = allowed
        self.before = self._listing()
        self._fd = -1
        if sys.platform.startswith("linux"):
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
            self._fd = libc.inotify_init1(_IN_NONBLOCK)
            mask = _IN_ACCESS | _IN_MODIFY | _IN_ATTRIB | _IN_OPEN
            assert libc.inotify_add_watch(self._fd, os.fsencode(self.path), mask) >= 0

    def _listing(self) -> dict[str, str]:
        return {
            p.name: hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and p != self.path else "dir"
            for p in self.path.parent.iterdir()
            if p.name not in self.allowed and not p.name.startswith(self.allowed)
        }

    def events(self) -> list[int]:
        """inotify masks seen on the canary so far (empty where inotify is not available)."""
        if self._fd < 0:
            return []
        masks = []
        try:
            data = os.read(self._fd, 65536)
        except BlockingIOError:
            return []
        offset = 0
        while offset < len(data):
            _, mask, _, length = struct.unpack_from("iIII", data, offset)
            masks.append(mask)
            offset += 16 + length
        return masks

    def assert_untouched(self) -> None:
        """The canary was never opened, its bytes are the same, and nothing new appeared beside it."""
        events = self.events()
        assert events == [], f"the canary {self.path} was accessed (inotify masks {events})"
        assert self.path.read_bytes() == self.content
        self.events()  # NOTE: our own read just now
        assert self._listing() == self.before, "something beside the package was created or changed"

    def close(self) -> None:
        """Stop watching."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
