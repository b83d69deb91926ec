"""Domain errors. ``handlers.base`` maps each to one HTTP status in one place."""

from __future__ import annotations


class ConfigError(RuntimeError):
    """A setting is missing or malformed; the message names the variable."""


class GatewayError(Exception):
    """Base of the errors that become a problem+json answer."""

    status = 500
    slug = "internal"
    title = "Internal error"

    def __init__(self, detail: str, *, reason: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        # a short machine-readable label, used in metrics and in the failure redirect
        self.reason = reason or self.slug
        self.txnid: str | None = None  # the payment concerned, when there is one


class BadRequest(GatewayError):
    status, slug, title = 400, "bad-request", "Bad request"


class ValidationFailed(BadRequest):
    status, slug, title = 422, "validation", "Invalid input"


class Unauthorized(GatewayError):
    status, slug, title = 401, "unauthorized", "Unauthorized"


class NotFound(GatewayError):
    status, slug, title = 404, "not-found", "Not found"


class Conflict(GatewayError):
    status, slug, title = 409, "conflict", "Conflict"


class BodyTooLarge(GatewayError):
    status, slug, title = 413, "body-too-large", "Request body too large"


class UnsupportedMediaType(GatewayError):
    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class BadSignature(GatewayError):
    """The provider's signature does not verify."""

    status, slug, title = 401, "bad-signature", "Signature does not verify"


class Mismatch(GatewayError):
    """A signed notice disagrees with the stored payment (amount, currency, order)."""

    status, slug, title = 422, "mismatch", "Notice does not match the payment"


class ProviderUnavailable(GatewayError):
    status, slug, title = 502, "provider-unavailable", "Payment provider unavailable"


class Unavailable(GatewayError):
    status, slug, title = 503, "unavailable", "Service unavailable"
