"""The OpenAPI document is true to the app: its routes, methods, auth, shapes and answers."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import orjson
import pytest
import tornado.web

from gateway.app import ROUTES
from gateway.money import EXPONENTS
from gateway.openapi import document
from store import keys as ids
from tests import payu_sign
from tests.conftest import PAYU_SALT, SUCCESS_URL

METHODS = ("get", "post", "put", "patch", "delete")
GROUP = "([^/]+)"
BEARER = [{"bearerAuth": []}]


def implemented(cls: type) -> set[str]:
    return {m for m in METHODS if getattr(cls, m) is not getattr(tornado.web.RequestHandler, m)}


def is_placeholder(segment: str) -> bool:
    return segment.startswith("{") and segment.endswith("}")


def route_shape(pattern: str) -> tuple[str | None, ...]:
    # The group itself holds a '/', so it is swapped for a marker before splitting.
    marked = pattern.replace(GROUP, "\0")
    assert "(" not in marked, pattern  # only ([^/]+) groups
    return tuple(None if s == "\0" else s for s in marked.split("/"))


def path_shape(path: str) -> tuple[str | None, ...]:
    return tuple(None if is_placeholder(s) else s for s in path.split("/"))


def template(pattern: str, paths: Any) -> str:
    """The document's path for a route regex: same literals, placeholders where the groups are."""
    shape = route_shape(pattern)
    matches = [p for p in paths if path_shape(p) == shape]
    assert len(matches) == 1, (pattern, matches)
    names = iter(s for s in matches[0].split("/") if is_placeholder(s))
    return "/".join(next(names) if s is None else s for s in shape)


def routed() -> Iterator[tuple[str, str, type]]:
    """(document path, method, handler class) for every route and method the app serves."""
    paths = document()["paths"]
    for pattern, cls in ROUTES:
        path = template(pattern, paths)
        for method in sorted(implemented(cls)):
            yield path, method, cls


def resolve(doc: dict[str, Any], ref: str) -> Any:
    assert ref.startswith("#/"), ref
    node: Any = doc
    for part in ref[2:].split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and part in node, ref
        node = node[part]
    return node


def refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from refs(value)


def deref(doc: dict[str, Any], node: Any) -> Any:
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(doc, node["$ref"])
    return node


def schema(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return dict(doc["components"]["schemas"][name])


# -- the document against the routes ---------------------------------------------------------


def test_document_basics():
    doc = document()
    assert doc["openapi"] == "3.1.0"
    assert doc["info"]["title"] == "Payment-return gateway"
    import gateway

    assert doc["info"]["version"] == gateway.__version__
    assert doc["info"]["description"]
    assert document() == doc  # deterministic
    assert orjson.loads(orjson.dumps(doc)) == doc  # plain JSON


def test_every_route_is_documented_with_its_methods():
    doc = document()
    for pattern, cls in ROUTES:
        path = template(pattern, doc["paths"])
        documented = {m for m in doc["paths"][path] if m in METHODS}
        assert documented == implemented(cls), (pattern, cls.__name__)


def test_every_documented_operation_is_served():
    doc = document()
    served = {(path, method) for path, method, _ in routed()}
    for path, item in doc["paths"].items():
        for method in item:
            assert method in METHODS, (path, method)
            assert (path, method) in served, (path, method)
    templates = [template(pattern, doc["paths"]) for pattern, _ in ROUTES]
    assert sorted(templates) == sorted(doc["paths"]), "one path per route"


def test_path_parameters_match_the_template():
    doc = document()
    for path, method, _ in routed():
        op = doc["paths"][path][method]
        params = [deref(doc, p) for p in op.get("parameters", [])]
        in_path = {p["name"] for p in params if p["in"] == "path"}
        assert in_path == {s[1:-1] for s in path.split("/") if is_placeholder(s)}, (path, method)
        assert all(p["required"] for p in params if p["in"] == "path")


def test_operations_are_complete():
    doc = document()
    seen: set[str] = set()
    for path, method, _ in routed():
        op = doc["paths"][path][method]
        assert re.fullmatch(r"[a-z][a-z0-9_]*", op["operationId"]), op["operationId"]
        assert op["operationId"] not in seen
        seen.add(op["operationId"])
        assert op["summary"]
        assert any(code.startswith("2") or code == "303" for code in op["responses"])
        for code, answer in op["responses"].items():
            assert answer["description"]
            if code.startswith("4"):
                assert deref(doc, answer["content"]["application/problem+json"]["schema"]) == (
                    schema(doc, "Problem")
                ), (path, method, code)


def test_every_ref_resolves():
    doc = document()
    found = list(refs(doc))
    assert found
    for ref in found:
        resolve(doc, ref)


def test_security_follows_requires_auth():
    doc = document()
    scheme = doc["components"]["securitySchemes"]["bearerAuth"]
    assert scheme["type"] == "http" and scheme["scheme"] == "bearer"
    for path, method, cls in routed():
        op = doc["paths"][path][method]
        if cls.requires_auth:
            assert op["security"] == BEARER, (path, method)
            assert "401" in op["responses"], (path, method)
        else:
            assert op["security"] == [], (path, method)


def test_request_bodies_are_strict():
    doc = document()

    def closed(node: Any) -> None:
        node = deref(doc, node)
        if node.get("type") == "object":
            assert node["additionalProperties"] is False, node
            for prop in node["properties"].values():
                closed(prop)

    for name in ("NewCart", "NewItem", "NewPayment"):
        closed(schema(doc, name))
    assert schema(doc, "Currency")["enum"] == sorted(EXPONENTS)
    item = schema(doc, "NewItem")["properties"]
    assert item["unit_amount"]["minimum"] == 1 and item["quantity"]["maximum"] == 1000


def test_id_patterns_accept_the_ids_the_gateway_makes():
    doc = document()
    cart_id = ids.new_cart_id(16)
    made = {
        "CartId": cart_id,
        "TxnId": ids.new_txnid(cart_id),
        "BookingId": ids.booking_id_for(cart_id),
    }
    for name, value in made.items():
        pattern = schema(doc, name)["pattern"]
        assert re.search(pattern, value), (name, value)
        assert not re.search(pattern, value + "x"), name


def test_valid_openapi_31():
    validator = pytest.importorskip("openapi_spec_validator")
    validate = getattr(validator, "validate", None) or validator.validate_spec
    validate(document())


# -- the document against the running app ----------------------------------------------------


async def test_served_document(gw):
    resp = await gw.fetch("GET", "/openapi.json", auth=False)
    assert resp.code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    assert orjson.loads(resp.body) == document()


def answer_schema(doc: dict[str, Any], path: str, method: str, code: int) -> dict[str, Any]:
    """The schema documented for this answer; fails when the status is not documented."""
    responses = doc["paths"][path][method]["responses"]
    assert str(code) in responses, (path, method, code)
    content = responses[str(code)]["content"]
    media = "application/problem+json" if code >= 400 else "application/json"
    return dict(deref(doc, content[media]["schema"]))


def check(doc: dict[str, Any], body: Any, node: dict[str, Any]) -> None:
    """The body has exactly the documented properties; with jsonschema, it validates."""
    assert set(body) == set(node["properties"]), (sorted(body), sorted(node["properties"]))
    assert set(node["required"]) <= set(body)
    try:
        import jsonschema
    except ImportError:
        return
    root = {"components": doc["components"], **node}
    jsonschema.Draft202012Validator(root).validate(body)


async def test_answers_have_the_documented_shapes(gw):
    doc = document()
    cart = await gw.json("POST", "/v1/carts", 201, json={"user_id": "u-1", "currency": "INR"})
    check(doc, cart, answer_schema(doc, "/v1/carts", "post", 201))
    cart = await gw.json(
        "POST",
        f"/v1/carts/{cart['cart_id']}/items",
        json={"service_id": "svc-1", "name": "Deep cleaning", "unit_amount": 49900, "quantity": 2},
    )
    check(doc, cart, answer_schema(doc, "/v1/carts/{cart_id}/items", "post", 200))
    check(doc, cart["items"][0], schema(doc, "CartItem"))

    started = await gw.start(cart["cart_id"])
    check(doc, started, answer_schema(doc, "/v1/carts/{cart_id}/payments", "post", 201))
    payment = await gw.json("GET", f"/v1/payments/{started['txnid']}")
    check(doc, payment, answer_schema(doc, "/v1/payments/{txnid}", "get", 200))

    form = payu_sign.response_form(started["redirect"]["fields"], "success", PAYU_SALT)
    resp = await gw.fetch("POST", "/v1/payments/payu/webhook", form=form, auth=False)
    verdict = orjson.loads(resp.body)
    check(doc, verdict, answer_schema(doc, "/v1/payments/{provider}/webhook", "post", resp.code))
    assert verdict["status"] == "SUCCESS" and verdict["applied"] is True

    resp = await gw.fetch("POST", "/v1/payments/payu/return", form=form, auth=False)
    assert "303" in doc["paths"]["/v1/payments/{provider}/return"]["post"]["responses"]
    assert resp.code == 303
    location = resp.headers["Location"]
    assert location.startswith(SUCCESS_URL.partition("?")[0] + "?")
    configured = dict(parse_qsl(urlsplit(SUCCESS_URL).query))
    query = {k: v for k, v in parse_qsl(urlsplit(location).query) if k not in configured}
    success = schema(doc, "ReturnRedirectQuery")["oneOf"][0]
    check(doc, query, success)

    booking = await gw.json("GET", f"/v1/bookings/{verdict['booking_id']}")
    check(doc, booking, answer_schema(doc, "/v1/bookings/{booking_id}", "get", 200))

    resp = await gw.fetch("GET", "/v1/carts/c00aaaaaaaaaaaaaa")
    check(doc, orjson.loads(resp.body), answer_schema(doc, "/v1/carts/{cart_id}", "get", 404))

    for path, name in (("/healthz", "Health"), ("/readyz", "Ready")):
        resp = await gw.fetch("GET", path, auth=False)
        assert answer_schema(doc, path, "get", resp.code) == schema(doc, name)
        check(doc, orjson.loads(resp.body), schema(doc, name))


async def test_razorpay_start_has_the_documented_shape(gw):
    doc = document()
    cart = await gw.cart_with_items()
    started = await gw.start(cart["cart_id"], "razorpay")
    check(doc, started, answer_schema(doc, "/v1/carts/{cart_id}/payments", "post", 201))


PROBLEM_CASES = [
    # (method, path, request, documented operation, status)
    (
        "POST",
        "/v1/carts",
        {"json": {"user_id": "u", "currency": "INR"}, "auth": False},
        ("/v1/carts", "post"),
        401,
    ),
    (
        "POST",
        "/v1/carts",
        {"body": b"user_id=u", "headers": {"Content-Type": "text/plain"}},
        ("/v1/carts", "post"),
        415,
    ),
    (
        "POST",
        "/v1/carts",
        {"body": b"[1]", "headers": {"Content-Type": "application/json"}},
        ("/v1/carts", "post"),
        400,
    ),
    ("POST", "/v1/carts", {"json": {"user_id": "u"}}, ("/v1/carts", "post"), 422),
    ("GET", "/v1/carts/nope", {}, ("/v1/carts/{cart_id}", "get"), 400),
    (
        "POST",
        "/v1/carts/c00aaaaaaaaaaaaaa/items",
        {"json": {"service_id": "s", "name": "n", "unit_amount": 1, "quantity": 1}},
        ("/v1/carts/{cart_id}/items", "post"),
        404,
    ),
    (
        "DELETE",
        "/v1/carts/c00aaaaaaaaaaaaaa/items/bad%20id",
        {},
        ("/v1/carts/{cart_id}/items/{service_id}", "delete"),
        422,
    ),
    (
        "POST",
        "/v1/carts/c00aaaaaaaaaaaaaa/payments",
        {
            "json": {
                "provider": "payu",
                "customer": {"firstname": "A", "email": "a@example.com", "phone": "9876543210"},
            }
        },
        ("/v1/carts/{cart_id}/payments", "post"),
        404,
    ),
    ("GET", "/v1/payments/nope", {}, ("/v1/payments/{txnid}", "get"), 400),
    ("GET", "/v1/payments/t00aaaaaaaaaaaaaaaaaaaa", {}, ("/v1/payments/{txnid}", "get"), 404),
    ("GET", "/v1/bookings/b00aaaaaaaaaaaaaa", {}, ("/v1/bookings/{booking_id}", "get"), 404),
    (
        "GET",
        "/v1/payments/payu/return?txnid=t00aaaaaaaaaaaaaaaaaaaa",
        {"auth": False},
        ("/v1/payments/{provider}/return", "get"),
        400,
    ),
    (
        "POST",
        "/v1/payments/stripe/return",
        {"form": {"txnid": "x"}, "auth": False},
        ("/v1/payments/{provider}/return", "post"),
        404,
    ),
    (
        "POST",
        "/v1/payments/payu/return",
        {"body": b"{}", "headers": {"Content-Type": "application/json"}, "auth": False},
        ("/v1/payments/{provider}/return", "post"),
        415,
    ),
    (
        "POST",
        "/v1/payments/payu/return",
        {"form": {"udf5": "x" * 20_000}, "auth": False},
        ("/v1/payments/{provider}/return", "post"),
        413,
    ),
    (
        "PUT",
        "/v1/payments/payu/return",
        {"body": b"", "auth": False},
        ("/v1/payments/{provider}/return", "post"),
        405,
    ),
    (
        "POST",
        "/v1/payments/razorpay/webhook",
        {"body": b"{}", "headers": {"Content-Type": "application/json"}, "auth": False},
        ("/v1/payments/{provider}/webhook", "post"),
        400,
    ),
    (
        "POST",
        "/v1/payments/razorpay/webhook",
        {
            "body": b"{}",
            "auth": False,
            "headers": {"Content-Type": "application/json", "X-Razorpay-Signature": "00" * 32},
        },
        ("/v1/payments/{provider}/webhook", "post"),
        401,
    ),
    (
        "POST",
        "/v1/payments/stripe/webhook",
        {"form": {"txnid": "x"}, "auth": False},
        ("/v1/payments/{provider}/webhook", "post"),
        404,
    ),
]


@pytest.mark.parametrize(("method", "path", "request_", "operation", "status"), PROBLEM_CASES)
async def test_errors_are_documented(gw, method, path, request_, operation, status):
    doc = document()
    resp = await gw.fetch(method, path, **request_)
    assert resp.code == status, (resp.code, resp.body)
    assert resp.headers["Content-Type"] == "application/problem+json"
    check(doc, orjson.loads(resp.body), answer_schema(doc, *operation, status))
