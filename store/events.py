"""Events on the partition streams, and the rows they become in PostgreSQL.

An event is ``type``, ``at`` and one JSON document per entity it carries (``cart``,
``payment``, ``booking``), each a full snapshot with its ``rev``. Rows are tuples in the
column order of ``CART_COLUMNS`` etc.; times stay integer milliseconds until SQL.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import orjson

CART_COLUMNS = (
    "cart_id",
    "user_id",
    "currency",
    "status",
    "items",
    "total_amount",
    "version",
    "txnid",
    "rev",
    "created_at",
    "updated_at",
    "expires_at",
)
PAYMENT_COLUMNS = (
    "txnid",
    "cart_id",
    "user_id",
    "provider",
    "amount",
    "currency",
    "status",
    "cart_version",
    "provider_ref",
    "provider_payment_id",
    "booking_id",
    "refund_required",
    "reason",
    "rev",
    "created_at",
    "updated_at",
)
BOOKING_COLUMNS = (
    "booking_id",
    "cart_id",
    "txnid",
    "user_id",
    "status",
    "items",
    "amount",
    "currency",
    "created_at",
)
TIME_COLUMNS = frozenset({"created_at", "updated_at", "expires_at"})


class BadEvent(ValueError):
    """An entry that cannot be read as an event: it goes to the dead-letter stream."""


def _text(v: Any) -> str | None:
    return None if v in (None, "") else str(v)


def cart_row(c: dict[str, Any]) -> tuple[Any, ...]:
    return (
        c["cart_id"],
        c["user_id"],
        c["currency"],
        c["status"],
        _items(c["items"]),
        int(c["total_amount"]),
        int(c["version"]),
        _text(c.get("txnid")),
        int(c["rev"]),
        int(c["created_at"]),
        int(c["updated_at"]),
        int(c["expires_at"]),
    )


def payment_row(p: dict[str, Any]) -> tuple[Any, ...]:
    return (
        p["txnid"],
        p["cart_id"],
        p["user_id"],
        p["provider"],
        int(p["amount"]),
        p["currency"],
        p["status"],
        int(p["cart_version"]),
        _text(p.get("provider_ref")),
        _text(p.get("provider_payment_id")),
        _text(p.get("booking_id")),
        int(p["refund_required"]) == 1,
        _text(p.get("reason")),
        int(p["rev"]),
        int(p["created_at"]),
        int(p["updated_at"]),
    )


def booking_row(b: dict[str, Any]) -> tuple[Any, ...]:
    return (
        b["booking_id"],
        b["cart_id"],
        b["txnid"],
        b["user_id"],
        b["status"],
        _items(b["items"]),
        int(b["amount"]),
        b["currency"],
        int(b["created_at"]),
    )


def _items(items: Any) -> str:
    # Lua's cjson writes an empty list as {}; the record always holds a list.
    if items == {} or items == []:
        return "[]"
    if not isinstance(items, list):
        raise BadEvent("items is not a list")
    lines = [
        {
            "service_id": str(i["service_id"]),
            "name": str(i["name"]),
            "unit_amount": int(i["unit_amount"]),
            "quantity": int(i["quantity"]),
        }
        for i in items
    ]
    return orjson.dumps(lines).decode()


@dataclass
class Rows:
    """The rows of a batch, one per entity: the highest ``rev`` seen wins."""

    carts: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    payments: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    bookings: dict[str, tuple[Any, ...]] = field(default_factory=dict)
    # entity in the event, table attribute, id field, row builder, index of rev in the row
    _KINDS: ClassVar[tuple[tuple[str, str, str, Any, int], ...]] = (
        ("cart", "carts", "cart_id", cart_row, CART_COLUMNS.index("rev")),
        ("payment", "payments", "txnid", payment_row, PAYMENT_COLUMNS.index("rev")),
        ("booking", "bookings", "booking_id", booking_row, -1),
    )

    def add(self, fields: dict[str, str]) -> None:
        """Add one stream entry's entities. Raises ``BadEvent`` when it is not readable."""
        if not fields.get("type"):
            raise BadEvent("no type")
        found = False
        try:
            for name, table, key, build, rev_at in self._KINDS:
                text = fields.get(name)
                if text is None:
                    continue
                found = True
                doc = orjson.loads(text)
                old = getattr(self, table).get(doc[key])
                # rows are built only for the newest revision of an entity in the batch
                if old is None or (rev_at >= 0 and int(doc["rev"]) > old[rev_at]):
                    row = build(doc)
                    getattr(self, table)[row[0]] = row
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            raise BadEvent(f"unreadable event: {type(exc).__name__}: {exc}") from None
        if not found:
            raise BadEvent("no entity")

    def __len__(self) -> int:
        return len(self.carts) + len(self.payments) + len(self.bookings)

    def __bool__(self) -> bool:
        return bool(self.carts or self.payments or self.bookings)


def snapshot(h: dict[str, str]) -> dict[str, Any]:
    """A Redis hash as the JSON document an event carries (items decoded)."""
    doc: dict[str, Any] = dict(h)
    if "items" in doc:
        doc["items"] = orjson.loads(doc["items"])
    return doc
