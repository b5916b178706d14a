"""Structured logs: one JSON object per line, with the `extra={...}` fields of each call as keys."""

from __future__ import annotations

import json
import logging
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

# Attributes every LogRecord has; anything else on a record came from `extra=` and is logged as a field.
_STANDARD_ATTRIBUTES = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, tz=timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRIBUTES and not key.startswith("_"):
                entry[key] = value if isinstance(value, str | int | float | bool | type(None)) else str(value)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


@contextmanager
def structured_logging(log_format: str, level: str) -> Iterator[None]:
    """Route every log line of the process to stderr in the chosen format while the server runs, and restore logging
    afterwards (so an in-process `serve`, as in tests, leaves logging as it found it).

    Every line means every one: the gamjeong loggers at `level`; other libraries' loggers (gRPC's handler tracebacks
    on "grpc._cython.cygrpc", asyncio's "Task was destroyed..." on "asyncio") at warning and above; Python warnings
    (logging.captureWarnings); and exceptions Python would otherwise print itself (unraisable ones, uncaught ones in
    threads). A log collector then never meets a line it cannot parse.
    """
    handler = logging.StreamHandler(sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logger, root = logging.getLogger("gamjeong"), logging.getLogger()
    saved = (list(logger.handlers), logger.level, logger.propagate)
    saved_root = (list(root.handlers), root.level)
    saved_hooks = (sys.unraisablehook, threading.excepthook)
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.captureWarnings(True)
    sys.unraisablehook = _log_unraisable
    threading.excepthook = _log_thread_exception
    try:
        yield
    finally:
        sys.unraisablehook, threading.excepthook = saved_hooks
        logging.captureWarnings(False)
        root.handlers[:], root.level = saved_root[0], saved_root[1]
        logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def _log_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    exc = unraisable.exc_value
    logging.getLogger("gamjeong.unraisable").error(
        unraisable.err_msg or "Exception ignored",
        exc_info=(unraisable.exc_type, exc, unraisable.exc_traceback) if exc is not None else None,
        extra={"object": repr(unraisable.object)},
    )


def _log_thread_exception(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    logging.getLogger("gamjeong.thread").error(
        "uncaught exception in thread",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),  # type: ignore[arg-type]
        extra={"thread": args.thread.name if args.thread else None},
    )
