"""Reads: retrieve, list filters at their edges, cursor pages, counts, store isolation."""

from __future__ import annotations

import base64
import json
import re
from typing import Any

import pytest

from kanal import formats
from kanal.storage import Storage

from .conftest import OTHER_STORE, STORE, Api

PHONE = "+33612345678"


def order(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "external_id": f"ORDER-{n}",
        "placed_at": f"2026-05-{n % 28 + 1:02d}T10:00:00Z",
        "total_price": n,
        "currency": "EUR",
        "customer": {"phone": PHONE},
        **extra,
    }


def checkout(n: int, abandoned_at: str = "2026-05-18T09:40:00Z", **extra: Any) -> dict[str, Any]:
    return {
        "external_id": f"CHECKOUT-{n}",
        "abandoned_at": abandoned_at,
        "total_price": 10,
        "currency": "EUR",
        "customer": {"phone": PHONE},
        **extra,
    }


def get(api: Api, path: str, **params: Any) -> Any:
    return api.client.get(api.url(path), params=params, headers=api.headers())


def ids(response: Any, key: str) -> list[str]:
    assert response.status_code == 200, response.text
    return [record["external_id"] for record in response.json()[key]]


def links(response: Any) -> dict[str, str]:
    """rel -> URL of a Link header."""
    return {
        rel: url
        for url, rel in re.findall(r'<([^>]+)>; rel="(\w+)"', response.headers.get("Link", ""))
    }


def test_retrieve_order_is_a_superset_of_the_write_response(api: Api) -> None:
    body = order(
        1,
        financial_status="paid",
        tags=["web"],
        metadata={"k": [1]},
        line_items=[{"title": "T", "quantity": 2, "price": 24.95, "color": "red"}],
    )
    written = api.post("orders", body).json()
    read = get(api, "orders/ORDER-1").json()
    assert {k: read[k] for k in written} == written
    assert isinstance(read["id"], int)
    assert read["customer"] == {"phone": PHONE}
    assert read["line_items"] == body["line_items"] and read["metadata"] == {"k": [1]}
    assert read["updated_at"].endswith("+00:00")


@pytest.mark.parametrize("resource", ["orders", "checkouts", "carts", "customers", "shipments"])
def test_retrieve_unknown_is_404(api: Api, resource: str) -> None:
    response = get(api, f"{resource}/NOPE")
    assert response.status_code == 404
    assert response.json() == {"error": f"{resource[:-1].capitalize()} not found"}


def test_retrieve_checkout_has_recovery_fields(api: Api) -> None:
    recent = formats.now()
    api.post("checkouts", checkout(1, abandoned_at=recent))
    read = get(api, "checkouts/CHECKOUT-1").json()
    assert read["status"] == "abandoned" and read["recovery_status"] == "abandoned"
    assert read["recovered_at"] is None and read["recovered_order_external_id"] is None
    assert read["notifications_enabled"] is True
    assert read["notification_status"] == "not_scheduled"
    assert read["notifications_scheduled_at"] == []


def test_customer_reads_and_erasure(api: Api) -> None:
    api.post("customers", {"external_id": "CUST-1", "phone": PHONE, "first_name": "Marie"})
    api.post("customers", {"phone": "+33699999999", "first_name": "Paul"})
    assert get(api, "customers/CUST-1").json()["phone"] == PHONE
    assert get(api, "customers/%2B33699999999").json()["first_name"] == "Paul"
    assert get(api, "customers/count").json() == {"count": 2}
    api.delete("customers/CUST-1")
    assert get(api, "customers/CUST-1").status_code == 404
    assert ids(get(api, "customers"), "customers") == [None]
    assert get(api, "customers/count").json() == {"count": 1}


def test_shipment_read(api: Api) -> None:
    api.post("orders", order(1))
    api.post("shipments", {"external_id": "SHIP-1", "order_external_id": "ORDER-1"})
    read = get(api, "shipments/SHIP-1").json()
    assert read["order_external_id"] == "ORDER-1" and read["status"] is None


def test_created_at_filters_are_inclusive(api: Api) -> None:
    for n in (1, 2, 3):  # placed 2026-05-02, -03, -04 at 10:00Z
        api.post("orders", order(n))
    got = ids(
        get(
            api,
            "orders",
            created_at_min="2026-05-03T10:00:00Z",
            created_at_max="2026-05-04T10:00:00Z",
        ),
        "orders",
    )
    assert got == ["ORDER-2", "ORDER-3"]
    # Offsets are normalised to UTC before comparing.
    got = ids(get(api, "orders", created_at_max="2026-05-03T12:00:00+02:00"), "orders")
    assert got == ["ORDER-1", "ORDER-2"]
    assert ids(get(api, "orders", created_at_min="2026-06-01T00:00:00Z"), "orders") == []
    assert (
        ids(
            get(
                api,
                "orders",
                created_at_min="2026-05-04T10:00:01Z",
                created_at_max="2026-05-01T00:00:00Z",
            ),
            "orders",
        )
        == []
    )


def test_updated_at_filters(api: Api, monkeypatch: pytest.MonkeyPatch) -> None:
    for n, stamp in ((1, "2026-06-01T00:00:00+00:00"), (2, "2026-06-02T00:00:00+00:00")):
        monkeypatch.setattr(formats, "now", lambda stamp=stamp: stamp)
        api.post("orders", order(n))
    assert ids(get(api, "orders", updated_at_min="2026-06-02T00:00:00Z"), "orders") == ["ORDER-2"]
    assert ids(get(api, "orders", updated_at_max="2026-06-01T00:00:00Z"), "orders") == ["ORDER-1"]
    assert get(api, "orders/count", updated_at_min="2026-06-01T00:00:00Z").json()["count"] == 2


def test_since_id_status_and_string_filters(api: Api) -> None:
    for n in range(1, 6):
        api.post("orders", order(n, financial_status="paid" if n % 2 else "pending"))
    first = get(api, "orders").json()["orders"]
    assert ids(get(api, "orders", since_id=first[2]["id"]), "orders") == ["ORDER-4", "ORDER-5"]
    assert ids(get(api, "orders", since_id=first[-1]["id"]), "orders") == []
    assert ids(get(api, "orders", financial_status="pending"), "orders") == ["ORDER-2", "ORDER-4"]
    assert get(api, "orders/count", financial_status="paid").json() == {"count": 3}
    api.post(
        "shipments", {"external_id": "S1", "order_external_id": "ORDER-1", "status": "delivered"}
    )
    api.post("shipments", {"external_id": "S2", "order_external_id": "ORDER-1"})
    assert ids(get(api, "shipments", status="delivered"), "shipments") == ["S1"]
    api.post("checkouts", checkout(1))
    api.post("checkouts", checkout(2))
    api.patch("checkouts/CHECKOUT-2", {"status": "expired"})
    assert ids(get(api, "checkouts", status="expired"), "checkouts") == ["CHECKOUT-2"]


@pytest.mark.parametrize(
    "params, field, message",
    [
        ({"limit": 0}, "limit", "The limit field must be at least 1."),
        ({"limit": 251}, "limit", "The limit field must not be greater than 250."),
        ({"since_id": -1}, "since_id", "The since_id field must be at least 0."),
        (
            {"created_at_min": "yesterday"},
            "created_at_min",
            "The created_at_min field must be a valid date.",
        ),
        ({"status": "lost"}, "status", "The selected status is invalid."),
    ],
)
def test_invalid_filters_are_422(
    api: Api, params: dict[str, Any], field: str, message: str
) -> None:
    response = get(api, "checkouts", **params)
    assert response.status_code == 422
    assert response.json()["errors"] == {field: [message]}


def test_limit_edges(api: Api, storage: Storage) -> None:
    for n in range(1, 4):
        api.post("customers", {"external_id": f"C{n}", "phone": f"+3361234567{n}"})
    assert ids(get(api, "customers", limit=1), "customers") == ["C1"]
    assert len(ids(get(api, "customers", limit=250), "customers")) == 3
    assert len(ids(get(api, "customers"), "customers")) == 3  # default 50


def test_pagination_walks_forward_and_back_without_loss_or_repetition(
    api: Api, storage: Storage
) -> None:
    for n in range(1, 301):
        api.post("customers", {"external_id": f"C{n:03d}", "phone": f"+336{n:08d}"})
    api.delete("customers/C150")  # erased: gone from every page
    expected = [f"C{n:03d}" for n in range(1, 301) if n != 150]
    seen, pages = [], 0
    response = get(api, "customers", limit=17)
    assert "previous" not in links(response)
    while True:
        seen += ids(response, "customers")
        pages += 1
        if "next" not in links(response):
            break
        response = api.client.get(links(response)["next"], headers=api.headers())
    assert seen == expected and pages == 18
    back = []
    while True:
        back = ids(response, "customers") + back
        if "previous" not in links(response):
            break
        response = api.client.get(links(response)["previous"], headers=api.headers())
    assert back == expected


def test_cursor_keeps_the_filters_and_limit_may_change(api: Api) -> None:
    for n in range(1, 11):
        api.post("orders", order(n, financial_status="paid" if n % 2 else "pending"))
    first = get(api, "orders", financial_status="paid", limit=2)
    assert ids(first, "orders") == ["ORDER-1", "ORDER-3"]
    next_url = links(first)["next"].replace("limit=2", "limit=3")
    second = api.client.get(next_url, headers=api.headers())
    assert ids(second, "orders") == ["ORDER-5", "ORDER-7", "ORDER-9"]
    assert set(links(second)) == {"previous"}


def tamper(token: str) -> str:
    data, signature = token.split(".")
    payload = json.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    payload["b"] = 0
    forged = base64.urlsafe_b64encode(json.dumps(payload).encode()).rstrip(b"=").decode()
    return f"{forged}.{signature}"


def test_bad_cursors_are_400(api: Api, keys: dict[str, Any]) -> None:
    for n in range(1, 4):
        api.post("orders", order(n))
    token = links(get(api, "orders", limit=1))["next"].split("page_info=")[1]
    other = Api(api.client, keys["other"], store=OTHER_STORE)
    message = {"error": "Invalid page_info: use the cursors of the Link header as they are."}
    for bad in (tamper(token), token[:-2], "garbage", "a.b.c", "!!.??"):
        response = get(api, "orders", page_info=bad)
        assert (response.status_code, response.json()) == (400, message), bad
    assert get(api, "customers", page_info=token).status_code == 400  # another resource
    assert get(other, "orders", page_info=token).status_code == 400  # another store
    combined = get(api, "orders", page_info=token, since_id=1)
    assert combined.status_code == 400
    assert combined.json() == {
        "error": "page_info cannot be combined with filters; only limit may change."
    }
    assert get(api, "orders", page_info=token, limit=5).status_code == 200


def test_count_matches_the_list(api: Api) -> None:
    for n in range(1, 8):
        api.post("orders", order(n, fulfillment_status="fulfilled" if n > 4 else None))
    for params in (
        {},
        {"fulfillment_status": "fulfilled"},
        {"created_at_min": "2026-05-05T00:00:00Z"},
    ):
        listed = len(get(api, "orders", limit=250, **params).json()["orders"])
        assert get(api, "orders/count", **params).json() == {"count": listed}


def test_no_read_returns_another_stores_record(api: Api, keys: dict[str, Any]) -> None:
    other = Api(api.client, keys["other"], store=OTHER_STORE)
    api.post("orders", order(1, financial_status="mine"))
    other.post("orders", order(1, financial_status="theirs", customer={"phone": "+12025550123"}))
    other.post("orders", order(2, customer={"phone": "+12025550123"}))
    assert get(api, "orders/ORDER-1").json()["financial_status"] == "mine"
    assert get(other, "orders/ORDER-1").json()["financial_status"] == "theirs"
    assert ids(get(api, "orders"), "orders") == ["ORDER-1"]
    assert get(api, "orders/count").json() == {"count": 1}
    assert get(api, "orders/ORDER-2").status_code == 404
    assert get(api, "contacts/%2B12025550123").status_code == 404
    # A key never reads another store, whatever it asks for.
    foreign = api.client.get(api.url("orders", store=OTHER_STORE), headers=api.headers())
    assert foreign.status_code == 403
    team = Api(api.client, keys["team"], store=OTHER_STORE)
    assert get(team, "orders/ORDER-1").status_code == 403


def test_count_path_is_not_an_order(api: Api) -> None:
    api.post("orders", order(1))
    assert api.post("orders", order(2, external_id="count")).status_code == 422  # unaddressable
    assert get(api, "orders/count").json() == {"count": 1}
    response = api.patch("orders/count", {"financial_status": "paid"})
    assert response.status_code == 405
    assert response.headers["Allow"] == "GET, HEAD"
    assert ids(get(api, "orders", financial_status="paid"), "orders") == []


@pytest.mark.sqlite_only("SQLite's plans; PostgreSQL's: tests/test_pgstore.py")
@pytest.mark.parametrize("page", [{"after": 10}, {"before": 10}, {}])
def test_list_query_uses_an_index_not_a_scan(storage: Storage, page: dict[str, int]) -> None:
    """Pages are keyset reads on (store_id, id): no OFFSET, no scan, no sort."""
    sql, params = storage.select_sql("orders", STORE, [], limit=50, **page)
    plan = " ".join(row[3] for row in storage.conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "USING INDEX idx_orders_store_id_id" in plan, plan
    assert "TEMP B-TREE" not in plan and "OFFSET" not in sql
    sql, params = storage.select_sql("orders", STORE, [("financial_status", "=", "paid")], limit=50)
    plan = " ".join(row[3] for row in storage.conn.execute(f"EXPLAIN QUERY PLAN {sql}", params))
    assert "USING INDEX idx_orders_store_id_financial_status" in plan, plan
