"""``kanal import``: bulk upserts from JSON Lines or a JSON array, through the API's own rules.

Each record is checked against the same request schema as ``POST /{resource}``
(the fast validator decides, the reference one words the errors, exactly as in
a 422) and written by the same handler as the API, in batches of one
transaction each (a savepoint per record, so a bad one never undoes its batch).
The file is streamed: JSON Lines line by line, a JSON array item by item (ijson).
"""

from __future__ import annotations

import time
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import ijson

from kanal import storage as storage_module
from kanal.auth import current_store
from kanal.errors import ApiError, ValidationFailed
from kanal.spec import load_spec, resolve
from kanal.storage import Storage
from kanal.validation import collect, compiled, current_region, fast, parse_json

RESOURCES = ("orders", "checkouts", "carts", "customers", "shipments")


def body_schema(resource: str) -> dict[str, Any]:
    """The request schema of ``POST /api/v1/stores/{store_id}/{resource}``."""
    spec = load_spec()
    operation = spec["paths"][f"/api/v1/stores/{{store_id}}/{resource}"]["post"]
    body = resolve(spec, operation["requestBody"])
    return body["content"]["application/json"]["schema"]


def handler(resource: str) -> Any:
    from handlers import carts, checkouts, customers, orders, shipments

    modules = {
        "orders": orders,
        "checkouts": checkouts,
        "carts": carts,
        "customers": customers,
        "shipments": shipments,
    }
    return getattr(modules[resource], f"upsert_{resource[:-1]}")


def run_sync(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a handler that never awaits (they do not: SQLite calls are synchronous)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the handler awaited; it cannot run in bulk")


def read(stream: IO[bytes]) -> Iterator[tuple[int, Any]]:
    """(line or item number, record, or an ApiError for what does not parse)."""
    head = stream.peek(64) if hasattr(stream, "peek") else b""
    if head.lstrip()[:1] == b"[":
        for number, item in enumerate(ijson.items(stream, "item", use_float=True), 1):
            yield number, item
        return
    for number, line in enumerate(stream, 1):
        if not line.strip():
            continue
        try:
            yield number, parse_json(line)
        except ApiError as exc:
            yield number, exc


@dataclass
class Report:
    created: int = 0
    updated: int = 0
    invalid: list[tuple[int, dict[str, list[str]]]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def valid(self) -> int:
        return self.created + self.updated


def import_file(
    path: str,
    store_id: int,
    resource: str,
    db: str,
    *,
    batch: int = 1000,
    progress: Any = None,
) -> Report:
    store = Storage(db)
    shop = store.get_store(store_id)
    if shop is None:
        raise ValueError(f"no store {store_id}")
    schema, upsert = body_schema(resource), handler(resource)
    tokens = (
        storage_module.current.set(store),
        current_store.set(shop),
        current_region.set(shop["region"]),
    )
    report, started = Report(), time.perf_counter()
    try:
        with Path(path).open("rb") as stream:
            records = read(stream)
            while True:
                chunk = [item for _, item in zip(range(batch), records, strict=False)]
                if not chunk:
                    break
                with store.transaction():
                    for number, record in chunk:
                        _one(store, store_id, number, record, schema, upsert, report)
                if progress is not None:
                    progress(stream.tell(), report)
    finally:
        for var, token in zip(
            (storage_module.current, current_store, current_region), tokens, strict=True
        ):
            var.reset(token)
        store.close()
    report.seconds = time.perf_counter() - started
    return report


def _one(
    store: Storage,
    store_id: int,
    number: int,
    record: Any,
    schema: dict[str, Any],
    upsert: Any,
    report: Report,
) -> None:
    if isinstance(record, ApiError):
        report.invalid.append((number, {"": [record.body["error"]]}))
        return
    if not isinstance(record, dict):
        report.invalid.append((number, {"": ["The record must be a JSON object."]}))
        return
    if not fast(schema).is_valid(record):
        errors = collect(compiled(schema).iter_errors(record))
        if errors:
            report.invalid.append((number, errors))
            return
    try:
        with store.savepoint():
            _, status = run_sync(upsert(store_id, record))
    except ValidationFailed as exc:
        report.invalid.append((number, exc.body["errors"]))
        return
    if status == 201:
        report.created += 1
    else:
        report.updated += 1
