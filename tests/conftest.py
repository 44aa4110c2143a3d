"""Fixtures: an in-process app over a fresh database, and a real server process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from kanal.app import create_app
from kanal.cli import create_key
from kanal.storage import Storage, connect

ROOT = Path(__file__).resolve().parent.parent
STORE = 123
OTHER_STORE = 456


def make_accounts(db: str) -> dict[str, Any]:
    """Store 123 (team 7, FR) and store 456 (team 8), a key for each, a team key (on
    either engine: ``db`` is a SQLite file or a postgresql:// URL)."""
    storage = connect(db)
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


@pytest.fixture
def db(tmp_path: Path) -> str:
    return str(tmp_path / "kanal.db")


@pytest.fixture
def keys(db: str) -> dict[str, Any]:
    return make_accounts(db)


@pytest.fixture
def client(db: str, keys: dict[str, Any]) -> Iterator[TestClient]:
    # Responses are validated against openapi.yaml too: a wrong shape fails loudly.
    with TestClient(create_app(db, validate_responses=True)) as test_client:
        yield test_client


@pytest.fixture
def api(client: TestClient, keys: dict[str, Any]) -> Api:
    return Api(client, keys["store"])


@pytest.fixture
def storage(db: str, client: TestClient) -> Iterator[Storage]:
    store = Storage(db)
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
        return out.decode(errors="replace")


@pytest.fixture
def server(db: str, keys: dict[str, Any]) -> Iterator[Server]:
    srv = Server(db).start()
    yield srv
    srv.stop()
