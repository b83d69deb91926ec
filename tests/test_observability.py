"""Metrics, logs, rules and the dashboard: exact values after known traffic, a real Prometheus,
promtool, several processes adding up."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import orjson
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway.metrics import Metrics
from tests import payu_sign
from tests.conftest import API_KEY, PAYU_SALT, RETURN_SECRET, base_env, drop_keys
from tests.services import free_port
from tests.test_server import start, wait_ready

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    return samples(text).get((name, frozenset(labels.items())), 0.0)


async def test_exact_values_after_known_traffic(gw):
    for _ in range(3):
        await gw.json("POST", "/v1/carts", 201, json={"user_id": "u", "currency": "INR"})
    cart = await gw.cart_with_items(items=2)  # one more cart, two items
    payment = await gw.start(cart["cart_id"])
    assert (await gw.payu_return(payment)).code == 303
    assert (await gw.payu_return(payment)).code == 303  # a replay: no second outcome
    bad = await gw.payu_return(payment, hash="00" * 64)
    assert bad.code == 303
    assert (await gw.fetch("GET", "/v1/carts/c00aaaaaaaaaaaaaa")).code == 404
    text = (await gw.fetch("GET", "/metrics")).body.decode()

    h = "gateway_request_duration_seconds"
    assert value(text, f"{h}_count", handler="carts", method="POST", code="201") == 4
    assert value(text, f"{h}_count", handler="cart_items", method="POST", code="200") == 2
    assert value(text, f"{h}_count", handler="cart_payments", method="POST", code="201") == 1
    assert value(text, f"{h}_count", handler="payment_return", method="POST", code="303") == 3
    assert value(text, f"{h}_count", handler="cart", method="GET", code="404") == 1
    inf = value(text, f"{h}_bucket", handler="payment_return", method="POST", code="303", le="+Inf")
    at18 = value(
        text, f"{h}_bucket", handler="payment_return", method="POST", code="303", le="0.018"
    )
    assert inf == 3 and 0 <= at18 <= 3
    assert value(text, "gateway_http_errors_total", handler="cart", code="404") == 1
    assert value(text, "gateway_payment_outcomes_total", provider="payu", outcome="success") == 1
    assert value(text, "gateway_bookings_created_total") == 1
    assert value(text, "gateway_carts_converted_total") == 1
    assert value(text, "gateway_payments_started_total", provider="payu") == 1
    assert value(text, "gateway_signature_failures_total", provider="payu", channel="return") == 1
    assert value(text, "gateway_bad_requests_total", reason="bad_signature") == 1
    assert value(text, "gateway_bad_requests_total", reason="http_404") == 0
    assert value(text, "gateway_bad_requests_total", reason="not-found") == 1
    # each return is one settle script; the bad signature costs one EXISTS
    assert value(text, "gateway_redis_call_duration_seconds_count", call="payment_settle") == 2
    assert value(text, "gateway_redis_call_duration_seconds_count", call="exists") == 1
    assert value(text, "gateway_redis_call_duration_seconds_count", call="cart_create") == 4
    # secrets never appear
    assert RETURN_SECRET not in text and PAYU_SALT not in text and API_KEY not in text


def exported_names() -> set[str]:
    """Every sample name the gateway can export, labelled or not, observed or not."""
    names = set()
    for family in Metrics().registry.collect():
        if family.type == "counter":
            names |= {f"{family.name}_total", f"{family.name}_created"}
        elif family.type == "histogram":
            names |= {f"{family.name}_{s}" for s in ("bucket", "count", "sum", "created")}
        else:
            names.add(family.name)
    return names


def expressions() -> list[tuple[str, str]]:
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    out = [
        (f"rule {r.get('record') or r.get('alert')}", r["expr"])
        for g in rules["groups"]
        for r in g["rules"]
    ]
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((f"panel {panel['title']}", target["expr"]))
    return out


def test_rules_and_dashboard_use_only_exported_metrics():
    exported = exported_names()
    rules = yaml.safe_load((DEPLOY / "alerts.yml").read_text())
    recorded = {r["record"] for g in rules["groups"] for r in g["rules"] if "record" in r}
    dashboard = json.loads((DEPLOY / "grafana-dashboard.json").read_text())
    assert dashboard["panels"] and dashboard["title"]
    exprs = expressions()
    assert len(exprs) > 20
    for where, expr in exprs:
        for name in re.findall(r"\bgateway_[a-z0-9_]+", expr):
            assert name in exported, f"{where}: {name} is not a metric the gateway exports"
        for name in re.findall(r"\bgateway:[a-z0-9_:]+", expr):
            assert name in recorded, f"{where}: {name} is not a recording rule"
    # the dashboard draws the latency quantiles and the 18 ms objective
    latency = dashboard["panels"][1]
    assert any("histogram_quantile(0.99" in t["expr"] for t in latency["targets"])
    steps = latency["fieldConfig"]["defaults"]["thresholds"]["steps"]
    assert any(s["value"] == 0.018 for s in steps)


@pytest.mark.skipif(
    shutil.which("promtool") is None,
    reason="promtool is not installed (Debian: apt-get install prometheus)",
)
def test_promtool_checks_and_unit_tests_the_rules():
    check = subprocess.run(
        ["promtool", "check", "rules", str(DEPLOY / "alerts.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.returncode == 0, check.stdout + check.stderr
    config = subprocess.run(
        ["promtool", "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert config.returncode == 0, config.stdout + config.stderr
    test = subprocess.run(
        ["promtool", "test", "rules", str(DEPLOY / "alerts_test.yml")],
        capture_output=True,
        text=True,
        cwd=DEPLOY,
        timeout=60,
    )
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def prom_query(port: int, expr: str) -> list[dict]:
    url = f"http://127.0.0.1:{port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=5) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return list(body["data"]["result"])


@pytest.mark.skipif(
    shutil.which("prometheus") is None,
    reason="prometheus is not installed (Debian: apt-get install prometheus)",
)
async def test_a_real_prometheus_computes_the_p99(gw):
    folder = tempfile.mkdtemp(prefix="gw-prom-")
    port = free_port()
    target = gw.base_url.removeprefix("http://")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(DEPLOY / "alerts.yml")],
        "scrape_configs": [{"job_name": "gateway", "static_configs": [{"targets": [target]}]}],
    }
    Path(folder, "prometheus.yml").write_text(yaml.safe_dump(config))
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={folder}/prometheus.yml",
            f"--storage.tsdb.path={folder}/data",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        p99 = (
            "histogram_quantile(0.99, sum by (le) (rate("
            'gateway_request_duration_seconds_bucket{handler="payment_return"}[30s])))'
        )
        deadline = time.monotonic() + 60
        result: list[dict] = []
        while time.monotonic() < deadline:
            cart = await gw.cart_with_items(items=1)
            payment = await gw.start(cart["cart_id"])
            assert (await gw.payu_return(payment)).code == 303
            await asyncio.sleep(0.2)
            try:
                result = await asyncio.to_thread(prom_query, port, p99)
            except OSError:
                continue  # not up yet
            if result and result[0]["value"][1] not in ("NaN", "+Inf"):
                break
        assert result, "Prometheus never had the histogram"
        seconds = float(result[0]["value"][1])
        assert 0 < seconds < 2.5  # a number: a real quantile of real requests
        # the recording rules evaluate on the same data
        rules: list[dict] = []
        for _ in range(60):
            rules = await asyncio.to_thread(prom_query, port, "gateway:return_slow_ratio:rate5m")
            if rules:
                break
            await asyncio.sleep(0.25)
        assert rules and 0.0 <= float(rules[0]["value"][1]) <= 1.0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
        shutil.rmtree(folder, ignore_errors=True)


async def test_two_processes_add_up(prefix, razorpay_api, tmp_path):
    from tests.conftest import REDIS_URL

    port = free_port()
    env = base_env(
        prefix,
        GATEWAY_PORT=str(port),
        GATEWAY_RAZORPAY_API_URL=razorpay_api.url,
        GATEWAY_REDIS_URL=REDIS_URL,
        GATEWAY_DATA_DIR=str(tmp_path),
        GATEWAY_DATABASE_URL="postgresql://127.0.0.1:1/none",
        GATEWAY_WB_IN_PROCESS="false",
    )
    proc = start(env, "--workers", "2")
    try:
        await asyncio.to_thread(wait_ready, port, proc)
        pids: dict[int, int] = {}
        body = orjson.dumps({"user_id": "u", "currency": "INR"})
        n = 0
        while len(pids) < 2 or n < 40:
            assert n < 2000, "requests never reached both workers"
            req = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/carts",
                data=body,
                method="POST",
                headers={
                    "Authorization": f"Bearer {API_KEY}",
                    "Content-Type": "application/json",
                    "Connection": "close",
                },
            )
            with urllib.request.urlopen(req, timeout=5) as r:
                assert r.status == 201
            n += 1
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
                pid = orjson.loads(r.read())["pid"]
                pids[pid] = pids.get(pid, 0) + 1
        assert len(pids) == 2
        # whichever process answers the scrape, it counts both processes' requests
        for _ in range(4):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
                text = r.read().decode()
            assert (
                value(
                    text,
                    "gateway_request_duration_seconds_count",
                    handler="carts",
                    method="POST",
                    code="201",
                )
                == n
            )
            assert (
                value(
                    text,
                    "gateway_request_duration_seconds_count",
                    handler="healthz",
                    method="GET",
                    code="200",
                )
                >= n
            )
        assert list(tmp_path.glob("metrics-*/*.db"))
        proc.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(proc.wait, 20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        await drop_keys(REDIS_URL, prefix)


async def test_json_access_log_and_no_secrets(prefix, razorpay_api):
    from tests.conftest import REDIS_URL

    port = free_port()
    env = base_env(
        prefix,
        GATEWAY_PORT=str(port),
        GATEWAY_RAZORPAY_API_URL=razorpay_api.url,
        GATEWAY_REDIS_URL=REDIS_URL,
        GATEWAY_DATABASE_URL="postgresql://127.0.0.1:1/none",
        GATEWAY_WB_IN_PROCESS="false",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "gateway.cli", "serve"],
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        await asyncio.to_thread(wait_ready, port, proc)
        base = f"http://127.0.0.1:{port}"
        auth = {"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}

        def call(path, body=None, headers=None, form=None):
            data = orjson.dumps(body) if body is not None else None
            hdrs = dict(headers or auth)
            if form is not None:
                data = urllib.parse.urlencode(form).encode()
                hdrs = {"Content-Type": "application/x-www-form-urlencoded"}
            req = urllib.request.Request(
                base + path, data=data, headers=hdrs, method="POST" if data is not None else "GET"
            )

            class NoRedirect(urllib.request.HTTPRedirectHandler):
                def redirect_request(self, *a, **k):
                    return None

            opener = urllib.request.build_opener(NoRedirect)
            try:
                with opener.open(req, timeout=5) as r:
                    return r.status, r.read()
            except urllib.error.HTTPError as e:
                return e.code, e.read()

        _, raw = call(
            "/v1/carts", {"user_id": "u", "currency": "INR"}, {**auth, "X-Request-ID": "trace-42"}
        )
        cart = orjson.loads(raw)
        call(
            f"/v1/carts/{cart['cart_id']}/items",
            {"service_id": "s", "name": "S", "unit_amount": 100, "quantity": 1},
        )
        _, raw = call(
            f"/v1/carts/{cart['cart_id']}/payments",
            {
                "provider": "payu",
                "customer": {"firstname": "A", "email": "a@b.co", "phone": "9876543210"},
            },
        )
        payment = orjson.loads(raw)
        form = payu_sign.response_form(payment["redirect"]["fields"], "success", PAYU_SALT)
        status, _ = call("/v1/payments/payu/return", form=form)
        assert status == 303
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        await drop_keys(REDIS_URL, prefix)
    lines = [json.loads(line) for line in err.decode().splitlines() if line.startswith("{")]
    requests = [r for r in lines if r["msg"] == "request"]
    first = next(r for r in requests if r.get("request_id") == "trace-42")
    assert first["level"] == "info" and first["method"] == "POST"
    assert first["path"] == "/v1/carts" and first["status"] == 201
    assert isinstance(first["duration_ms"], float)
    ret = next(r for r in requests if r["path"] == "/v1/payments/payu/return")
    assert ret["status"] == 303 and len(ret["request_id"]) == 16
    converted = next(r for r in lines if r["msg"] == "cart converted")
    assert converted["cart_id"] == cart["cart_id"] and converted["status"] == "CONVERTED"
    text = err.decode()
    for secret in (
        RETURN_SECRET,
        PAYU_SALT,
        API_KEY,
        form["hash"],
        payment["redirect"]["fields"]["hash"],
    ):
        assert secret not in text
