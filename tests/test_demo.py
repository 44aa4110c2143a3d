"""`kanal demo` (what `make run` runs) sets up only a database of its own (issue 11)."""

from __future__ import annotations

import threading

import pytest
from click.testing import CliRunner, Result

from kanal import auth, cli
from kanal.cli import DEMO_MARKER, DEMO_STORE, DEMO_TOKEN, create_key, main
from kanal.storage import Storage, connect

DEMO_HASH = auth.hash_token(DEMO_TOKEN)


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The databases demo went on to serve (the server itself is not started)."""
    calls: list[str] = []
    monkeypatch.setattr(cli, "run_server", lambda db_path, *_: calls.append(db_path))
    return calls


def demo(db: str) -> Result:
    return CliRunner().invoke(main, ["demo", "--db", db])


def accounts(db: str) -> tuple[list[dict], list[dict], str | None]:
    storage = connect(db)
    try:
        return storage.list_stores(), storage.list_keys(), storage.setting(DEMO_MARKER)
    finally:
        storage.close()


def assert_refused(result: Result, db: str) -> None:
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output
    assert f"Error: {db} is not a demo database" in result.output
    assert "new or empty database" in result.output
    assert "kanal demo --db" in result.output and f"kanal serve --db {db}" in result.output
    assert DEMO_TOKEN not in result.output


def test_fresh_database_gets_the_demo_store_key_and_marker(db: str, served: list[str]) -> None:
    result = demo(db)
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == DEMO_TOKEN
    stores, keys, marker = accounts(db)
    assert [(s["id"], s["name"], s["region"]) for s in stores] == [(DEMO_STORE, "Demo shop", "FR")]
    assert [(k["token_hash"], k["store_id"]) for k in keys] == [(DEMO_HASH, DEMO_STORE)]
    assert marker is not None
    assert served == [db]


def test_second_run_creates_nothing(db: str, served: list[str]) -> None:
    assert demo(db).exit_code == 0
    before = accounts(db)
    result = demo(db)
    assert result.exit_code == 0 and result.output.strip().splitlines()[-1] == DEMO_TOKEN
    assert accounts(db) == before
    assert served == [db, db]


def test_refuses_a_real_store_123(db: str, served: list[str]) -> None:
    created = CliRunner().invoke(
        main, ["stores", "create", "--id", "123", "--name", "Real shop", "--db", db]
    )
    assert created.exit_code == 0
    assert_refused(demo(db), db)
    stores, keys, marker = accounts(db)
    assert [s["name"] for s in stores] == ["Real shop"] and keys == [] and marker is None
    assert DEMO_HASH not in {k["token_hash"] for k in keys}
    assert served == []


def test_refuses_a_database_with_any_other_store(db: str, served: list[str]) -> None:
    storage = connect(db)
    storage.create_store({"id": 5, "name": "S", "team_id": 7, "region": None, "paused": 0})
    create_key(storage, name="production", store_id=5)
    storage.close()
    assert_refused(demo(db), db)
    stores, keys, marker = accounts(db)
    assert [s["id"] for s in stores] == [5] and marker is None
    assert DEMO_HASH not in {k["token_hash"] for k in keys}
    assert served == []


def test_revoked_demo_key_is_not_created_again(db: str, served: list[str]) -> None:
    assert demo(db).exit_code == 0
    (key,) = accounts(db)[1]
    revoked = CliRunner().invoke(main, ["keys", "revoke", str(key["id"]), "--db", db])
    assert revoked.exit_code == 0
    for _ in range(2):
        result = demo(db)
        assert result.exit_code == 0, result.output
        assert "the demo key was revoked" in result.output and "kanal keys create" in result.output
        assert DEMO_TOKEN not in result.output
        stores, keys, _marker = accounts(db)
        assert [s["id"] for s in stores] == [DEMO_STORE] and keys == []
    assert served == [db, db, db]


def test_database_of_the_unmarked_demo_is_adopted(db: str, served: list[str]) -> None:
    # What `kanal demo` created before it marked its databases.
    storage = connect(db)
    storage.create_store(
        {
            "id": DEMO_STORE,
            "name": "Demo shop",
            "team_id": None,
            "region": "FR",
            "rate_limit": 60,
            "paused": 0,
        }
    )
    create_key(storage, name="demo", store_id=DEMO_STORE, token=DEMO_TOKEN)
    storage.close()
    stores, keys, _ = accounts(db)
    result = demo(db)
    assert result.exit_code == 0 and result.output.strip().splitlines()[-1] == DEMO_TOKEN
    assert accounts(db)[:2] == (stores, keys)
    assert accounts(db)[2] is not None
    assert served == [db]


def test_unmarked_demo_database_with_another_key_is_refused(db: str, served: list[str]) -> None:
    storage = connect(db)
    storage.create_store({"id": DEMO_STORE, "name": "Demo shop", "team_id": None, "paused": 0})
    create_key(storage, name="demo", store_id=DEMO_STORE, token=DEMO_TOKEN)
    create_key(storage, name="production", store_id=DEMO_STORE)
    storage.close()
    assert_refused(demo(db), db)
    assert accounts(db)[2] is None and served == []


def test_two_demos_starting_at_once_create_once(db: str) -> None:
    connect(db).close()
    storages = [connect(db) for _ in range(4)]
    start = threading.Barrier(len(storages))
    results: list[bool | BaseException] = []

    def set_up(storage: Storage) -> None:
        start.wait()
        try:
            results.append(cli._set_up_demo(storage, db))
        except BaseException as exc:  # reported below
            results.append(exc)

    threads = [threading.Thread(target=set_up, args=(s,)) for s in storages]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for storage in storages:
        storage.close()
    assert results == [True] * len(storages)
    stores, keys, marker = accounts(db)
    assert len(stores) == 1 and len(keys) == 1 and marker is not None
