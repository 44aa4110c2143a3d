"""Group commit (the server's SQLite storage): the transactions of the requests that
reach the storage in the same turn of the event loop share one COMMIT, each in a
savepoint of its own, none answered before that COMMIT."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from kanal.storage import AsyncStorage, Storage

STORE = 123


def order(external_id: str) -> dict[str, Any]:
    return {
        "external_id": external_id,
        "placed_at": "2026-05-18T10:00:00+00:00",
        "total_price": "49.90",
        "currency": "EUR",
        "customer": {"phone": "+33612345678"},
        "customer_phone": "+33612345678",
        "tags": [],
    }


@pytest.fixture
def grouped(tmp_path: Path) -> Any:
    engine = Storage(str(tmp_path / "kanal.db"))
    store = AsyncStorage(engine, group_commit=True)
    ends: list[bool] = []
    real_end = engine.end

    def end(*, commit: bool) -> None:
        ends.append(commit)
        real_end(commit=commit)

    engine.end = end  # type: ignore[method-assign]
    store.ends = ends
    yield store
    engine.close()


def stored(store: AsyncStorage) -> list[str]:
    rows = store.engine.conn.execute("SELECT external_id FROM orders ORDER BY id").fetchall()
    return [row[0] for row in rows]


def test_transactions_of_one_turn_share_one_commit(grouped: Any) -> None:
    async def write(external_id: str) -> bool:
        async with grouped.transaction():
            _, created = await grouped.upsert("orders", STORE, order(external_id))
        # Answered only once committed: another connection sees it.
        other = Storage(grouped.engine.path)
        try:
            assert other.get("orders", STORE, external_id) is not None
        finally:
            other.close()
        return created

    async def main() -> list[bool]:
        return await asyncio.gather(*(write(f"O-{n}") for n in range(10)))

    assert asyncio.run(main()) == [True] * 10
    assert grouped.ends == [True]  # one COMMIT for the ten
    assert stored(grouped) == [f"O-{n}" for n in range(10)]
    assert not grouped.engine.conn.in_transaction


def test_a_failing_transaction_undoes_only_itself(grouped: Any) -> None:
    async def write(external_id: str) -> None:
        async with grouped.transaction():
            await grouped.upsert("orders", STORE, order(external_id))
            if external_id == "BAD":
                raise ValueError("refused")

    async def main() -> list[Any]:
        return await asyncio.gather(write("A"), write("BAD"), write("B"), return_exceptions=True)

    results = asyncio.run(main())
    assert results[0] is None and results[2] is None
    assert isinstance(results[1], ValueError)
    assert grouped.ends == [True]
    assert stored(grouped) == ["A", "B"]


def test_a_failed_commit_fails_every_transaction_of_the_group(grouped: Any) -> None:
    engine = grouped.engine
    real_end = engine.end

    def failing_end(*, commit: bool) -> None:
        if commit:
            real_end(commit=False)  # rolled back, the flock goes
            raise OSError("disk full")
        real_end(commit=commit)

    engine.end = failing_end

    async def write(external_id: str) -> None:
        async with grouped.transaction():
            await grouped.upsert("orders", STORE, order(external_id))

    async def main() -> list[Any]:
        return await asyncio.gather(write("A"), write("B"), return_exceptions=True)

    assert [type(result) for result in asyncio.run(main())] == [OSError, OSError]
    assert stored(grouped) == []
    assert not engine.conn.in_transaction


def test_an_operation_outside_waits_for_the_commit(grouped: Any) -> None:
    """A read made while a group is open runs after its COMMIT: it never sees what is
    not committed (and could still be undone)."""
    seen: list[bool] = []
    real_get = grouped.engine.get

    def get(*args: Any) -> Any:
        seen.append(grouped.engine.conn.in_transaction)
        return real_get(*args)

    grouped.engine.get = get

    async def write() -> None:
        async with grouped.transaction():
            await grouped.upsert("orders", STORE, order("A"))

    async def read() -> Any:
        return await grouped.get("orders", STORE, "A")

    async def main() -> Any:
        writing = asyncio.ensure_future(write())
        await asyncio.sleep(0)  # the write opens the group and waits for its COMMIT
        assert grouped._group is not None
        found = await read()
        await writing
        return found

    assert asyncio.run(main())["external_id"] == "A"
    assert seen == [False]


def test_without_group_commit_each_transaction_commits(tmp_path: Path) -> None:
    """The command line and the import keep one transaction per block, run without an
    event loop."""
    engine = Storage(str(tmp_path / "kanal.db"))
    store = AsyncStorage(engine)
    try:
        coroutine = store.upsert("orders", STORE, order("A"))
        try:
            coroutine.send(None)
        except StopIteration as done:
            assert done.value[1] is True
        assert stored(store) == ["A"]
    finally:
        engine.close()


def test_waiting_for_another_process_does_not_block_the_loop(grouped: Any) -> None:
    """While another process holds the write lock, the group waits for it in a thread:
    the event loop serves other work meanwhile, and the transactions that arrive join
    the same group, committed once the lock is free."""
    import fcntl

    other = open(f"{grouped.engine.path}.lock", "a+b")  # noqa: SIM115 (another holder)
    fcntl.flock(other, fcntl.LOCK_EX)
    ticks = 0

    async def write(external_id: str) -> None:
        async with grouped.transaction():
            await grouped.upsert("orders", STORE, order(external_id))

    async def main() -> None:
        nonlocal ticks
        writes = [asyncio.ensure_future(write("A"))]
        for _ in range(20):
            await asyncio.sleep(0.005)
            ticks += 1
            if len(writes) < 3:
                writes.append(asyncio.ensure_future(write(f"B{len(writes)}")))
        assert grouped.ends == [] and not any(w.done() for w in writes)
        fcntl.flock(other, fcntl.LOCK_UN)
        await asyncio.gather(*writes)

    try:
        asyncio.run(main())
    finally:
        other.close()
    assert ticks == 20
    assert grouped.ends == [True]
    assert stored(grouped) == ["A", "B1", "B2"]
