"""The signed redirect to the merchant's success or failure page."""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import urlencode


def signed_url(base: str, secret: bytes, params: list[tuple[str, str]]) -> str:
    """``base?…&sig=…`` where sig is hex HMAC-SHA256 over everything between ``?`` and ``&sig=``.

    A query the configured URL already has is kept, first, and covered by the signature.
    """
    path, _, existing = base.partition("?")
    query = urlencode(params)
    if existing:
        query = f"{existing}&{query}"
    sig = hmac.new(secret, query.encode(), hashlib.sha256).hexdigest()
    return f"{path}?{query}&sig={sig}"


def verify_query(query: str, secret: bytes) -> bool:
    """Check a signed query string (what the merchant's page does); constant-time compare."""
    body, sep, sig = query.rpartition("&sig=")
    if not sep:
        return False
    expected = hmac.new(secret, body.encode(), hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, sig)
