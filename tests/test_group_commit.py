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


def fail_commits(engine: Storage) -> None:
    """Every COMMIT of ``engine`` fails (rolled back, the flock goes)."""
    real_end = engine.end

    def failing_end(*, commit: bool) -> None:
        if commit:
            real_end(commit=False)
            raise OSError("disk full")
        real_end(commit=commit)

    engine.end = failing_end  # type: ignore[method-assign]


def test_a_failed_commit_fails_every_transaction_of_the_group(grouped: Any) -> None:
    engine = grouped.engine
    fail_commits(engine)

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


# Batched writes (``AsyncStorage.batched``, the fast path's ``upsert_unless_open``): the
# writes of one turn run back to back in one callback, the write lock held for them
# alone.


def between_two(grouped: Any, write: Any, *, quiet: bool = False) -> list[Any]:
    """``write`` batched between the orders A and B, in one turn: each one's answer
    (or exception). ``quiet``: the loop does not log what a callback raises."""

    async def main() -> list[Any]:
        if quiet:
            asyncio.get_running_loop().set_exception_handler(lambda *_: None)
        return await asyncio.gather(
            grouped.upsert_unless_open("orders", STORE, order("A")),
            grouped.batched(write),
            grouped.upsert_unless_open("orders", STORE, order("B")),
            return_exceptions=True,
        )

    return asyncio.run(main())


def test_batched_writes_of_one_turn_share_one_commit(grouped: Any) -> None:
    async def write(external_id: str) -> bool:
        written = await grouped.upsert_unless_open("orders", STORE, order(external_id))
        other = Storage(grouped.engine.path)  # answered only once committed
        try:
            assert other.get("orders", STORE, external_id) is not None
        finally:
            other.close()
        return written[1]

    async def main() -> list[bool]:
        return await asyncio.gather(*(write(f"O-{n}") for n in range(10)))

    assert asyncio.run(main()) == [True] * 10
    assert grouped.ends == [True]
    assert stored(grouped) == [f"O-{n}" for n in range(10)]
    assert not grouped.engine.conn.in_transaction


def test_a_failing_batched_write_undoes_only_itself(grouped: Any) -> None:
    engine = grouped.engine

    def bad() -> None:
        engine.upsert("orders", STORE, order("BAD"))
        raise ValueError("refused")

    results = between_two(grouped, bad)
    assert results[0][1] is True and results[2][1] is True
    assert isinstance(results[1], ValueError)
    assert grouped.ends == [True]
    assert stored(grouped) == ["A", "B"]


def test_a_failed_commit_fails_every_batched_write(grouped: Any) -> None:
    engine = grouped.engine
    fail_commits(engine)

    async def main() -> list[Any]:
        return await asyncio.gather(
            *(grouped.upsert_unless_open("orders", STORE, order(n)) for n in "AB"),
            return_exceptions=True,
        )

    assert [type(result) for result in asyncio.run(main())] == [OSError, OSError]
    assert stored(grouped) == []
    assert not engine.conn.in_transaction


def test_the_write_lock_is_held_only_while_a_batch_runs(grouped: Any) -> None:
    """Another process (another open file of the lock) finds the write lock free at
    every step the event loop runs besides the batch itself: a worker never makes the
    other wait while it serves its requests' other steps."""
    import fcntl

    other = open(f"{grouped.engine.path}.lock", "a+b")  # noqa: SIM115 (another holder)
    probes: list[bool] = []

    def probe() -> None:
        try:
            fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            probes.append(False)
        else:
            fcntl.flock(other, fcntl.LOCK_UN)
            probes.append(True)

    async def write(number: int) -> None:
        for _ in range(number % 4):  # the request's own steps before its write
            probe()
            await asyncio.sleep(0)
        await grouped.upsert_unless_open("orders", STORE, order(f"O-{number}"))
        probe()

    async def main() -> None:
        await asyncio.gather(*(write(number) for number in range(20)))

    try:
        asyncio.run(main())
    finally:
        other.close()
    assert len(probes) == 50 and all(probes)
    assert grouped.ends == [True] * 4  # the writes of each turn shared one COMMIT
    assert len(stored(grouped)) == 20


def test_a_batch_waits_for_another_process_without_blocking_the_loop(grouped: Any) -> None:
    """While another process holds the write lock, the batch waits for it in a thread;
    writes that arrive meanwhile join it, and an operation outside (a read) waits for
    its COMMIT."""
    import fcntl

    other = open(f"{grouped.engine.path}.lock", "a+b")  # noqa: SIM115 (another holder)
    fcntl.flock(other, fcntl.LOCK_EX)
    ticks = 0

    async def main() -> Any:
        nonlocal ticks
        writes = [asyncio.ensure_future(grouped.upsert_unless_open("orders", STORE, order("A")))]
        for _ in range(20):
            await asyncio.sleep(0.005)
            ticks += 1
            if len(writes) < 3:
                writes.append(
                    asyncio.ensure_future(
                        grouped.upsert_unless_open("orders", STORE, order(f"B{len(writes)}"))
                    )
                )
        reading = asyncio.ensure_future(grouped.get("orders", STORE, "B2"))
        await asyncio.sleep(0.01)
        assert grouped.ends == [] and not any(w.done() for w in [*writes, reading])
        fcntl.flock(other, fcntl.LOCK_UN)
        await asyncio.gather(*writes)
        return await reading

    try:
        found = asyncio.run(main())
    finally:
        other.close()
    assert ticks == 20
    assert found is not None and found["external_id"] == "B2"
    assert grouped.ends == [True]
    assert stored(grouped) == ["A", "B1", "B2"]


def test_a_batch_waits_for_a_transaction_group_opened_before_it_runs(grouped: Any) -> None:
    """A batch never runs inside a transaction group's SQLite transaction: when a group
    opened after the batch's first write, the batch waits for that group's COMMIT,
    then takes the lock itself."""

    async def grouped_write() -> None:
        async with grouped.transaction():
            await grouped.upsert("orders", STORE, order("G"))
            await asyncio.sleep(0.01)  # the group stays open a while

    async def main() -> None:
        batched = asyncio.ensure_future(grouped.upsert_unless_open("orders", STORE, order("F")))
        group = asyncio.ensure_future(grouped_write())
        await batched
        assert group.done() or grouped._group is None  # the group's COMMIT came first
        await group

    asyncio.run(main())
    assert grouped.ends == [True, True]
    assert stored(grouped) == ["G", "F"]


def test_a_write_made_while_a_group_is_open_joins_it(grouped: Any) -> None:
    async def grouped_write() -> None:
        async with grouped.transaction():
            await grouped.upsert("orders", STORE, order("G"))
            await asyncio.sleep(0.01)

    async def main() -> None:
        group = asyncio.ensure_future(grouped_write())
        await asyncio.sleep(0)
        assert grouped._group is not None
        await grouped.upsert_unless_open("orders", STORE, order("F"))
        await group

    asyncio.run(main())
    assert grouped.ends == [True]  # one COMMIT for both
    assert stored(grouped) == ["G", "F"]


def test_a_batch_interrupted_answers_every_write(grouped: Any) -> None:
    """Should the batch itself stop (a BaseException, not a write's own failure), no
    request is left waiting: each is answered with an error, and nothing is written."""

    class Stop(BaseException):
        pass

    def interrupted() -> None:
        raise Stop

    results = between_two(grouped, interrupted, quiet=True)
    assert [type(result) for result in results] == [RuntimeError] * 3
    assert stored(grouped) == []
    assert not grouped.engine.conn.in_transaction
