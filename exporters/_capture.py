"""Keep exporters' warnings and log noise out of users' faces, and record it as findings."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import sysconfig
import tempfile
import threading
import warnings
from collections.abc import Iterator

from toolchain.core.artifact import Finding

__all__ = ["OUTPUT_LOCK", "capture_findings", "is_library_file", "summarize_error", "user_source"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
# NOTE: reprs such as `<function f at 0x7f...>` differ on every run (address layout), and a finding's
# message lands in the manifest, whose bytes must not change from one run to the next.
_ADDRESS = re.compile(r" at 0x[0-9a-fA-F]+")
# NOTE: torch lists the tensor attributes a forward assigned in set order, which changes with the process's
# string hashing (PYTHONHASHSEED); sorted, the same export gives the same message on every run.
_ATTRIBUTES = re.compile(r"(?<=The tensor attributes )(.+?)(?= were assigned)")
_LOGGERS = ("torch", "onnxscript", "onnx_ir", "onnx")
# NOTE: messages that say nothing about the model being exported.
# The registration log of our own ``embedding_bag`` translation (torch cannot read onnxscript's
# signature of it) came with every torch.export-based ONNX export, whatever the model.
_IRRELEVANT = (
    "torchvision is not installed",
    "Failed to infer the signature for function '<function embedding_bag ",
    "Failed to infer the signature for function '<function _embedding_bag_signed_padding ",
)


class _Collector(logging.Handler):
    def __init__(self, findings: list[Finding]) -> None:
        super().__init__(logging.WARNING)
        self.findings = findings

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().strip()
        if message and not any(s in message for s in _IRRELEVANT):
            first = message.splitlines()[0][:400]
            self.findings.append(Finding("log", f"{record.name}: {first}", f"{record.pathname}:{record.lineno}"))


OUTPUT_LOCK = threading.RLock()
"""Held while `capture_findings` has the process's output: another thread that prints takes it first.

NOTE: the capture swaps file descriptors 1 and 2, ``sys.stdout``/``sys.stderr`` and the loggers for the
whole process; a line another thread printed meanwhile (an export worker's progress) would become a
finding of this export, and which line landed there would change from run to run.
"""


@contextlib.contextmanager
def capture_findings() -> Iterator[list[Finding]]:
    """Capture warnings, library log records and stray output (Python's and native code's) while exporting.

    Yields the list that collects them as `Finding`s: warnings with their source line (``warning``;
    deprecation notices such as TorchScript's as ``deprecation``), library log records (``log``), and
    the first line of anything printed.
    """
    with OUTPUT_LOCK, _capturing() as findings:
        yield findings


@contextlib.contextmanager
def _capturing() -> Iterator[list[Finding]]:
    findings: list[Finding] = []
    handler = _Collector(findings)
    saved = []
    # NOTE: torch gives many sub-loggers their own stderr handler with propagate=False; swap them all.
    known = [logging.getLogger(n) for n in _LOGGERS]
    known += [
        lg
        for name, lg in list(logging.root.manager.loggerDict.items())
        if isinstance(lg, logging.Logger) and name.startswith(_LOGGERS) and (lg.handlers or not lg.propagate)
    ]
    for logger in dict.fromkeys(known):
        saved.append((logger, logger.handlers[:], logger.propagate, logger.level))
        logger.handlers = [handler]
        logger.propagate = False
    sink = io.StringIO()
    try:
        with (
            warnings.catch_warnings(record=True) as caught,
            _native_output_into(findings),
            contextlib.redirect_stdout(sink),
            contextlib.redirect_stderr(sink),
        ):
            warnings.simplefilter("always")
            yield findings
    finally:
        for logger, handlers, propagate, _level in saved:
            logger.handlers, logger.propagate = handlers, propagate
    printed = sink.getvalue().strip()
    if printed:
        findings.append(Finding("log", f"printed: {printed.splitlines()[0][:400]}"))
    for w in caught:
        message = _stable(str(w.message).strip().splitlines()[0])[:400] if str(w.message).strip() else ""
        if any(s in message for s in _IRRELEVANT):
            continue
        kind = "deprecation" if issubclass(w.category, DeprecationWarning | FutureWarning) else "warning"
        findings.append(Finding(kind, f"{w.category.__name__}: {message}", f"{w.filename}:{w.lineno}"))
    _deduplicate(findings)


@contextlib.contextmanager
def _native_output_into(findings: list[Finding]) -> Iterator[None]:
    """Send what native code writes to file descriptors 1 and 2 into `findings`, not the terminal.

    NOTE: torch's ``setup_onnx_logging`` tests the function ``_C._jit_is_onnx_log_enabled`` instead of
    calling it, so the TorchScript-based ONNX exporter's C++ log is always on and, when an export
    fails, prints the whole IR graph to stdout. Swapping descriptors is process-wide: exports run one
    at a time per process (batch work uses processes, not threads).
    """
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [(fd, os.dup(fd)) for fd in (1, 2)]
    with tempfile.TemporaryFile() as sink:
        for fd, _ in saved:
            os.dup2(sink.fileno(), fd)
        try:
            yield
        finally:
            for fd, copy in saved:
                os.dup2(copy, fd)
                os.close(copy)
            sink.seek(0)
            text = sink.read().decode(errors="replace").strip()
            if text:
                findings.append(Finding("log", f"native output: {text.splitlines()[0][:400]}"))


def _stable(message: str) -> str:
    """`message` less what changes from one run of the same export to the next."""
    return _ATTRIBUTES.sub(lambda m: ", ".join(sorted(m.group(1).split(", "))), message)


def _deduplicate(findings: list[Finding]) -> None:
    """Collapse findings raised from the same place (kind and source line) into one, counting them.

    Memory addresses in messages are dropped, so the same export gives the same findings on every run.
    """
    groups: dict[tuple[str, str, str], list[Finding]] = {}
    for f in (Finding(f.kind, _ADDRESS.sub("", f.message), f.source) for f in findings):
        key = (f.kind, f.source, "" if f.source else f.message)
        groups.setdefault(key, []).append(f)
    findings[:] = [
        group[0] if len(group) == 1 else Finding(group[0].kind, f"{group[0].message} (x{len(group)})", group[0].source)
        for group in groups.values()
    ]


def summarize_error(error: BaseException, *, lines: int = 4) -> str:
    """The real cause of an exporter's exception, in one line, with the user's source line when known.

    Exporters wrap the exception that stopped them (torch.onnx's "Failed to export the model with
    torch.export. This is step 1/3 ... Next steps"); the innermost exception of the chain says what
    went wrong (a data-dependent guard, a view/stride error) and its traceback where in the model.
    """
    chain = _chain(error)
    inner = next((e for e in reversed(chain) if _meaningful(e)), chain[-1])
    text = [ln for ln in _without_frames(_lines(inner)) if not ln.startswith(_BOILERPLATE)]
    head = " | ".join(text[:lines]) or type(inner).__name__
    summary = f"{type(inner).__name__}: {head[:800]}"
    if inner is not error:
        summary = f"{type(error).__name__} caused by {summary}"
    source = user_source(chain)
    return f"{summary} (at {source})" if source else summary


# NOTE: torch's advice lines, not the cause; they used to fill the reason and cut off the real error.
_BOILERPLATE = (
    "consider using data-dependent friendly APIs",
    "Caused by:",
    "For more information, run with",
    "For extended logs when we create symbols",
    "If you suspect the guard was triggered from C++",
    "For more debugging help, see",
    "For C++ stack trace, run with",
    "The error above occurred when calling torch.export.export",
    "The following call raised this error:",
    "Next steps:",
    "- Modify the model code",
    "- Debug `torch.export.export`",
    "- Create an issue",
    "This is step",
)
_LIBRARIES = ("torch", "onnxscript", "onnx_ir", "onnx", "onnxruntime", "exporters", "toolchain", "runtimes")
_CALL = re.compile(r'File "([^"]+)", line (\d+)')


def _chain(error: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    current: BaseException | None = error
    while current is not None and current not in chain and len(chain) < 16:
        chain.append(current)
        current = current.__cause__ or current.__context__
    return chain


def _lines(error: BaseException) -> list[str]:
    return [ln.strip() for ln in _ANSI.sub("", str(error)).splitlines() if ln.strip()]


def _without_frames(lines: list[str]) -> list[str]:
    """`lines` less the traceback entries quoted in a message (``File "...", line N, in f`` and its code)."""
    kept: list[str] = []
    skip = False
    for line in lines:
        if _CALL.match(line):
            skip = True
            continue
        if not skip:
            kept.append(line)
        skip = False
    return kept


def _meaningful(error: BaseException) -> bool:
    return any(not ln.startswith(_BOILERPLATE) for ln in _lines(error))


def user_source(chain: list[BaseException]) -> str:
    """``file:line (`code`)`` of the innermost frame in the user's code (not a library's) in `chain`."""
    import linecache
    import traceback

    for error in reversed(chain):
        frames = [(f.filename, f.lineno or 0) for f in traceback.extract_tb(error.__traceback__)]
        frames += [(m.group(1), int(m.group(2))) for m in _CALL.finditer(_ANSI.sub("", str(error)))]
        for file, line in reversed(frames):
            if not is_library_file(file):
                code = linecache.getline(file, line).strip()
                return f"{file}:{line}" + (f" (`{code}`)" if code else "")
    return ""


def is_library_file(file: str) -> bool:
    """True when `file` belongs to Python, an installed library or the toolchain, not to the user's model."""
    if file.startswith("<") or "site-packages" in file or "dist-packages" in file:
        return True
    return file.startswith(_library_roots())


def _library_roots() -> tuple[str, ...]:
    """Folders of the libraries an export runs through (an editable install lives outside site-packages)."""
    roots = []
    for name in _LIBRARIES:
        module = sys.modules.get(name)
        file = getattr(module, "__file__", None)
        if file:
            roots.append(os.path.dirname(os.path.abspath(file)) + os.sep)
    # NOTE: the standard library too: torch's FutureWarnings surface at copyreg.py, outside site-packages.
    paths = sysconfig.get_paths()
    roots += [os.path.abspath(paths[key]) + os.sep for key in ("stdlib", "platstdlib")]
    return tuple(roots)
