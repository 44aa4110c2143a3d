"""The reference servers' storage: the order as one JSON row, one ``INSERT ... ON
CONFLICT`` per request, on SQLite or on PostgreSQL (psycopg's async pool).

The plain stack and the FastAPI peer (``bench/plain.py``, ``bench/peer.py``) are
what a user would write without kanal, so they speak SQL of their own here (kanal's
own SQL stays in ``kanal/storage/``). ``KANAL_DB`` names the database bench.run
prepared: a SQLite file (WAL, ``synchronous = NORMAL``, as kanal runs it) or a
``postgresql://`` URL. Their table, ``bench_orders``, is created at start.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sqlite3
from typing import Any

from psycopg.rows import tuple_row
from psycopg_pool import AsyncConnectionPool

TABLE = (
    "CREATE TABLE IF NOT EXISTS bench_orders (store_id bigint NOT NULL, "
    "external_id text NOT NULL, body {json} NOT NULL, updated_at {stamp} NOT NULL, "
    "PRIMARY KEY (store_id, external_id))"
)
UPSERT = (
    "INSERT INTO bench_orders (store_id, external_id, body, updated_at) "
    "VALUES ({mark}, {mark}, {mark}, {now}) ON CONFLICT (store_id, external_id) "
    "DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at"
)
#: Pooled connections per process on PostgreSQL (kanal's default too).
POOL_SIZE = 8


class OneRow:
    """``await upsert(store_id, external_id, json_text)``: one statement, committed."""

    def __init__(self, db: str | None = None) -> None:
        self.db = db or os.environ["KANAL_DB"]
        self.postgres = self.db.startswith(("postgresql://", "postgres://"))
        self.pool: AsyncConnectionPool | None = None
        self.sqlite: sqlite3.Connection | None = None
        self.opening = asyncio.Lock()
        if not self.postgres:
            conn = sqlite3.connect(self.db, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 10000")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(TABLE.format(json="text", stamp="text"))
            self.sqlite = conn
            self.sql = UPSERT.format(mark="?", now="datetime('now')")

    def key_hashes(self) -> dict[str, int | None]:
        """The SHA-256 of each API key of the database, with its store (read at start:
        the references check the bearer key against these)."""
        if self.sqlite is not None:
            rows = self.sqlite.execute("SELECT token_hash, store_id FROM api_keys").fetchall()
            return dict(rows)
        import psycopg

        with psycopg.connect(self.db) as conn:
            return dict(conn.execute("SELECT token_hash, store_id FROM api_keys").fetchall())

    async def open(self) -> None:
        """Open the pool (PostgreSQL), in the server's event loop, and create the table."""
        if self.postgres and self.pool is None:
            async with self.opening:
                if self.pool is None:
                    pool = AsyncConnectionPool(
                        self.db,
                        min_size=POOL_SIZE,
                        max_size=POOL_SIZE,
                        open=False,
                        kwargs={"autocommit": True, "row_factory": tuple_row},
                    )
                    await pool.open(wait=True)
                    async with pool.connection() as conn:
                        await conn.execute(TABLE.format(json="json", stamp="timestamptz"))
                    self.sql = UPSERT.format(mark="%s", now="now()")
                    self.pool = pool

    async def close(self) -> None:
        if self.pool is not None:
            await self.pool.close()
        if self.sqlite is not None:
            self.sqlite.close()

    async def upsert(self, store_id: int, external_id: str, body: str) -> None:
        if self.sqlite is not None:
            self.sqlite.execute(self.sql, (store_id, external_id, body))
            return
        if self.pool is None:
            await self.open()
        assert self.pool is not None
        async with self.pool.connection() as conn:
            await conn.execute(self.sql, (store_id, external_id, body))


def bearer_store(header: str | None, keys: dict[str, Any]) -> tuple[bool, Any]:
    """Whether ``Authorization`` holds a known bearer key, and that key's store."""
    if not header:
        return False, None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return False, None
    digest = hashlib.sha256(token.strip().encode()).hexdigest()
    if digest not in keys:
        return False, None
    return True, keys[digest]
