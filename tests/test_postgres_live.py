"""kanal on PostgreSQL, end to end: the command line, and two `kanal serve` processes
(two ports, as two hosts) on one database: one 201 out of 20 identical concurrent
POSTs, a rate limit exact across both, a write read through the other at once, and
two `kanal worker` processes sending each due message once."""

from __future__ import annotations

import concurrent.futures
import itertools
import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import psycopg
import pytest

from kanal.storage import connect
from kanal.throwaway import server

from .conftest import ROOT, Server
from .test_pgstore import with_database

_names = itertools.count()
ORDER = {
    "external_id": "ORDER-1",
    "placed_at": "2026-05-18T10:00:00Z",
    "total_price": 49.9,
    "currency": "EUR",
    "customer": {"external_id": "C-1", "phone": "+33612345678", "first_name": "Marie"},
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with server() as url:
        yield url


@pytest.fixture
def database(cluster: str) -> Iterator[str]:
    name = f"kanal_live_{os.getpid()}_{next(_names)}"
    with psycopg.connect(cluster, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield with_database(cluster, name)
    with psycopg.connect(cluster, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


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
