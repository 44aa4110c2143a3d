"""The single request's write on both engines: ``upsert_and_touch`` (the upsert, the
contact and the open-checkout check, one round trip on PostgreSQL) answers as the
three operations it stands for, on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kanal.storage import AsyncStorage, Storage
from kanal.storage.postgres import PostgresStorage
from tests.test_pgstore import cluster, database  # noqa: F401 (fixtures)

STORE = 7
PHONE = "+33612345678"


def order(external_id: str, first_name: str) -> dict[str, Any]:
    customer = {"phone": PHONE, "first_name": first_name, "locale": "fr"}
    return {
        "external_id": external_id,
        "placed_at": "2026-05-18T10:00:00+00:00",
        "total_price": "49.90",
        "currency": "EUR",
        "financial_status": "pending",
        "customer": customer,
        "customer_external_id": None,
        "customer_phone": PHONE,
        "line_items": [{"title": "T-shirt", "quantity": 2}],
        "tags": ["web"],
        "metadata": None,
    }


CHECKOUT = {
    "external_id": "C-1",
    "abandoned_at": "2026-05-18T09:00:00+00:00",
    "total_price": "10.00",
    "customer": {"phone": PHONE},
    "customer_phone": PHONE,
    "tags": [],
}


async def scenario(store: Any) -> list[Any]:
    """Writes and what they answer, without ids and stamps (engines draw their own)."""
    answers = []
    for external_id, name, open_check in (
        ("O-1", "Marie", True),
        ("O-1", "Maria", True),
        ("O-2", "Marie", False),
    ):
        async with store.transaction():
            row, created, found = await store.upsert_and_touch(
                "orders", STORE, order(external_id, name), open_check=open_check
            )
        answers.append((row["external_id"], row["customer"], row["tags"], created, found))
    async with store.transaction():
        await store.upsert("checkouts", STORE, CHECKOUT)
    async with store.transaction():
        row, created, found = await store.upsert_and_touch(
            "orders", STORE, order("O-3", "Marie"), open_check=True
        )
    answers.append((row["external_id"], created, found))
    contact = await store.select("contacts", STORE, [("phone", "=", PHONE)])
    answers.append([(c["phone"], c["first_name"], c["locale"]) for c in contact])
    return answers


EXPECTED = [
    ("O-1", {"phone": PHONE, "first_name": "Marie", "locale": "fr"}, ["web"], True, False),
    ("O-1", {"phone": PHONE, "first_name": "Maria", "locale": "fr"}, ["web"], False, False),
    ("O-2", {"phone": PHONE, "first_name": "Marie", "locale": "fr"}, ["web"], True, False),
    ("O-3", True, True),
    [(PHONE, "Marie", "fr")],
]


def test_upsert_and_touch_on_sqlite(tmp_path: Path) -> None:
    engine = Storage(str(tmp_path / "kanal.db"))
    try:
        assert asyncio.run(scenario(AsyncStorage(engine))) == EXPECTED
    finally:
        engine.close()


def test_upsert_and_touch_on_postgres(database: str) -> None:  # noqa: F811
    async def main() -> list[Any]:
        store = await PostgresStorage.open(database, 2)
        try:
            return await scenario(store)
        finally:
            await store.close()

    assert asyncio.run(main()) == EXPECTED
