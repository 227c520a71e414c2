"""Logging for the ``dualwrite`` command: configured once, by the CLI.

Two formats, on stderr:

- ``text`` (the default): one readable line per record, ``time level logger: message`` and
  the record's fields (``map=items side=crm``);
- ``json``: one JSON object per line with ``time`` (ISO 8601, UTC), ``level``, ``logger``,
  ``event``, ``message``, the link's name, and whichever of ``map``, ``side``, ``txid``,
  ``keys``, ``key``, ``inbox_id``… the record carries (passed as ``extra=`` by the engine).

Tokens never reach a log record (the access log is redacted by
:mod:`dualwrite.api.access_log`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import Any, TextIO

FORMATS = ("text", "json")
LEVELS = ("debug", "info", "warning", "error")

#: attributes every LogRecord has: whatever else a record carries came from ``extra=``
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message", "asctime", "color_message", "taskName"}
#: fields shown first, in this order
_FIRST = ("event", "link", "map", "side", "source", "txid", "keys", "key")


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    extra = {k: v for k, v in vars(record).items() if k not in _STANDARD and v is not None}
    ordered = {k: extra.pop(k) for k in _FIRST if k in extra}
    ordered.update(sorted(extra.items()))
    return ordered


def _time(record: logging.LogRecord) -> str:
    return dt.datetime.fromtimestamp(record.created, dt.UTC).isoformat(timespec="milliseconds")


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def __init__(self, link: str | None = None) -> None:
        super().__init__()
        self.link = link

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {"time": _time(record), "level": record.levelname.lower(),
                               "logger": record.name}
        fields = _fields(record)
        doc["event"] = fields.pop("event", None) or record.name.rsplit(".", 1)[-1]
        if self.link is not None:
            doc["link"] = fields.pop("link", self.link)
        doc.update(fields)
        doc["message"] = record.getMessage()
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """``2026-12-06T08:00:00.123Z warning dualwrite.capture: message  map=items side=crm``."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = _time(record).replace("+00:00", "Z")
        fields = _fields(record)
        fields.pop("event", None)
        tail = "  " + " ".join(f"{k}={_plain(v)}" for k, v in fields.items()) if fields else ""
        line = f"{stamp} {record.levelname.lower():<7} {record.name}: {record.getMessage()}" \
               f"{tail}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class _StderrHandler(logging.StreamHandler[TextIO]):
    """Writes to whatever ``sys.stderr`` is when a record is emitted (a test harness, or
    a caller, may have replaced it since logging was configured)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, _value: TextIO) -> None:
        pass


def _plain(v: Any) -> str:
    return json.dumps(v, default=str) if isinstance(v, list | dict) else str(v)


_HANDLER_NAME = "dualwrite-cli"


def configure(fmt: str = "text", level: str = "info", *, link: str | None = None,
              stream: TextIO | None = None) -> logging.Handler:
    """Send every log record of level ``level`` and up (dualwrite's, uvicorn's, the
    libraries') to ``stream`` (stderr) in ``fmt``. Calling it again replaces the handler
    (a config file's ``logging:`` read after the command line was parsed)."""
    if fmt not in FORMATS:
        from dualwrite.errors import ConfigError

        raise ConfigError(f"unknown log format {fmt!r}", hint="use --log-format text or json",
                          code="DW004")
    if level.lower() not in LEVELS:
        from dualwrite.errors import ConfigError

        raise ConfigError(f"unknown log level {level!r}",
                          hint=f"use one of {', '.join(LEVELS)}", code="DW004")
    root = logging.getLogger()
    for h in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(h)
    handler: logging.Handler = logging.StreamHandler(stream) if stream is not None \
        else _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter(link) if fmt == "json" else TextFormatter())
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries: warnings and up
    numeric = getattr(logging, level.upper())
    logging.getLogger("dualwrite").setLevel(numeric)
    # uvicorn's own loggers say where it listens and (access log) what it served
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).setLevel(min(numeric, logging.INFO))
    return handler


__all__ = ["FORMATS", "LEVELS", "JsonFormatter", "TextFormatter", "configure"]
