"""PayU's hashes, written again from PayU's documentation for the tests (not the gateway's code)."""

from __future__ import annotations

import hashlib
from typing import Any


def sha512(text: str) -> str:
    return hashlib.sha512(text.encode()).hexdigest()


def request_hash(f: dict[str, Any], salt: str) -> str:
    seq = [
        f["key"],
        f["txnid"],
        f["amount"],
        f["productinfo"],
        f["firstname"],
        f["email"],
        f["udf1"],
        f["udf2"],
        f["udf3"],
        f["udf4"],
        f["udf5"],
        "",
        "",
        "",
        "",
        "",
        salt,
    ]
    return sha512("|".join(seq))


def response_hash(f: dict[str, str], salt: str) -> str:
    seq = [
        salt,
        f["status"],
        "",
        "",
        "",
        "",
        "",
        f["udf5"],
        f["udf4"],
        f["udf3"],
        f["udf2"],
        f["udf1"],
        f["email"],
        f["firstname"],
        f["productinfo"],
        f["amount"],
        f["txnid"],
        f["key"],
    ]
    text = "|".join(seq)
    if f.get("additionalCharges"):
        text = f["additionalCharges"] + "|" + text
    return sha512(text)


def response_form(
    request_fields: dict[str, Any], status: str, salt: str, **overrides: str
) -> dict[str, str]:
    """What PayU posts back to surl/furl for the form the gateway gave the browser.

    ``overrides`` change fields before signing; ``hash=...`` replaces the signature itself.
    """
    f = {
        k: str(request_fields[k])
        for k in (
            "key",
            "txnid",
            "amount",
            "productinfo",
            "firstname",
            "email",
            "udf1",
            "udf2",
            "udf3",
            "udf4",
            "udf5",
        )
    }
    f.update(status=status, mihpayid="403993715531234567")
    forced_hash = overrides.pop("hash", None)
    f.update(overrides)
    f["hash"] = forced_hash if forced_hash is not None else response_hash(f, salt)
    return f
