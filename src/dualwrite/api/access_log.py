"""The HTTP access log of ``dualwrite serve``: never a token, and ``$filter`` values on request.

uvicorn writes one line per request (``client - "GET /path?query HTTP/1.1" 200``) with the
query string as the client sent it. A client that puts its token in the URL
(``?access_token=...``) would have it written there in clear. :class:`RedactingFilter`, set on
the ``uvicorn.access`` logger, rewrites every text of each record before it is formatted:

- the value of a query option named like a secret (``access_token``, ``token``, ``api_key``,
  ``apikey``, ``password``; any case) becomes ``[redacted]``;
- anything shaped like a dualwrite token (``dw_<id>_<secret>``), anywhere in the line, keeps
  its id and loses its secret (``dw_1a2b3c4d_[redacted]``);
- with ``redact_filter``, the literals of ``$filter`` (quoted strings, numbers, dates, GUIDs)
  become ``***``, keeping its properties and operators (``name eq '***'``).

``serve.access_log: false`` turns the access log off altogether.
"""

from __future__ import annotations

import logging
import re
from urllib.parse import quote, unquote_plus

SECRET_OPTIONS = frozenset({"access_token", "token", "api_key", "apikey", "password"})
REDACTED = "[redacted]"
ACCESS_LOGGER = "uvicorn.access"

_TOKEN = re.compile(r"(dw_[0-9a-fA-F]{8}_)[A-Za-z0-9_\-]+")
_LITERALS = re.compile(
    r"'(?:[^']|'')*'"                                         # strings (and typed 'x')
    r"|\b[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b"
    r"|(?<![\w.])-?\d[\w.:+\-]*")                             # numbers, dates, times
# what a redacted $filter keeps unescaped, so that the line stays readable
_FILTER_SAFE = "'()*,$:/"


def _no_token(text: str) -> str:
    return _TOKEN.sub(lambda m: m.group(1) + REDACTED, text)


def _redact_filter(value: str) -> str:
    return _LITERALS.sub(lambda m: "'***'" if m.group(0).startswith("'") else "***", value)


def redact_target(target: str, *, redact_filter: bool = False) -> str:
    """``target`` (a request path with its query, as sent) with no token and, with
    ``redact_filter``, no ``$filter`` literal."""
    path, sep, query = target.partition("?")
    if _TOKEN.search(unquote_plus(path)):
        path = quote(_no_token(unquote_plus(path)), safe="/()'=,$:@[]")
    if not sep:
        return path
    pairs = []
    for pair in query.split("&"):
        name, eq, raw = pair.partition("=")
        key = unquote_plus(name).strip().casefold()
        value = unquote_plus(raw)
        if key in SECRET_OPTIONS and eq:
            pairs.append(f"{name}={REDACTED}")
        elif redact_filter and key == "$filter" and eq:
            pairs.append(f"{name}={quote(_redact_filter(_no_token(value)), _FILTER_SAFE)}")
        elif _TOKEN.search(value):
            pairs.append(f"{name}{eq}{quote(_no_token(value), safe='[]')}")
        else:
            pairs.append(pair)
    return f"{path}?{'&'.join(pairs)}"


def redact_text(text: str, *, redact_filter: bool = False) -> str:
    """Any text of a log record: request targets in it redacted, tokens removed."""
    if "?" in text or "dw_" in text:
        text = " ".join(redact_target(part, redact_filter=redact_filter) if "?" in part or
                        "dw_" in part else part for part in text.split(" "))
    return text


class RedactingFilter(logging.Filter):
    """Rewrites each record's message and text arguments with :func:`redact_text`; keeps
    the arguments' number and order (uvicorn's access formatter unpacks them)."""

    def __init__(self, *, redact_filter: bool = False) -> None:
        super().__init__("dualwrite-redact")
        self.redact_filter = redact_filter

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):
            record.msg = redact_text(record.msg, redact_filter=self.redact_filter)
        if isinstance(record.args, tuple):
            record.args = tuple(redact_text(a, redact_filter=self.redact_filter)
                                if isinstance(a, str) else a for a in record.args)
        return True


def install(*, redact_filter: bool) -> None:
    """Put the redacting filter on uvicorn's access logger (once: a second call replaces
    the first)."""
    logger = logging.getLogger(ACCESS_LOGGER)
    for f in [f for f in logger.filters if isinstance(f, RedactingFilter)]:
        logger.removeFilter(f)
    logger.addFilter(RedactingFilter(redact_filter=redact_filter))


__all__ = ["RedactingFilter", "install", "redact_target", "redact_text"]
