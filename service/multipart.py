"""A small, strict ``multipart/form-data`` parser for request bodies already in memory.

The API reads whole bodies (bounded by ``MAX_CONTENT_LENGTH``), so the parts can be cut out of
the bytes with a few ``find`` calls. Werkzeug's streaming parser compiles two regular
expressions per request (the boundary is random, so they never come from the cache) and
spools files into ``FileStorage`` objects; for single small images that is most of the cost
of reading a request.

Grammar (RFC 2046 section 5.1.1, RFC 7578)::

    body      := [preamble CRLF] "--" boundary padding CRLF part
                 (CRLF "--" boundary padding CRLF part)* CRLF "--" boundary "--" [epilogue]
    part      := header-lines CRLF data
"""

from __future__ import annotations

from dataclasses import dataclass

from werkzeug.http import parse_options_header

CRLF = b"\r\n"
#: Longest header block of one part.
MAX_HEADER_BYTES = 8192


class MultipartError(ValueError):
    """The body is not well-formed multipart/form-data."""


class TooManyParts(MultipartError):
    """The body has more parts than allowed."""


@dataclass
class Part:
    """One part: its form ``name``, ``filename`` (None for a plain field), and ``data``."""

    name: str
    filename: str | None
    content_type: str | None
    data: bytes


def _headers(block: bytes) -> dict[str, str]:
    out = {}
    for line in block.split(CRLF):
        if not line:
            continue
        key, sep, value = line.partition(b":")
        if not sep:
            raise MultipartError("a part header has no ':'")
        out[key.strip().decode("latin-1").lower()] = value.strip().decode("utf-8", "replace")
    return out


def parse(body: bytes, boundary: str, max_parts: int) -> list[Part]:
    """The parts of a multipart ``body``.

    Parameters
    ----------
    body : bytes
    boundary : str
        From the ``Content-Type`` header's ``boundary`` parameter.
    max_parts : int
        More parts than this raises :class:`MultipartError` before any is cut out.

    Raises
    ------
    TooManyParts
        More than ``max_parts`` parts (checked before anything is cut out).
    MultipartError
        No or an invalid boundary, a missing closing boundary, a part without headers or
        without a ``Content-Disposition: form-data; name=...``.
    """
    if not boundary or len(boundary) > 200:
        raise MultipartError("the Content-Type has no valid boundary parameter")
    delim = b"--" + boundary.encode("latin-1")
    if body.count(CRLF + delim) + body.startswith(delim) > max_parts + 1:
        raise TooManyParts(f"more than {max_parts} parts")
    if body.startswith(delim):
        pos = len(delim)
    else:
        start = body.find(CRLF + delim)
        if start < 0:
            raise MultipartError("the body does not contain the boundary")
        pos = start + 2 + len(delim)
    sep = CRLF + delim
    parts: list[Part] = []
    while True:
        if body.startswith(b"--", pos):
            return parts  # the closing delimiter; anything after it is an epilogue
        eol = body.find(CRLF, pos)
        if eol < 0 or body[pos:eol].strip(b" \t"):
            raise MultipartError("the body ends before its closing boundary")
        head_end = body.find(CRLF + CRLF, eol, eol + MAX_HEADER_BYTES + 4)
        if head_end < 0:
            raise MultipartError("a part's headers do not end (or are over 8 kB)")
        headers = _headers(body[eol + 2: head_end])
        # From head_end + 2: a part with no data may end its headers with the delimiter's own
        # CRLF ("...\r\n\r\n--boundary"), as werkzeug writes an empty file.
        end = body.find(sep, head_end + 2)
        if end < 0:
            raise MultipartError("the body ends before its closing boundary")
        disposition, params = parse_options_header(headers.get("content-disposition", ""))
        if disposition.lower() != "form-data" or "name" not in params:
            raise MultipartError("a part lacks 'Content-Disposition: form-data; name=...'")
        parts.append(Part(params["name"], params.get("filename"), headers.get("content-type"),
                          body[head_end + 4: end] if end > head_end + 4 else b""))
        pos = end + len(sep)
