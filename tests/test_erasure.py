"""GDPR erasure: DELETE /customers/{key} erases a person wherever they appear.

Each way a person arrives is a case: POSTed, embedded in orders, checkouts and
carts by external_id, embedded by phone only, a phone shared by two people, a
phone that changed between two orders, ids that look like paths. Each case
checks the API's reads, the outbox, every row of every table and the database
files for the erased strings, and that another person keeps their data.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from kanal import formats
from kanal.storage import Storage, is_postgres
from kanal.worker import Worker

from .conftest import Api, Rows

NOW = datetime(2026, 5, 18, 10, 0, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture(autouse=True)
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(NOW)
    monkeypatch.setattr(formats, "clock", fake)
    return fake


def iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def person(external_id: str | None, phone: str, name: str, **extra: Any) -> dict[str, Any]:
    """An embedded customer with strings unique to this person."""
    customer = {
        "phone": phone,
        "first_name": name,
        "last_name": f"{name}-Family",
        "email": f"{name.lower()}@example.com",
        "locale": "fr-FR",
        "tags": [f"tag-of-{name}"],
        "lifetime_value": 4242,
        **extra,
    }
    if external_id is not None:
        customer["external_id"] = external_id
    return customer


def write_everything(api: Api, suffix: str, customer: dict[str, Any]) -> None:
    """Two orders (one shipped), an abandoned checkout (recovery scheduled) and a cart."""
    for n in (1, 2):
        body = {
            "external_id": f"O-{suffix}-{n}",
            "placed_at": iso(NOW - timedelta(days=3)),
            "total_price": 59.9,
            "currency": "EUR",
            "financial_status": "paid",
            "customer": customer,
        }
        assert api.post("orders", body).status_code == 201
    shipment = {
        "external_id": f"S-{suffix}",
        "order_external_id": f"O-{suffix}-1",
        "status": "in_transit",
        "tracking_number": f"TRACK-{suffix}",
    }
    assert api.post("shipments", shipment).status_code == 201
    for resource in ("checkouts", "carts"):
        body = {
            "external_id": f"K-{suffix}",
            "abandoned_at": iso(NOW - timedelta(minutes=10)),
            "total_price": 49.9,
            "currency": "EUR",
            "recovery_url": f"https://shop.example.com/recover/{suffix}",
            "customer": customer,
        }
        assert api.post(resource, body).status_code == 201


def get(api: Api, path: str) -> Any:
    response = api.client.get(api.url(path), headers=api.headers())
    return response.status_code, response.json() if response.content else None


def database_bytes(db: str) -> bytes:
    """The SQLite file and its WAL (on PostgreSQL, the files are the server's and an
    erased row's old version stays until VACUUM: the rows are checked there)."""
    if is_postgres(db):
        return b""
    return b"".join(
        Path(db + suffix).read_bytes() for suffix in ("", "-wal") if Path(db + suffix).exists()
    )


def reads(api: Api) -> str:
    """What the API shows: every list, and each record by id."""
    found = []
    for resource in ("orders", "checkouts", "carts", "customers", "shipments", "contacts"):
        found.append(get(api, f"{resource}?limit=250"))
    found.append(get(api, "messages?limit=250"))
    return json.dumps(found, ensure_ascii=False)


def assert_gone(api: Api, db: str, *strings: str) -> None:
    shown, rows, raw = reads(api), Rows(db).dump(), database_bytes(db)
    for text in strings:
        assert text not in shown, f"{text!r} still in a read"
        assert text not in rows, f"{text!r} still in a row"
        assert text.encode() not in raw, f"{text!r} still in the database file"


def strings_of(customer: dict[str, Any]) -> list[str]:
    """The personal strings of an embedded customer (the phone in its stored form too)."""
    out = [customer["first_name"], customer["last_name"], customer["email"], *customer["tags"]]
    out += [v for k, v in customer.items() if k not in ("locale", "lifetime_value", "tags")]
    return [v for v in out if isinstance(v, str)]


def messages(db: str) -> list[dict[str, Any]]:
    return Rows(db).all("SELECT * FROM messages ORDER BY id")


@pytest.fixture
def shop(storage: Storage) -> Storage:
    storage.update_store(123, {"automations": json.dumps({"order_confirmation": True})})
    return storage


def test_a_person_embedded_by_external_id_is_erased_everywhere(
    api: Api, shop: Storage, db: str
) -> None:
    marie = person(
        "C-EMB", "+33612345678", "Zoelle", address="1 rue de la Paix", phone_2="+33698700000"
    )
    write_everything(api, "A", marie)
    paul = person("C-PAUL", "+33611111111", "Paulus")
    write_everything(api, "B", paul)
    # Some of Marie's messages have gone out already.
    Worker(shop).run_once()
    before = messages(db)
    assert {m["state"] for m in before} >= {"sent", "scheduled"}
    assert get(api, "contacts/%2B33612345678")[0] == 200

    assert api.delete("customers/C-EMB").status_code == 204

    assert_gone(api, db, *strings_of(marie), "612345678", "C-EMB", "1 rue de la Paix")
    assert get(api, "contacts/%2B33612345678")[0] == 404
    for path in ("orders/O-A-1", "orders/O-A-2", "checkouts/K-A", "carts/K-A"):
        status, record = get(api, path)
        assert status == 200 and set(record["customer"].values()) == {None}
        assert record["total_price"] in ("59.90", "49.90")  # the shop's data stays
    status, order = get(api, "orders/O-A-1")
    assert order["financial_status"] == "paid"
    assert get(api, "shipments/S-A")[1]["status"] == "in_transit"
    # Marie's messages: pending ones cancelled as erased, all without phone or parameters.
    mine = [m for m in messages(db) if m["record_external_id"] in ("O-A-1", "O-A-2", "K-A", "S-A")]
    assert mine and all(m["contact_phone"] is None and m["parameters"] is None for m in mine)
    assert all(m["state"] in ("sent", "cancelled") for m in mine)
    assert {m["cancelled_reason"] for m in mine if m["state"] == "cancelled"} == {"erased"}
    # Paul keeps everything, his pending messages included.
    assert get(api, "orders/O-B-1")[1]["customer"]["first_name"] == "Paulus"
    assert get(api, "contacts/%2B33611111111")[1]["first_name"] == "Paulus"
    his = [m for m in messages(db) if m["record_external_id"] in ("K-B",)]
    assert his and all(m["contact_phone"] == "+33611111111" for m in his)
    assert any(m["state"] == "scheduled" for m in his)
    # Idempotent: a second erasure changes nothing.
    rows = Rows(db).dump()
    assert api.delete("customers/C-EMB").status_code == 204
    assert Rows(db).dump() == rows


def test_a_posted_customer_is_erased_with_their_records(api: Api, db: str) -> None:
    marie = person("CUST-42", "+33612345678", "Marinette")
    assert api.post("customers", marie).status_code == 201
    write_everything(api, "A", marie)
    assert api.delete("customers/CUST-42").status_code == 204
    assert get(api, "customers/CUST-42")[0] == 404
    assert get(api, "customers/count")[1] == {"count": 0}
    assert_gone(api, db, *strings_of(marie), "CUST-42", "612345678")


def test_a_person_known_only_by_phone_is_erased_by_phone(api: Api, db: str) -> None:
    phonia = person(None, "06 98 76 54 32", "Phonia")
    write_everything(api, "P", phonia)
    assert api.post("customers", person(None, "+33698765432", "Phonia")).status_code == 201
    # Someone with an external_id and the same phone is another person.
    other = person("C-OTHER", "+33698765432", "Otherine")
    write_everything(api, "O", other)

    assert api.delete("customers/%2B33698765432").status_code == 204

    assert_gone(api, db, *[s for s in strings_of(phonia) if s != phonia["phone"]])
    assert get(api, "customers/%2B33698765432")[0] == 404
    for path in ("orders/O-P-1", "checkouts/K-P", "carts/K-P"):
        assert set(get(api, path)[1]["customer"].values()) == {None}
    # The contact stays, rebuilt from the other person's records only.
    status, contact = get(api, "contacts/%2B33698765432")
    assert status == 200 and contact["first_name"] == "Otherine"
    assert contact["orders_count"] == 2 and contact["checkouts_count"] == 1
    assert get(api, "orders/O-O-1")[1]["customer"]["email"] == "otherine@example.com"


def test_a_national_number_reaches_the_person_keyed_by_phone(api: Api, db: str) -> None:
    write_everything(api, "P", person(None, "+33698765432", "Nationa"))
    assert api.delete("customers/0698765432").status_code == 204
    assert_gone(api, db, "Nationa", "698765432")


def test_two_customers_sharing_a_phone_are_two_people(api: Api, db: str) -> None:
    shared = "+33612345678"
    ca, cb = person("CA", shared, "Alicia"), person("CB", shared, "Bernard")
    for customer, suffix in ((ca, "A"), (cb, "B")):
        assert api.post("customers", customer).status_code == 201
        write_everything(api, suffix, customer)

    assert api.delete("customers/CA").status_code == 204

    assert_gone(api, db, "Alicia", "alicia@example.com", "tag-of-Alicia")
    status, customer = get(api, "customers/CB")
    assert status == 200 and customer["first_name"] == "Bernard"
    order = get(api, "orders/O-B-1")[1]
    assert order["customer"]["phone"] == shared and order["customer"]["first_name"] == "Bernard"
    assert order["customer"]["email"] == "bernard@example.com"
    status, contact = get(api, "contacts/%2B33612345678")
    assert status == 200 and contact["first_name"] == "Bernard"
    assert contact["customer_external_ids"] == ["CB"] and contact["orders_count"] == 2
    states = {m["record_external_id"]: m for m in get(api, "messages?limit=250")[1]["messages"]}
    assert states["K-B"]["state"] == "scheduled" and states["K-B"]["contact_phone"] == shared


def test_a_person_whose_phone_changed_is_erased_under_both_numbers(api: Api, db: str) -> None:
    first = person("C-MOVE", "+33612345678", "Mobila")
    write_everything(api, "1", first)
    write_everything(api, "2", {**first, "phone": "+33687654321"})
    assert get(api, "contacts/count")[1] == {"count": 2}
    assert api.delete("customers/C-MOVE").status_code == 204
    assert get(api, "contacts/count")[1] == {"count": 0}
    assert_gone(api, db, "Mobila", "612345678", "687654321", "C-MOVE")


def test_unknown_customer_keys_are_not_stored(api: Api, storage: Storage, db: str) -> None:
    customer = person("C-X", "+33612345678", "Xena", address="1 rue de la Paix", vat="FR123")
    write_everything(api, "X", customer)
    stored = get(api, "orders/O-X-1")[1]["customer"]
    assert "address" not in stored and "vat" not in stored
    assert stored["first_name"] == "Xena" and stored["phone"] == "+33612345678"
    assert "1 rue de la Paix" not in Rows(db).dump()


# (A literal "%2F" in an id is tried on a real server below: Starlette's TestClient
# decodes the path twice.)
@pytest.mark.parametrize("customer_id", ["B/C", "x/y/z", "count-me", "Count", "+33612345678"])
def test_every_accepted_customer_id_can_be_erased(api: Api, db: str, customer_id: str) -> None:
    from urllib.parse import quote

    customer = person(customer_id, "+33612345678", "Pathina")
    assert api.post("customers", customer).status_code == 201
    write_everything(api, "P", customer)
    path = f"customers/{quote(customer_id, safe='')}"
    status, found = get(api, path)
    assert status == 200 and found["external_id"] == customer_id
    assert api.delete(path).status_code == 204
    assert get(api, path)[0] == 404
    assert_gone(api, db, "Pathina", "612345678")


def test_ids_with_a_slash_are_addressable_everywhere(api: Api) -> None:
    customer = {"phone": "+33612345678"}
    order = {"external_id": "A/B", "placed_at": "2026-05-18T10:00:00Z", "total_price": 1}
    assert api.post("orders", {**order, "customer": customer}).status_code == 201
    for path in ("orders/A%2FB", "orders/A/B"):
        assert get(api, path)[1]["external_id"] == "A/B"
    patched = api.patch("orders/A%2FB", {"financial_status": "paid"})
    assert patched.status_code == 200 and patched.json()["financial_status"] == "paid"
    for resource in ("checkouts", "carts"):
        body = {"external_id": "K/1", "abandoned_at": "2026-05-18T09:00:00Z", "total_price": 1}
        assert api.post(resource, {**body, "customer": customer}).status_code == 201
        assert get(api, f"{resource}/K%2F1")[1]["external_id"] == "K/1"
        assert api.patch(f"{resource}/K%2F1", {"status": "expired"}).status_code == 200
    shipment = {"external_id": "S/1", "order_external_id": "A/B"}
    assert api.post("shipments", shipment).status_code == 201
    assert get(api, "shipments/S%2F1")[1]["order_external_id"] == "A/B"
    # The count endpoints are still the count endpoints.
    assert get(api, "orders/count")[1] == {"count": 1}


@pytest.mark.parametrize(
    "resource, body, field",
    [
        ("customers", {"external_id": "count", "phone": "+33612345678"}, "external_id"),
        (
            "orders",
            {"external_id": "count", "placed_at": "2026-05-18T10:00:00Z", "total_price": 1},
            "external_id",
        ),
        (
            "orders",
            {
                "external_id": "O-1",
                "placed_at": "2026-05-18T10:00:00Z",
                "total_price": 1,
                "customer": {"external_id": "count", "phone": "+33612345678"},
            },
            "customer.external_id",
        ),
        (
            "checkouts",
            {"external_id": "count", "abandoned_at": "2026-05-18T10:00:00Z", "total_price": 1},
            "external_id",
        ),
        ("shipments", {"external_id": "count", "order_external_id": "O-1"}, "external_id"),
    ],
)
def test_an_id_that_names_a_path_is_refused_with_the_reason(
    api: Api, resource: str, body: dict[str, Any], field: str
) -> None:
    body = {"customer": {"phone": "+33612345678"}, **body} if resource != "customers" else body
    if resource == "shipments":
        body.pop("customer")
    response = api.post(resource, body)
    assert response.status_code == 422
    assert response.json()["errors"][field] == [
        f'The {field} field must not be "count": the API\'s paths use that name.'
    ]


def test_a_phone_with_letters_is_refused(api: Api) -> None:
    body = {"external_id": "C-1", "phone": "+33 6 AB CD EF GH"}
    response = api.post("customers", body)
    assert response.status_code == 422
    assert response.json()["errors"] == {"phone": ["The phone field must be a valid phone number."]}
    order = {
        "external_id": "O-1",
        "placed_at": "2026-05-18T10:00:00Z",
        "total_price": 1,
        "customer": {"phone": "+33612345678 ext. 12"},
    }
    response = api.post("orders", order)
    assert response.status_code == 422
    assert list(response.json()["errors"]) == ["customer.phone"]
    ok = api.post("orders", {**order, "customer": {"phone": "tel:+33612345678"}})
    assert ok.status_code == 201


def test_erasure_on_a_real_server(server: Any, keys: dict[str, Any], db: str) -> None:
    """Percent-encoded ids through uvicorn, as integrators send them."""
    import httpx

    headers = {"Authorization": f"Bearer {keys['store']}"}
    base = f"{server.url}/api/v1/stores/123"
    body = {"external_id": "B/C", "phone": "+33612345678", "first_name": "Servanne"}
    assert httpx.post(f"{base}/customers", json=body, headers=headers).status_code == 201
    assert httpx.get(f"{base}/customers/B%2FC", headers=headers).status_code == 200
    assert httpx.delete(f"{base}/customers/B%2FC", headers=headers).status_code == 204
    assert httpx.get(f"{base}/customers/B%2FC", headers=headers).status_code == 404
    assert "Servanne" not in Rows(db).dump()
    literal = {**body, "external_id": "A%2FB", "first_name": "Percentine"}
    assert httpx.post(f"{base}/customers", json=literal, headers=headers).status_code == 201
    assert httpx.get(f"{base}/customers/A%252FB", headers=headers).json()["external_id"] == "A%2FB"
    assert httpx.delete(f"{base}/customers/A%252FB", headers=headers).status_code == 204
    assert "Percentine" not in Rows(db).dump()
    refused = httpx.post(
        f"{base}/customers", json={**body, "external_id": "count"}, headers=headers
    )
    assert refused.status_code == 422


def test_records_of_an_erased_person_set_off_nothing_more(api: Api, shop: Storage, db: str) -> None:
    write_everything(api, "A", person("C-GONE", "+33612345678", "Gonzaga"))
    assert api.delete("customers/C-GONE").status_code == 204
    before = messages(db)
    assert api.patch("orders/O-A-1", {"financial_status": "paid"}).status_code == 200
    shipment = {"external_id": "S-A", "order_external_id": "O-A-1", "status": "delivered"}
    assert api.post("shipments", shipment).status_code == 200
    assert api.patch("checkouts/K-A", {"notifications_enabled": True}).status_code == 200
    assert messages(db) == before
