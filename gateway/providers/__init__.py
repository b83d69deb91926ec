"""Payment providers, each one module behind ``base.Provider``."""

from __future__ import annotations

from tornado.httpclient import AsyncHTTPClient

from gateway.config import Settings
from gateway.providers.base import Provider
from gateway.providers.payu import PayU
from gateway.providers.razorpay import Razorpay
from gateway.providers.sandbox import Sandbox


def build_providers(settings: Settings, http: AsyncHTTPClient | None = None) -> dict[str, Provider]:
    """The providers whose credentials are configured, by name."""
    providers: dict[str, Provider] = {}
    if settings.payu is not None:
        providers["payu"] = PayU(settings.payu, settings.payu_payment_url)
    if settings.razorpay is not None:
        providers["razorpay"] = Razorpay(settings.razorpay, http)
    if settings.sandbox:
        providers["sandbox"] = Sandbox(settings)
    return providers
