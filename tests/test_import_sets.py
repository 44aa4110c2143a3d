"""`kanal import` writes orders as sets (on PostgreSQL: the COPY path of
``PostgresStorage.upsert_many`` and the set statement of ``touch_contacts``): what
single POSTs to a real kanal write, on each engine.

The file has what the set statements must get right: an order three
times within one chunk, another twice with an order between, orders that come again in
a later chunk, names given, left out and given again (the last one given wins), orders
that recover abandoned checkouts, paid orders with confirmations on, an invalid line.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from kanal.bulk import import_file
from kanal.storage import connect

from .conftest import Server, make_accounts

PHONES = [f"+3361200{n:04d}" for n in range(12)]
#: Stamped by the server when it writes (differ between the two databases).
TIMES = {"inserted_at", "updated_at", "last_activity_at", "next_attempt_at", "created_at"}


@pytest.fixture
def databases(new_db: Callable[[str], str]) -> tuple[str, str]:
    """One database for the POSTs, one for the import, on the test's engine."""
    return new_db("api"), new_db("bulk")


def external_id(n: int) -> str:
    if n >= 100:  # again, a few chunks later
        return f"O-{n - 100}"
    if n % 10 in (1, 2):  # three times in a row (within one chunk of 20)
        return f"O-{n - n % 10}"
    if n % 10 == 7:  # again after other orders of the same chunk
        return f"O-{n - 4}"
    return f"O-{n}"


def orders(now: datetime) -> list[dict[str, Any]]:
    placed = (now - timedelta(minutes=5)).isoformat()
    made = []
    for n in range(140):
        customer: dict[str, Any] = {"phone": PHONES[(n * 5) % len(PHONES)]}
        if n % 3:
            customer["first_name"] = f"First{n}"
        if n % 4 == 0:
            customer["last_name"] = f"Last{n}"
        if n % 5 == 0:
            customer["locale"] = "fr-FR" if n % 2 else "de"
        made.append(
            {
                "external_id": external_id(n),
                "placed_at": placed,
                "total_price": 10 + n,
                "currency": "EUR",
                "financial_status": "paid" if n % 4 == 0 else "pending",
                "customer": customer,
                "line_items": [{"title": f"Item {n}", "quantity": 1 + n % 3, "price": 10 + n}],
                "tags": [f"t{n % 3}"],
                "metadata": {"n": n},
            }
        )
    return made


def checkouts(now: datetime) -> list[dict[str, Any]]:
    return [
        {
            "external_id": f"K-{n}",
            "abandoned_at": (now - timedelta(minutes=30 + n)).isoformat(),
            "total_price": 20 + n,
            "currency": "EUR",
            "recovery_url": f"https://shop.example/recover/{n}",
            "customer": {"phone": PHONES[n], "first_name": f"Checkout{n}"},
        }
        for n in range(0, len(PHONES), 2)
    ]


def prepared(db: str, now: datetime) -> str:
    """Stores and keys, order confirmations on, and the abandoned checkouts (POSTed)."""
    keys = make_accounts(db)
    storage = connect(db)
    try:
        storage.update_store(123, {"automations": json.dumps({"order_confirmation": True})})
    finally:
        storage.close()
    return keys["store"]


def rows(db: str) -> dict[str, list[dict[str, Any]]]:
    """Every row the writes touch, in id order, without the instants they were written at."""
    storage = connect(db)
    try:
        found = {}
        for table in ("orders", "contacts", "checkouts", "messages"):
            found[table] = sorted(
                (
                    {k: v for k, v in row.items() if k not in TIMES}
                    for row in storage.select(table, 123, limit=10_000)
                ),
                key=lambda row: row["id"],
            )
        for message in found["messages"]:
            if message["trigger"] == "order_confirmation":  # due at once: when written
                del message["scheduled_at"]
        return found
    finally:
        storage.close()


def test_import_writes_what_single_posts_to_a_real_server_write(
    databases: tuple[str, str], tmp_path: Path
) -> None:
    via_api, via_import = databases
    now = datetime.now(UTC).replace(microsecond=0)
    lines = [json.dumps(order) for order in orders(now)]
    lines.insert(57, json.dumps({**orders(now)[0], "customer": {"phone": "not a phone"}}))
    source = tmp_path / "orders.jsonl"
    source.write_text("\n".join(lines) + "\n")

    statuses = []
    for db in databases:
        key = prepared(db, now)
        host = Server(db).start()
        try:
            with httpx.Client(
                base_url=f"{host.url}/api/v1/stores/123",
                headers={"Authorization": f"Bearer {key}"},
            ) as client:
                for checkout in checkouts(now):
                    assert client.post("/checkouts", json=checkout).status_code == 201
                if db == via_api:
                    statuses = [client.post("/orders", content=line).status_code for line in lines]
        finally:
            host.stop()
    report = import_file(str(source), 123, "orders", via_import, batch=20, jobs=0)

    valid = [json.loads(line) for line in lines if "not a phone" not in line]
    created = len({order["external_id"] for order in valid})
    assert statuses.count(201) == report.created == created
    assert statuses.count(200) == report.updated == len(valid) - created
    assert statuses.count(422) == len(report.invalid) == 1
    expected, imported = rows(via_api), rows(via_import)
    for table in expected:  # table by table, row by row: a failure shows the row
        assert len(expected[table]) == len(imported[table]), table
        for want, got in zip(expected[table], imported[table], strict=True):
            assert want == got, table
    # What the comparison stands on, checked directly: ids in the order records came,
    # each order as last sent, each contact with the last names given.
    assert [row["external_id"] for row in imported["orders"]] == list(
        dict.fromkeys(order["external_id"] for order in valid)
    )
    last = {order["external_id"]: order for order in valid}
    assert all(
        row["metadata"] == last[row["external_id"]]["metadata"] for row in imported["orders"]
    )
    names: dict[str, dict[str, Any]] = {}
    for order in checkouts(now) + valid:
        seen = names.setdefault(order["customer"]["phone"], {})
        seen.update({k: v for k, v in order["customer"].items() if k != "phone"})
    contacts = {row["phone"]: row for row in imported["contacts"]}
    assert set(contacts) == set(PHONES)
    for phone, given in names.items():
        for name in ("first_name", "last_name", "locale"):
            assert contacts[phone][name] == given.get(name), (phone, name)
    assert any(row["status"] == "recovered" for row in imported["checkouts"])
    assert any(row["trigger"] == "order_confirmation" for row in imported["messages"])
