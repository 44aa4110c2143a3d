"""Fixtures: an in-process app over a fresh database, and a real server process."""

from __future__ import annotations

import contextlib
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import psycopg
import pytest
from psycopg.rows import dict_row
from starlette.testclient import TestClient

from kanal import throwaway
from kanal.app import create_app
from kanal.cli import create_key
from kanal.storage import connect, is_postgres

ROOT = Path(__file__).resolve().parent.parent
STORE = 123
OTHER_STORE = 456


def make_accounts(db: str) -> dict[str, Any]:
    """Store 123 (team 7, FR) and store 456 (team 8), a key for each, a team key (on
    either engine: ``db`` is a SQLite file or a postgresql:// URL)."""
    storage = connect(db, pool_size=1)
    storage.create_store(
        {
            "id": STORE,
            "name": "Demo shop",
            "team_id": 7,
            "region": "FR",
            "rate_limit": 100_000,
            "paused": 0,
        }
    )
    storage.create_store(
        {
            "id": OTHER_STORE,
            "name": "Other shop",
            "team_id": 8,
            "region": "US",
            "rate_limit": 100_000,
            "paused": 0,
        }
    )
    keys = {
        "store": create_key(storage, name="store", store_id=STORE),
        "other": create_key(storage, name="other", store_id=OTHER_STORE),
        "team": create_key(storage, name="team", team_id=7),
    }
    storage.close()
    return keys


class Api:
    """A client bound to a store and a key, with the JSON content type set."""

    def __init__(self, client: Any, key: str, store: int = STORE) -> None:
        self.client, self.key, self.store = client, key, store

    def headers(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}

    def url(self, path: str, store: int | None = None) -> str:
        return f"/api/v1/stores/{self.store if store is None else store}/{path.lstrip('/')}"

    def post(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        return self.client.post(
            self.url(path, kw.pop("store", None)),
            json=body,
            headers=kw.pop("headers", None) or self.headers(),
            **kw,
        )

    def patch(self, path: str, body: Any, **kw: Any) -> httpx.Response:
        return self.client.patch(
            self.url(path, kw.pop("store", None)),
            json=body,
            headers=kw.pop("headers", None) or self.headers(),
            **kw,
        )

    def delete(self, path: str, **kw: Any) -> httpx.Response:
        return self.client.delete(
            self.url(path, kw.pop("store", None)),
            headers=kw.pop("headers", None) or self.headers(),
            **kw,
        )


#: The engines every test that touches data runs on (the ``db`` fixture's parameter).
ENGINES = ("sqlite", "postgres")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "sqlite_only(reason): reads what only SQLite has (its files, its query plans, "
        "databases of older versions); runs on the SQLite engine only",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The PostgreSQL runs of ``sqlite_only`` tests are deselected (and counted so)."""
    dropped = [
        item
        for item in items
        if item.get_closest_marker("sqlite_only")
        and getattr(item, "callspec", None) is not None
        and item.callspec.params.get("engine") == "postgres"
    ]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if item not in set(dropped)]


@pytest.fixture(scope="session")
def postgres() -> Iterator[tuple[str, str]]:
    """A PostgreSQL server for the session (a throwaway cluster, or
    ``$KANAL_TEST_POSTGRES_URL``) and the name of a migrated database to copy."""
    with throwaway.server() as url, throwaway.fresh_database(url, "kanal_template") as template:
        connect(template).close()  # migrated once; each test copies it
        yield url, urlsplit(template).path.lstrip("/")


@pytest.fixture(params=ENGINES)
def engine(request: pytest.FixtureRequest) -> str:
    """The storage engine of the test's databases."""
    return str(request.param)


@pytest.fixture
def new_db(
    engine: str, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[Callable[[str], str]]:
    """Makes fresh databases of the test's engine: a SQLite file, or the URL of a new
    PostgreSQL database (a copy of the migrated template), dropped afterwards."""
    with contextlib.ExitStack() as made:

        def make(name: str) -> str:
            if engine == "sqlite":
                return str(tmp_path / f"{name}.db")
            url, template = request.getfixturevalue("postgres")
            return made.enter_context(throwaway.fresh_database(url, "kanal_test", template))

        yield make


@pytest.fixture
def db(new_db: Callable[[str], str]) -> str:
    """The test's database, on each engine in turn."""
    return new_db("kanal")


def is_sqlite(db: str) -> bool:
    return not is_postgres(db)


class Rows:
    """Raw reads of a test's database on either engine (``?`` placeholders), for what
    the API does not show: every row of a table, a message's state."""

    def __init__(self, db: str) -> None:
        self.db = db

    def all(self, sql: str, *params: Any) -> list[dict[str, Any]]:
        if is_postgres(self.db):
            with psycopg.connect(self.db, row_factory=dict_row) as conn:
                return list(conn.execute(sql.replace("?", "%s"), params))
        conn = sqlite3.connect(self.db)
        conn.row_factory = sqlite3.Row
        try:
            return [dict(row) for row in conn.execute(sql, params)]
        finally:
            conn.close()

    def one(self, sql: str, *params: Any) -> dict[str, Any]:
        (row,) = self.all(sql, *params)
        return row

    def value(self, sql: str, *params: Any) -> Any:
        (value,) = self.one(sql, *params).values()
        return value

    def tables(self) -> list[str]:
        if is_postgres(self.db):
            sql = "SELECT tablename AS name FROM pg_tables WHERE schemaname = current_schema()"
        else:
            sql = "SELECT name FROM sqlite_master WHERE type = 'table'"
        return [row["name"] for row in self.all(sql)]

    def dump(self) -> str:
        """Every row of every table, as text."""
        return "\n".join(
            repr(row) for table in self.tables() for row in self.all(f'SELECT * FROM "{table}"')
        )


@pytest.fixture
def rows(db: str) -> Rows:
    return Rows(db)


@pytest.fixture
def keys(db: str) -> dict[str, Any]:
    return make_accounts(db)


@pytest.fixture
def client(db: str, keys: dict[str, Any]) -> Iterator[TestClient]:
    # Responses are validated against openapi.yaml too: a wrong shape fails loudly.
    # One request at a time: a small pool (on PostgreSQL) starts faster.
    with TestClient(create_app(db, validate_responses=True, pool_size=2)) as test_client:
        yield test_client


@pytest.fixture
def api(client: TestClient, keys: dict[str, Any]) -> Api:
    return Api(client, keys["store"])


@pytest.fixture
def storage(db: str, client: TestClient) -> Iterator[Any]:
    """The storage of the test's database, on its engine (synchronous calls)."""
    store = connect(db)
    yield store
    store.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """``kanal serve`` in a subprocess on a free loopback port."""

    def __init__(self, db: str, workers: int = 1) -> None:
        self.db, self.workers, self.port = db, workers, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.cwd: Path = ROOT
        self.env: dict[str, str] = {}
        #: Its own process group (os.killpg reaches the workers too).
        self.new_session = False
        #: More options of `kanal serve` (``--with-worker``).
        self.options: list[str] = []

    def start(self) -> Server:
        env = {**os.environ, "KANAL_VALIDATE_RESPONSES": "1", **self.env}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "kanal",
                "serve",
                "--db",
                self.db,
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
                *self.options,
            ],
            cwd=self.cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=self.new_session,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                time.sleep(0.1)
            if self.proc.poll() is not None:
                break
        out = self.stop()
        raise RuntimeError(f"kanal serve did not come up:\n{out}")

    def stop(self) -> str:
        if self.proc is None:
            return ""
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.proc = None
        log = out.decode(errors="replace")
        print(f"--- kanal serve on :{self.port} said:\n{log}")  # pytest shows it on a failure
        return log


@pytest.fixture
def server(db: str, keys: dict[str, Any]) -> Iterator[Server]:
    srv = Server(db).start()
    yield srv
    srv.stop()
