"""Resolve a TARGET (registered name, ``package.module:attr`` or ``path/file.py:attr``) to a spec."""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import io
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

from toolchain.core.errors import TargetError, ToolchainError
from toolchain.core.spec import SPECS, ModelSpec, spec_for

__all__ = ["FILE_MODULE_PREFIX", "import_source", "is_file_target", "module_label", "resolve_target"]

FILE_MODULE_PREFIX = "toolchain_target_"
"""Module names given to ``.py`` files imported by path (the prefix, then a hash of the path)."""


def resolve_target(target: str) -> ModelSpec:
    """The `ModelSpec` that `target` names.

    A bare name is looked up among the registered models (the application imports the plugins that
    register them first: the CLI and the gate import the zoo); with a colon,
    the part before it is a module or a ``.py`` file to import and the part after it the attribute:
    an ``@exportable`` class or function, or a `ModelSpec`.
    """
    if ":" not in target:
        return SPECS.get(target)
    where, _, attr = target.rpartition(":")
    if not where or not attr:
        raise TargetError(f"TARGET {target!r} must look like 'name', 'pkg.module:attr' or 'path/file.py:attr'")
    module = import_source(where)
    if not hasattr(module, attr):
        public = sorted(n for n in vars(module) if not n.startswith("_"))
        raise TargetError(f"{where} has no attribute {attr!r}; it defines: {', '.join(public[:20]) or 'nothing'}")
    obj = getattr(module, attr)
    if isinstance(obj, ModelSpec):
        return obj
    spec = spec_for(obj)
    if spec is None:
        raise TargetError(
            f"{target}: {attr} is not declared for export; decorate it with "
            "@toolchain.exportable(name=..., inputs=...) or point at a registered name"
        )
    return spec


def module_label(name: str) -> str:
    """`name`, or for a ``.py`` file imported by path (``toolchain_target_<hash>``) that file.

    The file is named relative to the working directory when it lies under it, else by its name.
    """
    file = getattr(sys.modules.get(name), "__file__", None) if name.startswith(FILE_MODULE_PREFIX) else None
    if not file:
        return name
    path = Path(file).resolve()
    return path.relative_to(Path.cwd()).as_posix() if path.is_relative_to(Path.cwd()) else path.name


def is_file_target(where: str) -> bool:
    """True when `where` names a Python file (``path/file.py``) rather than a module."""
    return where.endswith(".py") or "/" in where


def import_source(where: str) -> ModuleType:
    """Import a module (``pkg.module``) or a Python file (``path/file.py``), once per process.

    A file that is already imported under another name (a test module imported through ``sys.path``)
    is returned as it is, so its ``@exportable`` declarations are not registered twice.
    """
    if not is_file_target(where):
        return _import_module(where)
    path = Path(where).resolve()
    for module in list(sys.modules.values()):
        file = getattr(module, "__file__", None)
        if file and file.endswith(path.name) and Path(file).resolve() == path:
            return module
    return _import_file(path)


@contextlib.contextmanager
def _as_imported(target: str) -> Iterator[io.StringIO]:
    """Run a target's import as if it were a program started with no arguments, its exit made an error.

    NOTE: a target that parses ``sys.argv`` at import would read the toolchain's own arguments, and
    one that calls ``sys.exit`` would end the command silently with its code; argv is set to the
    target alone, stderr is held back until the import succeeded, and an exit becomes a `TargetError`.
    """
    saved, sys.argv = sys.argv, [target]
    held = io.StringIO()
    try:
        with contextlib.redirect_stderr(held):
            yield held
    except SystemExit as e:
        said = [line for line in held.getvalue().splitlines() if line.strip()]
        last = f"; it printed: {said[-1].strip()[:200]}" if said else ""
        raise TargetError(
            f"importing {target} exited (sys.exit({e.code!r})){last}; a target must not parse sys.argv or exit "
            "when imported: move that code under `if __name__ == '__main__':`"
        ) from None
    except BaseException:
        sys.stderr.write(held.getvalue())
        raise
    finally:
        sys.argv = saved
    sys.stderr.write(held.getvalue())


def _import_module(name: str) -> ModuleType:
    try:
        with _as_imported(name):
            return importlib.import_module(name)
    except ToolchainError:
        raise
    except ModuleNotFoundError as e:
        raise TargetError(f"cannot import module {name!r}: {e}; is it installed or on PYTHONPATH?") from e
    except Exception as e:
        raise TargetError(f"importing module {name!r} failed: {type(e).__name__}: {e}") from e


def _import_file(path: Path) -> ModuleType:
    path = path.resolve()
    if not path.is_file():
        raise TargetError(f"{path}: no such Python file")
    name = FILE_MODULE_PREFIX + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise TargetError(f"{path}: cannot be imported as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # NOTE: lets the file import its sibling modules.
    sys.modules[name] = module
    try:
        with _as_imported(str(path)):
            spec.loader.exec_module(module)
    except ToolchainError:
        del sys.modules[name]
        raise
    except Exception as e:
        del sys.modules[name]
        raise TargetError(f"importing {path} failed: {type(e).__name__}: {e}") from e
    return module
