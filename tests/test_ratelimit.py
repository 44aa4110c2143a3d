"""The per-store rate limit, in process: window, headers, reset."""

from __future__ import annotations

from typing import Any

import pytest

from kanal import ratelimit
from kanal.bulk import run_sync
from kanal.ratelimit import Decision, RateLimiter
from kanal.storage import AsyncStorage, Storage

from .conftest import STORE, Api, Rows

ORDER = {
    "external_id": "ORDER-1",
    "placed_at": "2026-05-18T10:00:00Z",
    "total_price": 1,
    "customer": {"phone": "+33612345678"},
}


def test_limit_then_429_then_reset(api: Api, storage: Storage, monkeypatch: Any) -> None:
    storage.update_store(STORE, {"rate_limit": 3})
    clock = [1_000_000.0]
    monkeypatch.setattr(ratelimit.time, "time", lambda: clock[0])
    remaining = [api.post("orders", ORDER).headers["X-RateLimit-Remaining"] for _ in range(3)]
    assert remaining == ["2", "1", "0"]
    limited = api.post("orders", ORDER)
    assert limited.status_code == 429
    assert limited.json() == {"message": "Too Many Attempts."}
    assert limited.headers["Retry-After"] == "60"
    clock[0] += 59
    assert api.post("orders", ORDER).headers["Retry-After"] == "1"
    clock[0] += 1
    assert api.post("orders", ORDER).status_code == 200


def test_limit_is_per_store(api: Api, storage: Storage, keys: dict[str, Any]) -> None:
    storage.update_store(STORE, {"rate_limit": 1})
    assert api.post("orders", ORDER).status_code == 201
    assert api.post("orders", ORDER).status_code == 429
    other = Api(api.client, keys["other"], store=456)
    assert other.post("orders", {**ORDER, "customer": {"phone": "+12025550123"}}).is_success


@pytest.mark.parametrize("path", ["orders", "customers"])
def test_rate_limit_comes_before_validation(api: Api, storage: Storage, path: str) -> None:
    storage.update_store(STORE, {"rate_limit": 1})
    assert api.post(path, {}).status_code == 422
    assert api.post(path, {}).status_code == 429


class Process:
    """A process's limiter over the test's database (as the app builds it), run to
    the end of each call on the storage's engine."""

    def __init__(self, storage: Any) -> None:
        if isinstance(storage, Storage):
            self.limiter, self.run = RateLimiter(AsyncStorage(storage)), run_sync
        else:  # PostgreSQL: the engine's coroutines run in its own task
            self.limiter = RateLimiter(storage.engine)
            self.run = lambda coroutine: storage.call(lambda: coroutine)


def limiter_over(storage: Any) -> Process:
    return Process(storage)


def hit(process: Process, limit: int, now: float) -> Decision:
    return process.run(process.limiter.hit(STORE, limit, now))


def test_processes_share_the_window_in_blocks(storage: Storage, db: str) -> None:
    """Two processes (two limiters on one database) over a limit of 1,000 a minute:
    each reserves blocks of 5; together they never pass the limit and leave at most
    one block each unspent; then the next window opens."""
    storage.update_store(STORE, {"rate_limit": 1000})
    first, second = limiter_over(storage), limiter_over(storage)
    now = 5_000_000.0
    allowed = [0, 0]
    for i in range(3000):
        limiter = (first, second)[i % 3 == 0]  # uneven: one process gets twice the traffic
        decision = hit(limiter, 1000, now)
        allowed[limiter is second] += decision.allowed
        assert 0 <= decision.remaining <= 1000
        assert decision.allowed or decision.retry_after == 60
    assert 1000 - 2 * 5 <= sum(allowed) <= 1000
    assert Rows(db).value("SELECT hits FROM rate_limits WHERE store_id = ?", STORE) <= 1000
    assert hit(first, 1000, now + 59.5).retry_after == 1
    assert hit(first, 1000, now + 60).allowed  # a new window
    assert hit(second, 1000, now + 60).allowed


def test_a_changed_limit_applies_at_once(storage: Storage) -> None:
    limiter = limiter_over(storage)
    now = 6_000_000.0
    assert hit(limiter, 1000, now).allowed  # holds a block of 5 permits
    assert [hit(limiter, 1, now).allowed for _ in range(2)] == [False, False]
    assert hit(limiter, 2000, now).allowed
