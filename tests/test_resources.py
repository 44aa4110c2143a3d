"""Upsert, PATCH, customers and GDPR erasure, shipments: the documented behaviour."""

from __future__ import annotations

from typing import Any

import pytest

from kanal.storage import Storage

from .conftest import Api, Rows

CUSTOMER = {
    "external_id": "CUST-42",
    "phone": "+33612345678",
    "first_name": "Marie",
    "last_name": "Durand",
    "email": "marie@example.com",
    "locale": "fr",
    "tags": ["vip"],
    "lifetime_value": 1299,
    "orders_count": 7,
}
ORDER = {
    "external_id": "ORDER-1001",
    "placed_at": "2026-05-18T10:00:00Z",
    "total_price": 49.9,
    "currency": "EUR",
    "financial_status": "pending",
    "fulfillment_status": "unfulfilled",
    "customer": CUSTOMER,
    "line_items": [{"title": "T", "quantity": 2, "price": 24.95}],
    "tags": ["web"],
    "metadata": {"source": "custom-checkout"},
}
CHECKOUT = {
    "external_id": "CHECKOUT-7700",
    "abandoned_at": "2026-05-18T09:40:00Z",
    "recovery_url": "https://shop.example.com/checkout/recover/7700",
    "total_price": 49.9,
    "currency": "EUR",
    "customer": CUSTOMER,
    "tags": ["a"],
}


def test_post_creates_201_then_replaces_200(api: Api, rows: Rows) -> None:
    assert api.post("orders", ORDER).status_code == 201
    response = api.post("orders", {**ORDER, "total_price": 10})
    assert response.status_code == 200
    assert response.json()["total_price"] == "10.00"
    assert rows.value("SELECT count(*) FROM orders") == 1


def test_post_replaces_omitted_optional_fields_with_null(api: Api) -> None:
    api.post("orders", ORDER)
    minimal = {k: ORDER[k] for k in ("external_id", "placed_at", "total_price", "customer")}
    body = api.post("orders", minimal).json()
    assert body["currency"] is None
    assert body["financial_status"] is None and body["fulfillment_status"] is None
    assert body["tags"] == []


def test_post_ignores_unknown_top_level_keys(api: Api) -> None:
    response = api.post("orders", {**ORDER, "note": "gift", "status": 12})
    assert response.status_code == 201


def test_timestamps_are_utc_with_offset(api: Api) -> None:
    body = api.post("orders", {**ORDER, "placed_at": "2026-05-18T12:30:00+02:00"}).json()
    assert body["created_at"] == "2026-05-18T10:30:00+00:00"


@pytest.mark.parametrize(
    "sent, rendered",
    [
        (49.9, "49.90"),
        (49.90, "49.90"),
        (0, "0.00"),
        (0.1, "0.10"),
        (1.005, "1.01"),
        (19.99, "19.99"),
        (999999999999.99, "999999999999.99"),
        (24.955, "24.96"),
        (7, "7.00"),
    ],
)
def test_money_is_exact_with_two_decimals(api: Api, sent: float, rendered: str) -> None:
    assert api.post("orders", {**ORDER, "total_price": sent}).json()["total_price"] == rendered


def test_phone_is_stored_in_e164(api: Api, storage: Storage) -> None:
    api.post("orders", {**ORDER, "customer": {"phone": "06 12 34 56 78"}})
    row = storage.get("orders", 123, "ORDER-1001")
    assert row is not None
    assert row["customer_phone"] == "+33612345678"
    assert row["customer"]["phone"] == "+33612345678"


def test_patch_changes_only_given_fields(api: Api) -> None:
    api.post("orders", ORDER)
    body = api.patch("orders/ORDER-1001", {"financial_status": "paid"}).json()
    assert body["financial_status"] == "paid"
    assert body["fulfillment_status"] == "unfulfilled"
    assert body["tags"] == ["web"] and body["total_price"] == "49.90"
    body = api.patch("orders/ORDER-1001", {"tags": ["x"], "metadata": {"k": 1}}).json()
    assert body["tags"] == ["x"] and body["financial_status"] == "paid"
    assert api.patch("orders/ORDER-1001", {"tags": None}).json()["tags"] == []


def test_patch_empty_body_changes_nothing(api: Api) -> None:
    created = api.post("orders", ORDER).json()
    assert api.patch("orders/ORDER-1001", {}).json() == created


@pytest.mark.parametrize("resource", ["orders", "checkouts", "carts"])
def test_patch_unknown_record_is_404(api: Api, resource: str) -> None:
    body = {"tags": []}
    response = api.patch(f"{resource}/NOPE", body)
    assert response.status_code == 404
    assert response.json() == {"error": f"{resource[:-1].capitalize()} not found"}


@pytest.mark.parametrize(
    "resource, field",
    [
        ("orders", "placed_at"),
        ("orders", "total_price"),
        ("orders", "customer"),
        ("orders", "external_id"),
        ("checkouts", "abandoned_at"),
        ("checkouts", "total_price"),
        ("carts", "customer"),
        ("carts", "currency"),
    ],
)
def test_patch_of_immutable_field_is_422_naming_it(api: Api, resource: str, field: str) -> None:
    body = ORDER if resource == "orders" else {**CHECKOUT, "external_id": "X"}
    api.post(resource, body)
    response = api.patch(f"{resource}/{body['external_id']}", {field: "x", "tags": ["ok"]})
    assert response.status_code == 422
    assert response.json()["errors"] == {field: [f"The {field} field is prohibited."]}


@pytest.mark.parametrize("resource", ["checkouts", "carts"])
def test_checkout_lifecycle(api: Api, resource: str) -> None:
    created = api.post(resource, CHECKOUT)
    assert created.status_code == 201 and created.json()["status"] == "abandoned"
    for status in ("active", "abandoned", "recovered", "completed", "expired"):
        body = api.patch(f"{resource}/CHECKOUT-7700", {"status": status}).json()
        assert body["status"] == status
    # A replacing POST keeps the lifecycle status (POST has no status field).
    assert api.post(resource, CHECKOUT).json()["status"] == "expired"
    bad = api.patch(f"{resource}/CHECKOUT-7700", {"status": "lost"})
    assert bad.json()["errors"] == {"status": ["The selected status is invalid."]}
    cleared = api.patch(f"{resource}/CHECKOUT-7700", {"recovery_url": None}).json()
    assert cleared["recovery_url"] is None and cleared["tags"] == ["a"]


def test_carts_and_checkouts_are_separate(api: Api) -> None:
    assert api.post("checkouts", CHECKOUT).status_code == 201
    assert api.post("carts", CHECKOUT).status_code == 201
    api.patch("carts/CHECKOUT-7700", {"status": "recovered"})
    assert api.post("checkouts", CHECKOUT).json()["status"] == "abandoned"


def test_customer_upsert_by_external_id(api: Api) -> None:
    first = api.post("customers", CUSTOMER)
    assert first.status_code == 201
    assert first.json() == {k: v for k, v in {**CUSTOMER, "store_id": 123}.items() if k != "phone"}
    again = api.post("customers", {**CUSTOMER, "phone": "+33611111111", "first_name": "M"})
    assert again.status_code == 200 and again.json()["first_name"] == "M"


def test_customer_without_external_id_is_keyed_by_phone(api: Api, rows: Rows) -> None:
    body = {"phone": "+33612345678", "first_name": "A"}
    assert api.post("customers", body).status_code == 201
    second = api.post("customers", {"phone": "06 12 34 56 78", "first_name": "B"})
    assert second.status_code == 200
    assert second.json()["external_id"] is None and second.json()["first_name"] == "B"
    assert api.post("customers", {"phone": "+33699999999"}).status_code == 201
    assert rows.value("SELECT count(*) FROM customers") == 2


def test_gdpr_erasure(api: Api, storage: Storage, rows: Rows) -> None:
    api.post("customers", CUSTOMER)
    api.post("orders", ORDER)
    api.post("checkouts", CHECKOUT)
    # A cart of the person keyed by the same phone (no external_id): another identity,
    # erased by DELETE /customers/{phone} (tests/test_erasure.py).
    api.post("carts", {**CHECKOUT, "customer": {"phone": "+33612345678", "first_name": "Ann"}})
    other = {
        **ORDER,
        "external_id": "ORDER-2",
        "customer": {"phone": "+33600000000", "first_name": "Paul"},
    }
    api.post("orders", other)
    response = api.delete("customers/CUST-42")
    assert response.status_code == 204 and response.content == b""
    assert rows.value("SELECT count(*) FROM customers") == 0
    for table in ("orders", "checkouts"):
        row = storage.get(table, 123, "ORDER-1001" if table == "orders" else "CHECKOUT-7700")
        assert row is not None
        assert row["customer_phone"] is None and row["customer_external_id"] is None
        assert set(row["customer"].values()) == {None}, table
    assert "Marie" not in repr(rows.all("SELECT * FROM orders"))
    kept = storage.get("carts", 123, "CHECKOUT-7700")
    assert kept is not None and kept["customer"]["first_name"] == "Ann"
    untouched = storage.get("orders", 123, "ORDER-2")
    assert untouched is not None and untouched["customer"]["first_name"] == "Paul"


def test_gdpr_erasure_is_idempotent(api: Api) -> None:
    api.post("customers", CUSTOMER)
    for _ in range(2):
        assert api.delete("customers/CUST-42").status_code == 204
    assert api.delete("customers/NEVER-SEEN").status_code == 204


def test_erased_customer_can_come_back_as_new(api: Api) -> None:
    api.post("customers", CUSTOMER)
    api.delete("customers/CUST-42")
    assert api.post("customers", CUSTOMER).status_code == 201


def test_erase_customer_keyed_by_phone(api: Api, rows: Rows) -> None:
    api.post("customers", {"phone": "+33612345678", "first_name": "A"})
    assert api.delete("customers/%2B33612345678").status_code == 204
    assert rows.value("SELECT count(*) FROM customers") == 0


def test_shipment_links_its_order(api: Api) -> None:
    order = api.post("orders", ORDER)
    assert order.status_code == 201
    body = {"external_id": "SHIP-1", "order_external_id": "ORDER-1001", "status": "pending"}
    created = api.post("shipments", body)
    assert created.status_code == 201 and isinstance(created.json()["order_id"], int)
    replaced = api.post("shipments", {**body, "status": "delivered"})
    assert replaced.status_code == 200 and replaced.json()["status"] == "delivered"
    assert replaced.json()["tracking_number"] is None


def test_shipment_of_unknown_order_is_422(api: Api, keys: dict[str, Any]) -> None:
    body = {"external_id": "SHIP-1", "order_external_id": "ORDER-404"}
    response = api.post("shipments", body)
    assert response.status_code == 422
    assert response.json() == {
        "message": "The selected order_external_id is invalid.",
        "errors": {"order_external_id": ["The selected order_external_id is invalid."]},
    }


def test_shipment_cannot_point_to_another_stores_order(api: Api, keys: dict[str, Any]) -> None:
    other = Api(api.client, keys["other"], store=456)
    assert other.post("orders", {**ORDER, "customer": {"phone": "+12025550123"}}).status_code == 201
    body = {"external_id": "SHIP-1", "order_external_id": "ORDER-1001"}
    assert api.post("shipments", body).status_code == 422


def test_stores_are_isolated(api: Api, keys: dict[str, Any]) -> None:
    other = Api(api.client, keys["other"], store=456)
    assert api.post("orders", ORDER).status_code == 201
    assert other.post("orders", {**ORDER, "customer": {"phone": "+12025550123"}}).status_code == 201
    assert other.patch("orders/ORDER-1001", {"financial_status": "x"}).status_code == 200
    assert api.patch("orders/ORDER-1001", {}).json()["financial_status"] == "pending"
