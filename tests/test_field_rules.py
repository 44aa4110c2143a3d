"""Every field rule of the documentation at its boundary: the limit passes, one over is a 422
naming the field with its Laravel-style message."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from starlette.testclient import TestClient

from kanal.app import create_app

from .conftest import Api, make_accounts

MISSING = object()
CUSTOMER = {"phone": "+33612345678", "first_name": "Marie"}
BODIES: dict[str, dict[str, Any]] = {
    "orders": {
        "external_id": "ORDER-1",
        "placed_at": "2026-05-18T10:00:00Z",
        "total_price": 49.9,
        "customer": CUSTOMER,
    },
    "checkouts": {
        "external_id": "CHECKOUT-1",
        "abandoned_at": "2026-05-18T09:40:00Z",
        "total_price": 49.9,
        "customer": CUSTOMER,
    },
    "carts": {
        "external_id": "CART-1",
        "abandoned_at": "2026-05-18T09:40:00Z",
        "total_price": 49.9,
        "customer": CUSTOMER,
    },
    "customers": {"external_id": "CUST-1", "phone": "+33612345678"},
    "shipments": {"external_id": "SHIP-1", "order_external_id": "ORDER-0"},
}
URL = "https://shop.example.com/"


def s(n: int) -> str:
    return "x" * n


def url(n: int) -> str:
    return URL + "a" * (n - len(URL))


def email(n: int) -> str:
    local = "m" * 64
    domain_len = n - len(local) - 1 - len(".com")
    labels = []
    while domain_len > 0:
        take = min(63, domain_len)
        labels.append("d" * take)
        domain_len -= take + 1
    return f"{local}@{'.'.join(labels)}.com"


REQUIRED = "The {} field is required."
MAXLEN = "The {} field must not be greater than {} characters."
STRING = "The {} field must be a string."
DATE = "The {} field must be a valid date."
URLMSG = "The {} field must be a valid URL."
INVALID_ENUM = "The selected {} is invalid."

# (resources, field path, value, expected message or None when the value is valid)
CASES: list[tuple[tuple[str, ...], str, Any, str | None]] = []


def rule(
    resources: tuple[str, ...], field: str, value: Any, message: str | None, *args: Any
) -> None:
    CASES.append((resources, field, value, message.format(field, *args) if message else None))


ALL = ("orders", "checkouts", "carts", "customers", "shipments")
HOLDERS = ("orders", "checkouts", "carts")
ABANDONED = ("checkouts", "carts")
for res in ALL:
    rule((res,), "external_id", s(255), None)
    rule((res,), "external_id", s(256), MAXLEN, 255)
    if res != "customers":
        rule((res,), "external_id", "", REQUIRED)
        rule((res,), "external_id", MISSING, REQUIRED)
        rule((res,), "external_id", None, REQUIRED)
    rule((res,), "external_id", 42, STRING)
    # Found by Schemathesis: an id with a control character could be created but not
    # addressed (a newline cannot be routed in a URL path). "\n" at the very end too.
    rule((res,), "external_id", "CHECKOUT\n7700", "The {} field format is invalid.")
    rule((res,), "external_id", "ORDER-1\n", "The {} field format is invalid.")
    rule((res,), "external_id", "ORDER 1 é ü \u00a0", None)
for res, stamp in (
    ("orders", "placed_at"),
    ("checkouts", "abandoned_at"),
    ("carts", "abandoned_at"),
):
    rule((res,), stamp, "2026-05-18T12:00:00+02:00", None)
    rule((res,), stamp, MISSING, REQUIRED)
    rule((res,), stamp, "2026-05-18", DATE)
    rule((res,), stamp, "2026-05-18T10:00:00", DATE)
    rule((res,), stamp, "2026-02-30T10:00:00Z", DATE)
    rule((res,), stamp, "yesterday", DATE)
rule(HOLDERS, "total_price", 0, None)
rule(HOLDERS, "total_price", 999999999999.99, None)
rule(HOLDERS, "total_price", -0.01, "The {} field must be at least 0.")
rule(
    HOLDERS, "total_price", 1000000000000, "The {} field must not be greater than 999999999999.99."
)
rule(HOLDERS, "total_price", "49.90", "The {} field must be a number.")
rule(HOLDERS, "total_price", MISSING, REQUIRED)
rule(HOLDERS, "currency", "EUR", None)
rule(HOLDERS, "currency", None, None)
rule(HOLDERS, "currency", "eur", "The {} field format is invalid.")
rule(HOLDERS, "currency", "EURO", "The {} field format is invalid.")
rule(HOLDERS, "currency", "EUR\n", "The {} field format is invalid.")  # ECMA `$` is the end
rule(("orders",), "financial_status", s(64), None)
rule(("orders",), "financial_status", s(65), MAXLEN, 64)
rule(("orders",), "fulfillment_status", s(64), None)
rule(("orders",), "fulfillment_status", s(65), MAXLEN, 64)
rule(ABANDONED, "recovery_url", url(1024), None)
rule(ABANDONED, "recovery_url", url(1025), MAXLEN, 1024)
rule(ABANDONED, "recovery_url", "ftp://shop.example.com/x", URLMSG)
rule(ABANDONED, "recovery_url", "https://exa mple.com/", URLMSG)
rule(ABANDONED, "recovery_url", "not a url", URLMSG)
rule(HOLDERS, "customer", MISSING, REQUIRED)
rule(HOLDERS, "customer", "Marie", "The {} field must be an object.")
for prefix, resources in (("customer.", HOLDERS), ("", ("customers",))):
    rule(resources, f"{prefix}phone", MISSING, REQUIRED)
    rule(resources, f"{prefix}phone", "", REQUIRED)
    rule(resources, f"{prefix}phone", "06 12 34 56 78", None)  # national, store region FR
    rule(resources, f"{prefix}phone", "+33 6 12", "The {} field must be a valid phone number.")
    rule(resources, f"{prefix}phone", "call me", "The {} field must be a valid phone number.")
    for name in ("first_name", "last_name"):
        rule(resources, f"{prefix}{name}", s(255), None)
        rule(resources, f"{prefix}{name}", s(256), MAXLEN, 255)
    rule(resources, f"{prefix}email", email(254), None)
    rule(resources, f"{prefix}email", email(255), MAXLEN, 254)
    rule(resources, f"{prefix}email", "marie@", "The {} field must be a valid email address.")
    rule(resources, f"{prefix}locale", s(10), None)
    rule(resources, f"{prefix}locale", s(11), MAXLEN, 10)
    rule(resources, f"{prefix}tags", ["vip"], None)
    rule(resources, f"{prefix}tags", "vip", "The {} field must be an array.")
    for name in ("lifetime_value", "orders_count"):
        rule(resources, f"{prefix}{name}", 0, None)
        rule(resources, f"{prefix}{name}", -1, "The {} field must be at least 0.")
        rule(resources, f"{prefix}{name}", 1.5, "The {} field must be an integer.")
rule(("orders",), "customer.external_id", s(255), None)
rule(("orders",), "customer.external_id", s(256), MAXLEN, 255)
rule(HOLDERS, "tags", [s(255)], None)
rule(HOLDERS, "tags.0", [s(256)], MAXLEN, 255)
rule(HOLDERS, "tags.1", ["web", 7], STRING)
rule(HOLDERS, "tags", "web", "The {} field must be an array.")
rule(HOLDERS, "metadata", {"source": "custom-checkout", "nested": {"a": [1]}}, None)
rule(HOLDERS, "metadata", "custom", "The {} field must be an object.")
rule(HOLDERS, "line_items", [{"title": "T", "quantity": 2, "price": 24.95, "color": "red"}], None)
rule(HOLDERS, "line_items.0", ["T-shirt"], "The {} field must be an object.")
rule(HOLDERS, "line_items.0.quantity", [{"quantity": -1}], "The {} field must be at least 0.")
rule(HOLDERS, "line_items.0.price", [{"price": -1}], "The {} field must be at least 0.")
rule(("shipments",), "order_external_id", MISSING, REQUIRED)
rule(("shipments",), "order_external_id", s(256), MAXLEN, 255)
for name in ("tracking_number", "carrier"):
    rule(("shipments",), name, s(255), None)
    rule(("shipments",), name, s(256), MAXLEN, 255)
rule(("shipments",), "tracking_url", url(1024), None)
rule(("shipments",), "tracking_url", url(1025), MAXLEN, 1024)
rule(("shipments",), "tracking_url", "track me", URLMSG)
for status in ("pending", "in_transit", "delivered", "failed", "returned", None):
    rule(("shipments",), "status", status, None)
rule(("shipments",), "status", "lost", INVALID_ENUM)

PARAMS = [
    pytest.param(res, field, value, message, id=f"{res}-{field}-{i}")
    for i, (resources, field, value, message) in enumerate(CASES)
    for res in resources
]


def put(body: dict[str, Any], field: str, value: Any) -> None:
    """Set a dotted field; from the first list index on, ``value`` is the whole list."""
    parts = []
    for part in field.split("."):
        if part.isdigit():
            break
        parts.append(part)
    target = body
    for part in parts[:-1]:
        target = target[part]
    if value is MISSING:
        target.pop(parts[-1], None)
    else:
        target[parts[-1]] = value


@pytest.fixture(scope="module")
def shared_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Api]:
    """One app for the whole table (a fresh one per case would only be slower)."""
    db = str(tmp_path_factory.mktemp("rules") / "kanal.db")
    keys = make_accounts(db)
    with TestClient(create_app(db, validate_responses=True)) as client:
        api = Api(client, keys["store"])
        assert api.post("orders", {**BODIES["orders"], "external_id": "ORDER-0"}).is_success
        yield api


@pytest.mark.parametrize("resource, field, value, message", PARAMS)
def test_field_rule(
    shared_api: Api, resource: str, field: str, value: Any, message: str | None
) -> None:
    body = copy.deepcopy(BODIES[resource])
    put(body, field, value)
    response = shared_api.post(resource, body)
    if message is None:
        assert response.status_code in (200, 201), response.text
    else:
        assert response.status_code == 422, response.text
        assert message in response.json()["errors"][field], response.json()


def test_rules_are_counted() -> None:
    """The closing note reports this number: keep it honest."""
    assert len(PARAMS) > 200
