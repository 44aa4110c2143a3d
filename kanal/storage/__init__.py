"""Storage: the one package that speaks SQL.

The application awaits the operations of :class:`AsyncStorage` (named after what
they mean: upsert, patch, get, select with structured filters, count, erase,
contacts, messages, accounts, rate windows); each engine offers them:

- ``sqlite.py``: the embedded default (sqlite-utils; WAL; in-process), whose
  synchronous :class:`Storage` the command line, the worker and the tests use too;
- ``postgres.py``: the PostgreSQL engine (psycopg 3, async, pooled), for
  deployments that outgrow one machine; ``blocking.py`` gives it the synchronous
  face the SQLite engine has.

``connect(db)`` and ``open_async(db)`` choose by ``db``: a path means SQLite, a
``postgresql://`` URL PostgreSQL.

``schema.py`` holds what both store: tables, JSON columns, indexed filters and
the migrations' numbered steps.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from contextvars import Context, ContextVar, copy_context
from typing import Any

from kanal.storage.schema import (
    ABANDONED,
    DEFAULTS,
    FILLFACTOR,
    FILTER_INDEXES,
    HOLDERS,
    IN_CHUNK,
    JSON_COLUMNS,
    MIGRATIONS,
    RATE_WINDOW,
    RECOVERED,
    RESOURCES,
    REWRITTEN,
    TABLES,
    AccountChanged,
    Condition,
    Contact,
    Where,
    contact_of,
    customer_fields,
    erased_customer,
    in_lists,
    to_json,
)
from kanal.storage.sqlite import OPERATORS, RECOVERY_STATUS, Storage

__all__ = [
    "ABANDONED",
    "DEFAULTS",
    "FILLFACTOR",
    "FILTER_INDEXES",
    "HOLDERS",
    "IN_CHUNK",
    "JSON_COLUMNS",
    "MIGRATIONS",
    "OPERATORS",
    "RATE_WINDOW",
    "RECOVERED",
    "RECOVERY_STATUS",
    "RESOURCES",
    "REWRITTEN",
    "TABLES",
    "AccountChanged",
    "AsyncStorage",
    "Condition",
    "Contact",
    "Storage",
    "Where",
    "connect",
    "contact_of",
    "current",
    "customer_fields",
    "erased_customer",
    "in_lists",
    "is_postgres",
    "open_async",
    "to_json",
]


class _Group:
    """The transactions committed together (``AsyncStorage.transaction``)."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.opened: asyncio.Future[None] = loop.create_future()  # the write lock is held
        self.committed: asyncio.Future[None] = loop.create_future()
        self.opening: asyncio.Future[None] | None = None
        self.pending = 0  # members that have not finished their part yet
        self.closing = False  # the COMMIT is scheduled


class _Batch:
    """Writes that need no step of their request's between them (``AsyncStorage.batched``),
    run back to back in one transaction: each a function of the engine's and the future
    its request awaits."""

    def __init__(self) -> None:
        self.items: list[tuple[Context, Callable[[], Any], asyncio.Future[Any]]] = []

    def fail(self, exc: BaseException) -> None:
        """Answer every write not answered yet with ``exc``."""
        for _, _, answer in self.items:
            if not answer.done():
                answer.set_exception(exc)


class AsyncStorage:
    """The storage as the request path uses it: every operation awaited, a transaction
    entered with ``async with``. This is the interface an engine offers the
    application (the PostgreSQL engine's operations suspend while the database
    works, so a worker's event loop serves other requests meanwhile).

    Over SQLite it is the in-process :class:`Storage`, each operation run at once:
    nothing suspends inside a transaction, so the one connection of a process is never
    shared by two requests in the middle of one. ``engine`` is that Storage (the
    command line, the worker and the tests use it directly).
    """

    #: The operations, each the Storage method of the same name, awaited.
    OPERATIONS = (
        "ping",
        "upsert",
        "upsert_and_touch",
        "patch",
        "get",
        "get_many",
        "get_by_id",
        "erase_person",
        "select",
        "count",
        "secret",
        "touch_contact",
        "phones_with_open_abandoned",
        "attribute",
        "attribute_arrival",
        "totals",
        "customer_ids",
        "opted_out",
        "set_opt_out",
        "schedule_message",
        "schedule_messages",
        "cancel_messages",
        "notification_state",
        "account",
        "verify_account",
        "reserve_permits",
        "create_import",
        "cancel_import",
    )

    #: Whether ``account(..., remembered=True)`` may answer from memory, to be verified
    #: later (``verify_account``): never here, where ``account`` is always exact.
    remembers_accounts = False

    def __init__(self, engine: Storage, *, group_commit: bool = False) -> None:
        self.engine = engine
        #: Group commit (the server's storage): see ``transaction``.
        self.group_commit = group_commit
        self._group: _Group | None = None
        self._member: ContextVar[bool] = ContextVar(f"kanal_member_{id(self)}", default=False)
        #: The batch collecting writes (``batched``), and a batch's wait for the write
        #: lock another process holds (in a thread).
        self._batch: _Batch | None = None
        self._lock_wait: asyncio.Future[None] | None = None

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[None]:
        """One write transaction (or a part of the enclosing one).

        With ``group_commit`` (the server), the transactions of the requests that
        reach this point in the same turn of the event loop share one SQLite
        transaction: the first takes the write lock (flock, ``BEGIN IMMEDIATE``) and
        schedules the ``COMMIT`` for the loop's next turn; each runs in a savepoint of
        its own (a failing one undoes only itself and fails at once) and returns only
        after that ``COMMIT``, so nothing is acknowledged before it is committed, and
        a failed ``COMMIT`` fails every one of them. An operation outside these
        transactions waits for the open group's ``COMMIT`` first (it never reads what
        is not committed yet). One lock, one ``BEGIN`` and one ``COMMIT`` (one write
        of each page the group changed) then serve several requests."""
        if (
            not self.group_commit
            or self._member.get()
            or (self._group is None and self.engine.conn.in_transaction)
        ):
            with self.engine.transaction():
                yield
            return
        while self._lock_wait is not None and self._group is None:  # a batch awaits the lock
            await asyncio.wait([self._lock_wait])
        group = self._group
        if group is None:
            group = self._group = _Group(asyncio.get_running_loop())
            if self.engine.try_begin():
                group.opened.set_result(None)
            else:  # another process writes: wait for its lock without blocking the loop
                group.opening = asyncio.ensure_future(self._open(group))
        group.pending += 1
        try:
            if not group.opened.done():
                await asyncio.shield(group.opened)
            group.opened.result()  # raises when the group could not open
            token = self._member.set(True)
            try:
                with self.engine.savepoint("member"):
                    yield
            finally:
                self._member.reset(token)
        finally:
            group.pending -= 1
            if group.pending == 0 and group.opened.done() and not group.closing:
                group.closing = True
                asyncio.get_running_loop().call_soon(self._commit_group, group)
        await asyncio.shield(group.committed)

    async def upsert_unless_open(
        self,
        table: str,
        store_id: int,
        record: dict[str, Any],
        key: dict[str, Any] | None = None,
    ) -> tuple[dict[str, Any], bool] | None:
        """``Storage.upsert_unless_open``, batched with the others of this turn."""
        return await self.batched(
            functools.partial(self.engine.upsert_unless_open, table, store_id, record, key=key)
        )

    async def batched(self, write: Callable[[], Any]) -> Any:
        """``write()`` (a write of the engine's, complete in itself) in a transaction.

        With ``group_commit``, the writes that reach this point in the same turn of the
        event loop are run back to back by one callback at the next turn: the write
        lock taken, each write in a savepoint of its own (a failing one undoes only
        itself), ``COMMIT``, the lock left, and only then the answers. The lock is held
        for these writes alone, never while the loop serves other requests' steps (a
        ``transaction`` group holds it from its first member to its ``COMMIT``), so two
        worker processes take turns on it briefly. When another process holds it, a
        thread waits for it; the writes that arrive meanwhile join the batch."""
        if not self.group_commit or self._member.get() or self.engine.conn.in_transaction:
            async with self.transaction():
                return write()
        loop = asyncio.get_running_loop()
        batch = self._batch
        if batch is None:
            batch = self._batch = _Batch()
            loop.call_soon(self._write_batch, batch)
        answer: asyncio.Future[Any] = loop.create_future()
        batch.items.append((copy_context(), write, answer))
        return await answer

    def _write_batch(self, batch: _Batch) -> None:
        """Run ``batch`` now if the write lock is free, else once it is."""
        if self._group is not None:  # a transaction group holds or awaits the lock
            self._group.committed.add_done_callback(lambda _: self._write_batch(batch))
            return
        if self.engine.try_begin():
            self._run_batch(batch)
            return
        waiting = asyncio.get_running_loop().run_in_executor(None, self.engine.wait_lock)
        self._lock_wait = waiting
        waiting.add_done_callback(lambda waited: self._locked(batch, waited))

    def _locked(self, batch: _Batch, waited: asyncio.Future[None]) -> None:
        self._lock_wait = None
        try:
            waited.result()
            self.engine.begin_locked()
        except BaseException as exc:
            if self._batch is batch:
                self._batch = None
            batch.fail(exc)
            return
        self._run_batch(batch)

    def _run_batch(self, batch: _Batch) -> None:
        """``batch``'s writes, the write transaction begun: each in a savepoint, then
        ``COMMIT`` (which ends the transaction and leaves the lock either way)."""
        if self._batch is batch:
            self._batch = None
        answers: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        try:
            for context, write, answer in batch.items:
                if answer.done():  # its request was cancelled: nothing to write
                    continue
                try:
                    with self.engine.savepoint("member"):
                        answers.append((answer, context.run(write), None))
                except Exception as exc:
                    answers.append((answer, None, exc))
        except BaseException as exc:  # not a write's own failure: none is written
            self.engine.end(commit=False)
            batch.fail(RuntimeError(f"the batch was interrupted: {exc!r}"))
            raise
        try:
            self.engine.end(commit=True)
        except Exception as exc:  # none of them is acknowledged
            answers = [(answer, None, exc) for answer, _, _ in answers]
        for answer, value, exc in answers:
            if answer.done():
                continue
            if exc is None:
                answer.set_result(value)
            else:
                answer.set_exception(exc)

    async def _open(self, group: _Group) -> None:
        """Take the write lock for ``group`` in a thread (another process holds it)."""
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.engine.wait_lock)
            self.engine.begin_locked()
        except BaseException as exc:
            if self._group is group:
                self._group = None
            group.opened.set_exception(exc)
            group.opened.exception()  # retrieved: each member raises it
            return
        group.opened.set_result(None)
        if group.pending == 0 and not group.closing:  # its members were all cancelled
            group.closing = True
            self._commit_group(group)

    def _commit_group(self, group: _Group) -> None:
        if self._group is group:
            self._group = None
        try:
            self.engine.end(commit=True)
        except BaseException as exc:  # handed to every member: none is acknowledged
            group.committed.set_exception(exc)
            group.committed.exception()  # retrieved (its members may all have failed)
        else:
            group.committed.set_result(None)

    async def settled(self) -> None:
        """Wait until no group transaction is open and no batch awaits the write lock
        (outside one, before an operation)."""
        while not self._member.get():
            waiting = self._group.committed if self._group is not None else self._lock_wait
            if waiting is None:
                return
            await asyncio.wait([waiting])


#: Operations that need not wait for an open group's COMMIT: they read only what no
#: request writes (keys and stores).
UNGROUPED = frozenset({"account", "verify_account", "ping"})


def _awaited(name: str) -> Any:
    waits = name not in UNGROUPED

    async def operation(self: AsyncStorage, *args: Any, **kwargs: Any) -> Any:
        if waits and (self._group is not None or self._lock_wait is not None):
            await self.settled()
        return getattr(self.engine, name)(*args, **kwargs)

    operation.__name__ = operation.__qualname__ = name
    operation.__doc__ = getattr(Storage, name).__doc__
    return operation


for _name in AsyncStorage.OPERATIONS:
    setattr(AsyncStorage, _name, _awaited(_name))


def is_postgres(db: str) -> bool:
    """Whether ``--db`` / ``KANAL_DB`` names a PostgreSQL database (libpq's URL form)
    rather than a SQLite file."""
    return db.startswith(("postgresql://", "postgres://"))


#: Pooled connections per process on PostgreSQL when ``--pool-size`` is not given: a
#: request holds one for its transaction only, so a few serve a worker on 2 cores.
DEFAULT_POOL_SIZE = 8


def connect(db: str, pool_size: int | None = None) -> Any:
    """The synchronous storage of ``db`` (migrated): the SQLite ``Storage`` of a file,
    or the PostgreSQL engine behind :class:`~kanal.storage.blocking.Blocking`. For the
    command line, the worker and the tests; ``close()`` it."""
    if not is_postgres(db):
        return Storage(db)
    from kanal.storage.blocking import Blocking
    from kanal.storage.postgres import PostgresStorage

    return Blocking(lambda: PostgresStorage.open(db, pool_size or DEFAULT_POOL_SIZE))


async def open_async(db: str, pool_size: int | None = None) -> Any:
    """The storage the application awaits (:class:`AsyncStorage` over a SQLite file,
    the PostgreSQL engine itself for a URL), migrated."""
    if not is_postgres(db):
        return AsyncStorage(Storage(db))
    from kanal.storage.postgres import PostgresStorage

    storage = await PostgresStorage.open(db, pool_size or DEFAULT_POOL_SIZE)
    storage.watch_statistics()
    return storage


#: The storage of the application serving the current request.
current: ContextVar[AsyncStorage] = ContextVar("storage")
