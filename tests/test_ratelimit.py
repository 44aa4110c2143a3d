"""The per-store rate limit, in process: window, headers, reset."""

from __future__ import annotations

from typing import Any

import pytest

from kanal import storage as storage_module
from kanal.storage import Storage

from .conftest import STORE, Api

ORDER = {
    "external_id": "ORDER-1",
    "placed_at": "2026-05-18T10:00:00Z",
    "total_price": 1,
    "customer": {"phone": "+33612345678"},
}


def test_limit_then_429_then_reset(api: Api, storage: Storage, monkeypatch: Any) -> None:
    storage.update_store(STORE, {"rate_limit": 3})
    clock = [1_000_000.0]
    monkeypatch.setattr(storage_module.time, "time", lambda: clock[0])
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
