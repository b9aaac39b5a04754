"""Paths of the exporting host made portable: what a package says about files, without the host's folders."""

from __future__ import annotations

import os
import re
import sysconfig
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["portable", "portable_path"]

_TOOLCHAIN_ROOT = str(Path(__file__).resolve().parents[2])
# NOTE: an absolute POSIX path in free text: it starts a word (not a URL's ``//host/...``) and stops at
# ``:line``, quotes, brackets and spaces.
_ABSOLUTE = re.compile(r"(?<![\w.~:/-])/(?:[\w.+@=~-]+/)*[\w.+@=~-]+")
# NOTE: folders made by `tempfile` (``tmpab12_xyz``, and the pipeline's ``.<out>.<path>-ab12_xyz``):
# they are gone once the export ends, so a path inside one is named from inside it.
_TEMPORARY = re.compile(r"^(?:tmp|\..+-)[a-z0-9_]{8}$")
_LIBRARY_FOLDERS = ("site-packages", "dist-packages")


def portable_path(path: str) -> str:
    """`path` without the exporting host's folders: relative to what a reader knows.

    Inside a temporary folder: the part inside it (``onnx/model.onnx``); in an installed library or
    the standard library: from the library's folder (``torch/jit/_script.py``); in the toolchain's
    own tree or under the working directory: relative to it; under the home folder: ``~/...``;
    anywhere else: the file's name.
    """
    parts = PurePosixPath(path).parts
    for i in range(len(parts) - 1, 0, -1):
        if _TEMPORARY.match(parts[i]) or parts[i] in _LIBRARY_FOLDERS:
            return "/".join(parts[i + 1 :]) or parts[i]
    absolute = Path(path)
    stdlib = sysconfig.get_paths()["stdlib"]
    for root in (stdlib, _TOOLCHAIN_ROOT, os.getcwd()):
        if absolute.is_relative_to(root) and absolute != Path(root):
            return absolute.relative_to(root).as_posix()
    home = Path.home()
    if absolute.is_relative_to(home) and absolute != home:
        return "~/" + absolute.relative_to(home).as_posix()
    return absolute.name or path


def portable(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, strings) with every absolute path in its strings made `portable_path`."""
    if isinstance(value, str):
        return _ABSOLUTE.sub(lambda m: portable_path(m.group(0)), value) if "/" in value else value
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [portable(v) for v in value]
    return value
