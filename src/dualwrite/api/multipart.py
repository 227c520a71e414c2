"""MIME multipart (RFC 2046) and embedded HTTP messages, as the multipart ``$batch`` uses them.

Lenient where the format allows it (LF or CRLF line ends, preamble and epilogue ignored,
optional HTTP version on request lines), strict where a mistake would change meaning (a
missing closing delimiter, a part without a blank line after its headers).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from http import HTTPStatus
from itertools import pairwise

from dualwrite.api.errors import bad_request

__all__ = ["HttpMessage", "Part", "boundary_of", "parse_http_request", "parse_multipart",
           "render_http_response", "render_multipart"]

_HTTP_VERSION = re.compile(r"HTTP/\d(?:\.\d)?", re.IGNORECASE)


@dataclass
class Part:
    """One body part: headers (lower-case names) and body bytes."""

    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass
class HttpMessage:
    """An HTTP request embedded in a part (``Content-Type: application/http``)."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes


def boundary_of(content_type: str) -> str | None:
    """The ``boundary`` parameter of a multipart media type, unquoted."""
    for param in content_type.split(";")[1:]:
        name, _, value = param.partition("=")
        if name.strip().lower() == "boundary":
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value or None
    return None


def _split_head(data: bytes) -> tuple[list[str], bytes]:
    """(header lines, body): the head ends at the first empty line."""
    m = re.search(rb"\r?\n\r?\n", data)
    if data.startswith((b"\r\n", b"\n")):
        head, body = b"", data[2:] if data.startswith(b"\r\n") else data[1:]
    elif m is None:
        head, body = data, b""
    else:
        head, body = data[:m.start()], data[m.end():]
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request("a batch part's headers are not UTF-8 text",
                          code="InvalidBatch") from None
    return [line for line in re.split(r"\r?\n", text) if line.strip()], body


def _headers(lines: list[str]) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise bad_request(f"malformed header line {line!r} in a batch part",
                              code="InvalidBatch")
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    return headers


def parse_multipart(body: bytes, boundary: str) -> list[Part]:
    """The body parts of a multipart body. The line break before a delimiter belongs to the
    delimiter (RFC 2046), so it is not part of the preceding body."""
    delimiter = re.compile(rb"(?:\A|\r?\n)--" + re.escape(boundary.encode("utf-8")) +
                           rb"(--)?[ \t]*(?=\r?\n|\Z)")
    matches = list(delimiter.finditer(body))
    if not matches:
        raise bad_request(f"the multipart body has no delimiter line '--{boundary}'",
                          code="InvalidBatch")
    if not matches[-1].group(1):
        raise bad_request(f"the multipart body does not end with '--{boundary}--'",
                          code="InvalidBatch")
    parts: list[Part] = []
    for m, nxt in pairwise(matches):
        if m.group(1):
            break
        start = m.end()
        start += 2 if body.startswith(b"\r\n", start) else 1 if body.startswith(b"\n", start) \
            else 0
        lines, content = _split_head(body[start:nxt.start()])
        parts.append(Part(_headers(lines), content))
    return parts


def parse_http_request(data: bytes) -> HttpMessage:
    """An embedded HTTP request: request line, headers, empty line, body. The URL may contain
    spaces (the OData examples write ``$filter`` expressions unencoded), so the request line
    is ``METHOD <url> [HTTP/x.y]`` with the URL everything in between."""
    data = data.lstrip(b"\r\n")
    lines, body = _split_head(data)
    if not lines:
        raise bad_request("a batch part holds no HTTP request line", code="InvalidBatch")
    words = lines[0].split()
    if words and _HTTP_VERSION.fullmatch(words[-1]):
        words = words[:-1]
    if len(words) < 2:
        raise bad_request(f"malformed request line {lines[0]!r} in a batch part",
                          code="InvalidBatch")
    return HttpMessage(words[0].upper(), " ".join(words[1:]), _headers(lines[1:]), body)


def render_http_response(status: int, headers: dict[str, str], body: bytes) -> bytes:
    """An HTTP response as the body of an ``application/http`` part."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = ""
    head = [f"HTTP/1.1 {status} {phrase}".rstrip()]
    head += [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(head) + "\r\n\r\n").encode("utf-8") + body


def render_multipart(parts: list[Part], boundary: str) -> bytes:
    """A multipart body of ``parts`` with ``boundary``."""
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\n".encode()
        for k, v in part.headers.items():
            out += f"{k}: {v}\r\n".encode()
        out += b"\r\n" + part.body + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out)
