"""The same library code, minus repeated work: what torch and onnxscript redo on every export, done once.

Every speed-up here is scoped to a ``with`` block, computes exactly what the library would (tests compare
results with and without), and steps aside on a library version without the names it relies on: an
export is never different for it, only faster.

- `shared_registry`: torch.onnx builds its op registry from torchlib once per opset and process.
- `_cached_cia_ops`: torch.export lists the preservable CompositeImplicitAutograd ops once per op set.
- `_lazy_py_impl`: ``OperatorBase.py_impl`` without evaluating its annotations on every call.
- `fast_pattern_matching`: onnxscript's rewriter skips a rule at once where the node's op cannot match.
"""

from __future__ import annotations
import __future__

import ast
import inspect
import textwrap
import threading
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, contextmanager
from functools import wraps
from typing import Any

__all__ = ["export_speedups", "fast_pattern_matching", "shared_registry"]


_ACTIVE: dict[str, int] = {}
_ACTIVE_LOCK = threading.Lock()


def _outermost(
    function: Callable[[], Iterator[None]],
) -> Callable[[], AbstractContextManager[None]]:
    """A context manager that patches only where no block of the same speed-up is open already.

    NOTE: nested blocks (a capture inside an export, a pass inside a pass) would otherwise wrap the
    patched function again; with this, the outermost block patches and restores.
    """
    manager = contextmanager(function)

    @contextmanager
    @wraps(function)
    def guarded() -> Iterator[None]:
        with _ACTIVE_LOCK:
            depth = _ACTIVE.get(function.__name__, 0)
            _ACTIVE[function.__name__] = depth + 1
        try:
            if depth:
                yield
            else:
                with manager():
                    yield
        finally:
            with _ACTIVE_LOCK:
                _ACTIVE[function.__name__] -= 1

    return guarded


@contextmanager
def export_speedups() -> Iterator[None]:
    """Every speed-up below, for a ``torch.export`` capture or a ``torch.onnx.export`` call."""
    with ExitStack() as stack:
        for each in (shared_registry, _cached_cia_ops, _lazy_py_impl, fast_pattern_matching):
            stack.enter_context(each())
        yield


@contextmanager
def _patched(owner: Any, name: str, value: Any) -> Iterator[None]:
    """`owner.name` set to `value` while open, then put back (``__dict__`` level, so classmethods survive)."""
    original = owner.__dict__[name]
    setattr(owner, name, value)
    try:
        yield
    finally:
        setattr(owner, name, original)


_REGISTRIES: dict[int, Any] = {}


@_outermost
def shared_registry() -> Iterator[None]:
    """While open, ``torch.onnx.export`` builds its op registry from torchlib once per opset and process.

    NOTE: torch 2.13 rebuilds the registry on every export (``ONNXRegistry.from_torchlib``: ~500
    torchlib functions turned into ONNX IR from their source, 3.3 s of a 15 s BERT-sized export here).
    Each export gets its own copy of the tables, so the custom translations it registers stay its own.
    A torch without that classmethod exports as before.
    """
    try:
        from torch.onnx._internal.exporter import _constants, _registration
    except ImportError:
        yield
        return
    cls = _registration.ONNXRegistry
    original = cls.__dict__.get("from_torchlib")
    if not isinstance(original, classmethod):
        yield
        return
    build = original.__func__

    def cached(klass: Any, opset_version: int = _constants.TORCHLIB_OPSET) -> Any:
        base = _REGISTRIES.get(opset_version)
        if base is None or type(base) is not klass:
            base = _REGISTRIES[opset_version] = build(klass, opset_version)
        registry = klass()
        registry._opset_version = base._opset_version
        registry.functions = {target: list(decomps) for target, decomps in base.functions.items()}
        return registry

    with _patched(cls, "from_torchlib", classmethod(cached)):
        yield


_CIA_OPS: dict[tuple[Any, ...], frozenset[Any]] = {}


@_outermost
def _cached_cia_ops() -> Iterator[None]:
    """While open, torch.export lists the preservable CompositeImplicitAutograd ops once per op set.

    NOTE: ``run_decompositions`` calls ``_collect_all_valid_cia_ops``, which re-reads the C++
    dispatcher's whole CIA registry once per op namespace (~50 here): 0.9 s of a 4 s export of a
    small model, every export. Keyed on the namespaces and the registered CIA ops (one 4 ms query),
    so an op registered between exports is seen. A torch without these names exports as before.
    """
    import torch

    try:
        from torch._export import utils
        from torch.export import decomp_utils, exported_program
    except ImportError:
        yield
        return
    modules = [m for m in (utils, decomp_utils, exported_program) if hasattr(m, "_collect_all_valid_cia_ops")]
    if not modules:
        yield
        return
    collect = modules[0].__dict__["_collect_all_valid_cia_ops"]

    def key() -> tuple[Any, ...]:
        registered = torch._C._dispatch_get_registrations_for_dispatch_key("CompositeImplicitAutograd")
        return (tuple(torch.ops._dir), tuple(sorted(registered)))

    def cached() -> set[Any]:
        before = key()
        if before not in _CIA_OPS:
            found = frozenset(collect())
            _CIA_OPS.clear()
            # NOTE: collecting materialises op namespaces, so the key it leaves is cached too.
            _CIA_OPS[before] = _CIA_OPS[key()] = found
        return set(_CIA_OPS[before])

    with ExitStack() as stack:
        for module in modules:
            stack.enter_context(_patched(module, "_collect_all_valid_cia_ops", cached))
        yield


_LAZY: dict[Callable[..., Any], Callable[..., Any] | None] = {}


@_outermost
def _lazy_py_impl() -> Iterator[None]:
    """While open, ``OperatorBase.py_impl`` is the same code compiled with postponed annotations.

    NOTE: torch.export re-registers a Python kernel for every CompositeImplicitAutograd op on each
    capture and each ``run_decompositions`` (``_override_composite_implicit_decomp``: ~500 ops x ~12
    keys). Each ``py_impl`` call defines a decorator annotated ``Callable[_P, _T]``, and building those
    generic aliases (nothing reads them) is most of 0.1-0.3 s per call on a small model. Same source,
    same line numbers, annotations left as strings; a torch whose ``py_impl`` has no readable source
    keeps its own.
    """
    try:
        from torch._ops import OperatorBase
    except ImportError:
        yield
        return
    original = OperatorBase.__dict__.get("py_impl")
    if original is None:
        yield
        return
    if original not in _LAZY:
        _LAZY[original] = _with_postponed_annotations(original)
    lazy = _LAZY[original]
    if lazy is None:
        yield
        return
    with _patched(OperatorBase, "py_impl", lazy):
        yield


def _with_postponed_annotations(function: Callable[..., Any]) -> Callable[..., Any] | None:
    """`function` recompiled from its source under ``from __future__ import annotations`` (None: no source)."""
    try:
        lines, first = inspect.getsourcelines(function)
        tree = ast.parse(textwrap.dedent("".join(lines)))
        ast.increment_lineno(tree, first - 1)
        code = compile(
            tree,
            inspect.getsourcefile(function) or "<unknown>",
            "exec",
            flags=__future__.annotations.compiler_flag,
            dont_inherit=True,
        )
        namespace: dict[str, Any] = {}
        exec(code, function.__globals__, namespace)
        compiled = namespace[function.__name__]
    except (OSError, TypeError, SyntaxError, KeyError):
        return None
    if getattr(function, "__closure__", None) or not callable(compiled):
        return None  # NOTE: a closure's cells cannot be rebound here; keep the original
    compiled.__qualname__ = function.__qualname__
    compiled.__doc__ = function.__doc__
    return compiled  # type: ignore[no-any-return]


@_outermost
def fast_pattern_matching() -> Iterator[None]:
    """While open, onnxscript's rewriter skips a rule at once where the node's op type cannot start it.

    NOTE: onnxscript 0.7's ``SimplePatternMatcher.match`` tries every rule on every node; for a rule
    with several output nodes it first indexes the whole graph by op type, for every node it is
    tried on, before looking at that node (quadratic: 2.9 s of a 7 s optimiser run on a 1,500-node
    graph). The node's op type and domain against the rule's first output node is the first check
    the matcher makes, and a node failing it fails the rule: checked here first, the result is the
    same, with no index built. Used around ``torch.onnx.export`` (which ends with this optimiser) and
    the onnxscript passes.
    """
    try:
        from onnxscript.rewriter import _basics, _matcher
    except ImportError:
        yield
        return
    cls = getattr(_matcher, "SimplePatternMatcher", None)
    original = cls.__dict__.get("match") if cls is not None else None
    if original is None or not hasattr(_basics, "MatchResult"):
        yield
        return

    def match(self: Any, model: Any, graph_or_function: Any, node: Any, **options: Any) -> Any:
        try:
            first = self.pattern.output_nodes[0]
            possible = first.op.matches(node.op_type) and first.domain.matches(node.domain)
        except (AttributeError, IndexError, TypeError):
            possible = True  # NOTE: a pattern shaped otherwise goes the library's own way
        if not possible:
            return _basics.MatchResult().fail("No match found.")
        return original(self, model, graph_or_function, node, **options)

    with _patched(cls, "match", match):
        yield
