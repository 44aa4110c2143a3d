"""The SQLite engine: the embedded default, in-process (sqlite-utils).

Tables are created, and missing columns added, at start-up; the migrations'
numbered steps run once each (``schema.MIGRATIONS``). The database runs in WAL
mode; every write is one ``BEGIN IMMEDIATE`` transaction, taken after an flock
beside the database file, so concurrent upserts from several worker processes
queue, serialise on the database and never create a duplicate.
"""

from __future__ import annotations

import fcntl
import json
import secrets
import sqlite3
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import sqlite_utils

from kanal import formats
from kanal.storage.schema import (
    ABANDONED,
    ACCOUNTS_VERSION,
    DEFAULTS,
    FILTER_INDEXES,
    HOLDERS,
    JSON_COLUMNS,
    MIGRATIONS,
    RATE_WINDOW,
    RECOVERED,
    RESOURCES,
    TABLES,
    UNFINISHED,
    Contact,
    Where,
    contact_of,
    erased_customer,
    in_lists,
    to_json,
)

#: (key, store) pairs an app remembers between changes to the database.
ACCOUNTS_CACHED = 10_000
#: The operators of a condition, as SQL (``in`` takes a list; ``is null`` no value).
OPERATORS = {
    "=": "{} = ?",
    "!=": "{} != ?",
    ">": "{} > ?",
    ">=": "{} >= ?",
    "<": "{} < ?",
    "<=": "{} <= ?",
    "in": "{} IN ({})",
    "is null": "{} IS NULL",
}
#: ``recovery_status`` of a checkout or cart, given the start of the attribution window
#: that ends now (``cutoff``): derived from ``status`` (the table in the spec's
#: ``CheckoutStatus``). ``recovered`` and ``completed`` read ``recovered``;
#: ``abandoned`` reads ``abandoned`` while an order can still recover it (abandoned at
#: or after the cutoff), else ``not_recovered``, as ``active`` and ``expired`` always do.
RECOVERY_STATUS = (
    "CASE WHEN status IN ({}) THEN 'recovered' "
    "WHEN status = 'abandoned' AND abandoned_at >= ? THEN 'abandoned' "
    "ELSE 'not_recovered' END"
).format(", ".join(f"'{status}'" for status in RECOVERED))


class Storage:
    """One SQLite database: the accounts (teams, stores, keys) and the records."""

    def __init__(self, path: str) -> None:
        self.path = path
        # Writers queue on an flock of their own: the kernel wakes the next one the moment
        # the lock is free, where SQLite's busy handler would sleep 1 to 100 ms and retry.
        self.lock = open(f"{path}.lock", "a+b")  # noqa: SIM115 (held for the connection's life)
        self.conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA busy_timeout = 10000")
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA synchronous = NORMAL")
        self.conn.execute("PRAGMA foreign_keys = ON")
        # Space freed by an update or a delete is zeroed where that costs no extra I/O
        # (an erasure asks for all of it: see erase_person).
        self.conn.execute("PRAGMA secure_delete = FAST")
        self.db = sqlite_utils.Database(self.conn)
        self._accounts: dict[tuple[str, int], tuple[Any, Any]] = {}
        self._accounts_version = -1
        self._accounts_stamp: str | None = None
        #: The schema's version when opened and now (``migrate``).
        self.migrated = self.migrate()

    def close(self) -> None:
        self.conn.close()
        self.lock.close()

    # -- schema -----------------------------------------------------------

    def migrate(self) -> tuple[int, int]:
        """Bring the schema up to date: create missing tables, columns and indexes
        (never dropping anything), then run the numbered steps (:data:`MIGRATIONS`)
        the database has not had yet, recording the version reached (``PRAGMA
        user_version``). One write transaction, so processes starting at once take
        turns and each step runs once. Returns (version before, version after); before
        is -1 for a database that had no schema, 0 for one made before versions were
        recorded."""
        with self.transaction():
            fresh = not self.db.table("stores").exists()
            self._create_schema()
            before = -1 if fresh else int(self.conn.execute("PRAGMA user_version").fetchone()[0])
            for version, _, step in MIGRATIONS:
                if version > before:
                    for statement in (step,) if isinstance(step, str) else step:
                        self.conn.execute(statement)
            after = max(before, MIGRATIONS[-1][0])
            self.conn.execute(f"PRAGMA user_version = {after}")
        return before, after

    def _create_schema(self) -> None:
        """The tables, columns and indexes of :data:`TABLES`, those missing created."""
        for name, columns in TABLES.items():
            table = self.db.table(name)
            if not table.exists():
                table.create(
                    {"id": int, **columns},
                    pk="id",
                    defaults=DEFAULTS.get(name),
                    foreign_keys=[("order_id", "orders", "id")] if name == "shipments" else None,
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
        for name in (*RESOURCES, "contacts"):
            self.db.table(name).create_index(["store_id", "id"], if_not_exists=True)
        for name, columns in FILTER_INDEXES.items():
            for column in columns:
                self.db.table(name).create_index(["store_id", column], if_not_exists=True)
        self.db.table("contacts").create_index(
            ["store_id", "phone"], unique=True, if_not_exists=True
        )
        self.db.table("settings").create_index(["key"], unique=True, if_not_exists=True)
        messages = self.db.table("messages")
        messages.create_index(["store_id", "dedupe_key"], unique=True, if_not_exists=True)
        messages.create_index(["state", "next_attempt_at"], if_not_exists=True)
        messages.create_index(["store_id", "id"], if_not_exists=True)
        messages.create_index(["record_table", "record_id"], if_not_exists=True)
        messages.create_index(["store_id", "contact_phone"], if_not_exists=True)
        for name in HOLDERS:
            self.db.table(name).create_index(["store_id", "customer_phone"], if_not_exists=True)
        for name in ABANDONED:  # an order recovers one at most: is it taken?
            self.db.table(name).create_index(
                ["store_id", "recovered_order_external_id"], if_not_exists=True
            )
            self.db.table(name).create_index(
                ["store_id", "customer_external_id"], if_not_exists=True
            )
        self.db.table("imports").create_index(["store_id", "id"], if_not_exists=True)
        self.db.table("import_errors").create_index(
            ["store_id", "import_id", "line"], unique=True, if_not_exists=True
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
            yield self.conn  # part of the enclosing transaction
            return
        self.begin()
        try:
            yield self.conn
        except BaseException:
            self.end(commit=False)
            raise
        self.end(commit=True)

    def begin(self) -> None:
        """Take the write lock (the flock, then ``BEGIN IMMEDIATE``); ``end`` leaves it."""
        self.wait_lock()
        self.begin_locked()

    def try_begin(self) -> bool:
        """``begin`` if no other process holds the write lock now; else False at once."""
        try:
            fcntl.flock(self.lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        self.begin_locked()
        return True

    def wait_lock(self) -> None:
        """Wait for the flock (may run in another thread: it touches no SQLite state)."""
        fcntl.flock(self.lock, fcntl.LOCK_EX)

    def begin_locked(self) -> None:
        """``BEGIN IMMEDIATE``, the flock held (released if that fails)."""
        try:
            self.conn.execute("BEGIN IMMEDIATE")
        except BaseException:
            fcntl.flock(self.lock, fcntl.LOCK_UN)
            raise

    def end(self, *, commit: bool) -> None:
        """Commit (or roll back) the transaction ``begin`` started; the flock goes either
        way (a failed COMMIT is rolled back)."""
        try:
            if commit:
                try:
                    self.conn.execute("COMMIT")
                except BaseException:
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise
            else:
                self.conn.execute("ROLLBACK")
        finally:
            fcntl.flock(self.lock, fcntl.LOCK_UN)

    def lock_accounts(self) -> None:
        """Inside a transaction: hold the accounts exclusively until it ends (a SQLite
        write transaction holds the whole database already: nothing more to take)."""

    @contextmanager
    def savepoint(self, name: str = "part") -> Iterator[sqlite3.Connection]:
        """Inside a transaction: a part that undoes itself alone when it fails."""
        self.conn.execute(f"SAVEPOINT {name}")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute(f"ROLLBACK TO {name}")
            self.conn.execute(f"RELEASE {name}")
            raise
        self.conn.execute(f"RELEASE {name}")

    def ping(self) -> bool:
        return self.conn.execute("SELECT 1").fetchone()[0] == 1

    # -- records ----------------------------------------------------------

    @staticmethod
    def encode(record: dict[str, Any]) -> dict[str, Any]:
        """A record's values as stored: its JSON columns as JSON text."""
        return {
            k: to_json(v) if k in JSON_COLUMNS and v is not None else v for k, v in record.items()
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
        values = self.encode(record)
        stamp = formats.now()
        with self.transaction() as conn:
            existing = self._find(table, {"store_id": store_id, **key})
            revived = table == "customers" and existing is not None and existing["deleted_at"]
            created = existing is None or bool(revived)
            if existing is None:
                row = {"store_id": store_id, **values, "inserted_at": stamp, "updated_at": stamp}
                names = ", ".join(row)
                marks = ", ".join("?" for _ in row)
                written = conn.execute(
                    f"INSERT INTO {table} ({names}) VALUES ({marks}) RETURNING *",
                    tuple(row.values()),
                ).fetchone()
            else:
                # Only the columns whose value changes: SQLite rewrites the entries of
                # every index with a column in SET, so a record sent again as it was
                # writes its row alone (and its updated_at).
                present = set(existing.keys())
                changes = {c: v for c, v in values.items() if c not in present or existing[c] != v}
                changes["updated_at"] = stamp
                if table == "customers" and existing["deleted_at"] is not None:
                    changes["deleted_at"] = None
                assignments = ", ".join(f"{column} = ?" for column in changes)
                written = conn.execute(
                    f"UPDATE {table} SET {assignments} WHERE id = ? RETURNING *",
                    (*changes.values(), existing["id"]),
                ).fetchone()
        # The JSON columns just written are the record's own values: no need to parse
        # them back; the others (ids, stamps, defaults, kept columns) come from the row.
        stored = {
            column: record[column] if column in JSON_COLUMNS and column in record else value
            for column, value in zip(written.keys(), written, strict=True)
        }
        for column in JSON_COLUMNS.intersection(stored).difference(record):
            if stored[column] is not None:
                stored[column] = json.loads(stored[column])
        return stored, created

    def upsert_and_touch(
        self,
        table: str,
        store_id: int,
        record: dict[str, Any],
        key: dict[str, Any] | None = None,
        *,
        open_check: bool = False,
    ) -> tuple[dict[str, Any], bool, bool]:
        """``upsert``, ``touch_contact`` of the row's customer (the row itself for a
        customer) and, with ``open_check``, whether its phone has an abandoned checkout or
        cart not yet recovered (``phones_with_open_abandoned``), in one transaction. The
        PostgreSQL engine sends them in one round trip. Returns (row, created, open)."""
        with self.transaction():
            row, created = self.upsert(table, store_id, record, key=key)
            self.touch_contact(store_id, row.get("customer", row))
            phone = row.get("customer_phone")
            found = open_check and phone and self.phones_with_open_abandoned(store_id, {phone})
        return row, created, bool(found)

    def upsert_unless_open(
        self,
        table: str,
        store_id: int,
        record: dict[str, Any],
        key: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool] | None:
        """``upsert`` and ``touch_contact`` of a record that embeds a customer, in one
        transaction, unless its phone has an abandoned checkout or cart not yet
        recovered: then nothing is written and the answer is None. (The PostgreSQL
        engine sends it in one round trip.) Returns (row, created) else."""
        if table not in HOLDERS:
            raise ValueError(f"{table} records embed no customer")
        with self.transaction():
            phone = record.get("customer_phone")
            if phone is not None and self.phones_with_open_abandoned(store_id, {phone}):
                return None
            row, created, _ = self.upsert_and_touch(table, store_id, record, key=key)
        return row, created

    def upsert_many(
        self, table: str, store_id: int, columns: Sequence[str], rows: Sequence[Sequence[Any]]
    ) -> list[bool]:
        """``upsert`` for many records keyed by external_id, in order, as one statement
        run for them all (no soft-deleted rows to revive: not for customers). ``rows``:
        each record's values as stored (``encode``), in the order of ``columns``.
        Returns, per record, whether it was created."""
        if not rows:
            return []
        assert table != "customers", "customers come back from soft deletion: use upsert"
        key = list(columns).index("external_id")
        ids = [row[key] for row in rows]
        seen: set[str] = set()
        for chunk, marks in in_lists(ids):
            seen.update(
                row[0]
                for row in self.conn.execute(
                    f"SELECT external_id FROM {table} WHERE store_id = ? "
                    f"AND external_id IN ({marks})",
                    (store_id, *chunk),
                )
            )
        created = []
        for external_id in ids:
            created.append(external_id not in seen)
            seen.add(external_id)
        names = ", ".join(["store_id", *columns, "inserted_at", "updated_at"])
        marks = ", ".join("?" for _ in range(len(columns) + 3))
        replaced = ", ".join(
            f"{column} = excluded.{column}"
            for column in [*columns, "updated_at"]
            if column != "external_id"
        )
        stamp = formats.now()
        with self.transaction() as conn:
            conn.executemany(
                f"INSERT INTO {table} ({names}) VALUES ({marks}) "
                f"ON CONFLICT (store_id, external_id) DO UPDATE SET {replaced}",
                [(store_id, *row, stamp, stamp) for row in rows],
            )
        return created

    def patch(
        self,
        table: str,
        store_id: int,
        external_id: str,
        changes: dict[str, Any],
        unless_set: dict[str, Any] | None = None,
    ) -> dict[str, Any] | None:
        """Change only the given columns of a record; None when it does not exist.

        ``unless_set`` columns take their value only where they are still null.
        """
        values = {**self.encode(changes), "updated_at": formats.now()}
        assignments = [f"{column} = ?" for column in values]
        assignments += [f"{column} = COALESCE({column}, ?)" for column in unless_set or {}]
        params = (*values.values(), *(unless_set or {}).values())
        with self.transaction() as conn:
            row = conn.execute(
                f"UPDATE {table} SET {', '.join(assignments)} "
                "WHERE store_id = ? AND external_id = ? RETURNING id",
                (*params, store_id, external_id),
            ).fetchone()
        return None if row is None else self._decode(self._find(table, {"id": row["id"]}))

    def get_by_id(self, table: str, row_id: int) -> dict[str, Any]:
        row = self._decode(self._find(table, {"id": row_id}))
        assert row is not None, (table, row_id)
        return row

    def get(self, table: str, store_id: int, external_id: str) -> dict[str, Any] | None:
        """The record of ``store_id`` with this external_id, or None."""
        return self._decode(self._find(table, {"store_id": store_id, "external_id": external_id}))

    def get_many(
        self,
        table: str,
        store_id: int,
        external_ids: Sequence[str],
        columns: Sequence[str] | None = None,
    ) -> list[dict[str, Any]]:
        """The records of ``store_id`` with these external_ids, in that order (one each;
        those that do not exist left out); only ``columns`` of them when given (with
        external_id)."""
        found: dict[str, dict[str, Any]] = {}
        for chunk, marks in in_lists(list(dict.fromkeys(external_ids))):
            for row in self.conn.execute(
                f"SELECT {self._projection(table, columns)} FROM {table} "
                f"WHERE store_id = ? AND external_id IN ({marks})",
                (store_id, *chunk),
            ):
                decoded = self._decode(row)
                assert decoded is not None
                found[decoded["external_id"]] = decoded
        return [found[key] for key in dict.fromkeys(external_ids) if key in found]

    @staticmethod
    def _projection(table: str, columns: Sequence[str] | None) -> str:
        """``*``, or the known ``columns`` (and external_id) of ``table``."""
        if table not in TABLES:
            raise ValueError(f"no table {table}")
        if columns is None:
            return "*"
        known = {"id", *TABLES[table]}
        if not set(columns) <= known:
            raise ValueError(f"no columns {sorted(set(columns) - known)} in {table}")
        return ", ".join(dict.fromkeys(["external_id", *columns]))

    def erase_person(self, store_id: int, external_id: str, phone: str | None) -> bool:
        """Erase a person from the store (GDPR), wherever they appear; one transaction.

        The person is the one with this customer ``external_id`` (their customer row
        and every order, checkout and cart that embeds that external_id); when no row
        carries it and ``external_id`` reads as a phone number (``phone``), the person
        keyed by that phone (rows and embedded customers with that phone and no
        external_id). Someone else who shares the phone keeps their data.

        Their customer rows are deleted; the embedded customer of their records is
        replaced by :func:`erased_customer` (the records stay: totals and statuses are
        the shop's); the messages their records set off are cancelled (``erased``) if
        still pending, and every one of them loses its phone, parameters and error;
        the contacts of their phones are rebuilt from what remains, or deleted.
        Returns whether anyone was erased.
        """
        stamp = formats.now()
        self.conn.execute("PRAGMA secure_delete = ON")
        try:
            return self._erase(store_id, external_id, phone, stamp)
        finally:
            self.conn.execute("PRAGMA secure_delete = FAST")

    def _erase(self, store_id: int, external_id: str, phone: str | None, stamp: str) -> bool:
        with self.transaction() as conn:
            person = ("customer_external_id = ?", "external_id = ?", (external_id,))
            if not self._carries(store_id, person):
                if phone is None:
                    return False
                person = (
                    "customer_external_id IS NULL AND customer_phone = ?",
                    "external_id IS NULL AND phone = ?",
                    (phone,),
                )
                if not self._carries(store_id, person):
                    return False
            in_records, in_customers, params = person
            phones: set[str] = set()
            records: list[tuple[str, list[int]]] = []
            for table in HOLDERS:
                rows = conn.execute(
                    f"SELECT id, customer_phone FROM {table} WHERE store_id = ? AND {in_records}",
                    (store_id, *params),
                ).fetchall()
                phones.update(row[1] for row in rows if row[1])
                ids = [row[0] for row in rows]
                records.append((table, ids))
                for chunk, marks in in_lists(ids):
                    conn.execute(
                        f"UPDATE {table} SET customer = ?, customer_external_id = NULL, "
                        f"customer_phone = NULL, updated_at = ? WHERE id IN ({marks})",
                        (to_json(erased_customer()), stamp, *chunk),
                    )
            orders = dict(records)["orders"]
            shipments = [
                row[0]
                for chunk, marks in in_lists(orders)
                for row in conn.execute(
                    f"SELECT id FROM shipments WHERE order_id IN ({marks})", tuple(chunk)
                )
            ]
            for table, ids in [*records, ("shipments", shipments)]:
                for chunk, marks in in_lists(ids):
                    conn.execute(
                        "UPDATE messages SET state = CASE WHEN state IN ('scheduled', 'sending') "
                        "THEN 'cancelled' ELSE state END, cancelled_reason = CASE WHEN state IN "
                        "('scheduled', 'sending') THEN 'erased' ELSE cancelled_reason END, "
                        "lease_until = NULL, contact_phone = NULL, parameters = NULL, "
                        "last_error = NULL, updated_at = ? "
                        f"WHERE store_id = ? AND record_table = ? AND record_id IN ({marks})",
                        (stamp, store_id, table, *chunk),
                    )
            phones.update(
                row[0]
                for row in conn.execute(
                    f"DELETE FROM customers WHERE store_id = ? AND {in_customers} RETURNING phone",
                    (store_id, *params),
                )
                if row[0]
            )
            for number in sorted(phones):
                self.rebuild_contact(store_id, number)
        if not self.conn.in_transaction:
            # Old versions of the erased rows may still sit in the write-ahead log: fold
            # it into the database (whose freed space secure_delete zeroed) and empty it.
            # Best effort, without waiting: readers of older snapshots make it partial.
            self.conn.execute("PRAGMA busy_timeout = 0")
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.conn.execute("PRAGMA busy_timeout = 10000")
        return True

    def _carries(self, store_id: int, person: tuple[str, str, tuple[Any, ...]]) -> bool:
        """Whether any customer row or record of the store carries this person."""
        in_records, in_customers, params = person
        found = " UNION ALL ".join(
            [
                f"SELECT 1 FROM customers WHERE store_id = ? AND {in_customers}",
                *(f"SELECT 1 FROM {t} WHERE store_id = ? AND {in_records}" for t in HOLDERS),
            ]
        )
        return (
            self.conn.execute(
                f"{found} LIMIT 1", (store_id, *params) * (1 + len(HOLDERS))
            ).fetchone()
            is not None
        )

    def rebuild_contact(self, store_id: int, phone: str) -> None:
        """The contact of ``phone`` as the records that still carry it make it (names
        last seen, last activity), or none when no record carries it any more."""
        seen = " UNION ALL ".join(
            [
                "SELECT first_name, last_name, locale, updated_at, id FROM customers "
                "WHERE store_id = ? AND phone = ? AND deleted_at IS NULL",
                *(
                    "SELECT json_extract(customer, '$.first_name'), "
                    "json_extract(customer, '$.last_name'), json_extract(customer, '$.locale'), "
                    f"updated_at, id FROM {table} WHERE store_id = ? AND customer_phone = ?"
                    for table in HOLDERS
                ),
            ]
        )
        rows = self.conn.execute(
            f"{seen} ORDER BY updated_at, id", (store_id, phone) * (1 + len(HOLDERS))
        ).fetchall()
        if not rows:
            self.conn.execute(
                "DELETE FROM contacts WHERE store_id = ? AND phone = ?", (store_id, phone)
            )
            return
        names: list[str | None] = [None, None, None]
        for row in rows:
            names = [row[i] if row[i] is not None else names[i] for i in range(3)]
        self.conn.execute(
            "UPDATE contacts SET first_name = ?, last_name = ?, locale = ?, "
            "last_activity_at = ?, updated_at = ? WHERE store_id = ? AND phone = ?",
            (*names, rows[-1][3], formats.now(), store_id, phone),
        )

    # -- reads ------------------------------------------------------------

    def select_sql(
        self,
        table: str,
        store_id: int,
        where: Where = (),
        *,
        cutoff: str | None = None,
        after: int | None = None,
        before: int | None = None,
        limit: int = -1,
    ) -> tuple[str, list[Any]]:
        """The SQL of :meth:`select` (keyset pages on the (store_id, id) index)."""
        bounds = [*where]
        if after is not None:
            bounds.append(("id", ">", after))
        if before is not None:
            bounds.append(("id", "<", before))
        source, params = self._filtered(table, store_id, bounds, cutoff)
        order = "DESC" if before is not None else "ASC"
        return f"SELECT * {source} ORDER BY id {order} LIMIT ?", [*params, limit]

    @staticmethod
    def _filtered(
        table: str, store_id: int, where: Where, cutoff: str | None
    ) -> tuple[str, list[Any]]:
        """``FROM ... WHERE ...`` over one store's rows; with a ``cutoff``, checkouts and
        carts have their ``recovery_status`` (:data:`RECOVERY_STATUS`) to read and filter."""
        columns = {"id", *TABLES[table]}
        computed, params = "", []
        if cutoff is not None:
            computed, params = f", {RECOVERY_STATUS} AS recovery_status", [cutoff]
            columns.add("recovery_status")
        clauses = ["store_id = ?"]
        params.append(store_id)
        for column, operator, value in where:
            if column not in columns or operator not in OPERATORS:
                raise ValueError(f"no condition {column} {operator} on {table}")
            if operator == "in":
                clauses.append(OPERATORS[operator].format(column, ", ".join("?" for _ in value)))
                params.extend(value)
                continue
            clauses.append(OPERATORS[operator].format(column))
            if operator != "is null":
                params.append(value)
        return (
            f"FROM (SELECT *{computed} FROM {table}) WHERE {' AND '.join(clauses)}",
            params,
        )

    def select(
        self, table: str, store_id: int, where: Where = (), **page: Any
    ) -> list[dict[str, Any]]:
        """Rows of one store matching ``where``, by id: after ``after`` ascending, or
        the last ones before ``before`` (still returned ascending). ``page`` takes
        :meth:`select_sql`'s keywords (``cutoff``, ``after``, ``before``, ``limit``)."""
        sql, params = self.select_sql(table, store_id, where, **page)
        rows = [self._decode(r) for r in self.conn.execute(sql, params)]
        descending = page.get("before") is not None
        return [r for r in (reversed(rows) if descending else rows) if r is not None]

    def count(
        self, table: str, store_id: int, where: Where = (), *, cutoff: str | None = None
    ) -> int:
        """How many rows of one store match ``where``."""
        source, params = self._filtered(table, store_id, where, cutoff)
        return int(self.conn.execute(f"SELECT count(*) {source}", params).fetchone()[0])

    def secret(self) -> bytes:
        """The key that signs pagination cursors: drawn once, shared by every worker."""
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO settings (key, value) VALUES ('cursor_secret', ?)",
                (secrets.token_hex(32),),
            )
            value = conn.execute(
                "SELECT value FROM settings WHERE key = 'cursor_secret'"
            ).fetchone()[0]
        return bytes.fromhex(value)

    # -- contacts and recovery --------------------------------------------

    def touch_contact(self, store_id: int, customer: dict[str, Any]) -> None:
        """Create or refresh the contact of a customer's phone (names last seen)."""
        self.touch_contacts(store_id, [contact_of(customer)])

    def touch_contacts(self, store_id: int, contacts: Sequence[Contact]) -> None:
        """``touch_contact`` for many customers (``contact_of``), in order: the last
        one seen wins."""
        stamp = formats.now()
        self.conn.executemany(
            "INSERT INTO contacts (store_id, phone, first_name, last_name, locale, "
            "last_activity_at, inserted_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (store_id, phone) DO UPDATE SET "
            "first_name = COALESCE(excluded.first_name, first_name), "
            "last_name = COALESCE(excluded.last_name, last_name), "
            "locale = COALESCE(excluded.locale, locale), "
            "last_activity_at = excluded.last_activity_at, updated_at = excluded.updated_at",
            [(store_id, *contact, stamp, stamp, stamp) for contact in contacts if contact[0]],
        )

    def phones_with_open_abandoned(self, store_id: int, phones: set[str]) -> set[str]:
        """Which of ``phones`` have an abandoned checkout or cart not yet recovered."""
        found: set[str] = set()
        for chunk, marks in in_lists(sorted(phones)):
            for table in ABANDONED:
                found.update(
                    row[0]
                    for row in self.conn.execute(
                        f"SELECT DISTINCT customer_phone FROM {table} WHERE store_id = ? "
                        f"AND customer_phone IN ({marks}) AND status = 'abandoned' "
                        "AND recovered_at IS NULL",
                        (store_id, *chunk),
                    )
                )
        return found

    def attribute(
        self, store_id: int, order: dict[str, Any], window_start: str
    ) -> dict[str, Any] | None:
        """Mark recovered the checkout or cart an order recovers, if any: one of its
        contact's, ``abandoned`` and not recovered, abandoned in [window_start, placed_at);
        the most recent ``abandoned_at``, then a checkout before a cart (further down
        the funnel), then the first written (lower id). Once per order: nothing when the
        order has already recovered one."""
        phone, placed_at = order["customer_phone"], order["placed_at"]
        if phone is None:
            return None
        candidate = " UNION ALL ".join(
            f"SELECT '{table}' AS kind, {funnel} AS funnel, id, abandoned_at FROM {table} "
            "WHERE store_id = ? AND customer_phone = ? AND status = 'abandoned' "
            "AND recovered_at IS NULL AND abandoned_at >= ? AND abandoned_at < ?"
            for funnel, table in enumerate(ABANDONED)
        )
        best = self.conn.execute(
            f"{candidate} ORDER BY abandoned_at DESC, funnel, id LIMIT 1",
            (store_id, phone, window_start, placed_at) * len(ABANDONED),
        ).fetchone()
        if best is None:
            return None
        done = " UNION ALL ".join(
            f"SELECT 1 FROM {table} WHERE store_id = ? AND recovered_order_external_id = ?"
            for table in ABANDONED
        )
        if self.conn.execute(done, (store_id, order["external_id"]) * len(ABANDONED)).fetchone():
            return None
        table = best["kind"]
        self._recover(table, best["id"], placed_at, order["external_id"])
        return {"table": table, "id": best["id"]}

    def attribute_arrival(
        self, table: str, record: dict[str, Any], window_end: str
    ) -> dict[str, Any] | None:
        """The other side of :meth:`attribute`, for a checkout or cart written after the
        order that completes it: if it is ``abandoned`` and not recovered, mark it
        recovered by the first order of its contact placed in (abandoned_at, window_end]
        that has recovered nothing yet (earliest ``placed_at``, then lower id). Returns
        that order's external_id and placed_at, or None."""
        phone, abandoned_at = record["customer_phone"], record["abandoned_at"]
        if phone is None or record["status"] != "abandoned" or record["recovered_at"]:
            return None
        free = " AND ".join(
            f"NOT EXISTS (SELECT 1 FROM {other} WHERE {other}.store_id = orders.store_id "
            f"AND {other}.recovered_order_external_id = orders.external_id)"
            for other in ABANDONED
        )
        order = self.conn.execute(
            "SELECT external_id, placed_at FROM orders WHERE store_id = ? "
            f"AND customer_phone = ? AND placed_at > ? AND placed_at <= ? AND {free} "
            "ORDER BY placed_at, id LIMIT 1",
            (record["store_id"], phone, abandoned_at, window_end),
        ).fetchone()
        if order is None:
            return None
        self._recover(table, record["id"], order["placed_at"], order["external_id"])
        return {"external_id": order["external_id"], "placed_at": order["placed_at"]}

    def _recover(self, table: str, row_id: int, at: str, order_external_id: str) -> None:
        self.conn.execute(
            f"UPDATE {table} SET status = 'recovered', recovered_at = ?, "
            "recovered_order_external_id = ?, updated_at = ? WHERE id = ?",
            (at, order_external_id, formats.now(), row_id),
        )

    def totals(
        self, table: str, store_id: int, phones: list[str]
    ) -> dict[str, list[tuple[str | None, str]]]:
        """(currency, total_price) of the records of each phone."""
        found: dict[str, list[tuple[str | None, str]]] = {phone: [] for phone in phones}
        marks = ", ".join("?" for _ in phones)
        for row in self.conn.execute(
            f"SELECT customer_phone, currency, total_price FROM {table} "
            f"WHERE store_id = ? AND customer_phone IN ({marks})",
            (store_id, *phones),
        ):
            found[row[0]].append((row[1], row[2]))
        return found

    def customer_ids(self, store_id: int, phones: list[str]) -> dict[str, list[str]]:
        """The external_ids of the live customers of each phone."""
        found: dict[str, list[str]] = {phone: [] for phone in phones}
        marks = ", ".join("?" for _ in phones)
        for phone, external_id in self.conn.execute(
            f"SELECT phone, external_id FROM customers WHERE store_id = ? AND phone IN ({marks}) "
            "AND deleted_at IS NULL AND external_id IS NOT NULL ORDER BY id",
            (store_id, *phones),
        ):
            found[phone].append(external_id)
        return found

    # -- the outbox ---------------------------------------------------------

    def opted_out(self, store_id: int, phone: str) -> bool:
        row = self.conn.execute(
            "SELECT opted_out FROM contacts WHERE store_id = ? AND phone = ?", (store_id, phone)
        ).fetchone()
        return bool(row and row[0])

    def set_opt_out(self, store_id: int, phone: str, opted_out: bool) -> bool:
        """Record a contact's choice; opting out cancels its pending messages."""
        with self.transaction() as conn:
            changed = conn.execute(
                "UPDATE contacts SET opted_out = ?, updated_at = ? "
                "WHERE store_id = ? AND phone = ?",
                (int(opted_out), formats.now(), store_id, phone),
            ).rowcount
            if changed and opted_out:
                self.cancel_messages(store_id, "cancelled: contact opted out", phone=phone)
        return bool(changed)

    def schedule_message(self, store_id: int, message: dict[str, Any], due: str) -> None:
        """Schedule a message once per dedupe key. A pending one follows the new due
        time and parameters; a cancelled one comes back; a sent one is never redone."""
        values = self.encode(message)
        stamp = formats.now()
        row = {
            **values,
            "store_id": store_id,
            "state": "scheduled",
            "scheduled_at": due,
            "next_attempt_at": due,
            "inserted_at": stamp,
            "updated_at": stamp,
        }
        self.conn.execute(
            f"INSERT INTO messages ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)}) "
            "ON CONFLICT (store_id, dedupe_key) DO UPDATE SET "
            "scheduled_at = excluded.scheduled_at, next_attempt_at = excluded.next_attempt_at, "
            "parameters = excluded.parameters, contact_phone = excluded.contact_phone, "
            "language = excluded.language, state = 'scheduled', cancelled_reason = NULL, "
            "updated_at = excluded.updated_at "
            "WHERE messages.state IN ('scheduled', 'cancelled')",
            tuple(row.values()),
        )

    def schedule_messages(
        self, store_id: int, messages: Sequence[dict[str, Any]], due: str
    ) -> None:
        """``schedule_message`` for each of ``messages``, in order, all due at ``due``."""
        for message in messages:
            self.schedule_message(store_id, message, due)

    def cancel_messages(
        self,
        store_id: int,
        reason: str,
        *,
        record: tuple[str, int] | None = None,
        trigger: str | None = None,
        key: str | None = None,
        phone: str | None = None,
    ) -> int:
        """Cancel the scheduled (not yet claimed) messages that match."""
        where, params = ["store_id = ?", "state = 'scheduled'"], [store_id]
        if record is not None:
            where += ["record_table = ?", "record_id = ?"]
            params += list(record)
        for column, value in (("trigger", trigger), ("dedupe_key", key), ("contact_phone", phone)):
            if value is not None:
                where.append(f"{column} = ?")
                params.append(value)
        return self.conn.execute(
            f"UPDATE messages SET state = 'cancelled', cancelled_reason = ?, updated_at = ? "
            f"WHERE {' AND '.join(where)}",
            (reason, formats.now(), *params),
        ).rowcount

    def claim_messages(self, now: str, lease_until: str, batch: int) -> list[dict[str, Any]]:
        """Atomically take due messages (and ones whose sender's lease ran out).

        A paused store's messages wait: they are not taken until it is active again."""
        with self.transaction() as conn:
            rows = conn.execute(
                "UPDATE messages SET state = 'sending', attempts = attempts + 1, "
                "lease_until = ?, updated_at = ? WHERE id IN (SELECT id FROM messages "
                "WHERE ((state = 'scheduled' AND next_attempt_at <= ?) "
                "OR (state = 'sending' AND lease_until <= ?)) "
                "AND store_id NOT IN (SELECT id FROM stores WHERE paused = 1) "
                "ORDER BY next_attempt_at, id LIMIT ?) RETURNING *",
                (lease_until, now, now, now, batch),
            ).fetchall()
        return [m for m in (self._decode(row) for row in rows) if m is not None]

    def finish_message(self, message_id: int, lease_until: str, changes: dict[str, Any]) -> bool:
        """Record a delivery outcome, if this sender still holds the lease."""
        values = {**changes, "lease_until": None, "updated_at": formats.now()}
        with self.transaction() as conn:
            return bool(
                conn.execute(
                    f"UPDATE messages SET {', '.join(f'{c} = ?' for c in values)} "
                    "WHERE id = ? AND state = 'sending' AND lease_until = ?",
                    (*values.values(), message_id, lease_until),
                ).rowcount
            )

    def later_step_due(self, message: dict[str, Any], now: str) -> str | None:
        """The step of a later message of the same record and trigger that is due by
        ``now`` and not cancelled (the latest such step), or None."""
        row = self.conn.execute(
            "SELECT step FROM messages WHERE record_table = ? AND record_id = ? "
            "AND store_id = ? AND trigger = ? AND id != ? AND state != 'cancelled' "
            "AND scheduled_at > ? AND scheduled_at <= ? ORDER BY scheduled_at DESC LIMIT 1",
            (
                message["record_table"],
                message["record_id"],
                message["store_id"],
                message["trigger"],
                message["id"],
                message["scheduled_at"],
                now,
            ),
        ).fetchone()
        return None if row is None else row[0]

    def notification_state(self, table: str, ids: list[int]) -> dict[int, list[dict[str, Any]]]:
        """The recovery messages (not cancelled) of each checkout or cart."""
        found: dict[int, list[dict[str, Any]]] = {i: [] for i in ids}
        if not ids:
            return found
        marks = ", ".join("?" for _ in ids)
        for row in self.conn.execute(
            f"SELECT record_id, state, scheduled_at FROM messages WHERE record_table = ? "
            f"AND record_id IN ({marks}) AND trigger = 'recovery' AND state != 'cancelled' "
            "ORDER BY scheduled_at",
            (table, *ids),
        ):
            found[row[0]].append({"state": row[1], "scheduled_at": row[2]})
        return found

    # -- accounts ---------------------------------------------------------

    def create_team(self, team_id: int, name: str | None = None) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT OR IGNORE INTO teams (id, name, created_at) VALUES (?, ?, ?)",
                (team_id, name or f"Team {team_id}", formats.now()),
            )

    def create_store(self, store: dict[str, Any]) -> dict[str, Any]:
        """Insert a store; raises sqlite3.IntegrityError when its id is taken."""
        self._accounts.clear()  # this connection's writes leave data_version as it is
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
        self._accounts.clear()  # this connection's writes leave data_version as it is
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
        self._accounts.clear()  # this connection's writes leave data_version as it is
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

    def account(
        self, token_hash: str, store_id: int, *, remembered: bool = False
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The key with this hash and the store, as ``find_key`` and ``get_store`` give
        them, remembered until a key or a store changes (``PRAGMA data_version`` says
        another connection wrote, the count of migration step 7's triggers says it
        wrote keys or stores; this connection's own such writes forget them at once): a
        key revoked or a store paused by ``kanal`` in another process counts from the
        next request on, as before. (Always exact
        here, so ``remembered``, which lets the PostgreSQL engine verify later, changes
        nothing.)"""
        version = self.conn.execute("PRAGMA data_version").fetchone()[0]
        if version != self._accounts_version:
            # Another connection wrote: keys or stores only if their count moved (the
            # triggers of migration step 7), not for every order another worker wrote.
            self._accounts_version = version
            stamp = self.setting(ACCOUNTS_VERSION)
            if stamp != self._accounts_stamp:
                self._accounts.clear()
                self._accounts_stamp = stamp
        found = self._accounts.get((token_hash, store_id))
        if found is None:
            if len(self._accounts) >= ACCOUNTS_CACHED:
                self._accounts.clear()
            found = self._accounts[(token_hash, store_id)] = (
                self.find_key(token_hash),
                self.get_store(store_id),
            )
        return found

    def verify_account(self) -> None:
        """Nothing to verify: ``account`` is always exact on SQLite (see there)."""

    def find_key(self, token_hash: str) -> dict[str, Any] | None:
        row = self._find("api_keys", {"token_hash": token_hash})
        return dict(row) if row else None

    def list_keys(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.conn.execute("SELECT * FROM api_keys ORDER BY id")]

    def delete_key(self, key_id: int) -> bool:
        self._accounts.clear()  # this connection's writes leave data_version as it is
        with self.transaction() as conn:
            return conn.execute("DELETE FROM api_keys WHERE id = ?", (key_id,)).rowcount > 0

    def setting(self, key: str) -> str | None:
        """The value of a ``settings`` entry, or None."""
        row = self.conn.execute("SELECT value FROM settings WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set_setting(self, key: str, value: str) -> None:
        with self.transaction() as conn:
            conn.execute(
                "INSERT INTO settings (key, value) VALUES (?, ?) "
                "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    def reserve_permits(
        self, store_id: int, limit: int, wanted: int, now: float
    ) -> tuple[float, int, int]:
        """Take up to ``wanted`` of the ``limit`` requests of the store's one-minute
        window (a new window when the last one has ended), atomically across processes.

        Returns (window start, permits granted, requests taken from the window so far).
        """
        with self.transaction() as conn:
            row = conn.execute(
                "SELECT window_start, hits FROM rate_limits WHERE store_id = ?", (store_id,)
            ).fetchone()
            fresh = row is None or row[0] <= now - RATE_WINDOW
            start, hits = (now, 0) if fresh else (row[0], row[1])
            granted = max(0, min(wanted, limit - hits))
            if granted or fresh:
                conn.execute(
                    "INSERT INTO rate_limits (store_id, window_start, hits) VALUES (?, ?, ?) "
                    "ON CONFLICT (store_id) DO UPDATE SET "
                    "window_start = excluded.window_start, hits = excluded.hits",
                    (store_id, start, hits + granted),
                )
        return start, granted, hits + granted

    # -- import jobs ------------------------------------------------------

    def create_import(
        self, store_id: int, job: dict[str, Any], payload: bytes, unfinished_limit: int
    ) -> dict[str, Any] | None:
        """Queue an import job of the store with its payload, unless the store has
        ``unfinished_limit`` jobs queued or running already (then None). One transaction,
        so two uploads at once never make a third unfinished job."""
        stamp = formats.now()
        states = ", ".join(f"'{state}'" for state in UNFINISHED)
        with self.transaction() as conn:
            unfinished = conn.execute(
                f"SELECT count(*) FROM imports WHERE store_id = ? AND state IN ({states})",
                (store_id,),
            ).fetchone()[0]
            if unfinished >= unfinished_limit:
                return None
            row = {**job, "store_id": store_id, "inserted_at": stamp, "updated_at": stamp}
            written = conn.execute(
                f"INSERT INTO imports ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)}) "
                "RETURNING *",
                tuple(row.values()),
            ).fetchone()
            conn.execute(
                "INSERT INTO import_payloads (id, store_id, payload) VALUES (?, ?, ?)",
                (written["id"], store_id, payload),
            )
        return dict(written)

    def claim_import(self, now: str, lease_until: str) -> dict[str, Any] | None:
        """Atomically take the oldest job that is queued, or running under a lease that
        ran out (its worker died): it is ``running`` under a new lease, its attempts
        counted. A paused store's jobs wait."""
        with self.transaction() as conn:
            row = conn.execute(
                "UPDATE imports SET state = 'running', attempts = attempts + 1, "
                "lease_until = ?, started_at = COALESCE(started_at, ?), updated_at = ? "
                "WHERE id = (SELECT id FROM imports WHERE (state = 'queued' "
                "OR (state = 'running' AND lease_until <= ?)) "
                "AND store_id NOT IN (SELECT id FROM stores WHERE paused = 1) "
                "ORDER BY id LIMIT 1) RETURNING *",
                (lease_until, now, now, now),
            ).fetchone()
        return None if row is None else dict(row)

    def import_payload(self, store_id: int, import_id: int) -> bytes | None:
        """The records of a job as uploaded (None once it has ended)."""
        row = self.conn.execute(
            "SELECT payload FROM import_payloads WHERE store_id = ? AND id = ?",
            (store_id, import_id),
        ).fetchone()
        return None if row is None else bytes(row[0])

    def hold_import(self, store_id: int, import_id: int, lease_until: str) -> dict[str, Any] | None:
        """Inside a chunk's transaction, before its writes: the job, if it is still
        running under this lease (a cancel or another worker's claim since ends it
        here: None). The write lock holds it until the chunk commits."""
        row = self.conn.execute(
            "SELECT * FROM imports WHERE store_id = ? AND id = ? AND state = 'running' "
            "AND lease_until = ?",
            (store_id, import_id, lease_until),
        ).fetchone()
        return None if row is None else dict(row)

    def advance_import(
        self,
        store_id: int,
        import_id: int,
        lease_until: str,
        progress: dict[str, int],
        errors: Sequence[tuple[int, dict[str, list[str]]]],
        renewed: str,
    ) -> bool:
        """Inside a chunk's transaction, after its writes: add the chunk's counts
        (``processed``, ``created``, ``updated``, ``invalid``) to the job, record its
        invalid records' errors and renew the lease, if it is still held; else nothing,
        and the caller rolls the chunk back."""
        stamp = formats.now()
        changed = self.conn.execute(
            "UPDATE imports SET processed = processed + ?, created = created + ?, "
            "updated = updated + ?, invalid = invalid + ?, lease_until = ?, updated_at = ? "
            "WHERE store_id = ? AND id = ? AND state = 'running' AND lease_until = ?",
            (
                progress["processed"],
                progress["created"],
                progress["updated"],
                progress["invalid"],
                renewed,
                stamp,
                store_id,
                import_id,
                lease_until,
            ),
        ).rowcount
        if not changed:
            return False
        self.conn.executemany(
            "INSERT INTO import_errors (store_id, import_id, line, errors) VALUES (?, ?, ?, ?)",
            [(store_id, import_id, line, to_json(found)) for line, found in errors],
        )
        return True

    def finish_import(
        self,
        store_id: int,
        import_id: int,
        lease_until: str,
        state: str,
        failure: str | None = None,
    ) -> bool:
        """End a running job held under this lease (``done`` or ``failed``, with why);
        its payload goes. False when the lease was lost (cancelled, or taken over)."""
        stamp = formats.now()
        with self.transaction() as conn:
            changed = conn.execute(
                "UPDATE imports SET state = ?, failure = ?, lease_until = NULL, "
                "finished_at = ?, updated_at = ? WHERE store_id = ? AND id = ? "
                "AND state = 'running' AND lease_until = ?",
                (state, failure, stamp, stamp, store_id, import_id, lease_until),
            ).rowcount
            if changed:
                conn.execute(
                    "DELETE FROM import_payloads WHERE store_id = ? AND id = ?",
                    (store_id, import_id),
                )
        return bool(changed)

    def cancel_import(self, store_id: int, import_id: int) -> tuple[dict[str, Any] | None, bool]:
        """Cancel a job that is queued or running (what its chunks wrote stays; a worker
        sees it before its next chunk). Returns the job as it now stands (None: no such
        job) and whether this call cancelled it (False: it had ended already)."""
        stamp = formats.now()
        states = ", ".join(f"'{state}'" for state in UNFINISHED)
        with self.transaction() as conn:
            row = conn.execute(
                "UPDATE imports SET state = 'cancelled', lease_until = NULL, finished_at = ?, "
                f"updated_at = ? WHERE store_id = ? AND id = ? AND state IN ({states}) "
                "RETURNING *",
                (stamp, stamp, store_id, import_id),
            ).fetchone()
            if row is not None:
                conn.execute(
                    "DELETE FROM import_payloads WHERE store_id = ? AND id = ?",
                    (store_id, import_id),
                )
                return dict(row), True
        found = self.conn.execute(
            "SELECT * FROM imports WHERE store_id = ? AND id = ?", (store_id, import_id)
        ).fetchone()
        return (None if found is None else dict(found)), False
