"""Keep exporters' warnings and log noise out of users' faces, and record it as findings."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import warnings
from collections.abc import Iterator

from toolchain.core.artifact import Finding

__all__ = ["capture_findings", "summarize_error"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_LOGGERS = ("torch", "onnxscript", "onnx_ir", "onnx")
# NOTE: messages that say nothing about the model being exported.
_IRRELEVANT = ("torchvision is not installed",)


class _Collector(logging.Handler):
    def __init__(self, findings: list[Finding]) -> None:
        super().__init__(logging.WARNING)
        self.findings = findings

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage().strip()
        if message and not any(s in message for s in _IRRELEVANT):
            first = message.splitlines()[0][:400]
            self.findings.append(Finding("log", f"{record.name}: {first}", f"{record.pathname}:{record.lineno}"))


@contextlib.contextmanager
def capture_findings() -> Iterator[list[Finding]]:
    """Capture warnings, library log records and stray output (Python's and native code's) while exporting.

    Yields the list that collects them as `Finding`s: warnings with their source line (``warning``;
    deprecation notices such as TorchScript's as ``deprecation``), library log records (``log``), and
    the first line of anything printed.
    """
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
        message = str(w.message).strip().splitlines()[0][:400] if str(w.message).strip() else ""
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


def _deduplicate(findings: list[Finding]) -> None:
    """Collapse findings raised from the same place (kind and source line) into one, counting them."""
    groups: dict[tuple[str, str, str], list[Finding]] = {}
    for f in findings:
        key = (f.kind, f.source, "" if f.source else f.message)
        groups.setdefault(key, []).append(f)
    findings[:] = [
        group[0] if len(group) == 1 else Finding(group[0].kind, f"{group[0].message} (x{len(group)})", group[0].source)
        for group in groups.values()
    ]


def summarize_error(error: BaseException, *, lines: int = 4) -> str:
    """The first few meaningful lines of an exporter's exception, joined into one line."""
    text = [ln.strip() for ln in _ANSI.sub("", str(error)).splitlines() if ln.strip()]
    head = " | ".join(text[:lines]) or type(error).__name__
    return f"{type(error).__name__}: {head[:800]}"
