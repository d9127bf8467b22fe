"""Structured logs: one JSON object per line, each carrying the request id of its call.

The request id comes from the caller's `x-request-id` metadata (or is made up) and is set
for the call by the API's telemetry interceptor; every record logged while serving the call,
in any module, gets it through `REQUEST_ID`. Extra fields passed with `extra={...}` become
JSON fields. Log statements must never carry images, embeddings, or scores next to a
customer id: `tests/test_logs_privacy.py` scans a whole service run for them.
"""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import traceback
from datetime import UTC, datetime
from typing import TextIO

REQUEST_ID: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "faceguard_request_id", default=None
)
# Attributes every LogRecord has; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
    "request_id",
}


class RequestIdFilter(logging.Filter):
    """Stamps each record with the current call's request id (None outside calls)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """`{"ts", "level", "logger", "message", "request_id", ...extra, "exc"}` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        request_id = getattr(record, "request_id", None) or REQUEST_ID.get()
        if request_id:
            document["request_id"] = request_id
        for key, value in vars(record).items():
            if key not in _STANDARD and not key.startswith("_"):
                document[key] = value
        if record.exc_info:
            document["exc"] = "".join(traceback.format_exception(*record.exc_info))
        return json.dumps(document, default=str, ensure_ascii=False)


def json_handler(stream: TextIO = sys.stderr) -> logging.Handler:
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    return handler


# Libraries whose debug output would carry request data: SQLAlchemy logs statement
# parameters (customer ids beside template qualities) once its logger allows INFO. faiss's
# loader says at INFO, with a traceback, that it could not load its AVX512 builds, which
# this CPU may lack: the generic build it then loads is the one intended.
LIBRARY_LEVELS = {
    "sqlalchemy": logging.WARNING,
    "faiss.loader": logging.WARNING,
    "alembic": logging.WARNING,
}


def quiet_libraries() -> None:
    """Hold the libraries in `LIBRARY_LEVELS` at their levels."""
    for name, library_level in LIBRARY_LEVELS.items():
        logging.getLogger(name).setLevel(library_level)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def text_handler(stream: TextIO = sys.stderr) -> logging.Handler:
    """Text logs: rich's columns on a terminal; one unwrapped line per record when the stream
    is a file or pipe (rich would wrap those at 80 columns, breaking grep and log shippers)."""
    if stream.isatty():
        from rich.console import Console
        from rich.logging import RichHandler

        return RichHandler(console=Console(file=stream), show_path=False, rich_tracebacks=True)
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    return handler


def use_json_logs(level: int, stream: TextIO = sys.stderr) -> logging.Handler:
    """Make the root logger's only handler a JSON one (the service's format) at `level`,
    with the libraries in `LIBRARY_LEVELS` held at theirs; returns the handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = json_handler(stream)
    root.addHandler(handler)
    root.setLevel(level)
    quiet_libraries()
    return handler
