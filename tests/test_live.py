"""Against a real ``kanal serve`` process with two workers: atomic upserts, the rate limit."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from kanal.storage import connect

from .conftest import STORE, Rows, Server

ORDER = {
    "external_id": "ORDER-RACE",
    "placed_at": "2026-05-18T10:00:00Z",
    "total_price": 49.9,
    "customer": {"phone": "+33612345678"},
}


@pytest.fixture
def two_workers(db: str, keys: dict[str, Any]) -> Iterator[Server]:
    srv = Server(db, workers=2).start()
    yield srv
    srv.stop()


def post_many(server: Server, key: str, bodies: list[dict[str, Any]]) -> list[httpx.Response]:
    url = f"{server.url}/api/v1/stores/{STORE}/orders"
    headers = {"Authorization": f"Bearer {key}"}
    # A connection each, never one another thread left idle: a server may close an idle
    # keep-alive connection at any moment (RFC 9112, 9.3), and a POST sent on it then
    # fails without an answer, which a client must not simply send again.
    fresh = httpx.Limits(max_keepalive_connections=0)
    with (
        httpx.Client(timeout=30, limits=fresh) as client,
        ThreadPoolExecutor(len(bodies)) as pool,
    ):
        return list(pool.map(lambda body: client.post(url, json=body, headers=headers), bodies))


def test_identical_concurrent_posts_leave_one_row_and_one_201(
    two_workers: Server, keys: dict[str, Any], db: str
) -> None:
    responses = post_many(two_workers, keys["store"], [ORDER] * 20)
    assert Counter(r.status_code for r in responses) == {201: 1, 200: 19}
    assert len({r.text for r in responses}) == 1
    assert Rows(db).value("SELECT count(*) FROM orders") == 1


def test_rate_limit_holds_across_workers(db: str, keys: dict[str, Any]) -> None:
    storage = connect(db)
    storage.update_store(STORE, {"rate_limit": 25})
    storage.close()
    srv = Server(db, workers=2).start()
    try:
        bodies = [{**ORDER, "external_id": f"ORDER-{i}"} for i in range(50)]
        responses = post_many(srv, keys["store"], bodies)
    finally:
        srv.stop()
    statuses = Counter(r.status_code for r in responses)
    assert statuses == {201: 25, 429: 25}
    limited = next(r for r in responses if r.status_code == 429)
    assert limited.json() == {"message": "Too Many Attempts."}
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.headers["X-RateLimit-Limit"] == "25"
    assert limited.headers["X-RateLimit-Remaining"] == "0"
    remaining = sorted(
        int(r.headers["X-RateLimit-Remaining"]) for r in responses if r.status_code == 201
    )
    assert remaining == list(range(25))


def test_rate_limit_headers_on_every_store_response(server: Server, keys: dict[str, Any]) -> None:
    headers = {"Authorization": f"Bearer {keys['store']}"}
    url = f"{server.url}/api/v1/stores/{STORE}"
    ok = httpx.post(f"{url}/orders", json=ORDER, headers=headers)
    invalid = httpx.post(f"{url}/orders", json={}, headers=headers)
    missing = httpx.patch(f"{url}/orders/NOPE", json={}, headers=headers)
    erased = httpx.delete(f"{url}/customers/NOPE", headers=headers)
    for response in (ok, invalid, missing, erased):
        assert response.headers["X-RateLimit-Limit"] == "100000"
        assert int(response.headers["X-RateLimit-Remaining"]) < 100000
    assert [r.status_code for r in (ok, invalid, missing, erased)] == [201, 422, 404, 204]
    assert "content-type" not in erased.headers


def test_header_floods_get_a_clean_4xx_and_the_server_stays_up(
    server: Server, keys: dict[str, Any]
) -> None:
    import socket

    host, port = "127.0.0.1", server.port
    floods = [
        b"".join(b"X-Flood-%d: %s\r\n" % (n, b"a" * 64) for n in range(10_000)),  # many
        b"X-Big: " + b"a" * (1024 * 1024) + b"\r\n",  # one huge header
    ]
    for flood in floods:
        with socket.create_connection((host, port), timeout=10) as sock:
            request = (
                b"POST /api/v1/stores/123/orders HTTP/1.1\r\nHost: x\r\n"
                + flood
                + b"Content-Length: 0\r\n\r\n"
            )
            try:
                sock.sendall(request)
                answer = sock.recv(200)
            except (BrokenPipeError, ConnectionResetError):
                answer = b""  # refused mid-send: the connection is closed, nothing served
            assert answer == b"" or answer.startswith(b"HTTP/1.1 431 "), answer
    assert httpx.get(f"{server.url}/healthz").status_code == 200
