"""One logging set-up for the whole process: readable text in dev, JSON lines in
production (``MLAPI_LOG_FORMAT=json``). Called once per process, never at import."""

from __future__ import annotations

import logging
import logging.handlers
import re
import sys
import time
from pathlib import Path
from typing import Any

import orjson

_FIELDS = ("request_id", "client", "model", "version", "status", "latency_ms")
# What a client could put in a logged value to forge a line or drive a terminal: C0
# and C1 controls (newlines, escape sequences), DEL, Unicode line separators and
# bidirectional overrides.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


def _escaped(match: re.Match[str]) -> str:
    char = match.group()
    named = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}.get(char)
    if named:
        return named
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """``text`` with every control character written as a visible escape."""
    return _CONTROL.sub(_escaped, text)


class TextFormatter(logging.Formatter):
    """Readable lines, one per record: the message (with its arguments, which may come
    from a client) has its control characters escaped, as JSON lines have. A
    traceback, which is ours, keeps its lines."""

    def format(self, record: logging.LogRecord) -> str:
        saved = record.msg, record.args
        record.msg, record.args = escape_controls(record.getMessage()), None
        try:
            return super().format(record)
        finally:
            record.msg, record.args = saved


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _FIELDS:
            value = getattr(record, name, None)
            if value is not None:
                line[name] = value
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(line).decode()


class WriteErrors:
    """How many log records could not be written to the log files (a full or
    read-only logs volume). Logging never raises into the request path."""

    count = 0


class SafeRotatingFileHandler(logging.handlers.RotatingFileHandler):
    def handleError(self, record: logging.LogRecord) -> None:
        WriteErrors.count += 1

    def flush(self) -> None:
        try:
            super().flush()
        except (OSError, ValueError):
            WriteErrors.count += 1


def configure(
    level: str, json_format: bool, log_dir: Path | None = None, file_name: str = "mlapi.log"
) -> None:
    """Log to stderr, and to ``log_dir/file_name`` (rotated at 10 MB, 5 kept) when a
    log folder is given. A folder that cannot be written is reported once, not fatal."""
    formatter: logging.Formatter = (
        JsonFormatter()
        if json_format
        else TextFormatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")
    )
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    problem = None
    if log_dir is not None:
        try:
            handlers.append(
                SafeRotatingFileHandler(
                    log_dir / file_name, maxBytes=10_000_000, backupCount=5, delay=False
                )
            )
        except OSError as exc:
            problem = f"log folder {log_dir} is not writable ({type(exc).__name__}); stderr only"
    for handler in handlers:
        handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = handlers
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").disabled = True
    if problem:
        WriteErrors.count += 1
        logging.getLogger("mlapi.logs").warning(problem)
