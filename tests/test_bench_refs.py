"""bench.run's reference servers: the FastAPI peer refuses what kanal refuses, and
the plain stack and the peer serve the benchmark's request."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from starlette.testclient import TestClient

from bench import peer, plain
from bench.run import prepare
from kanal import validation
from kanal.formats import current_region
from kanal.spec import load_spec, resolve

SEED = {
    "external_id": "ORDER-1001",
    "placed_at": "2026-05-18T10:00:00Z",
    "total_price": 49.90,
    "currency": "EUR",
    "financial_status": "pending",
    "fulfillment_status": "unfulfilled",
    "customer": {
        "external_id": "CUST-42",
        "phone": "+33612345678",
        "first_name": "Marie",
        "last_name": "Durand",
        "email": "marie.durand@example.com",
        "locale": "fr",
        "tags": ["vip"],
        "lifetime_value": 1299,
        "orders_count": 7,
    },
    "line_items": [{"title": "T-shirt Bordeaux", "quantity": 2, "price": 24.95}],
    "tags": ["web"],
    "metadata": {"source": "custom-checkout"},
}


def changed(path: str, value: Any) -> dict[str, Any]:
    """The seed order with one field set (``a.b``; a value of ``...`` removes it)."""
    body = copy.deepcopy(SEED)
    *parents, name = path.split(".")
    node: Any = body
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value is ...:
        del node[name]
    else:
        node[name] = value
    return body


CASES = [
    ("seed", SEED),
    ("extra field", changed("gift", True)),
    ("national number read in FR", changed("customer.phone", "06 12 34 56 78")),
    ("all nullable null", {**SEED, "currency": None, "tags": None, "line_items": None}),
    ("integer money", changed("total_price", 50)),
    ("no external_id", changed("external_id", ...)),
    ("no placed_at", changed("placed_at", ...)),
    ("no total_price", changed("total_price", ...)),
    ("no customer", changed("customer", ...)),
    ("no phone", changed("customer.phone", ...)),
    ("empty external_id", changed("external_id", "")),
    ("external_id count", changed("external_id", "count")),
    ("control character", changed("external_id", "A\x01B")),
    ("external_id too long", changed("external_id", "x" * 256)),
    ("money as a string", changed("total_price", "49.90")),
    ("money as a boolean", changed("total_price", True)),
    ("negative money", changed("total_price", -1)),
    ("money over the maximum", changed("total_price", 1e12)),
    ("date without offset", changed("placed_at", "2026-05-18T10:00:00")),
    ("date with a space", changed("placed_at", "2026-05-18 10:00:00Z")),
    ("not a date", changed("placed_at", "yesterday")),
    ("lowercase currency", changed("currency", "eur")),
    ("long currency", changed("currency", "EURO")),
    ("status too long", changed("financial_status", "x" * 65)),
    ("status with NUL", changed("financial_status", "a\x00b")),
    ("phone with letters", changed("customer.phone", "+33 6 AB CD EF GH")),
    ("phone too long", changed("customer.phone", "+3" + "3" * 63)),
    ("bad email", changed("customer.email", "marie@")),
    ("locale too long", changed("customer.locale", "fr-FR-paris")),
    ("negative lifetime value", changed("customer.lifetime_value", -1)),
    ("float orders count", changed("customer.orders_count", 2.0)),
    ("customer not an object", changed("customer", "Marie")),
    ("tag not a string", changed("tags", [1])),
    ("tag too long", changed("tags", ["x" * 256])),
    ("fractional quantity", changed("line_items.0.quantity", 2.5)),
    ("negative price", changed("line_items.0.price", -1)),
    ("sku too long", changed("line_items.0.sku", "x" * 256)),
    ("line item not an object", changed("line_items", ["T-shirt"])),
    ("metadata an array", changed("metadata", ["x"])),
]


def kanal_accepts(body: dict[str, Any]) -> bool:
    spec = load_spec()
    schema = resolve(spec, spec["components"]["requestBodies"]["OrderInput"])
    schema = schema["content"]["application/json"]["schema"]
    token = current_region.set("FR")
    try:
        return not list(validation.compiled(schema).iter_errors(body))
    finally:
        current_region.reset(token)


def peer_accepts(body: dict[str, Any]) -> bool:
    try:
        peer.Order.model_validate(body)
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize(("name", "body"), CASES, ids=[name for name, _ in CASES])
def test_the_peer_refuses_what_kanal_refuses(name: str, body: dict[str, Any]) -> None:
    assert peer_accepts(body) == kanal_accepts(body), name


def test_the_cases_cover_both_outcomes() -> None:
    outcomes = [kanal_accepts(body) for _, body in CASES]
    assert outcomes.count(True) >= 4 and outcomes.count(False) >= 30


@pytest.mark.parametrize("module", [peer, plain], ids=["peer", "plain"])
def test_the_reference_servers_serve_the_benchmark(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, module: Any
) -> None:
    db = str(tmp_path / "bench.db")
    key = prepare(db)
    monkeypatch.setenv("KANAL_DB", db)
    url = "/api/v1/stores/123/orders"
    with TestClient(module.create_app()) as client:
        good = client.post(url, json=SEED, headers={"Authorization": f"Bearer {key}"})
        assert good.status_code == 200
        assert good.json() == {"external_id": "ORDER-1001", "store_id": 123}
        if module is peer:
            refused = client.post(url, json=SEED, headers={"Authorization": "Bearer nope"})
            assert refused.status_code == 401
            bad = changed("total_price", "49.90")
            invalid = client.post(url, json=bad, headers={"Authorization": f"Bearer {key}"})
            assert invalid.status_code == 422
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT store_id, external_id, body FROM bench_orders").fetchall()
    assert [(store, external_id) for store, external_id, _ in rows] == [(123, "ORDER-1001")]
    assert json.loads(rows[0][2])["customer"]["phone"] == "+33612345678"
