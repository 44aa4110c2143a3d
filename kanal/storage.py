"""Storage over SQLite: the one module that speaks SQL.

Its interface is narrow (upsert, patch, get, erase per resource; stores, keys and
rate limits for the accounts side) so that another engine can be added later
without touching the handlers. Tables are created, and missing columns added,
at start-up with sqlite-utils. The database runs in WAL mode; every write is one
``BEGIN IMMEDIATE`` transaction, so concurrent upserts from several worker
processes serialise on the database and never create a duplicate.
"""

from __future__ import annotations

import json
import math
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import sqlite_utils

from kanal import formats

# Columns per table; "id" is the integer primary key of every table.
RECORD = {"store_id": int, "external_id": str}
CUSTOMER_REF = {"customer": str, "customer_external_id": str, "customer_phone": str}
STAMPS = {"inserted_at": str, "updated_at": str}
CHECKOUT = {
    **RECORD,
    "abandoned_at": str,
    "total_price": str,
    "currency": str,
    "recovery_url": str,
    "status": str,
    **CUSTOMER_REF,
    "line_items": str,
    "tags": str,
    "metadata": str,
    **STAMPS,
}
TABLES: dict[str, dict[str, Any]] = {
    "teams": {"name": str, "created_at": str},
    "stores": {
        "team_id": int,
        "name": str,
        "region": str,
        "rate_limit": int,
        "paused": int,
        "created_at": str,
    },
    "api_keys": {
        "name": str,
        "token_hash": str,
        "prefix": str,
        "store_id": int,
        "team_id": int,
        "created_at": str,
    },
    "rate_limits": {"store_id": int, "window_start": float, "hits": int},
    "orders": {
        **RECORD,
        "placed_at": str,
        "total_price": str,
        "currency": str,
        "financial_status": str,
        "fulfillment_status": str,
        **CUSTOMER_REF,
        "line_items": str,
        "tags": str,
        "metadata": str,
        **STAMPS,
    },
    "checkouts": CHECKOUT,
    "carts": CHECKOUT,
    "customers": {
        **RECORD,
        "phone": str,
        "first_name": str,
        "last_name": str,
        "email": str,
        "locale": str,
        "tags": str,
        "lifetime_value": int,
        "orders_count": int,
        "deleted_at": str,
        **STAMPS,
    },
    "shipments": {
        **RECORD,
        "order_id": int,
        "order_external_id": str,
        "tracking_number": str,
        "tracking_url": str,
        "carrier": str,
        "status": str,
        "metadata": str,
        **STAMPS,
    },
}
DEFAULTS = {
    "stores": {"rate_limit": 60, "paused": 0},
    "checkouts": {"status": "abandoned"},
    "carts": {"status": "abandoned"},
}
JSON_COLUMNS = {"customer", "line_items", "tags", "metadata"}
RESOURCES = ("orders", "checkouts", "carts", "customers", "shipments")
# Tables whose records embed a customer (erased on a GDPR request).
HOLDERS = ("orders", "checkouts", "carts")
PERSONAL = ("phone", "first_name", "last_name", "email")
RATE_WINDOW = 60.0


class Storage:
    """One SQLite database: the accounts (teams, stores, keys) and the records."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA busy_timeout = 10000")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA foreign_keys = ON")
        self.db = sqlite_utils.Database(self.conn)
        self.migrate()

    def close(self) -> None:
        self.conn.close()

    # -- schema -----------------------------------------------------------

    def migrate(self) -> None:
        """Create missing tables, columns and indexes; never drops anything."""
        with self.transaction():
            for name, columns in TABLES.items():
                table = self.db.table(name)
                if not table.exists():
                    table.create(
                        {"id": int, **columns},
                        pk="id",
                        defaults=DEFAULTS.get(name),
                        foreign_keys=[("order_id", "orders", "id")]
                        if name == "shipments"
                        else None,
                    )
                    continue
                present = table.columns_dict
                for column, kind in columns.items():
                    if column not in present:
                        table.add_column(
                            column, kind, not_null_default=DEFAULTS.get(name, {}).get(column)
                        )
            for name in RESOURCES:
                self.db.table(name).create_index(
                    ["store_id", "external_id"], unique=True, if_not_exists=True
                )
            for name in HOLDERS:
                self.db.table(name).create_index(["store_id", "customer_phone"], if_not_exists=True)
                self.db.table(name).create_index(
                    ["store_id", "customer_external_id"], if_not_exists=True
                )
            self.db.table("api_keys").create_index(["token_hash"], unique=True, if_not_exists=True)
            self.db.table("rate_limits").create_index(["store_id"], unique=True, if_not_exists=True)
            # A customer without external_id is keyed by phone: one live row per phone.
            self.conn.execute(
                "CREATE UNIQUE INDEX IF NOT EXISTS idx_customers_phone_key ON customers"
                "(store_id, phone) WHERE external_id IS NULL AND deleted_at IS NULL"
            )

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken immediately so writers queue instead of failing."""
        if self.conn.in_transaction:
            yield self.conn
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    def ping(self) -> bool:
        return self.conn.execute("SELECT 1").fetchone()[0] == 1

    # -- records ----------------------------------------------------------

    @staticmethod
    def _encode(record: dict[str, Any]) -> dict[str, Any]:
        return {
            k: json.dumps(v) if k in JSON_COLUMNS and v is not None else v
            for k, v in record.items()
        }

    @staticmethod
    def _decode(row: sqlite3.Row | None) -> dict[str, Any] | None:
        if row is None:
            return None
        out = dict(row)
        for column in JSON_COLUMNS.intersection(out):
            if out[column] is not None:
                out[column] = json.loads(out[column])
        return out

    def _find(self, table: str, where: dict[str, Any]) -> sqlite3.Row | None:
        clause = " AND ".join(f"{column} IS ?" for column in where)
        return self.conn.execute(
            f"SELECT * FROM {table} WHERE {clause}", tuple(where.values())
        ).fetchone()

    def upsert(
        self,
        table: str,
        store_id: int,
        record: dict[str, Any],
        key: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool]:
        """Create or replace the record of ``store_id`` found by ``key``.

        ``key`` defaults to the record's external_id. Returns the stored row and
        whether it was created (a soft-deleted row that comes back counts as
        created). Columns not in ``record`` keep their value on replacement and
        take their default on creation.
        """
        key = key or {"external_id": record["external_id"]}
        values = self._encode(record)
        stamp = formats.now()
        with self.transaction() as conn:
            existing = self._find(table, {"store_id": store_id, **key})
            revived = table == "customers" and existing is not None and existing["deleted_at"]
            created = existing is None or bool(revived)
            if existing is None:
                row = {"store_id": store_id, **values, "inserted_at": stamp, "updated_at": stamp}
                names = ", ".join(row)
                marks = ", ".join("?" for _ in row)
                rowid = conn.execute(
                    f"INSERT INTO {table} ({names}) VALUES ({marks})", tuple(row.values())
                ).lastrowid
            else:
                rowid = existing["id"]
                changes = {**values, "updated_at": stamp}
                if table == "customers":
                    changes["deleted_at"] = None
                assignments = ", ".join(f"{column} = ?" for column in changes)
                conn.execute(
                    f"UPDATE {table} SET {assignments} WHERE id = ?", (*changes.values(), rowid)
                )
            stored = self._decode(self._find(table, {"id": rowid}))
        assert stored is not None
        return stored, created

    def patch(
        self, table: str, store_id: int, external_id: str, changes: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Change only the given columns of a record; None when it does not exist."""
        values = {**self._encode(changes), "updated_at": formats.now()}
        assignments = ", ".join(f"{column} = ?" for column in values)
        with self.transaction() as conn:
            row = conn.execute(
                f"UPDATE {table} SET {assignments} WHERE store_id = ? AND external_id = ? "
                "RETURNING *",
                (*values.values(), store_id, external_id),
            ).fetchone()
        return self._decode(row)

    def get(self, table: str, store_id: int, external_id: str) -> dict[str, Any] | None:
        """The record of ``store_id`` with this external_id, or None."""
        return self._decode(self._find(table, {"store_id": store_id, "external_id": external_id}))

    def erase_customer(self, store_id: int, external_id: str, phone: str | None) -> bool:
        """Soft-delete a customer and erase their personal data from the store.

        The customer is found by ``external_id``, or else (for a customer keyed
        by phone) by ``phone``. Their names, email and phone are removed from the
        customer rows that hold that identity and from every order, checkout and
        cart of the store that embeds them. Returns whether anything was erased.
        """
        with self.transaction() as conn:
            customer = self._find("customers", {"store_id": store_id, "external_id": external_id})
            if customer is None and phone is not None:
                customer = conn.execute(
                    "SELECT * FROM customers WHERE store_id = ? AND external_id IS NULL "
                    "AND phone = ? AND deleted_at IS NULL",
                    (store_id, phone),
                ).fetchone()
            if customer is None or customer["deleted_at"]:
                return False
            ext, tel, stamp = customer["external_id"], customer["phone"], formats.now()
            blank = ", ".join(f"{column} = NULL" for column in PERSONAL)
            conn.execute(
                f"UPDATE customers SET {blank}, deleted_at = ?, updated_at = ? "
                "WHERE store_id = ? AND (id = ? OR (phone IS NOT NULL AND phone = ?))",
                (stamp, stamp, store_id, customer["id"], tel),
            )
            paths = ", ".join(f"'$.{column}', NULL" for column in PERSONAL)
            for table in HOLDERS:
                conn.execute(
                    f"UPDATE {table} SET customer = json_set(customer, {paths}), "
                    "customer_phone = NULL, updated_at = ? WHERE store_id = ? AND "
                    "((customer_external_id IS NOT NULL AND customer_external_id = ?) "
                    "OR (customer_phone IS NOT NULL AND customer_phone = ?))",
                    (stamp, store_id, ext, tel),
                )
        return True

    # -- accounts ---------------------------------------------------------

    def create_team(self, team_id: int, name: str | None = None) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO teams (id, name, created_at) VALUES (?, ?, ?)",
                (team_id, name or f"Team {team_id}", formats.now()),
            )

    def create_store(self, store: dict[str, Any]) -> dict[str, Any]:
        """Insert a store; raises sqlite3.IntegrityError when its id is taken."""
        with self.transaction() as conn:
            if store.get("team_id") is not None:
                self.create_team(store["team_id"])
            row = {**store, "created_at": formats.now()}
            conn.execute(
                f"INSERT INTO stores ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                tuple(row.values()),
            )
        return self.get_store(store["id"]) or {}

    def update_store(self, store_id: int, changes: dict[str, Any]) -> dict[str, Any] | None:
        if changes:
            assignments = ", ".join(f"{column} = ?" for column in changes)
            with self.transaction() as conn:
                conn.execute(
                    f"UPDATE stores SET {assignments} WHERE id = ?", (*changes.values(), store_id)
                )
        return self.get_store(store_id)

    def get_store(self, store_id: int) -> dict[str, Any] | None:
        row = self.conn.execute("SELECT * FROM stores WHERE id = ?", (store_id,)).fetchone()
        return dict(row) if row else None

    def list_stores(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM stores ORDER BY id")]

    def team_exists(self, team_id: int) -> bool:
        return self._find("teams", {"id": team_id}) is not None

    def create_key(self, key: dict[str, Any]) -> int:
        with self.transaction() as conn:
            row = {**key, "created_at": formats.now()}
            return int(
                conn.execute(
                    f"INSERT INTO api_keys ({', '.join(row)}) "
                    f"VALUES ({', '.join('?' for _ in row)})",
                    tuple(row.values()),
                ).lastrowid
                or 0
            )

    def find_key(self, token_hash: str) -> dict[str, Any] | None:
        row = self._find("api_keys", {"token_hash": token_hash})
        return dict(row) if row else None

    def list_keys(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM api_keys ORDER BY id")]

    def delete_key(self, key_id: int) -> bool:
        with self.transaction() as conn:
            return conn.execute("DELETE FROM api_keys WHERE id = ?", (key_id,)).rowcount > 0

    def hit_rate_limit(self, store_id: int, limit: int) -> tuple[bool, int, int]:
        """Count one request against the store's fixed one-minute window.

        Atomic across processes (one statement). Returns (allowed, remaining,
        seconds until the window resets).
        """
        now = time.time()
        start, hits = self.conn.execute(
            "INSERT INTO rate_limits (store_id, window_start, hits) VALUES (?, ?, 1) "
            "ON CONFLICT (store_id) DO UPDATE SET "
            "window_start = CASE WHEN window_start <= ? THEN excluded.window_start "
            "ELSE window_start END, "
            "hits = CASE WHEN window_start <= ? THEN 1 ELSE hits + 1 END "
            "RETURNING window_start, hits",
            (store_id, now, now - RATE_WINDOW, now - RATE_WINDOW),
        ).fetchone()
        retry_after = max(1, math.ceil(start + RATE_WINDOW - now))
        return hits <= limit, max(0, limit - hits), retry_after


#: The storage of the application serving the current request.
current: ContextVar[Storage] = ContextVar("storage")
