"""kanal on PostgreSQL, end to end: the command line, and two `kanal serve` processes
(two ports, as two hosts) on one database: one 201 out of 20 identical concurrent
POSTs, a rate limit exact across both, a write read through the other at once, and
two `kanal worker` processes sending each due message once."""

from __future__ import annotations

import concurrent.futures
import itertools
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from kanal.storage import connect
from kanal.throwaway import fresh_database

from .conftest import ROOT, Server

_names = itertools.count()
PHONE = "+33612345678"
ZERO = "\u0000é"  # U+0000 in free JSON: kept, on both engines
ORDER = {
    "external_id": "ORDER-1",
    "placed_at": "2026-05-18T10:00:00Z",
    "total_price": 49.9,
    "currency": "EUR",
    "customer": {"external_id": "C-1", "phone": "+33612345678", "first_name": "Marie"},
}


@pytest.fixture(scope="module")
def cluster(postgres: tuple[str, str]) -> str:
    """The session's PostgreSQL server (tests/conftest.py)."""
    return postgres[0]


@pytest.fixture
def database(cluster: str) -> Iterator[str]:
    with fresh_database(cluster, "kanal_live") as url:
        yield url


def kanal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kanal", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def store_and_key(database: str, rate_limit: int = 100_000) -> str:
    made = kanal(
        "stores", "create", "--id", "123", "--name", "Shop", "--region", "FR",
        "--rate-limit", str(rate_limit), "--db", database,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    key = kanal("keys", "create", "--store", "123", "--db", database)
    assert key.returncode == 0, key.stderr
    return key.stdout.strip().splitlines()[-1]


@pytest.fixture
def hosts(database: str) -> Iterator[tuple[Server, Server]]:
    first, second = Server(database), Server(database)
    first.start()
    try:
        second.start()
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


def test_the_command_line_works_on_postgresql(database: str) -> None:
    migrated = kanal("migrate", "--db", database)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.endswith("(created)\n")
    assert kanal("migrate", "--db", database).stdout.endswith("(up to date)\n")
    key = store_and_key(database)
    assert len(key) == 24
    listed = kanal("stores", "list", "--db", database)
    assert "store 123 'Shop'" in listed.stdout
    again = kanal("stores", "create", "--id", "123", "--name", "Again", "--db", database)
    assert again.returncode == 1 and "Traceback" not in again.stderr
    # demo refuses a database that holds a store of its own (no public key on it)
    demo = kanal("demo", "--db", database, "--port", "1")
    assert demo.returncode == 1 and "is not a demo database" in demo.stderr
    storage = connect(database)
    try:
        assert [k["store_id"] for k in storage.list_keys()] == [123]
    finally:
        storage.close()


def test_two_hosts_on_one_database(database: str, hosts: tuple[Server, Server]) -> None:
    key = store_and_key(database)
    headers = {"Authorization": f"Bearer {key}"}
    urls = [f"{host.url}/api/v1/stores/123" for host in hosts]

    def post(n: int) -> int:
        return httpx.post(f"{urls[n % 2]}/orders", json=ORDER, headers=headers).status_code

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        statuses = list(pool.map(post, range(20)))
    assert sorted(statuses) == [200] * 19 + [201]
    # A write through one host is read through the other at once.
    changed = httpx.patch(
        f"{urls[0]}/orders/ORDER-1", json={"financial_status": "paid"}, headers=headers
    )
    assert changed.status_code == 200
    read = httpx.get(f"{urls[1]}/orders/ORDER-1", headers=headers).json()
    assert read["financial_status"] == "paid" and read["total_price"] == "49.90"
    assert httpx.get(f"{urls[1]}/orders/count", headers=headers).json() == {"count": 1}
    contact = httpx.get(f"{urls[0]}/contacts/%2B33612345678", headers=headers).json()
    assert contact["first_name"] == "Marie" and contact["orders_count"] == 1


def test_a_rate_limit_is_exact_across_hosts(database: str, hosts: tuple[Server, Server]) -> None:
    key = store_and_key(database, rate_limit=30)
    headers = {"Authorization": f"Bearer {key}"}
    urls = [f"{host.url}/api/v1/stores/123/orders/count" for host in hosts]

    def get(n: int) -> int:
        return httpx.get(urls[n % 2], headers=headers).status_code

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(get, range(80)))
    assert statuses.count(200) == 30 and statuses.count(429) == 50


def test_two_workers_send_each_due_message_once(database: str) -> None:
    key = store_and_key(database)
    headers = {"Authorization": f"Bearer {key}"}
    host = Server(database).start()
    try:
        base = f"{host.url}/api/v1/stores/123"
        assert httpx.post(f"{base}/orders", json=ORDER, headers=headers).status_code == 201
        for n in range(40):  # a shipping message each, due now
            shipment = {
                "external_id": f"S-{n}",
                "order_external_id": "ORDER-1",
                "status": "in_transit",
            }
            assert httpx.post(f"{base}/shipments", json=shipment, headers=headers).is_success
    finally:
        host.stop()
    command = [sys.executable, "-m", "kanal", "worker", "--once", "--batch", "3", "--db", database]
    workers = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(2)
    ]
    handled = []
    for worker in workers:
        out, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
        handled.append(int(out.decode().split()[1]))
    assert sum(handled) == 40
    with psycopg.connect(database) as conn:
        rows = conn.execute("SELECT state, attempts FROM messages").fetchall()
    assert len(rows) == 40 and set(rows) == {("sent", 1)}


def masked(value: Any, today: str) -> Any:
    """A response with the instants the server stamps itself (today's) masked."""
    if isinstance(value, dict):
        return {k: masked(v, today) for k, v in value.items()}
    if isinstance(value, list):
        return [masked(v, today) for v in value]
    if isinstance(value, str) and value.startswith(today):
        return "<now>"
    return value


def test_the_api_answers_alike_on_both_engines(database: str, tmp_path: Path) -> None:
    """The same requests to a kanal on SQLite and one on PostgreSQL: the same statuses
    and bodies (key order included), but for the instants each server stamps."""
    answers, today = [], datetime.now(UTC).date().isoformat()
    for db in (str(tmp_path / "kanal.db"), database):
        key = store_and_key(db)
        headers = {"Authorization": f"Bearer {key}"}
        host = Server(db).start()
        try:
            base = f"{host.url}/api/v1/stores/123"
            steps = [
                ("POST", "orders", {**ORDER, "metadata": {"z": ZERO, "a": [1, {"b": None}]}}),
                ("POST", "orders", {**ORDER, "customer": {"phone": PHONE, "last_name": "\u0000"}}),
                ("POST", "customers", {"external_id": "C-1", "phone": "0612345678", "tags": ["v"]}),
                ("POST", "checkouts", {
                    "external_id": "K-1", "abandoned_at": "2026-05-18T09:00:00Z",
                    "total_price": 20, "customer": {"phone": "+33612345678"},
                    "recovery_url": "https://shop.example.com/r/1",
                }),
                ("PATCH", "checkouts/K-1", {"status": "completed"}),
                ("GET", "orders/ORDER-1", None),
                ("GET", "orders?limit=1&created_at_min=2026-01-01T00:00:00Z", None),
                ("GET", "checkouts/K-1", None),
                ("GET", "customers/C-1", None),
                ("GET", "contacts/%2B33612345678", None),
                ("GET", "orders/count?financial_status=paid", None),
                ("GET", "stats/recovery?from=2026-05-01T00:00:00Z&to=2026-05-31T00:00:00Z", None),
                ("DELETE", "customers/C-1", None),
                ("GET", "orders/ORDER-1", None),
            ]  # fmt: skip
            seen = []
            for method, path, body in steps:
                response = httpx.request(method, f"{base}/{path}", json=body, headers=headers)
                shown = masked(response.json(), today) if response.content else None
                seen.append((method, path, response.status_code, shown))
            answers.append(seen)
        finally:
            host.stop()
    sqlite, postgres = answers
    for left, right in zip(sqlite, postgres, strict=True):
        assert left == right
    assert sqlite[1][2] == 422  # U+0000 in a text field, on both
    assert sqlite[5][3]["metadata"] == {"z": ZERO, "a": [1, {"b": None}]}


def test_kanal_import_gives_the_same_database_on_both_engines(
    database: str, tmp_path: Path
) -> None:
    """`kanal import` on PostgreSQL: the same rows as on SQLite (checkouts first, then
    the orders that recover them, then shipments with a bad line and an unknown order)."""
    import json

    files = {
        "checkouts": [
            {
                "external_id": f"K-{n}",
                "abandoned_at": "2026-05-18T09:00:00Z",
                "total_price": 5,
                "customer": {"phone": f"+336123400{n:02d}"},
                "recovery_url": "https://shop.example.com/r",
            }
            for n in range(30)
        ],
        "orders": [
            {
                "external_id": f"O-{n}",
                "placed_at": "2026-05-18T10:00:00Z",
                "total_price": 10 + n % 7,
                "customer": {"external_id": f"C-{n % 40}", "phone": f"+336123400{n % 40:02d}"},
            }
            for n in range(120)
        ],
        "shipments": [
            {"external_id": f"S-{n}", "order_external_id": f"O-{n}", "status": "in_transit"}
            for n in range(10)
        ]
        + [{"external_id": "S-X", "order_external_id": "NOPE", "status": "lost"}],
    }
    today = datetime.now(UTC).date().isoformat()
    tables = []
    for db in (str(tmp_path / "kanal.db"), database):
        store_and_key(db)
        for resource, records in files.items():
            path = tmp_path / f"{resource}.jsonl"
            path.write_text("\n".join(json.dumps(r) for r in records) + "\n")
            done = kanal("import", str(path), "--store", "123", "--resource", resource, "--db", db)
            assert done.returncode == (1 if resource == "shipments" else 0), done.stderr
            assert "Traceback" not in done.stderr
        storage = connect(db)
        try:
            tables.append(
                {
                    table: masked(storage.select(table, 123), today)
                    for table in ("orders", "checkouts", "contacts", "shipments", "messages")
                }
            )
        finally:
            storage.close()
    sqlite, postgres = tables
    assert sqlite == postgres
    assert sum(row["status"] == "recovered" for row in postgres["checkouts"]) == 30


def every_row(database: str) -> str:
    """Every row of every table of the PostgreSQL database, as text."""
    with psycopg.connect(database) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = current_schema()"
            )
        ]
        return "\n".join(
            repr(row) for table in tables for row in conn.execute(f'SELECT * FROM "{table}"')
        )


def test_erasure_erases_the_person_on_postgresql(database: str) -> None:
    """Issue 11's rule on the second engine: the person embedded by external_id is gone
    from reads, the outbox and every row; someone sharing the phone keeps their data."""
    key = store_and_key(database)
    headers = {"Authorization": f"Bearer {key}"}
    host = Server(database).start()
    try:
        base = f"{host.url}/api/v1/stores/123"
        alicia = {"external_id": "CA", "phone": PHONE, "first_name": "Alicia", "email": "a@x.test"}
        bernard = {"external_id": "CB", "phone": PHONE, "first_name": "Bernard"}
        for customer, suffix in ((alicia, "A"), (bernard, "B")):
            order = {**ORDER, "external_id": f"O-{suffix}", "customer": customer}
            assert httpx.post(f"{base}/orders", json=order, headers=headers).status_code == 201
            checkout = {
                "external_id": f"K-{suffix}",
                "abandoned_at": datetime.now(UTC).isoformat(),
                "total_price": 20,
                "customer": customer,
                "recovery_url": "https://shop.example.com/r",
            }
            assert httpx.post(f"{base}/checkouts", json=checkout, headers=headers).is_success
        assert "Alicia" in every_row(database)
        assert httpx.delete(f"{base}/customers/CA", headers=headers).status_code == 204
        for text in ("Alicia", "a@x.test", "CA'"):
            assert text not in every_row(database)
        erased = httpx.get(f"{base}/orders/O-A", headers=headers).json()["customer"]
        assert set(erased.values()) == {None}
        kept = httpx.get(f"{base}/orders/O-B", headers=headers).json()["customer"]
        assert kept["first_name"] == "Bernard" and kept["phone"] == PHONE
        contact = httpx.get(f"{base}/contacts/%2B33612345678", headers=headers).json()
        assert contact["first_name"] == "Bernard"
        messages = httpx.get(f"{base}/messages", headers=headers).json()["messages"]
        mine = [m for m in messages if m["record_external_id"] == "K-A"]
        assert mine and all(m["state"] == "cancelled" for m in mine)
        assert {m["cancelled_reason"] for m in mine} == {"erased"}
        assert all(m["contact_phone"] is None and m["parameters"] is None for m in mine)
        theirs = [m for m in messages if m["record_external_id"] == "K-B"]
        assert theirs and all(m["state"] == "scheduled" for m in theirs)
    finally:
        host.stop()
