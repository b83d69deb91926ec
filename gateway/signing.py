"""The signed redirect to the merchant's success or failure page."""

from __future__ import annotations

import functools
import hashlib
import hmac
import re
from urllib.parse import quote_plus

# What quote_plus leaves as it is: ids, statuses and reasons, so they skip it.
_PLAIN = re.compile(r"[A-Za-z0-9_.~-]*")


def _quote(text: str) -> str:
    return text if _PLAIN.fullmatch(text) else quote_plus(text)


@functools.lru_cache(maxsize=16)
def _keyed(secret: bytes) -> hmac.HMAC:
    """HMAC-SHA256 with the key already absorbed: each signature copies it (half the cost of
    keying a new one)."""
    return hmac.new(secret, digestmod=hashlib.sha256)


def signed_url(base: str, secret: bytes, params: list[tuple[str, str]]) -> str:
    """``base?…&sig=…`` where sig is hex HMAC-SHA256 over everything between ``?`` and ``&sig=``.

    A query the configured URL already has is kept, first, and covered by the signature.
    """
    path, _, existing = base.partition("?")
    query = "&".join([f"{_quote(name)}={_quote(value)}" for name, value in params])
    if existing:
        query = f"{existing}&{query}"
    mac = _keyed(secret).copy()
    mac.update(query.encode())
    sig = mac.hexdigest()
    return f"{path}?{query}&sig={sig}"


def signatures_match(expected: str, given: str) -> bool:
    """Whether ``given`` is the signature ``expected``, compared in constant time.

    Every signature the gateway checks goes through here. ``given`` comes from a client and
    may be any text: ``hmac.compare_digest`` raises TypeError on a str that is not ASCII, so
    such text is compared as UTF-8 bytes (surrogatepass: even a lone surrogate is just text
    that does not match). ASCII text, the usual case, is compared as it is: ``isascii`` reads
    a flag of the string, not its characters, and encoding both cost about 1 % of a return.
    """
    if expected.isascii() and given.isascii():
        return hmac.compare_digest(expected, given)
    return hmac.compare_digest(
        expected.encode("utf-8", "surrogatepass"), given.encode("utf-8", "surrogatepass")
    )


def verify_query(query: str, secret: bytes) -> bool:
    """Check a signed query string (what the merchant's page does); constant-time compare."""
    body, sep, sig = query.rpartition("&sig=")
    if not sep:
        return False
    expected = hmac.new(secret, body.encode("utf-8", "surrogatepass"), hashlib.sha256)
    return signatures_match(expected.hexdigest(), sig)
