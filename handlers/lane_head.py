"""What the return lane answers itself: a strict subset of what Tornado accepts.

The lane (``handlers/return_lane.py``) answers a request only when it is sure Tornado would
route it to ``ReturnHandler`` and read it the same way; everything else is handed to
Tornado, which answers it as it answers every request. So each rule here is narrower than
Tornado's (tornado 6.6, ``http1connection`` and ``httputil``), never wider:

- the request line ``GET|POST /v1/payments/<a configured provider>/return[?query] HTTP/1.1``;
- lines ending in CRLF (Tornado also takes a bare LF: handed over);
- header names of token characters, values without control characters (but tab), each
  header once (a header given twice, a folded line: handed over), and none of
  ``Transfer-Encoding``, ``Expect``, ``Content-Encoding``;
- a ``Host`` of letters, digits, ``.`` and ``-`` or a bracketed IPv6 literal, with an
  optional port (Tornado's own grammar is wider and refuses ``a b``, ``a@b``, ``a/b``...);
- a ``Content-Length`` of at most 9 digits within the body limit, or none;
- ASCII fields, each once, UTF-8 once unquoted (``ascii_fields``).

``head_of`` reads a whole head once, when its blank line has come; until then the lane keeps
the connection (so that a slow head stays the lane's to time out or evict) and hands it to
Tornado once the head is whole and not one it answers, or ends at a bare LF
(``bare_lf_end``), or passes the head limit.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import unquote_plus

from gateway.forms import FORM, MAX_FIELDS

PREFIX, SUFFIX = "/v1/payments/", "/return"
HEAD_RE = re.compile(
    rb"(GET|POST) (/[!-~]*) HTTP/1\.1\r\n"
    rb"((?:[!#$%&'*+.^_`|~0-9A-Za-z-]+:[^\x00-\x08\x0a-\x1f\x7f]*\r\n)*)\r\n"
)
FIELD_RE = re.compile(rb"([^:]+):([^\r]*)\r\n")
HOST_RE = re.compile(rb"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
LF_END = re.compile(rb"\n\r?\n")
HANDED_OVER = (b"transfer-encoding", b"expect", b"content-encoding")


@dataclass(slots=True)
class Head:
    """A request head the lane answers; ``total`` is where its body ends in the buffer."""

    method: str
    path: str
    query: str
    provider: str
    content_type: str
    request_id: str
    closing: bool
    body: int  # where the body starts in the buffer
    total: int  # and where it ends


def head_of(
    buf: bytes | bytearray, end: int, providers: frozenset[str], max_body: int
) -> Head | None:
    """The head ending at ``end`` (where its blank line starts), or None: hand it over."""
    head = HEAD_RE.match(buf, 0, end + 4)
    if head is None:
        return None
    method, target, block = head.groups()
    fields = FIELD_RE.findall(block)
    headers = {name.lower(): value.strip() for name, value in fields}
    if len(headers) != len(fields) or any(name in headers for name in HANDED_OVER):
        return None
    host = headers.get(b"host")
    if host is None or HOST_RE.fullmatch(host) is None:
        return None
    length_text = headers.get(b"content-length", b"0")
    # (int() of thousands of digits is slow, then refused: Tornado answers those)
    if not (length_text.isdigit() and len(length_text) <= 9):
        return None
    length = int(length_text)
    if length > max_body:
        return None
    path, _, query = target.decode("ascii").partition("?")
    if not (path.startswith(PREFIX) and path.endswith(SUFFIX)):
        return None
    provider = path[len(PREFIX) : -len(SUFFIX)]
    if provider not in providers:
        return None
    return Head(
        method.decode("ascii"),
        path,
        query,
        provider,
        headers.get(b"content-type", b"").decode("latin-1"),
        headers.get(b"x-request-id", b"").decode("latin-1"),
        headers.get(b"connection", b"").lower() == b"close",
        end + 4,
        end + 4 + length,
    )


def bare_lf_end(buf: bytes | bytearray, scanned: int) -> bool:
    """Whether the bytes since ``scanned`` end a head the way only Tornado reads it: at an
    empty line after a bare LF (``\n\n``, ``\n\r\n``; Tornado's ``\r?\n\r?\n``). Called
    only where ``\r\n\r\n`` was not found."""
    return LF_END.search(buf, scanned) is not None


def _unquote(text: str) -> str:
    return unquote_plus(text, errors="strict") if "%" in text or "+" in text else text


def ascii_fields(text: str) -> dict[str, str] | None:
    """An ASCII query or form, each field once, its values UTF-8: what Tornado's
    ``parse_qs_bytes`` and ``fields_of`` make of it, in half the instructions (75k against
    167k for a PayU return). None for anything else (a field given twice, text that is not
    ASCII or not UTF-8 once unquoted, a name that is not ASCII, more fields than Tornado
    takes): Tornado's routing then answers it, as it always has."""
    if not text.isascii() or text.count("&") >= MAX_FIELDS:
        return None
    parts = [part for part in text.split("&") if part]
    fields: dict[str, str] = {}
    if "%" in text or "+" in text:
        try:
            for part in parts:
                name, _, value = part.partition("=")
                name = _unquote(name)
                if not name.isascii():
                    return None
                fields[name] = _unquote(value)
        except UnicodeDecodeError:
            return None
    else:
        fields = dict(part.partition("=")[::2] for part in parts)
    return fields if len(fields) == len(parts) else None


def return_fields(
    method: str, query: str, ctype: str, body: bytes | bytearray
) -> dict[str, str] | None:
    """The return's fields, as ``BaseHandler.single_fields`` reads them; None when the
    request is not in the shape the lane answers (Tornado's routing then does). The body is
    within the size limit already (``head_of`` refuses a larger one)."""
    fields = ascii_fields(query) if query else {}
    if fields is None or method != "POST" or not body:
        return fields
    if not ctype.startswith(FORM) or ctype.split(";")[0].strip().lower() != FORM:
        return None  # 415, or a casing Tornado would not parse as a form
    if not body.isascii():
        return None
    form = ascii_fields(body.decode("ascii"))
    if form is None:
        return None
    fields.update(form)  # a form field wins over a query field of the same name
    return fields
