"""The four documented auth outcomes, key scopes, pausing and revocation."""

from __future__ import annotations

from typing import Any

from starlette.testclient import TestClient

from kanal.storage import Storage

from .conftest import OTHER_STORE, STORE, Api, Rows, make_accounts

ORDER = {
    "external_id": "ORDER-1",
    "placed_at": "2026-05-18T10:00:00Z",
    "total_price": 1,
    "customer": {"phone": "+33612345678"},
}


def test_missing_key_is_401(client: TestClient) -> None:
    response = client.post(f"/api/v1/stores/{STORE}/orders", json=ORDER)
    assert response.status_code == 401
    assert response.json() == {"error": "API key is missing"}


def test_unknown_key_is_401(api: Api) -> None:
    for key in ("A" * 24, "nope", ""):
        response = api.post("orders", ORDER, headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401
        assert response.json() == {"error": "Invalid API key"}


def test_other_scheme_is_invalid(api: Api) -> None:
    response = api.post("orders", ORDER, headers={"Authorization": f"Basic {api.key}"})
    assert (response.status_code, response.json()) == (401, {"error": "Invalid API key"})


def test_store_key_for_another_store_is_403(api: Api, keys: dict[str, Any]) -> None:
    response = api.post("orders", ORDER, store=OTHER_STORE)
    assert response.status_code == 403
    assert response.json() == {"error": "API key does not authorize this store"}


def test_team_key_covers_its_team_stores_only(api: Api, keys: dict[str, Any]) -> None:
    team = api.headers(keys["team"])
    assert api.post("orders", ORDER, headers=team).status_code == 201
    response = api.post("orders", ORDER, headers=team, store=OTHER_STORE)
    assert response.status_code == 403


def test_unknown_store_is_404(api: Api) -> None:
    for store in (999, 0, -5):
        response = api.post("orders", ORDER, store=store)
        assert response.status_code == 404
        assert response.json() == {"error": "Store not found or paused"}


def test_huge_store_id_is_404_not_500(api: Api) -> None:
    response = api.client.post(
        "/api/v1/stores/99999999999999999999999/orders", json=ORDER, headers=api.headers()
    )
    assert response.status_code == 404


def test_paused_store_is_404(api: Api, storage: Storage) -> None:
    storage.update_store(STORE, {"paused": 1})
    response = api.post("orders", ORDER)
    assert (response.status_code, response.json()) == (404, {"error": "Store not found or paused"})
    storage.update_store(STORE, {"paused": 0})
    assert api.post("orders", ORDER).status_code == 201


def test_revoked_key_stops_at_once(api: Api, storage: Storage) -> None:
    assert api.post("orders", ORDER).status_code == 201
    key_id = next(k["id"] for k in storage.list_keys() if k["name"] == "store")
    assert storage.delete_key(key_id)
    response = api.post("orders", ORDER)
    assert (response.status_code, response.json()) == (401, {"error": "Invalid API key"})


def test_a_change_counts_from_the_next_request_whatever_it_is(api: Api, storage: Storage) -> None:
    """A key and store remembered from earlier requests (on PostgreSQL, verified by the
    request's first statement, or before answering one that used no statement) never
    outlive a change: right after the store is paused, a write, a read, a retrieval and
    a request that fails validation before touching the database all answer 404, and
    nothing is written; after a revocation, 401."""

    def get(path: str) -> Any:
        return api.client.get(api.url(path), headers=api.headers())

    requests = {
        "write": lambda: api.post("orders", {**ORDER, "external_id": "ORDER-2"}),
        "list": lambda: get("orders"),
        "retrieve": lambda: get("orders/ORDER-1"),
        "invalid": lambda: api.post("orders", {"external_id": "ORDER-3"}),  # 422 else
        "unknown parameter": lambda: get("orders?nope=1"),  # 400 else
    }
    for name, request in requests.items():
        storage.update_store(STORE, {"paused": 0})
        assert api.post("orders", ORDER).status_code in (200, 201), name  # remembered
        storage.update_store(STORE, {"paused": 1})
        response = request()
        assert (response.status_code, response.json()) == (
            404,
            {"error": "Store not found or paused"},
        ), name
    assert storage.get("orders", STORE, "ORDER-2") is None
    storage.update_store(STORE, {"paused": 0})
    assert api.post("orders", ORDER).status_code == 200
    key_id = next(k["id"] for k in storage.list_keys() if k["name"] == "store")
    assert storage.delete_key(key_id)
    response = api.post("orders", {"external_id": "ORDER-3"})
    assert (response.status_code, response.json()) == (401, {"error": "Invalid API key"})


def test_store_changes_count_from_the_next_request(api: Api, storage: Storage) -> None:
    """The store's settings as they are now, not as an earlier request saw them: a new
    rate limit shows in the next answer's headers, a store paused and resumed serves
    again, a phone is read in the store's new region."""
    national = {**ORDER, "customer": {"phone": "06 12 34 56 78"}}
    response = api.post("orders", national)
    assert response.status_code == 201
    assert storage.get("orders", STORE, "ORDER-1")["customer_phone"] == "+33612345678"
    assert response.headers["X-RateLimit-Limit"] == "100000"
    storage.update_store(STORE, {"rate_limit": 1000})
    response = api.post("orders", ORDER)
    assert (response.status_code, response.headers["X-RateLimit-Limit"]) == (200, "1000")
    storage.update_store(STORE, {"paused": 1})
    assert api.client.get(api.url("orders"), headers=api.headers()).status_code == 404
    storage.update_store(STORE, {"paused": 0, "region": "BE"})
    response = api.post("orders", {**national, "external_id": "ORDER-BE"})
    assert response.status_code == 422  # 06 12 34 56 78 is no Belgian number
    storage.update_store(STORE, {"region": "FR"})
    assert api.post("orders", {**national, "external_id": "ORDER-FR"}).status_code == 201


def test_auth_comes_before_validation(client: TestClient) -> None:
    response = client.post(f"/api/v1/stores/{STORE}/orders", json={"bad": True})
    assert response.status_code == 401


def test_keys_are_stored_hashed(rows: Rows, keys: dict[str, Any]) -> None:
    dump = repr(rows.all("SELECT * FROM api_keys"))
    for token in keys.values():
        assert len(token) == 24 and token.isalnum()
        assert token not in dump


def test_healthz_needs_no_key(client: TestClient) -> None:
    response = client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


def test_sqlite_remembers_accounts_across_other_writers(tmp_path: Any, monkeypatch: Any) -> None:
    """SQLite: a server's remembered key and store stay remembered while other
    processes write orders (two workers), and are forgotten as soon as another process
    changes a key or a store (the triggers of migration step 7)."""
    from kanal.auth import hash_token
    from kanal.storage import Storage as SQLiteStorage

    db = str(tmp_path / "kanal.db")
    token = make_accounts(db)["store"]
    server, other = SQLiteStorage(db), SQLiteStorage(db)
    try:
        reads: list[str] = []
        find_key = server.find_key
        monkeypatch.setattr(server, "find_key", lambda h: reads.append(h) or find_key(h))
        key, shop = server.account(hash_token(token), STORE)
        assert key is not None and shop is not None and len(reads) == 1
        other.upsert("orders", STORE, dict(ORDER))
        assert server.account(hash_token(token), STORE)[0] == key
        assert len(reads) == 1  # another worker's order changed nothing remembered
        other.update_store(STORE, {"name": "Renamed"})
        assert server.account(hash_token(token), STORE)[1]["name"] == "Renamed"
        assert len(reads) == 2
        assert other.delete_key(key["id"])
        assert server.account(hash_token(token), STORE)[0] is None
    finally:
        server.close()
        other.close()
