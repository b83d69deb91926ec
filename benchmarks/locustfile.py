"""Locust users doing the merchant's and the browser's whole PayU flow against a running gateway.

Each user, in a loop (waiting 0.5-2 s between rounds):

1. creates a cart (``POST /v1/carts``, INR) with the merchant's API key,
2. adds 1-3 services to it (``POST /v1/carts/{id}/items``, amounts in paise),
3. starts a PayU payment (``POST /v1/carts/{id}/payments``), which answers with the form the
   browser would post to PayU (``redirect.fields``),
4. comes back from PayU, as the browser, on a connection of its own (a browser sent back
   from PayU's page does not reuse the merchant backend's): posts PayU's response form,
   signed with PayU's reverse hash, to ``POST /v1/payments/payu/return``, without following
   the redirect. The 303 is what is
   timed, and it counts as a failure unless its Location says ``status=success`` (a paid
   return) or ``status=failed`` (a declined one) for this txnid.

About 10 % of the returns say ``status=failure``; a few percent are sent a second time (a
replay, which must get the same Location); a few percent race PayU's webhook
(``POST /v1/payments/payu/webhook``, the same form, from a client that plays PayU's
servers) against the redirect, both sent at once from two greenlets. The webhook must answer 200.

The locustfile plays PayU: nothing is sent to PayU, so the gateway only needs PayU
credentials, and the benchmark the same salt. Start a gateway with them (``dev.env`` has the
API key and the return secret; PayU's payment URL is only handed back in the redirect, never
contacted)::

    GATEWAY_PAYU_KEY=benchkey GATEWAY_PAYU_SALT=bench-salt-0123456789 GATEWAY_DEVELOPMENT=true \\
        .venv/bin/gateway --env-file dev.env serve            # or: serve --workers 4

(``GATEWAY_DEVELOPMENT=true``: with a provider configured and no ``GATEWAY_REDIS_URL`` /
``GATEWAY_DATABASE_URL``, the gateway otherwise refuses to pick local servers.)

Then, headless, with the CSV files and the HTML report::

    GATEWAY_BENCH_PAYU_SALT=bench-salt-0123456789 \\
        .venv/bin/locust -f benchmarks/locustfile.py --headless -u 50 -r 10 -t 60s \\
        --host http://127.0.0.1:8888 --csv results/locust --html results/locust.html

Distributed (Locust's master/worker mode; each worker is one process, one CPU)::

    .venv/bin/locust -f benchmarks/locustfile.py --master --expect-workers 2 --headless \\
        -u 200 -r 20 -t 120s --host http://127.0.0.1:8888 \\
        --csv results/locust --html results/locust.html
    # on each worker machine (or twice on this one), with the same environment:
    GATEWAY_BENCH_PAYU_SALT=bench-salt-0123456789 \\
        .venv/bin/locust -f benchmarks/locustfile.py --worker --master-host 127.0.0.1

Without ``--headless`` Locust serves its web UI on http://localhost:8089.

Environment (read where the users run: the local process, or each worker):

- ``GATEWAY_BENCH_API_KEY``: the merchant API key, one of the gateway's ``GATEWAY_API_KEYS``
  (default ``dev-key-change-me-0123456789``, the key of ``dev.env``).
- ``GATEWAY_BENCH_PAYU_SALT``: the gateway's ``GATEWAY_PAYU_SALT``. Required; the test stops
  at its start, with exit code 1, when it is missing.
- ``GATEWAY_BENCH_FAILURE_SHARE``: share of returns that are ``status=failure`` (0.10).
- ``GATEWAY_BENCH_REPLAY_SHARE``: share of returns sent again (0.03).
- ``GATEWAY_BENCH_WEBHOOK_SHARE``: share of returns raced by the webhook (0.05).

The host is Locust's ``--host``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import random
import uuid
from collections.abc import Mapping
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import gevent
from locust import between, events, task
from locust.contrib.fasthttp import FastHttpSession, FastHttpUser
from locust.env import Environment
from locust.exception import StopUser
from locust.runners import MasterRunner

logger = logging.getLogger("benchmarks.locustfile")

DEV_API_KEY = "dev-key-change-me-0123456789"

CARTS = "POST /v1/carts"
ITEMS = "POST /v1/carts/[id]/items"
PAYMENTS = "POST /v1/carts/[id]/payments"
RETURN = "POST /v1/payments/payu/return"
REPLAY = "POST /v1/payments/payu/return (replay)"
WEBHOOK = "POST /v1/payments/payu/webhook"

# (service_id, name, unit_amount in paise)
SERVICES = [
    ("deep-clean", "Deep cleaning", 129900),
    ("sofa-clean", "Sofa shampooing", 79900),
    ("ac-service", "AC service", 59900),
    ("pest-control", "Pest control", 149900),
    ("plumbing-visit", "Plumber visit", 19900),
    ("electrician-visit", "Electrician visit", 19900),
    ("kitchen-clean", "Kitchen cleaning", 99900),
    ("bathroom-clean", "Bathroom cleaning", 49900),
    ("haircut-men", "Haircut at home", 34900),
    ("massage-60", "Massage, 60 minutes", 199900),
]
FIRSTNAMES = ["Asha", "Ravi", "Meera", "Arjun", "Priya", "Kabir", "Nisha", "Vikram"]
DECLINES = [
    ("E308", "Transaction declined by the bank"),
    ("E1605", "Insufficient funds"),
    ("E500", "Card expired"),
]


@dataclasses.dataclass(frozen=True)
class BenchConfig:
    api_key: str
    salt: str
    failure_share: float
    replay_share: float
    webhook_share: float
    problems: tuple[str, ...]

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> BenchConfig:
        problems: list[str] = []

        def share(name: str, default: float) -> float:
            text = env.get(name, "").strip()
            if not text:
                return default
            try:
                value = float(text)
            except ValueError:
                problems.append(f"{name}={text!r} is not a number")
                return default
            if not 0.0 <= value <= 1.0:
                problems.append(f"{name}={text!r} is not between 0 and 1")
                return default
            return value

        salt = env.get("GATEWAY_BENCH_PAYU_SALT", "").strip()
        if not salt:
            problems.append(
                "GATEWAY_BENCH_PAYU_SALT is not set: set it to the gateway's GATEWAY_PAYU_SALT "
                "(this locustfile signs PayU's return with it; there is no default)"
            )
        return cls(
            api_key=env.get("GATEWAY_BENCH_API_KEY", "").strip() or DEV_API_KEY,
            salt=salt,
            failure_share=share("GATEWAY_BENCH_FAILURE_SHARE", 0.10),
            replay_share=share("GATEWAY_BENCH_REPLAY_SHARE", 0.03),
            webhook_share=share("GATEWAY_BENCH_WEBHOOK_SHARE", 0.05),
            problems=tuple(problems),
        )


CONFIG = BenchConfig.from_env(os.environ)


@events.test_start.add_listener
def check_config(environment: Environment, **_kwargs: Any) -> None:
    """Stop the test at its start, saying why, when the configuration cannot work.

    The master of a distributed run sends no requests, so only the processes running users
    (a local run, each worker) need the salt.
    """
    if isinstance(environment.runner, MasterRunner) or not CONFIG.problems:
        return
    for problem in CONFIG.problems:
        logger.error("benchmark configuration: %s", problem)
    environment.process_exit_code = 1
    runner = environment.runner
    if runner is not None:
        # Not from inside the listener: the runner is still in its start() here.
        gevent.spawn(runner.quit)


def payu_reverse_hash(fields: Mapping[str, str], salt: str) -> str:
    """PayU's response hash, from PayU's documentation:
    sha512([additionalCharges|]SALT|status||||||udf5|udf4|udf3|udf2|udf1|email|firstname|
    productinfo|amount|txnid|key)."""
    seq = [salt, fields["status"], "", "", "", "", ""]
    seq += [fields[n] for n in ("udf5", "udf4", "udf3", "udf2", "udf1")]
    seq += [fields[n] for n in ("email", "firstname", "productinfo", "amount", "txnid", "key")]
    text = "|".join(seq)
    if fields.get("additionalCharges"):
        text = f"{fields['additionalCharges']}|{text}"
    return hashlib.sha512(text.encode()).hexdigest()


def payu_response(request_fields: Mapping[str, Any], status: str, salt: str) -> dict[str, str]:
    """What PayU posts back to surl/furl for the form the gateway handed the browser."""
    names = ("key", "txnid", "amount", "productinfo", "firstname", "email", "phone")
    f = {n: str(request_fields.get(n, "")) for n in names}
    f.update({n: str(request_fields.get(n, "")) for n in ("udf1", "udf2", "udf3", "udf4", "udf5")})
    f["status"] = status
    f["mihpayid"] = str(random.randint(10**17, 10**18 - 1))
    f["mode"] = "CC"
    f["bank_ref_num"] = uuid.uuid4().hex[:12]
    if status == "success":
        f.update(unmappedstatus="captured", error="E000", error_Message="No Error")
    else:
        code, message = random.choice(DECLINES)
        f.update(unmappedstatus="failed", error=code, error_Message=message)
    f["hash"] = payu_reverse_hash(f, salt)
    return f


class CheckoutUser(FastHttpUser):
    """A merchant backend, its customer's browser and PayU, one checkout after another.

    Each is a client of its own, as in life: the merchant's calls go on the user's
    ``client``; each checkout's browser opens connections of its own for the return (and
    its replay), as a browser sent back from PayU's page does; PayU's webhooks come from a
    third client. Sharing one pool would send the browser's return down connections that
    the merchant's calls had opened, which no browser does."""

    wait_time = between(0.5, 2)

    def on_start(self) -> None:
        self.auth = {"Authorization": f"Bearer {CONFIG.api_key}"}
        self.user_id = f"bench-{uuid.uuid4().hex[:12]}"
        self.provider = self.session()

    def on_stop(self) -> None:
        self.provider.client.clientpool.close()

    def session(self) -> FastHttpSession:
        """A client with connections of its own, configured as the user's ``client``."""
        return FastHttpSession(
            base_url=self.host,
            request_event=self.environment.events.request,
            user=self,
            network_timeout=self.network_timeout,
            connection_timeout=self.connection_timeout,
            max_retries=self.max_retries,
            insecure=self.insecure,
            concurrency=1,
        )

    @task
    def checkout(self) -> None:
        if not CONFIG.salt:
            raise StopUser()  # check_config has said why and is stopping the test
        cart_id = self.create_cart()
        if cart_id is None:
            return
        for service in random.sample(SERVICES, random.randint(1, 3)):
            if not self.add_item(cart_id, service):
                return
        fields = self.start_payment(cart_id)
        if fields is None:
            return
        paid = random.random() >= CONFIG.failure_share
        form = payu_response(fields, "success" if paid else "failure", CONFIG.salt)
        body = urlencode(form)
        browser = self.session()
        try:
            if random.random() < CONFIG.webhook_share:
                ret = gevent.spawn(self.send_return, browser, body, form["txnid"], paid, RETURN)
                hook = gevent.spawn(self.send_webhook, body, form["txnid"], paid)
                gevent.joinall([ret, hook])
                for g in (ret, hook):
                    if g.exception is not None:
                        raise g.exception
                location = ret.value
            else:
                location = self.send_return(browser, body, form["txnid"], paid, RETURN)
            if location is not None and random.random() < CONFIG.replay_share:
                self.send_return(browser, body, form["txnid"], paid, REPLAY, same_as=location)
        finally:
            browser.client.clientpool.close()

    def create_cart(self) -> str | None:
        with self.client.post(
            "/v1/carts",
            json={"user_id": self.user_id, "currency": "INR"},
            headers=self.auth,
            name=CARTS,
            catch_response=True,
        ) as resp:
            if resp.status_code != 201:
                resp.failure(f"expected 201, got {resp.status_code}: {resp.text[:200]}")
                return None
            return str(resp.json()["cart_id"])

    def add_item(self, cart_id: str, service: tuple[str, str, int]) -> bool:
        service_id, name, unit_amount = service
        with self.client.post(
            f"/v1/carts/{cart_id}/items",
            json={
                "service_id": service_id,
                "name": name,
                "unit_amount": unit_amount,
                "quantity": random.randint(1, 3),
            },
            headers=self.auth,
            name=ITEMS,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"expected 200, got {resp.status_code}: {resp.text[:200]}")
                return False
            return True

    def start_payment(self, cart_id: str) -> dict[str, Any] | None:
        firstname = random.choice(FIRSTNAMES)
        customer = {
            "firstname": firstname,
            "email": f"{firstname.lower()}.{self.user_id}@example.com",
            "phone": f"+9198{random.randint(10**7, 10**8 - 1)}",
        }
        with self.client.post(
            f"/v1/carts/{cart_id}/payments",
            json={"provider": "payu", "customer": customer},
            headers=self.auth,
            name=PAYMENTS,
            catch_response=True,
        ) as resp:
            if resp.status_code != 201:
                resp.failure(f"expected 201, got {resp.status_code}: {resp.text[:200]}")
                return None
            fields = resp.json().get("redirect", {}).get("fields")
            if not isinstance(fields, dict) or "txnid" not in fields:
                resp.failure("no redirect.fields in the answer")
                return None
            return fields

    def send_return(
        self,
        browser: FastHttpSession,
        body: str,
        txnid: str,
        paid: bool,
        name: str,
        same_as: str | None = None,
    ) -> str | None:
        """The browser's return; the Location of a correct 303, else None (and a failure)."""
        with browser.post(
            "/v1/payments/payu/return",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            name=name,
            allow_redirects=False,
            catch_response=True,
        ) as resp:
            location = resp.headers.get("Location") if resp.headers else None
            if resp.status_code != 303 or not location:
                resp.failure(f"expected a 303, got {resp.status_code}: {resp.text[:200]}")
                return None
            query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
            want = "success" if paid else "failed"
            if query.get("status") != want or query.get("txnid") != txnid:
                resp.failure(f"expected status={want} for {txnid}, got Location {location}")
                return None
            if paid and not query.get("booking_id"):
                resp.failure(f"a paid return without booking_id: {location}")
                return None
            if same_as is not None and location != same_as:
                resp.failure(f"the replay moved: {location} after {same_as}")
                return None
            resp.success()
            return location

    def send_webhook(self, body: str, txnid: str, paid: bool) -> None:
        with self.provider.post(
            "/v1/payments/payu/webhook",
            data=body,
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            name=WEBHOOK,
            catch_response=True,
        ) as resp:
            if resp.status_code != 200:
                resp.failure(f"expected 200, got {resp.status_code}: {resp.text[:200]}")
                return
            answer = resp.json()
            want = "SUCCESS" if paid else "FAILED"
            if answer.get("txnid") != txnid or answer.get("status") != want:
                resp.failure(f"expected {want} for {txnid}, got {answer}")
                return
            if answer.get("refund_required"):
                resp.failure(f"the webhook made a refund: {answer}")
                return
            resp.success()
