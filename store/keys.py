"""Every Redis key name and every id format, in one place.

Ids carry their partition so that a txnid alone names every key its settlement touches:

    cart_id    c<pp><core14>          c0f3k7x2m4q9z5a2b7
    txnid      t<pp><core14><att6>    one per payment attempt on that cart
    booking_id b<pp><core14>          one per cart, by construction

``pp`` is the partition in two hex digits. All keys of a partition share the hash tag
``{pp}``: the cart, its payments, its booking and the partition's event stream live in one
Redis Cluster slot, so each state change is one Lua script on one node. The stream is per
partition (not per cart) so that the write-behind workers read a fixed set of streams.
"""

from __future__ import annotations

import re
import secrets

_B32 = "abcdefghijklmnopqrstuvwxyz234567"
CART_RE = re.compile(r"^c[0-9a-f]{2}[a-z2-7]{14}$")
TXN_RE = re.compile(r"^t[0-9a-f]{2}[a-z2-7]{20}$")
BOOKING_RE = re.compile(r"^b[0-9a-f]{2}[a-z2-7]{14}$")


def _random(n: int) -> str:
    return "".join(secrets.choice(_B32) for _ in range(n))


def new_cart_id(partitions: int) -> str:
    return f"c{secrets.randbelow(partitions):02x}{_random(14)}"


def new_txnid(cart_id: str) -> str:
    return f"t{cart_id[1:]}{_random(6)}"


def booking_id_for(cart_id: str) -> str:
    return f"b{cart_id[1:]}"


def cart_id_of_txn(txnid: str) -> str:
    return f"c{txnid[1:17]}"


def cart_id_of_booking(booking_id: str) -> str:
    return f"c{booking_id[1:]}"


class Keys:
    """Key names under one prefix (``GATEWAY_REDIS_PREFIX``; tests use their own)."""

    def __init__(self, prefix: str) -> None:
        self.prefix = prefix

    def _tag(self, some_id: str) -> str:
        return f"{self.prefix}:{{{some_id[1:3]}}}"

    def cart(self, cart_id: str) -> str:
        return f"{self._tag(cart_id)}:cart:{cart_id}"

    def payment(self, txnid: str) -> str:
        return f"{self._tag(txnid)}:pay:{txnid}"

    def booking(self, booking_id: str) -> str:
        return f"{self._tag(booking_id)}:booking:{booking_id}"

    def stream_of(self, some_id: str) -> str:
        """The event stream of the partition that ``some_id`` belongs to."""
        return f"{self._tag(some_id)}:events"

    def stream(self, partition: int) -> str:
        return f"{self.prefix}:{{{partition:02x}}}:events"

    def deadletter(self, partition: int) -> str:
        """Events the write-behind could not write, with the error (same slot as the stream)."""
        return f"{self.prefix}:{{{partition:02x}}}:deadletter"

    def deadletter_of_stream(self, stream: str) -> str:
        return stream.removesuffix(":events") + ":deadletter"

    def writebehind_health(self) -> str:
        """Hash: write-behind consumer -> its PostgreSQL failure (JSON), while it fails; read
        by every process's queue monitor (``/readyz``), whichever process the worker is in."""
        return f"{self.prefix}:writebehind:health"

    def order_index(self, provider: str, order_id: str) -> str:
        """Provider order id -> txnid (Razorpay's webhook names the order, not our txnid)."""
        return f"{self.prefix}:order:{provider}:{order_id}"
