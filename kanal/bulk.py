"""Bulk upserts from JSON Lines or a JSON array, through the API's own rules: the one
engine of ``kanal import`` (a file) and of import jobs (``POST /imports``, a payload
stored in the database, run by ``kanal.jobs``).

Each record is checked against the same request schema as ``POST /{resource}``
(the fast validator decides, the reference one words the errors, exactly as in
a 422). The records are streamed: JSON Lines line by line, a JSON array item by
item (ijson), in chunks of ``batch`` records.

Two stages:

- Checking (parse, validate, and for orders the columns, exactly as the API's
  handler computes them) is pure CPU work and runs in ``jobs`` worker processes,
  a few chunks ahead of the writer and never more (the file is not read ahead
  into memory).
- Writing runs here, chunk after chunk in file order, one transaction a chunk.
  Orders are written as a set (``Storage.upsert_many``, then their contacts),
  and what an order sets off (attribution, confirmation) runs for each order
  that can set anything off, as in the API. The other resources go through
  their API handler, record by record, with a savepoint each, so a record the
  handler refuses (a shipment of an unknown order) undoes only itself.

A chunk's transaction can carry more of the caller's work (``Writer.write``'s
``before`` and ``after``): an import job checks there that it still holds the job,
and commits its progress and its invalid records' errors with the chunk's writes.
"""

from __future__ import annotations

import functools
import io
import json
import mmap
import multiprocessing
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypeVar

import ijson

from kanal import affinity
from kanal import storage as storage_module
from kanal.auth import current_store
from kanal.checks import BODY_CHECKS, merged
from kanal.errors import ApiError, ValidationFailed
from kanal.formats import current_region
from kanal.spec import load_spec, resolve
from kanal.storage import RESOURCES, AsyncStorage, Storage, connect, contact_of, is_postgres
from kanal.validation import collect, compiled, fast, has_lone_surrogate, parse_json

#: Records per chunk (one transaction) by default, by engine. A PostgreSQL chunk pays a
#: durable commit (fsync) and some ten round trips whatever its size, so its chunks are
#: larger (the sizes measured: README, Benchmarks); a SQLite chunk holds the only write
#: lock, which the API's writers wait for.
CHUNK_SQLITE, CHUNK_POSTGRES = 1000, 2500
#: Chunks handed to the workers ahead of the writer, per worker: enough for either
#: side's slower chunks (a run of new phone numbers to parse, a commit waiting for the
#: disk) not to hold the other up (measured: README, Benchmarks).
AHEAD = 4

Errors = dict[str, list[str]]
T = TypeVar("T")


@dataclass
class Checked:
    """A chunk, checked: the valid records as (number, body) or, for orders,
    (number, values as stored, contact); the invalid ones as (number, errors)."""

    valid: list[tuple[Any, ...]] = field(default_factory=list)
    invalid: list[tuple[int, Errors]] = field(default_factory=list)
    columns: tuple[str, ...] = ()
    #: Invalid records whose operation has checks the spec cannot state (they need the
    #: database, so the writer adds their errors): (number, errors, body).
    recheck: list[tuple[int, Errors, dict[str, Any]]] = field(default_factory=list)


def upsert_operation(resource: str) -> dict[str, Any]:
    """The operation ``POST /api/v1/stores/{store_id}/{resource}`` of the spec."""
    return load_spec()["paths"][f"/api/v1/stores/{{store_id}}/{resource}"]["post"]


def body_schema(resource: str) -> dict[str, Any]:
    """The request schema of ``POST /api/v1/stores/{store_id}/{resource}``."""
    body = resolve(load_spec(), upsert_operation(resource)["requestBody"])
    return body["content"]["application/json"]["schema"]


def body_check(resource: str) -> Any:
    """The checks beyond the schema of ``POST /{resource}`` (``kanal.checks``), if any."""
    return BODY_CHECKS.get(upsert_operation(resource)["operationId"])


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


async def _enter(operations: Any, shop: dict[str, Any]) -> None:
    """Set the request's context (its storage, store and region) in the running task."""
    storage_module.current.set(operations)
    current_store.set(shop)
    current_region.set(shop["region"])


def _run_now(make: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    return run_sync(make())


def run_sync(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """Run a coroutine of the API's code to its end at once: over SQLite it never
    suspends (AsyncStorage runs each operation there and then)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the handler awaited; it cannot run in bulk")


def read(stream: IO[bytes], array: bool | None = None) -> Iterator[tuple[int, Any]]:
    """(line or item number, the line's bytes or the array's item). ``array``: whether
    the records are a JSON array (None: a stream whose first character is ``[``)."""
    if array is None:
        head = stream.peek(64) if hasattr(stream, "peek") else b""
        array = head.lstrip()[:1] == b"["
    if array:
        yield from _array_items(stream)
        return
    for number, line in enumerate(stream, 1):
        if line.strip():
            yield number, line


def records(payload: bytes, array: bool) -> Iterator[tuple[int, Any]]:
    """``read`` over records held in memory (an import job's payload, at most 20 MiB).
    A JSON array is parsed whole, by the standard library as the API parses a body
    (numbers of any size; yajl, which streams a file, stops at integers beyond 64
    bits); a malformed one is a ValueError saying why."""
    if not array:
        return read(io.BytesIO(payload), False)
    try:
        items = json.loads(payload)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"malformed JSON array: {exc}") from None
    if not isinstance(items, list):
        raise ValueError("malformed JSON array: the payload is not an array")
    if has_lone_surrogate(payload):
        # Each item goes back to JSON text, refused as a line with one would be (a 422).
        return enumerate((json.dumps(item).encode() for item in items), 1)
    return enumerate(items, 1)


def _array_items(stream: IO[bytes]) -> Iterator[tuple[int, Any]]:
    """The items of a JSON array file; a malformed file ends with a ValueError that
    says after which item (the chunks before it are written)."""
    if not _lone_surrogate_in(stream):
        items: Iterator[Any] = ijson.items(stream, "item", use_float=True)
    else:
        # yajl reads a lone surrogate escape as "?" or fails on it; ijson's pure-Python
        # parser keeps it, and each item goes back to JSON text, refused as a line would be.
        parsed = ijson.get_backend("python").items(stream, "item", use_float=True)
        items = (json.dumps(item).encode() for item in parsed)
    number = 0
    try:
        for number, item in enumerate(items, 1):
            yield number, item
    except ijson.JSONError as exc:
        reason = (str(exc).splitlines() or ["malformed"])[0]
        raise ValueError(
            f"malformed JSON array after item {number}: {reason}. The chunks before it are "
            "written (a transaction each) and an import upserts, so running it again is safe"
        ) from None


def _lone_surrogate_in(stream: IO[bytes]) -> bool:
    """Whether a (non-empty) JSON file escapes a lone surrogate anywhere: read once, mapped
    (held in memory: looked at there)."""
    if isinstance(stream, io.BytesIO):
        return has_lone_surrogate(stream.getbuffer().tobytes())
    with mmap.mmap(stream.fileno(), 0, access=mmap.ACCESS_READ) as view:
        return has_lone_surrogate(view)


def chunks(stream: IO[bytes], size: int) -> Iterator[tuple[list[tuple[int, Any]], int]]:
    """The records in chunks of ``size``, each with the file offset it ends at."""
    return chunked(read(stream), size, stream.tell)


def chunked(
    items: Iterator[tuple[int, Any]], size: int, mark: Callable[[], T]
) -> Iterator[tuple[list[tuple[int, Any]], T]]:
    """``items`` in chunks of ``size``, each with ``mark()`` taken as it is cut."""
    while chunk := [item for _, item in zip(range(size), items, strict=False)]:
        yield chunk, mark()


class Checker:
    """Parses and validates one resource's records, as the API does, for one store."""

    def __init__(self, resource: str, region: str | None) -> None:
        self.resource, self.region = resource, region
        self.schema = body_schema(resource)
        self.rechecked = body_check(resource) is not None
        current_region.set(region)  # phone numbers are read in the store's region
        self.orders = resource == "orders"

    def errors(self, payload: Any) -> tuple[Any, Errors | None]:
        """The record parsed, and what is wrong with it (None: it is valid)."""
        if isinstance(payload, bytes):
            try:
                payload = parse_json(payload)
            except ValidationFailed as exc:  # a lone surrogate: 422 in the API
                return None, exc.body["errors"]
            except ApiError as exc:
                return None, {"": [exc.body["error"]]}
        if not isinstance(payload, dict):
            return None, {"": ["The record must be a JSON object."]}
        if not fast(self.schema).is_valid(payload):
            errors = collect(compiled(self.schema).iter_errors(payload))
            if errors:
                return payload, errors
        return payload, None

    def check_chunk(self, chunk: list[tuple[int, Any]]) -> Checked:
        from handlers.orders import order_record

        current_region.set(self.region)
        checked = Checked()
        for number, payload in chunk:
            body, errors = self.errors(payload)
            if errors is not None and self.rechecked and isinstance(body, dict):
                checked.recheck.append((number, errors, body))
            elif errors is not None:
                checked.invalid.append((number, errors))
            elif not self.orders:
                checked.valid.append((number, body))
            else:  # the columns POST /orders writes, as stored, and the contact
                record = order_record(body)
                checked.columns = tuple(record)
                values = tuple(Storage.encode(record).values())
                checked.valid.append((number, values, contact_of(record["customer"])))
        return checked


#: A checking process's checkers, by (resource, region).
_checkers: dict[tuple[str, str | None], Checker] = {}


def _checker(resource: str, region: str | None) -> Checker:
    found = _checkers.get((resource, region))
    if found is None:
        found = _checkers[(resource, region)] = Checker(resource, region)
    return found


def _validators() -> None:
    """Every resource's validator, built (once per process)."""
    for resource in RESOURCES:
        fast(body_schema(resource))


def _started() -> int:
    """Done as soon as a worker is up, with the validators built (their first chunks
    are not held up by it): the worker's parent process (the importing process when
    forked from it, else the fork server)."""
    _validators()
    return os.getppid()


def _forkable() -> bool:
    """Whether checking processes may be forked from this process as it is: on Linux,
    with no other thread running (a copy of a lock another thread holds would stay held
    in the child)."""
    return sys.platform == "linux" and threading.active_count() == 1


def _settle(started: Future[int], first: Future[int]) -> None:
    try:
        started.set_result(first.result())
    except BaseException as exc:  # the worker died, or the pool was shut down
        started.set_exception(exc)


def _watch(owner: int) -> None:
    """In a checking process: exit when the process that owns the pool has gone, however
    it went. (A pool's processes wait for work on a queue they also hold, so they would
    not notice; a server stopped by a signal never shuts its pool down.)"""

    def watch() -> None:
        while _alive(owner):
            time.sleep(1.0)
        os._exit(0)

    threading.Thread(target=watch, name="kanal-owner", daemon=True).start()


def _initialize(owner: int, cpus: str | None) -> None:
    """A checking process's start: ``_watch`` its owner, and take a CPU of its own when
    the import binds its processes (``cpus``: see ``kanal.affinity.bound_import``)."""
    _watch(owner)
    affinity.bind(cpus)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie (dead, not yet reaped) is gone too
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return True


def _check_in_worker(resource: str, region: str | None, chunk: list[tuple[int, Any]]) -> Checked:
    return _checker(resource, region).check_chunk(chunk)


@dataclass
class Tally:
    """What one chunk came to: records processed (valid or not), created, updated, and
    the invalid ones (number, errors) in order."""

    processed: int = 0
    created: int = 0
    updated: int = 0
    invalid: list[tuple[int, Errors]] = field(default_factory=list)


@dataclass
class Report:
    created: int = 0
    updated: int = 0
    invalid: list[tuple[int, Errors]] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def valid(self) -> int:
        return self.created + self.updated

    def add(self, tally: Tally) -> None:
        self.created += tally.created
        self.updated += tally.updated
        self.invalid.extend(tally.invalid)


#: Files up to this size are checked in the importing process (workers take a moment to start).
SMALL_FILE = 4 * 1024 * 1024


def default_batch(store: Any) -> int:
    """The records of a chunk by default over ``store`` (a SQLite ``Storage`` or not)."""
    return CHUNK_SQLITE if isinstance(store, Storage) else CHUNK_POSTGRES


def default_checkers() -> int:
    """A checking process per CPU but one, which the writer keeps (at least one)."""
    return max(1, (os.cpu_count() or 1) - 1)


def default_jobs(path: str) -> int:
    """For a large file, ``default_checkers()``; none for a small one."""
    return default_checkers() if os.path.getsize(path) > SMALL_FILE else 0


def import_file(
    path: str,
    store_id: int,
    resource: str,
    db: str,
    *,
    batch: int | None = None,
    jobs: int | None = None,
    progress: Any = None,
    cpu_affinity: str = "off",
) -> Report:
    """Import ``path`` into the store (a SQLite file or a postgresql:// database).
    ``batch``: records per transaction (None: ``default_batch``); ``jobs``: checking
    processes (0: check here); ``cpu_affinity``: ``auto`` binds this process and each
    checking process to a CPU of its own while the import runs, where that helps
    (``kanal.affinity.import_wanted``; ``kanal import`` does)."""
    started = time.perf_counter()
    jobs = default_jobs(path) if jobs is None else jobs
    with (
        affinity.bound_import(cpu_affinity, jobs, is_postgres(db)) as cpus,
        Checking(jobs, cpus) as checking,
    ):
        checking.warm()  # the checking processes start while the database is opened
        store = connect(db)
        try:
            shop = store.get_store(store_id)
            if shop is None:
                raise ValueError(f"no store {store_id}")
            with writing(store, shop, resource) as writer, Path(path).open("rb") as stream:
                for checked, offset in checking.checked(
                    chunks(stream, batch or default_batch(store)), resource, shop["region"]
                ):
                    writer.write(checked)
                    if progress is not None:
                        progress(offset, writer.report)
        finally:
            store.close()
    writer.report.invalid.sort(key=lambda item: item[0])  # handler refusals came last
    writer.report.seconds = time.perf_counter() - started
    return writer.report


@contextmanager
def writing(store: Any, shop: dict[str, Any], resource: str) -> Iterator[Writer]:
    """A writer of ``resource`` records into ``shop`` over ``store`` (SQLite's Storage,
    or PostgreSQL's behind Blocking), with the request's context the API's code reads
    (its storage, store and region) set while it is used."""
    if isinstance(store, Storage):
        # SQLite: the API's coroutines never suspend, and run here to their end.
        operations, run = AsyncStorage(store), _run_now
    else:
        # PostgreSQL: they run in the engine's own task, where the transactions the
        # writer opens hold their connection; the request's context is set there too.
        operations, run = store.engine, store.call
        run(functools.partial(_enter, operations, shop))
    tokens = (
        storage_module.current.set(operations),
        current_store.set(shop),
        current_region.set(shop["region"]),
    )
    try:
        yield Writer(store, shop, resource, operations, run)
    finally:
        for var, token in zip(
            (storage_module.current, current_store, current_region), tokens, strict=True
        ):
            var.reset(token)


class Checking:
    """Checks chunks in order: here, or in ``jobs`` worker processes, kept until
    ``close()`` (an import job runner keeps them from one job to the next). Until one
    of the processes answers (``warm``), chunks are checked here, so starting them holds
    nothing up."""

    def __init__(self, jobs: int, cpus: str | None = None) -> None:
        self.jobs = jobs
        #: Where each worker process claims a CPU of its own (None: nothing bound).
        self.cpus = cpus
        self.pool: ProcessPoolExecutor | None = None
        #: Done once a worker process answers (``pool`` is set before it is).
        self.started: Future[int] | None = None
        self.starting: threading.Thread | None = None
        self.lock = threading.Lock()

    def __enter__(self) -> Checking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with self.lock:
            pool, starting = self.pool, self.starting
            self.pool = self.started = self.starting = None
        if pool is not None:
            pool.shutdown(cancel_futures=True)
        if starting is not None:  # it shuts down a pool it makes after this (see _start)
            starting.join()

    def warm(self) -> None:
        """Start the worker processes, unless they are started already. Forked from this
        process when nothing else runs in it (at once: the code is imported already, as
        when ``kanal import`` starts); else from a fork server that imports the checking
        code once (some 0.4 s), in a thread: no lock or connection another thread holds
        crosses into a worker."""
        with self.lock:
            if self.jobs <= 0 or self.started is not None:
                return
            self.started = started = Future()
            if not _forkable():
                self.starting = threading.Thread(
                    target=self._start,
                    args=(started, "forkserver"),
                    name="kanal-checking",
                    daemon=True,
                )
                self.starting.start()
                return
        _validators()  # built once, here, for this process and the copies
        self._start(started, "fork")

    def _start(self, started: Future[int], method: str) -> None:
        try:
            context = multiprocessing.get_context(method)
            if method == "forkserver":
                context.set_forkserver_preload(["kanal.bulk", "handlers.orders"])
            # A worker that dies fails the import (BrokenProcessPool) instead of leaving
            # it waiting.
            pool = ProcessPoolExecutor(
                self.jobs,
                mp_context=context,
                initializer=_initialize,
                initargs=(os.getpid(), self.cpus),
            )
            first = pool.submit(_started)  # forks (or has the fork server fork) the workers
        except BaseException as exc:
            started.set_exception(exc)
            return
        with self.lock:
            current = self.started is started
            if current:
                self.pool = pool
        if not current:  # closed meanwhile
            pool.shutdown(cancel_futures=True)
        first.add_done_callback(functools.partial(_settle, started))

    def checked(
        self,
        chunks: Iterable[tuple[list[tuple[int, Any]], T]],
        resource: str,
        region: str | None,
        jobs: int | None = None,
    ) -> Iterator[tuple[Checked, T]]:
        """The chunks, checked, in order, each with its mark. ``jobs=0``: here this time."""
        here: Checker | None = None
        if (self.jobs if jobs is None else jobs) <= 0:
            here = Checker(resource, region)
            for chunk, mark in chunks:
                yield here.check_chunk(chunk), mark
            return
        self.warm()
        started = self.started
        assert started is not None
        pending: deque[tuple[Future[Checked], T]] = deque()
        for chunk, mark in chunks:
            if not started.done():  # while the workers start, chunks are checked here
                here = here or Checker(resource, region)
                yield here.check_chunk(chunk), mark
                continue
            started.result()  # raises if they could not start
            pool = self.pool
            if pool is None:
                raise BrokenProcessPool("the checking processes were shut down")
            pending.append((pool.submit(_check_in_worker, resource, region, chunk), mark))
            if len(pending) >= AHEAD * self.jobs:
                result, done = pending.popleft()
                yield result.result(), done
        while pending:
            result, done = pending.popleft()
            yield result.result(), done


class Writer:
    """Writes checked chunks into one store, one transaction a chunk."""

    def __init__(
        self,
        store: Any,
        shop: dict[str, Any],
        resource: str,
        operations: Any,
        run: Callable[[Callable[[], Coroutine[Any, Any, Any]]], Any],
    ) -> None:
        self.store, self.shop, self.resource = store, shop, resource
        #: What the API's own code is given, and how its coroutines are run.
        self.operations, self.run = operations, run
        self.upsert = handler(resource)
        self.check = body_check(resource)
        self.report = Report()

    def write(
        self,
        checked: Checked,
        *,
        before: Callable[[], None] | None = None,
        after: Callable[[Tally], None] | None = None,
    ) -> Tally:
        """Write a checked chunk in one transaction, in which ``before()`` runs first and
        ``after(tally)`` last (what the chunk came to, its invalid records in order);
        either may raise to roll the chunk back. Added to ``report`` once committed."""
        tally = Tally(processed=len(checked.valid) + len(checked.invalid) + len(checked.recheck))
        tally.invalid.extend(checked.invalid)
        tally.invalid.extend(
            (number, self.run(functools.partial(merged, errors, self.check, body)))
            for number, errors, body in checked.recheck
        )
        with self.store.transaction():
            if before is not None:
                before()
            if self.resource == "orders":
                self._orders(checked.columns, checked.valid, tally)
            else:
                for number, body in checked.valid:
                    self._one(number, body, tally)
            tally.invalid.sort(key=lambda item: item[0])
            if after is not None:
                after(tally)
        self.report.add(tally)
        return tally

    def _orders(self, columns: tuple[str, ...], valid: list[tuple[Any, ...]], tally: Tally) -> None:
        """Orders as sets. An order that comes again within the chunk starts a new set,
        so each order's consequences follow its own version, as they do in the API."""
        if not valid:
            return
        key = columns.index("external_id")
        start, seen = 0, set()
        for index, (_, values, _) in enumerate(valid):
            if values[key] in seen:
                self._order_set(columns, valid[start:index], tally)
                start, seen = index, set()
            seen.add(values[key])
        self._order_set(columns, valid[start:], tally)

    def _order_set(
        self, columns: tuple[str, ...], valid: list[tuple[Any, ...]], tally: Tally
    ) -> None:
        from kanal.records import SETTING_OFF, follow_orders

        store_id = self.shop["id"]
        rows = [values for _, values, _ in valid]
        created = self.store.upsert_many("orders", store_id, columns, rows)
        self.store.touch_contacts(store_id, [contact for _, _, contact in valid])
        picked = [(name, columns.index(name)) for name in SETTING_OFF]
        written = [{name: values[at] for name, at in picked} for values in rows]
        self.run(functools.partial(follow_orders, self.operations, self.shop, written))
        tally.created += sum(created)
        tally.updated += len(created) - sum(created)

    def _one(self, number: int, body: dict[str, Any], tally: Tally) -> None:
        try:
            with self.store.savepoint():
                _, status = self.run(functools.partial(self.upsert, self.shop["id"], body))
        except ValidationFailed as exc:
            tally.invalid.append((number, exc.body["errors"]))
            return
        if status == 201:
            tally.created += 1
        else:
            tally.updated += 1
