"""What every engine stores: the tables and their columns, the JSON columns, the
indexed filters, the migrations' numbered steps, and the helpers that shape rows.

Written once; each engine renders it in its own dialect (``sqlite.py``, and the
PostgreSQL engine).
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterator, Sequence
from typing import Any

import orjson

from kanal.spec import load_spec

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
    "recovered_at": str,
    "recovered_order_external_id": str,
    "notifications_enabled": int,
}
CHECKOUT_DEFAULTS = {"status": "abandoned", "notifications_enabled": 1}
TABLES: dict[str, dict[str, Any]] = {
    "settings": {"key": str, "value": str},
    "teams": {"name": str, "created_at": str},
    "stores": {
        "team_id": int,
        "name": str,
        "region": str,
        "rate_limit": int,
        "paused": int,
        "created_at": str,
        "attribution_days": int,
        "automations": str,
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
    "contacts": {
        "store_id": int,
        "phone": str,
        "first_name": str,
        "last_name": str,
        "locale": str,
        "last_activity_at": str,
        "opted_out": int,
        **STAMPS,
    },
    # The outbox: every WhatsApp message, from scheduling to delivery.
    "messages": {
        "store_id": int,
        "trigger": str,
        "step": str,
        "dedupe_key": str,
        "record_table": str,
        "record_id": int,
        "record_external_id": str,
        "contact_phone": str,
        "template": str,
        "language": str,
        "parameters": str,
        "sender": str,
        "state": str,
        "scheduled_at": str,
        "next_attempt_at": str,
        "lease_until": str,
        "attempts": int,
        "last_error": str,
        "provider_id": str,
        "sent_at": str,
        "cancelled_reason": str,
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
    # Import jobs (POST /imports): one row a job, its progress committed chunk by chunk.
    "imports": {
        "store_id": int,
        "resource": str,
        "format": str,
        "state": str,
        "total": int,
        "processed": int,
        "created": int,
        "updated": int,
        "invalid": int,
        "failure": str,
        "attempts": int,
        "lease_until": str,
        "started_at": str,
        "finished_at": str,
        **STAMPS,
    },
    # A job's records as uploaded, where every worker on every host can read them; id is
    # the job's. Deleted when the job ends.
    "import_payloads": {"store_id": int, "payload": bytes},
    # One row per invalid record of a job: its line and the 422's errors.
    "import_errors": {"store_id": int, "import_id": int, "line": int, "errors": str},
}
DEFAULTS = {
    "stores": {"rate_limit": 60, "paused": 0, "attribution_days": 7},
    "checkouts": CHECKOUT_DEFAULTS,
    "carts": CHECKOUT_DEFAULTS,
    "contacts": {"opted_out": 0},
    "messages": {"state": "scheduled", "attempts": 0},
    "imports": {
        "state": "queued",
        "processed": 0,
        "created": 0,
        "updated": 0,
        "invalid": 0,
        "attempts": 0,
    },
}
JSON_COLUMNS = {"customer", "line_items", "tags", "metadata", "parameters", "errors"}
# Filtered columns, indexed after store_id (the rowid rides along, so pages stay ordered).
FILTER_INDEXES = {
    "orders": ["financial_status", "fulfillment_status"],
    "checkouts": ["status"],
    "carts": ["status"],
    "shipments": ["status"],
    "imports": ["state", "resource"],
    "import_errors": ["import_id"],
}
RESOURCES = ("orders", "checkouts", "carts", "customers", "shipments")
# Tables whose records embed a customer (erased on a GDPR request).
HOLDERS = ("orders", "checkouts", "carts")
ABANDONED = ("checkouts", "carts")


@functools.cache
def customer_fields() -> tuple[str, ...]:
    """The keys of a customer that are kept: the spec's CustomerInput (the spec says
    unknown keys are ignored, so they are not stored). Read from the contract when
    first needed, so a command checks the contract before anything reads it."""
    return tuple(load_spec()["components"]["schemas"]["CustomerInput"]["properties"])


def erased_customer() -> dict[str, None]:
    """What an erased person's embedded customer becomes: every key null."""
    return dict.fromkeys(customer_fields())


RATE_WINDOW = 60.0
#: Tables whose rows are written again and again in place (upserts, status changes, the
#: contact every write touches, the rate window, an import's progress). On PostgreSQL
#: their pages are filled to FILLFACTOR percent (migration step 8): the room left takes
#: a row's next version on its own page, a HOT update, which adds no index entry and
#: whose old version the page itself reclaims (measured: README, PostgreSQL and
#: scaling out).
REWRITTEN = (*RESOURCES, "contacts", "messages", "rate_limits", "imports")
FILLFACTOR = 70
#: The settings entry in which SQLite counts every change to api_keys and stores (the
#: triggers of migration step 7).
ACCOUNTS_VERSION = "accounts_version"
#: Numbered steps beyond creating what is missing: (version, what it does, SQL). A
#: database records the last one it had; the steps after it run once, in order.
MIGRATIONS: list[tuple[int, str, str | tuple[str, ...]]] = [
    (1, "the schema as created by the first versions", "SELECT 1"),
    (
        2,
        "erasure deletes customers: finish the erasures of versions that soft-deleted "
        "them and kept some of their data (tags, locale, amounts)",
        "DELETE FROM customers WHERE deleted_at IS NOT NULL",
    ),
    *(
        (
            3 + n,
            f"{table} whose status is not recovered or completed lose the recovery that "
            "older versions kept when the status moved on (it blocked the order too)",
            f"UPDATE {table} SET recovered_at = NULL, recovered_order_external_id = NULL "
            "WHERE status NOT IN ('recovered', 'completed') AND (recovered_at IS NOT NULL "
            "OR recovered_order_external_id IS NOT NULL)",
        )
        for n, table in enumerate(("checkouts", "carts"))
    ),
    (
        5,
        "import jobs: the imports, import_payloads and import_errors tables (created with "
        "the schema; nothing to move)",
        "SELECT 1",
    ),
    (
        6,
        "PostgreSQL: kanal_may_write(), the check a write sent in one round trip makes "
        "before it writes (nothing on SQLite)",
        "SELECT 1",
    ),
    (
        7,
        "SQLite: every change to api_keys or stores counts in settings' accounts_version, "
        "so a server's remembered keys and stores outlive other processes' writes to "
        "orders (nothing on PostgreSQL)",
        tuple(
            f"CREATE TRIGGER IF NOT EXISTS kanal_accounts_{table}_{event.lower()} "
            f"AFTER {event} ON {table} BEGIN "
            f"INSERT INTO settings (key, value) VALUES ('{ACCOUNTS_VERSION}', '1') "
            "ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1; END"
            for table in ("api_keys", "stores")
            for event in ("INSERT", "UPDATE", "DELETE")
        ),
    ),
    (
        8,
        f"PostgreSQL: the pages of tables whose rows are rewritten in place are filled to "
        f"{FILLFACTOR}%, leaving room for the rows' next versions (nothing on SQLite)",
        "SELECT 1",
    ),
]


class AccountChanged(Exception):
    """The key or the store a request was authorised with, remembered from an earlier
    request, changed in the database since (revoked, paused, its settings updated):
    nothing was written; the request is to be served again with them read afresh."""


#: Import jobs: the states of a job that has not ended, and of one that has.
UNFINISHED = ("queued", "running")
FINISHED = ("done", "failed", "cancelled")
#: Values per ``IN (...)`` list, well under SQLite's limit on bound parameters.
IN_CHUNK = 500
#: A condition on one column: (column, operator, value), joined with AND. The callers
#: name columns and values; the SQL is written here (and by each engine its own way).
Condition = tuple[str, str, Any]
Where = Sequence[Condition]
#: Statuses that say a checkout or cart was recovered; the others say it was not.
RECOVERED = ("recovered", "completed")


def to_json(value: Any) -> str:
    """JSON text of a value (orjson; the standard library for integers beyond 64 bits)."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return json.dumps(value)


def in_lists(values: Sequence[Any]) -> Iterator[tuple[Sequence[Any], str]]:
    """``values`` in slices of at most IN_CHUNK, each with its ``?, ?, ...`` marks."""
    for start in range(0, len(values), IN_CHUNK):
        chunk = values[start : start + IN_CHUNK]
        yield chunk, ", ".join("?" for _ in chunk)


#: What a contact takes from a customer: (phone, first_name, last_name, locale).
Contact = tuple[str | None, str | None, str | None, str | None]


def contact_of(customer: dict[str, Any]) -> Contact:
    return (
        customer.get("phone"),
        customer.get("first_name"),
        customer.get("last_name"),
        customer.get("locale"),
    )
