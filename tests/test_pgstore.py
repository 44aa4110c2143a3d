"""The PostgreSQL engine (kanal/storage/postgres.py): SQLite's answers, and safe across hosts.

The session's throwaway cluster serves the module (``KANAL_TEST_POSTGRES_URL`` names a server of
yours instead); every test has a fresh database. Coroutines run with asyncio.run.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import itertools
import os
import sqlite3
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from kanal import formats
from kanal.storage import FILLFACTOR, MIGRATIONS, REWRITTEN, TABLES, Storage, contact_of
from kanal.storage.postgres import COLUMNS, STORE_TABLES, PostgresStorage

BASE = datetime(2026, 5, 18, 10, 0, tzinfo=UTC)
LATEST = MIGRATIONS[-1][0]
HOUR = timedelta(hours=1)
P1, P2, P3, P4 = "+33612345678", "+33698765432", "+33611111111", "+33622222222"
_names = itertools.count()


def iso(moment: datetime) -> str:
    return moment.isoformat()


@pytest.fixture(scope="module")
def cluster(postgres: tuple[str, str]) -> str:
    """The session's PostgreSQL server (tests/conftest.py)."""
    return postgres[0]


def with_database(url: str, name: str) -> str:
    """``url`` naming another database (a libpq URL stays a URL, query kept)."""
    if "://" in url:
        return urlsplit(url)._replace(path=f"/{name}").geturl()
    return make_conninfo(url, dbname=name)


@pytest.fixture
def database(cluster: str) -> Iterator[str]:
    """A fresh, empty database of the cluster, dropped afterwards."""
    name = f"kanal_pgstore_{os.getpid()}_{next(_names)}"
    with psycopg.connect(cluster, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    yield with_database(cluster, name)
    with psycopg.connect(cluster, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Clock:
    """formats' clock, frozen during each operation and moved on between them (both
    engines see the same instants, with and without microseconds)."""

    def __init__(self) -> None:
        self.steps = 0
        self.at = BASE

    def __call__(self) -> datetime:
        return self.at

    def tick(self) -> None:
        self.steps += 1
        self.at = BASE + timedelta(seconds=self.steps, microseconds=(self.steps % 3) * 123457)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(formats, "clock", fake)
    return fake


# -- the differential test ---------------------------------------------------------


def canon(value: Any) -> Any:
    """A value with its types and dict key order made comparable (1 != True != 1.0,
    {"a", "b"} order-free, {"b":.., "a":..} != {"a":.., "b":..})."""
    if isinstance(value, dict):
        return ("dict", tuple((key, canon(item)) for key, item in value.items()))
    if isinstance(value, list | tuple):
        return (type(value).__name__, tuple(canon(item) for item in value))
    if isinstance(value, set | frozenset):
        return ("set", tuple(sorted(repr(canon(item)) for item in value)))
    return (type(value).__name__, value)


def family(exc: BaseException) -> str:
    """An error as both engines name it: their IntegrityError classes differ (sqlite3's,
    psycopg's), which is one of the few things that must."""
    if isinstance(exc, sqlite3.IntegrityError | psycopg.IntegrityError):
        return "IntegrityError"
    return type(exc).__name__


class Engine:
    """Either storage behind one awaitable interface, for the scenario."""

    def __init__(self, store: Storage | PostgresStorage) -> None:
        self.store = store

    async def __call__(self, name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "get_customer":
            # What handlers/customers.py does, on either engine: by external_id, else by
            # phone for a customer keyed by phone.
            store_id, key, phone = args
            found = await self(
                "select", "customers", store_id, [("external_id", "=", key)], limit=1
            )
            if not found and phone is not None:
                by_phone = [("external_id", "is null", None), ("phone", "=", phone)]
                found = await self("select", "customers", store_id, by_phone, limit=1)
            return found[0] if found else None
        result = getattr(self.store, name)(*args, **kwargs)
        return await result if inspect.isawaitable(result) else result

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        if isinstance(self.store, Storage):
            with self.store.transaction():
                yield
        else:
            async with self.store.transaction():
                yield

    @asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        if isinstance(self.store, Storage):
            with self.store.savepoint():
                yield
        else:
            async with self.store.savepoint():
                yield


def customer(phone: str, external_id: str | None = None, first: str = "Marie") -> dict[str, Any]:
    """An embedded customer as records.customer_columns makes it (keys not sorted)."""
    found: dict[str, Any] = {"phone": phone, "first_name": first, "last_name": "Durand"}
    if external_id is not None:
        found = {"external_id": external_id, **found}
    return {**found, "locale": "fr-FR", "email": f"{first.lower()}@example.com"}


def basket(total: str, person: dict[str, Any]) -> dict[str, Any]:
    return {
        "total_price": total,
        "currency": "EUR",
        "customer": person,
        "customer_external_id": person.get("external_id"),
        "customer_phone": person["phone"],
        "line_items": [{"sku": "TSHIRT-M", "quantity": 2, "price": 24.95, "name": "T-shirt"}],
        "tags": ["vip", "b2c"],
        "metadata": {
            "zeta": 1,
            "alpha": {"b": 2, "a": [1.5, "x", None, True, False]},
            "big": 2**70,
            "small": 1e-7,
            "unicode": "é ✓ 😀 \u2028",
            "shrug": "\\ud800",
        },
    }


def order(external_id: str, placed_at: datetime, total: str, person: dict[str, Any]) -> dict:
    return {
        "external_id": external_id,
        "placed_at": iso(placed_at),
        "financial_status": "pending",
        "fulfillment_status": None,
        **basket(total, person),
    }


def checkout(external_id: str, abandoned_at: datetime, total: str, person: dict) -> dict:
    return {
        "external_id": external_id,
        "abandoned_at": iso(abandoned_at),
        "recovery_url": f"https://shop.example/recover/{external_id}",
        **basket(total, person),
    }


def message(table: str, row_id: int, step: int, phone: str | None, **extra: Any) -> dict:
    return {
        "trigger": "recovery",
        "record_table": table,
        "record_id": row_id,
        "record_external_id": f"X{row_id}",
        "contact_phone": phone,
        "template": "abandoned_checkout",
        "language": "fr_FR",
        "sender": "log",
        "step": f"recovery_{step}",
        "dedupe_key": f"{table}:{row_id}:recovery:{step}",
        "parameters": {"first_name": "Marie", "recovery_url": "https://x", **extra},
    }


async def scenario(db: Engine, clock: Clock) -> tuple[list[tuple[str, Any]], dict[str, Any]]:
    """The same operations on either engine; every answer, canonicalised, in order;
    and what must differ, kept aside."""
    log: list[tuple[str, Any]] = []
    aside: dict[str, Any] = {}

    async def call(label: str, name: str, *args: Any, **kwargs: Any) -> Any:
        clock.tick()
        try:
            result = await db(name, *args, **kwargs)
        except (sqlite3.Error, psycopg.Error, ValueError, AssertionError) as exc:
            result = ("raised", family(exc))
        log.append((label, canon(result)))
        return result

    # Accounts.
    await call("store 1", "create_store",
               {"id": 1, "name": "Shop", "team_id": 7, "region": "FR", "rate_limit": 30,
                "paused": 0})  # fmt: skip
    await call("store 1 again", "create_store", {"id": 1, "name": "Dup", "region": "FR"})
    await call("store 2", "create_store",
               {"id": 2, "name": "Other", "team_id": None, "region": "US", "rate_limit": 100,
                "paused": 0, "attribution_days": 3,
                "automations": '{"order_confirmation": true, "recovery_steps": [60]}'})  # fmt: skip
    await call("team 7", "team_exists", 7)
    await call("team 8", "team_exists", 8)
    await call("pause", "update_store", 1, {"paused": True})
    await call("unpause", "update_store", 1, {"paused": 0, "name": "Shop one"})
    await call("update nothing", "update_store", 99, {})
    await call("no store", "get_store", 99)
    await call("stores", "list_stores")
    key = {"name": "k", "token_hash": "h" * 64, "prefix": "abcd", "store_id": 1, "team_id": None}
    await call("key", "create_key", key)
    team_key = {**key, "name": "team", "token_hash": "t" * 64, "store_id": None, "team_id": 7}
    team_key_id = await call("team key", "create_key", team_key)
    await call("find key", "find_key", "h" * 64)
    await call("keys", "list_keys")
    await call("account", "account", "h" * 64, 1)
    await call("account, other store", "account", "h" * 64, 2)
    await call("account, no key", "account", "nope", 1)
    await call("account remembered", "account", "h" * 64, 1, remembered=True)
    await call("account remembered again", "account", "h" * 64, 1, remembered=True)
    await call("delete key", "delete_key", team_key_id)
    await call("delete key again", "delete_key", team_key_id)
    await call("account, revoked", "account", "t" * 64, 1)
    await call("set setting", "set_setting", "demo", "x")
    await call("setting", "setting", "demo")
    await call("set setting again", "set_setting", "demo", "y")
    await call("setting again", "setting", "demo")
    await call("no setting", "setting", "none")

    # Records.
    c1, p2, p3, p4 = customer(P1, "C1"), customer(P2, first="Zoé"), customer(P3), customer(P4)
    o1, _ = await call("order O1", "upsert", "orders", 1, order("O1", BASE - timedelta(hours=2),
                                                                "49.90", c1))  # fmt: skip
    await call("contact O1", "touch_contact", 1, o1["customer"])
    o1_paid = {**order("O1", BASE - timedelta(hours=2), "59.00", c1), "financial_status": "paid"}
    await call("order O1 again", "upsert", "orders", 1, o1_paid)
    k1, _ = await call("checkout K1", "upsert", "checkouts", 1,
                       checkout("K1", BASE - timedelta(hours=1), "19.99", c1))  # fmt: skip
    a1, _ = await call("cart A1", "upsert", "carts", 1,
                       checkout("A1", BASE - timedelta(minutes=30), "0.00", p2))  # fmt: skip
    await call("contacts", "touch_contacts", 1,
               [contact_of(c1), contact_of(p2), contact_of({"phone": None}),
                contact_of({"phone": P1, "first_name": None, "last_name": "Dupont"})])  # fmt: skip
    customer_c1 = {
        "external_id": "C1",
        "phone": P1,
        "first_name": "Marie",
        "last_name": "Durand",
        "email": "marie@example.com",
        "locale": "fr",
        "tags": ["z", "a"],
        "lifetime_value": 1299,
        "orders_count": 7.0,  # JSON's 7.0 is an integer: SQLite keeps 7
    }
    await call("customer C1", "upsert", "customers", 1, customer_c1)
    await call("customer C1 again", "upsert", "customers", 1, {**customer_c1, "tags": None})
    by_phone = {"external_id": None, "phone": P2, "deleted_at": None}
    keyed = {**customer_c1, "external_id": None, "phone": P2, "first_name": "Zoé"}
    await call("customer by phone", "upsert", "customers", 1, keyed, key=by_phone)
    await call("customer by phone again", "upsert", "customers", 1,
               {**keyed, "lifetime_value": None}, key=by_phone)  # fmt: skip
    await call("customer P3", "upsert", "customers", 1,
               {**keyed, "phone": P3, "first_name": "Léa"},
               key={**by_phone, "phone": P3})  # fmt: skip
    for touched in (c1, p2, p3):
        await call("touch", "touch_contact", 1, touched)
    shipment = {
        "external_id": "S1",
        "order_id": o1["id"],
        "order_external_id": "O1",
        "tracking_number": "TRK1",
        "tracking_url": None,
        "carrier": "La Poste",
        "status": "in_transit",
        "metadata": {"b": 1, "a": 2},
    }
    await call("shipment", "upsert", "shipments", 1, shipment)
    await call("shipment again", "upsert", "shipments", 1, {**shipment, "status": "delivered"})
    await call("get O1", "get", "orders", 1, "O1")
    await call("get O1, other store", "get", "orders", 2, "O1")
    await call("get K1 by id", "get_by_id", "checkouts", k1["id"])
    await call("customer C1 found", "get_customer", 1, "C1", None)
    await call("customer by phone found", "get_customer", 1, P2, P2)
    await call("customer not found", "get_customer", 1, "nobody", None)

    # Patches.
    recovered_at = iso(BASE + timedelta(minutes=5, microseconds=5))
    await call("K1 recovered", "patch", "checkouts", 1, "K1", {"status": "recovered"},
               {"recovered_at": recovered_at})  # fmt: skip
    await call("K1 completed", "patch", "checkouts", 1, "K1", {"status": "completed"},
               {"recovered_at": iso(BASE + timedelta(hours=9))})  # fmt: skip
    await call("K1 abandoned", "patch", "checkouts", 1, "K1",
               {"status": "abandoned", "recovered_at": None,
                "recovered_order_external_id": None})  # fmt: skip
    # An order written by itself unless its phone has an open abandoned checkout or
    # cart: K1 is open for P1, so nothing is written (on PostgreSQL no id is drawn
    # either: O6 takes the same id on both engines).
    await call("O5 unless open", "upsert_unless_open", "orders", 1,
               order("O5", BASE, "5.00", c1))  # fmt: skip
    await call("O5 not written", "get", "orders", 1, "O5")
    await call("O6 unless open", "upsert_unless_open", "orders", 1,
               order("O6", BASE, "6.00", p4))  # fmt: skip
    await call("O6 again unless open", "upsert_unless_open", "orders", 1,
               order("O6", BASE, "6.50", {**p4, "first_name": "Inès"}))  # fmt: skip
    await call("contact of O6", "select", "contacts", 1, [("phone", "=", P4)])
    await call("no customer", "upsert_unless_open", "customers", 1, customer_c1)
    refunded = {"tags": ["vip", "b"], "metadata": None, "financial_status": "refunded"}
    await call("O1 patched", "patch", "orders", 1, "O1", refunded)
    await call("A1 off", "patch", "carts", 1, "A1", {"notifications_enabled": False})
    await call("A1 on", "patch", "carts", 1, "A1", {"notifications_enabled": True})
    await call("missing patch", "patch", "orders", 1, "nope", {"tags": []})
    await call("open abandoned", "phones_with_open_abandoned", 1, {P1, P2, P4})

    # Recovery attribution, both ways.
    o2, _ = await call("order O2", "upsert", "orders", 1, order("O2", BASE, "19.99", c1))
    await call("attribute O2", "attribute", 1, o2, iso(BASE - timedelta(days=7)))
    await call("attribute O2 again", "attribute", 1, o2, iso(BASE - timedelta(days=7)))
    await call("order O3", "upsert", "orders", 1,
               order("O3", BASE - timedelta(minutes=10), "12.50", p4))  # fmt: skip
    a2, _ = await call("cart A2", "upsert", "carts", 1,
                       checkout("A2", BASE - timedelta(minutes=20), "12.50", p4))  # fmt: skip
    await call("arrival A2", "attribute_arrival", "carts", a2,
               iso(BASE - timedelta(minutes=20) + timedelta(days=7)))  # fmt: skip
    await call("A2 now", "get_by_id", "carts", a2["id"])
    await call("arrival A1", "attribute_arrival", "carts", a1, iso(BASE + timedelta(days=7)))
    await call("totals orders", "totals", "orders", 1, [P1, P2, P4, "+33600000000"])
    await call("totals checkouts", "totals", "checkouts", 1, [P1, P2])
    await call("totals carts", "totals", "carts", 1, [P2, P4])
    await call("customer ids", "customer_ids", 1, [P1, P2, P3, P4])

    # The outbox.
    due1, due2 = BASE + timedelta(hours=1), BASE + timedelta(days=1)
    k2, _ = await call("checkout K2", "upsert", "checkouts", 1, checkout("K2", BASE, "5.00", c1))
    await call("schedule K2 1", "schedule_message", 1, message("checkouts", k2["id"], 1, P1),
               iso(due1))  # fmt: skip
    await call("reschedule K2 1", "schedule_message", 1,
               message("checkouts", k2["id"], 1, P1, total_price="5.00"),
               iso(due1 + timedelta(microseconds=1)))  # fmt: skip
    await call("schedule K2 2", "schedule_message", 1, message("checkouts", k2["id"], 2, P1),
               iso(due2))  # fmt: skip
    await call("schedule A1 1", "schedule_message", 1, message("carts", a1["id"], 1, P2),
               iso(due1))  # fmt: skip
    await call("schedule store 2", "schedule_message", 2, message("carts", 99, 1, P3), iso(BASE))
    await call("cancel A1", "cancel_messages", 1, "cancelled: status expired",
               record=("carts", a1["id"]), trigger="recovery")  # fmt: skip
    await call("schedule A1 1 back", "schedule_message", 1, message("carts", a1["id"], 1, P2),
               iso(due1 + timedelta(minutes=1)))  # fmt: skip
    await call("schedule P3", "schedule_message", 1, message("carts", 77, 1, P3), iso(due1))
    await call("schedule P3 2", "schedule_message", 1, message("carts", 77, 2, P3), iso(due2))
    await call("schedule many", "schedule_messages", 1,
               [message("carts", 88, 1, P3), message("carts", 88, 2, P3, total_price="1.00"),
                message("carts", 88, 1, P3, first_name="Again"),
                message("carts", a1["id"], 1, P2, total_price="2.00")], iso(due1))  # fmt: skip
    await call("schedule none", "schedule_messages", 1, [], iso(due1))
    no_language = {k: v for k, v in message("carts", 55, 2, P3).items() if k != "language"}
    await call("schedule two shapes", "schedule_messages", 1,
               [message("carts", 55, 1, P3), no_language], iso(due2))  # fmt: skip
    await call("cancel by key", "cancel_messages", 1, "x", key="carts:77:recovery:2")
    await call("cancel by key again", "cancel_messages", 1, "x", key="carts:77:recovery:2")
    await call("cancel by phone", "cancel_messages", 1, "y", phone=P3)
    await call("pause store 2", "update_store", 2, {"paused": 1})
    now = iso(BASE + timedelta(days=2))
    lease = iso(BASE + timedelta(days=2, minutes=1))
    first = await call("claim 2", "claim_messages", now, lease, 2)
    rest = await call("claim rest", "claim_messages", now, lease, 10)
    await call("claim none", "claim_messages", now, lease, 10)
    await call("unpause store 2", "update_store", 2, {"paused": 0})
    await call("claim store 2", "claim_messages", now, lease, 10)
    sent = first[0]
    await call("sent", "finish_message", sent["id"], lease,
               {"sender": "log", "last_error": None, "state": "sent",
                "provider_id": "wamid.1", "sent_at": now})  # fmt: skip
    await call("sent again", "finish_message", sent["id"], lease, {"state": "failed"})
    await call("wrong lease", "finish_message", first[1]["id"], now, {"state": "failed"})
    await call("retry", "finish_message", first[1]["id"], lease,
               {"state": "scheduled", "last_error": "429",
                "next_attempt_at": iso(BASE + timedelta(days=2, seconds=45))})  # fmt: skip
    for claimed in [*first, *rest]:
        await call("later step", "later_step_due", claimed, iso(BASE + timedelta(days=3)))
    await call("resend a sent one", "schedule_message", 1, message("checkouts", k2["id"], 1, P1),
               iso(due2))  # fmt: skip
    await call("resend sent ones", "schedule_messages", 1,
               [message("checkouts", k2["id"], 1, P1, total_price="9.00"),
                message("carts", 66, 1, None)], iso(due2))  # fmt: skip
    await call("notifications", "notification_state", "checkouts", [k1["id"], k2["id"], 999])
    await call("no notifications", "notification_state", "carts", [])
    await call("opted out?", "opted_out", 1, P1)
    await call("opt out", "set_opt_out", 1, P1, True)
    await call("opted out now", "opted_out", 1, P1)
    await call("opt out nobody", "set_opt_out", 1, "+33633333333", True)
    await call("opt in", "set_opt_out", 1, P1, False)

    # Bulk orders.
    columns = ("external_id", "placed_at", "financial_status", "fulfillment_status",
               *basket("1.00", c1))  # fmt: skip
    bulk = [
        {**order("O10", BASE, "10.00", c1), "financial_status": "paid"},
        order("O1", BASE + timedelta(minutes=1), "11.00", c1),
        {**order("O11", BASE, "999999999999.99", p4), "financial_status": "paid"},
        {**order("O10", BASE, "10.50", c1), "fulfillment_status": "fulfilled"},
    ]
    rows = [tuple(Storage.encode(record).values()) for record in bulk]
    await call("upsert many", "upsert_many", "orders", 1, columns, rows)
    await call("upsert none", "upsert_many", "orders", 1, columns, [])
    await call("get many", "get_many", "orders", 1, ["O11", "nope", "O1", "O10", "O1"])
    await call("get none", "get_many", "orders", 1, [])
    await call("get some columns", "get_many", "orders", 1, ["O10", "O1"], ["id", "customer"])
    await call("get no column", "get_many", "orders", 1, ["O10"], ["id", "nope"])
    await call("get no table", "get_many", "nope", 1, ["O10"])

    # Import jobs.
    job = {"resource": "orders", "format": "ndjson", "total": 3}
    payload = b'{"external_id": "I1"}\n\n{"b": 2}\n{"c": 3}\n'
    first = await call("import", "create_import", 1, job, payload, 2)
    await call("import 2", "create_import", 1, {**job, "format": "json"}, b"[1, 2]", 2)
    await call("import, too many", "create_import", 1, job, payload, 2)
    await call("import, other store", "create_import", 2, job, b"{}\n", 2)
    await call("import payload", "import_payload", 1, first["id"])
    await call("import payload, other store", "import_payload", 2, first["id"])
    at, lease = iso(BASE + timedelta(days=2)), iso(BASE + timedelta(days=2, minutes=1))
    claimed = await call("claim import", "claim_import", at, lease)
    await call("claim import 2", "claim_import", at, lease)
    await call("claim import, other store", "claim_import", at, lease)
    await call("claim import, none", "claim_import", at, lease)
    renewed = iso(BASE + timedelta(days=2, minutes=2))
    chunk = {"processed": 2, "created": 1, "updated": 0, "invalid": 1}
    async with db.transaction():
        await call("hold import", "hold_import", 1, claimed["id"], lease)
        await call("advance import", "advance_import", 1, claimed["id"], lease, chunk,
                   [(3, {"b": ["The b field is wrong."], "": ["x"]})], renewed)  # fmt: skip
    await call("hold import, old lease", "hold_import", 1, claimed["id"], lease)
    await call("advance import, old lease", "advance_import", 1, claimed["id"], lease, chunk,
               [], renewed)  # fmt: skip
    await call("claim import, lease held", "claim_import", iso(BASE + timedelta(days=2, minutes=1)),
               lease)  # fmt: skip
    later = iso(BASE + timedelta(days=2, minutes=3))
    taken = await call(
        "claim import, lease ran out", "claim_import", later, iso(BASE + timedelta(days=3))
    )
    await call("finish import, lost lease", "finish_import", 1, claimed["id"], renewed, "done")
    await call("finish import", "finish_import", 1, taken["id"], iso(BASE + timedelta(days=3)),
               "failed", "why")  # fmt: skip
    await call("cancel import, ended", "cancel_import", 1, taken["id"])
    await call("cancel import", "cancel_import", 1, first["id"] + 1)
    await call("cancel import, unknown", "cancel_import", 1, 999)
    await call("cancel import, other store", "cancel_import", 2, first["id"])
    await call("payloads after", "import_payload", 1, first["id"])
    await call("imports", "select", "imports", 1, [("state", "in", ["failed", "cancelled"])])
    await call("imports count", "count", "imports", 1, [("resource", "=", "orders")])
    await call("import errors", "select", "import_errors", 1, [("import_id", "=", claimed["id"])])

    # Reads: filters, cursors, counts.
    reads: list[tuple[str, list[Any], dict[str, Any]]] = [
        ("orders", [], {}),
        ("orders", [("financial_status", "=", "paid")], {}),
        ("orders", [("financial_status", "in", ["pending", "refunded"])], {"limit": 2}),
        ("orders", [("placed_at", ">=", iso(BASE - timedelta(minutes=10)))], {}),
        ("orders", [("placed_at", "<", iso(BASE))], {}),
        ("orders", [("fulfillment_status", "is null", None)], {"after": 2}),
        ("orders", [("financial_status", "!=", "paid")], {"before": 5, "limit": 2}),
        ("orders", [("id", ">", 1), ("updated_at", "<=", iso(BASE + timedelta(hours=1)))], {}),
        ("orders", [], {"before": 1}),
        ("orders", [("external_id", "in", [])], {}),
        ("checkouts", [], {"cutoff": iso(BASE - timedelta(days=7))}),
        ("checkouts", [("recovery_status", "=", "abandoned")], {"cutoff": iso(BASE)}),
        ("carts", [("recovery_status", "=", "recovered")], {"cutoff": iso(BASE)}),
        ("carts", [("status", "!=", "active"), ("abandoned_at", ">=", iso(BASE - HOUR))], {}),
        ("customers", [], {}),
        ("customers", [("external_id", "is null", None), ("phone", "=", P2)], {"limit": 1}),
        ("shipments", [("status", "=", "delivered")], {}),
        ("contacts", [], {}),
        ("contacts", [("opted_out", "=", 0)], {}),
        ("messages", [("state", "=", "sending")], {}),
        ("messages", [], {}),
        ("messages", [("trigger", "=", "recovery")], {"after": 1, "limit": 2}),
        ("orders", [("nope", "=", 1)], {}),
        ("orders", [("id", "like", 1)], {}),
        ("orders", [("recovery_status", "=", "abandoned")], {}),
    ]
    for table, where, page in reads:
        await call(f"select {table} {where} {page}", "select", table, 1, where, **page)
        if not {"after", "before", "limit"} & set(page):
            await call(f"count {table} {where}", "count", table, 1, where, **page)

    # Erasure.
    await call("erase C1", "erase_person", 1, "C1", None)
    await call("erase by phone", "erase_person", 1, P2, P2)
    await call("erase nobody", "erase_person", 1, "ghost", None)
    await call("erase unknown phone", "erase_person", 1, "+33699999999", "+33699999999")
    await call("customer after erasure", "upsert", "customers", 1,
               {**customer_c1, "external_id": "C9"})  # fmt: skip

    # Rate limits.
    for store_id, limit, wanted, at in [
        (1, 30, 7, 1000.0), (1, 30, 7, 1000.5), (1, 30, 7, 1001.0), (1, 30, 7, 1002.0),
        (1, 30, 7, 1003.0), (1, 30, 7, 1059.999), (1, 30, 7, 1060.0), (1, 5, 7, 1061.0),
        (1, 5, 7, 1120.25), (2, 0, 1, 5.5), (2, 400, 2, 6.0),
    ]:  # fmt: skip
        await call(f"permits {store_id} {limit} {wanted} {at}", "reserve_permits",
                   store_id, limit, wanted, at)  # fmt: skip

    # The rest.
    secret = await call("secret", "secret")
    log[-1] = ("secret", canon((type(secret).__name__, len(secret))))  # drawn at random
    aside["secret"] = secret
    again = await call("secret again", "secret")
    log[-1] = ("secret again", canon(again == secret))
    await call("migrate again", "migrate")
    await call("ping", "ping")
    await call("encode", "encode", {"tags": ["b", "a"], "metadata": None, "x": {"b": 1}})

    # Everything, as it stands.
    for table in ("orders", "checkouts", "carts", "customers", "shipments", "contacts",
                  "messages", "imports", "import_errors"):  # fmt: skip
        for store_id in (1, 2):
            await call(f"all {table} {store_id}", "select", table, store_id)
    await call("all stores", "list_stores")
    await call("all keys", "list_keys")

    # Transactions: a failure undoes the transaction; a savepoint undoes its part alone.
    class Undo(Exception):
        pass

    try:
        async with db.transaction():
            await call("in transaction", "upsert", "orders", 1, order("OX", BASE, "1.00", p3))
            raise Undo
    except Undo:
        pass
    await call("undone", "get", "orders", 1, "OX")
    async with db.transaction():
        clock.tick()
        kept, created = await db("upsert", "orders", 1, order("OY", BASE, "2.00", p3))
        log.append(("kept", canon(({**kept, "id": None}, created))))  # its id: see below
        try:
            async with db.savepoint():
                clock.tick()
                part, created = await db("upsert", "orders", 1, order("OZ", BASE, "3.00", p3))
                log.append(("part", canon(({**part, "id": None}, created))))
                raise Undo
        except Undo:
            pass
    await call("part undone", "get", "orders", 1, "OZ")

    # What must differ: ids. PostgreSQL's sequences never give an id back: not the one
    # of an insert rolled back (OX, OZ), nor the one of the last row deleted (SQLite
    # takes max(id) + 1 again).
    clock.tick()
    aside["next order"] = (await db("upsert", "orders", 1, order("ON", BASE, "1.00", p3)))[0]
    await db("erase_person", 1, "C9", None)  # the customer with the highest id
    aside["next customer"] = (
        await db("upsert", "customers", 1, {**customer_c1, "external_id": "C10"})
    )[0]
    return log, aside


def test_postgres_answers_as_sqlite_does(database: str, clock: Clock, tmp_path: Path) -> None:
    """One sequence of operations on SQLite's Storage and on PostgresStorage, compared
    answer by answer, types and key order included. Left aside, because they must
    differ: the cursor secret (random; both 32 bytes and stable), an IntegrityError's
    class (compared by family), and ids after a rollback or after deleting the row with
    the highest id (sequences never give ids back); checked below for what they are."""
    sqlite = Storage(str(tmp_path / "kanal.db"))
    try:
        expected, sqlite_aside = asyncio.run(scenario(Engine(sqlite), clock))
    finally:
        sqlite.close()

    async def on_postgres() -> tuple[list[tuple[str, Any]], dict[str, Any]]:
        store = await PostgresStorage.open(database, pool_size=2)
        try:
            return await scenario(Engine(store), clock)
        finally:
            await store.close()

    clock.steps, clock.at = 0, BASE
    found, pg_aside = asyncio.run(on_postgres())
    assert [label for label, _ in found] == [label for label, _ in expected]
    for (label, answer), (_, wanted) in zip(found, expected, strict=True):
        assert answer == wanted, label
    assert len(pg_aside["secret"]) == len(sqlite_aside["secret"]) == 32
    # OX and OZ were rolled back: SQLite gave their ids again, PostgreSQL did not.
    assert pg_aside["next order"]["id"] == sqlite_aside["next order"]["id"] + 2
    # C10 follows the erased C9: SQLite reuses C9's id, PostgreSQL never does.
    assert pg_aside["next customer"]["id"] == sqlite_aside["next customer"]["id"] + 1
    for key in ("next order", "next customer"):
        assert {**pg_aside[key], "id": 0} == {**sqlite_aside[key], "id": 0}


# -- concurrency, across pools (as across hosts) -------------------------------------


async def opened(url: str, pool_size: int = 4) -> PostgresStorage:
    store = await PostgresStorage.open(url, pool_size=pool_size)
    if await store.get_store(1) is None:
        await store.create_store({"id": 1, "name": "Shop", "region": "FR", "rate_limit": 30})
    return store


def test_twenty_concurrent_identical_upserts_create_one(database: str) -> None:
    """20 identical upserts at once (20 connections): one created, one row, one id; the
    same through transactions that also touch the contact, as the API writes, and for
    customers keyed by phone (the partial unique index)."""

    async def main() -> None:
        store = await opened(database, pool_size=20)
        try:
            record = order("O1", BASE, "49.90", customer(P1, "C1"))
            results = await asyncio.gather(*(store.upsert("orders", 1, record) for _ in range(20)))
            assert sum(created for _, created in results) == 1
            assert len({row["id"] for row, _ in results}) == 1
            assert await store.count("orders", 1) == 1

            async def linked(n: int) -> bool:
                async with store.transaction():
                    row, created = await store.upsert(
                        "checkouts", 1, checkout("K1", BASE, f"{n}.00", customer(P1))
                    )
                    await store.touch_contact(1, row["customer"])
                    return created

            assert sum(await asyncio.gather(*(linked(n) for n in range(20)))) == 1
            assert await store.count("checkouts", 1) == 1
            assert await store.count("contacts", 1) == 1

            key = {"external_id": None, "phone": P2, "deleted_at": None}
            keyed = {"external_id": None, "phone": P2, "first_name": "Zoé", "tags": []}
            results = await asyncio.gather(
                *(store.upsert("customers", 1, keyed, key=key) for _ in range(20))
            )
            assert sum(created for _, created in results) == 1
            assert await store.count("customers", 1) == 1
            # The losers of a race drew ids (an INSERT that met a conflict), but an update
            # draws none: ids go on one by one, as in SQLite.
            o2 = order("O2", BASE, "1.00", customer(P1))
            first, _ = await store.upsert("orders", 1, o2)
            for _ in range(5):
                assert (await store.upsert("orders", 1, o2))[1] is False
            row, created = await store.upsert("orders", 1, {**o2, "external_id": "O3"})
            assert (row["id"], created) == (first["id"] + 1, True)
        finally:
            await store.close()

    asyncio.run(main())


def test_orders_of_one_turn_commit_together_and_answer_each_their_own(database: str) -> None:
    """``upsert_unless_open`` calls made in one turn of the event loop share one
    statement pipeline and one commit: each gets its own answer (created, updated, the
    last of two versions of one order kept, None for a phone with an open abandoned
    checkout, whose order is not written), and a member that fails (a string PostgreSQL
    cannot store) fails alone: the others are written, each by itself."""

    async def main() -> None:
        store = await opened(database, pool_size=2)
        try:
            await store.upsert("checkouts", 1, checkout("K1", BASE, "9.00", customer(P3)))
            await store.upsert("orders", 1, order("O2", BASE, "2.00", customer(P1)))
            calls = [
                ("O1", "1.00", customer(P1, "C1")),
                ("O2", "2.50", customer(P2)),
                ("O9", "9.00", customer(P3)),  # K1 is open for P3
                ("O1", "1.50", customer(P1, "C1", first="Léa")),  # O1 again, later
                ("O4", "4.00", customer(P4)),
            ]
            results = await asyncio.gather(
                *(
                    store.upsert_unless_open("orders", 1, order(ext, BASE, total, person))
                    for ext, total, person in calls
                )
            )
            answers = [None if r is None else (r[0]["external_id"], r[1]) for r in results]
            assert answers == [("O1", True), ("O2", False), None, ("O1", False), ("O4", True)]
            assert (await store.get("orders", 1, "O1"))["total_price"] == "1.50"
            assert (await store.get("orders", 1, "O2"))["customer_phone"] == P2
            assert await store.get("orders", 1, "O9") is None
            contacts = await store.select("contacts", 1, [("phone", "=", P1)])
            assert contacts[0]["first_name"] == "Léa"

            bad = order("O5", BASE, "5.00", customer(P2))
            bad["fulfillment_status"] = "nul\x00"
            results = await asyncio.gather(
                store.upsert_unless_open("orders", 1, order("O6", BASE, "6.00", customer(P1))),
                store.upsert_unless_open("orders", 1, bad),
                store.upsert_unless_open("orders", 1, order("O7", BASE, "7.00", customer(P4))),
                return_exceptions=True,
            )
            assert isinstance(results[1], psycopg.DataError)
            assert [r[1] for r in (results[0], results[2])] == [True, True]
            assert await store.get("orders", 1, "O5") is None
            assert {r["external_id"] for r in await store.select("orders", 1, [])} == {
                "O1", "O2", "O4", "O6", "O7"
            }  # fmt: skip
        finally:
            await store.close()

    asyncio.run(main())


def test_tables_that_hold_rows_get_statistics(database: str) -> None:
    """A table PostgreSQL has no statistics of is analyzed once it holds rows
    (``analyze_new_tables``): its plans are then made knowing the store's rows are not
    few; empty tables are left for later."""

    async def main() -> None:
        store = await opened(database, pool_size=2)
        try:
            await store.upsert("orders", 1, order("O1", BASE, "1.00", customer(P1)))
            left = await store.analyze_new_tables()
            assert "orders" not in left
            assert {"checkouts", "contacts"} <= set(left)  # empty
            async with store.pool.connection() as conn:
                cursor = await conn.execute(
                    "SELECT reltuples FROM pg_class WHERE relname = 'orders'"
                )
                assert (await cursor.fetchone())["reltuples"] == 1
        finally:
            await store.close()

    asyncio.run(main())


def test_two_hosts_share_one_exact_rate_window(database: str) -> None:
    """Two storages (two pools, as two hosts) reserving at once for a store limited to
    30 a minute: exactly 30 granted, never more taken than the limit."""

    async def main() -> None:
        hosts = [await opened(database, pool_size=8), await opened(database, pool_size=8)]
        try:
            calls = [
                host.reserve_permits(1, 30, wanted, 1000.0 + n / 100)
                for n, (host, wanted) in enumerate(
                    itertools.product(hosts, [1, 1, 2, 3, 1, 5, 1, 1, 2, 1] * 4)
                )
            ]
            results = await asyncio.gather(*calls)
            assert sum(granted for _, granted, _ in results) == 30
            assert max(taken for _, _, taken in results) == 30
            assert len({start for start, _, _ in results}) == 1  # the first call's now
            # The next window starts afresh, for both.
            assert await hosts[1].reserve_permits(1, 30, 1, 1061.0) == (1061.0, 1, 1)
            assert await hosts[0].reserve_permits(1, 30, 40, 1061.5) == (1061.0, 29, 30)
        finally:
            for host in hosts:
                await host.close()

    asyncio.run(main())


def test_two_claimers_never_claim_the_same_message(database: str) -> None:
    """Two workers on two hosts claim small batches at once until nothing is due:
    every message is claimed once."""

    async def main() -> None:
        hosts = [await opened(database, pool_size=4), await opened(database, pool_size=4)]
        try:
            for n in range(150):
                await hosts[0].schedule_message(
                    1, message("checkouts", n, 1, P1), iso(BASE + timedelta(seconds=n % 7))
                )
            now, lease = iso(BASE + timedelta(hours=1)), iso(BASE + timedelta(hours=2))

            async def worker(host: PostgresStorage) -> list[int]:
                taken: list[int] = []
                while batch := await host.claim_messages(now, lease, 7):
                    taken += [claimed["id"] for claimed in batch]
                return taken

            claims = await asyncio.gather(*(worker(host) for host in hosts for _ in range(3)))
            ids = [message_id for claimed in claims for message_id in claimed]
            assert len(ids) == len(set(ids)) == 150
            assert all(claims), "every worker took part"
            assert await hosts[1].count("messages", 1, [("state", "=", "sending")]) == 150
        finally:
            for host in hosts:
                await host.close()

    asyncio.run(main())


def test_attribution_waits_for_the_other_hosts_write_of_the_contact(database: str) -> None:
    """A checkout and an order of one contact written at once on two hosts, interleaved
    as badly as can be: each looks for the other before either commits. Unserialised,
    neither would see the other and nothing would be recovered (SQLite's single writer
    never lets that happen); here the order's transaction waits for the checkout's (the
    contact's lock), then sees it and recovers it."""

    async def main() -> None:
        one, two = await opened(database), await opened(database)
        checkout_written, order_written, checkout_looked = (asyncio.Event() for _ in range(3))

        async def waited(event: asyncio.Event) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), 0.5)

        async def checkout_on_one() -> Any:
            async with one.transaction():
                row, _ = await one.upsert("checkouts", 1, checkout("K1", BASE, "9.00",
                                                                   customer(P1)))  # fmt: skip
                checkout_written.set()
                await waited(order_written)  # (never, when the order waits for the lock)
                found = await one.attribute_arrival("checkouts", row, iso(BASE + timedelta(7)))
                checkout_looked.set()
                await asyncio.sleep(0.2)
                return found

        async def order_on_two() -> Any:
            await checkout_written.wait()
            async with two.transaction():
                row, _ = await two.upsert(
                    "orders", 1, order("O1", BASE + timedelta(hours=1), "9.00", customer(P1))
                )
                order_written.set()
                await waited(checkout_looked)
                return await two.attribute(1, row, iso(BASE - timedelta(days=7)))

        try:
            arrival, attributed = await asyncio.gather(checkout_on_one(), order_on_two())
            assert arrival is None
            assert attributed == {"table": "checkouts", "id": 1}
            recovered = await two.get("checkouts", 1, "K1")
            assert recovered is not None and recovered["recovered_order_external_id"] == "O1"
        finally:
            await one.close()
            await two.close()

    asyncio.run(main())


# -- migrations and the catalog -----------------------------------------------------


def test_concurrent_opens_on_an_empty_database_migrate_once(database: str) -> None:
    """Four servers starting at once on an empty database: all open, one created the
    schema (-1 -> latest), the others found it; each step recorded once. A database
    missing a column or behind by steps is brought up to date in place."""

    async def main() -> None:
        stores = await asyncio.gather(
            *(PostgresStorage.open(database, pool_size=1) for _ in range(4))
        )
        try:
            assert sorted(store.migrated for store in stores) == [
                (-1, LATEST),
                *[(LATEST, LATEST)] * 3,
            ]
            async with stores[0].transaction() as conn:
                cursor = await conn.execute(
                    "SELECT version, description FROM schema_migrations ORDER BY version"
                )
                recorded = [(row["version"], row["description"]) for row in await cursor.fetchall()]
            assert recorded == [(version, what) for version, what, _ in MIGRATIONS]
            await stores[0].create_store({"id": 1, "name": "Shop", "region": "FR"})
            await stores[0].upsert("orders", 1, order("O1", BASE, "1.00", customer(P1)))
            async with stores[0].transaction() as conn:
                await conn.execute("ALTER TABLE orders DROP COLUMN metadata")
                await conn.execute("DROP INDEX idx_orders_store_id_customer_phone")
                await conn.execute("DELETE FROM schema_migrations WHERE version > 2")
            assert await stores[1].migrate() == (2, LATEST)
            assert await stores[2].migrate() == (LATEST, LATEST)
            row = await stores[3].get("orders", 1, "O1")
            assert row is not None and row["metadata"] is None  # the row kept, column back
            assert set(row) == {"id", *TABLES["orders"]}
        finally:
            for store in stores:
                await store.close()

    asyncio.run(main())


def test_every_key_of_store_data_includes_store_id(database: str) -> None:
    """Ready to shard by store (Citus's rule): in every table holding a store's data,
    the primary key, every unique index and every foreign key include store_id. And
    the types are PostgreSQL's own."""

    async def main() -> None:
        # libpq's URL parameters pass through.
        url = f"{database}?sslmode=disable&application_name=kanal-catalog"
        store = await PostgresStorage.open(url, pool_size=1)
        try:
            async with store.transaction() as conn:
                cursor = await conn.execute("SELECT current_setting('application_name') AS a")
                assert await cursor.fetchone() == {"a": "kanal-catalog"}
                cursor = await conn.execute(
                    "SELECT t.relname AS table, i.relname AS index, x.indisprimary AS pk, "
                    "array(SELECT a.attname::text FROM pg_attribute a WHERE a.attrelid = t.oid "
                    "AND a.attnum = ANY(x.indkey)) AS columns "
                    "FROM pg_index x JOIN pg_class t ON t.oid = x.indrelid "
                    "JOIN pg_class i ON i.oid = x.indexrelid "
                    "JOIN pg_namespace n ON n.oid = t.relnamespace "
                    "WHERE n.nspname = current_schema() AND (x.indisunique OR x.indisprimary)"
                )
                keys = await cursor.fetchall()
                cursor = await conn.execute(
                    "SELECT c.conrelid::regclass::text AS table, array(SELECT a.attname::text "
                    "FROM pg_attribute a WHERE a.attrelid = c.conrelid "
                    "AND a.attnum = ANY(c.conkey)) AS columns FROM pg_constraint c "
                    "WHERE c.contype = 'f'"
                )
                foreign = await cursor.fetchall()
                cursor = await conn.execute(
                    "SELECT table_name, column_name, data_type, is_identity "
                    "FROM information_schema.columns WHERE table_schema = current_schema()"
                )
                types = {(r["table_name"], r["column_name"]): r for r in await cursor.fetchall()}
        finally:
            await store.close()
        for table in STORE_TABLES:
            mine = [key for key in keys if key["table"] == table]
            assert sum(key["pk"] for key in mine) == 1, table
            for key in mine:
                assert "store_id" in key["columns"], (table, key["index"], key["columns"])
        assert foreign == [{"table": "shipments", "columns": ["store_id", "order_id"]}]
        phone_key = next(key for key in keys if key["index"] == "idx_customers_phone_key")
        assert phone_key["columns"] == ["store_id", "phone"]
        for table, columns in COLUMNS.items():
            for column in columns:
                assert (table, column) in types, (table, column)
        assert types[("orders", "id")]["is_identity"] == "YES"
        assert types[("orders", "placed_at")]["data_type"] == "timestamp with time zone"
        assert types[("orders", "total_price")]["data_type"] == "numeric"
        assert types[("orders", "line_items")]["data_type"] == "json"
        assert types[("stores", "paused")]["data_type"] == "boolean"
        assert types[("messages", "record_id")]["data_type"] == "bigint"

    asyncio.run(main())


def test_rewritten_tables_leave_room_for_the_next_versions(database: str) -> None:
    """The tables whose rows are rewritten in place fill their pages to FILLFACTOR
    percent (migration step 8, on a new database and on one migrated from before it),
    so an order written again is a HOT update: no index entry added."""

    async def fillfactors(store: PostgresStorage) -> dict[str, list[str] | None]:
        async with store.transaction() as conn:
            cursor = await conn.execute(
                "SELECT relname, reloptions FROM pg_class WHERE relname = ANY(%s)",
                (list(REWRITTEN),),
            )
            return {row["relname"]: row["reloptions"] for row in await cursor.fetchall()}

    async def main() -> None:
        store = await PostgresStorage.open(database, pool_size=1)
        try:
            expected = {table: [f"fillfactor={FILLFACTOR}"] for table in REWRITTEN}
            assert await fillfactors(store) == expected
            async with store.transaction() as conn:  # as made before step 8
                for table in REWRITTEN:
                    await conn.execute(f"ALTER TABLE {table} RESET (fillfactor)")
                await conn.execute("DELETE FROM schema_migrations WHERE version >= 8")
            assert set((await fillfactors(store)).values()) == {None}
            assert await store.migrate() == (7, LATEST)
            assert await fillfactors(store) == expected
            await store.create_store({"id": 1, "name": "Shop", "region": "FR"})
            await store.upsert("orders", 1, order("O1", BASE, "1.00", customer(P1)))
            async with store.transaction() as conn:
                await store.upsert("orders", 1, order("O1", BASE, "2.00", customer(P1)))
                cursor = await conn.execute(
                    "SELECT pg_stat_get_xact_tuples_updated('orders'::regclass) AS updated, "
                    "pg_stat_get_xact_tuples_hot_updated('orders'::regclass) AS hot"
                )
                assert await cursor.fetchone() == {"updated": 1, "hot": 1}
        finally:
            await store.close()

    asyncio.run(main())


def plan_nodes(plan: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield plan
    for child in plan.get("Plans", []):
        yield from plan_nodes(child)


@pytest.mark.parametrize("page", [{"after": 1500}, {"before": 1500}, {}])
def test_list_query_uses_an_index_not_a_scan(database: str, page: dict[str, int]) -> None:
    """Pages are keyset reads on (store_id, id), filtered ones on (store_id, column, id):
    an index scan, no sequential scan, no sort (3000 orders in three stores)."""

    async def main() -> None:
        store = await PostgresStorage.open(database, pool_size=1)
        try:
            columns = ("external_id", "placed_at", "financial_status", "total_price")
            for store_id in (1, 2, 3):
                rows = [
                    (f"O{n}", iso(BASE), "paid" if n % 50 == 0 else "pending", "1.00")
                    for n in range(1000)
                ]
                await store.upsert_many("orders", store_id, columns, rows)
            plans = {}
            async with store.transaction() as conn:
                await conn.execute("ANALYZE orders")
                for name, where in [
                    ("orders_pkey", []),
                    ("idx_orders_store_id_financial_status", [("financial_status", "=", "paid")]),
                ]:
                    sql, params = store.select_sql("orders", 2, where, limit=50, **page)
                    cursor = await conn.execute(f"EXPLAIN (FORMAT JSON) {sql}", params)
                    row = await cursor.fetchone()
                    assert row is not None
                    plans[name] = list(plan_nodes(row["QUERY PLAN"][0]["Plan"]))
        finally:
            await store.close()
        for index, nodes in plans.items():
            kinds = [node["Node Type"] for node in nodes]
            assert "Seq Scan" not in kinds and "Sort" not in kinds, (index, kinds)
            assert index in [node.get("Index Name") for node in nodes], (index, nodes)

    asyncio.run(main())
