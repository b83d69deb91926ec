"""The sandbox provider, for development: PayU's protocol, played by the gateway itself.

Its payment page is served by the gateway (``handlers/sandbox.py``) and shows the amount and
the items with Pay and Fail buttons, which post back to the sandbox return URL signed exactly
as PayU signs (this module is ``PayU`` with sandbox credentials), so the real return path
runs. The salt is derived from ``GATEWAY_RETURN_SECRET``: every process agrees on it without
a setting, and nobody outside the deployment can forge a sandbox return.
"""

from __future__ import annotations

from typing import ClassVar

from gateway.config import PayUCredentials, Settings
from gateway.providers.payu import PayU

SANDBOX_KEY = "sandbox"


class Sandbox(PayU):
    name: ClassVar[str] = "sandbox"

    def __init__(self, settings: Settings) -> None:
        super().__init__(
            PayUCredentials(SANDBOX_KEY, settings.sandbox_salt),
            f"{settings.public_url}/sandbox/pay",
        )
