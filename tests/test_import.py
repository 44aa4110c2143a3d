"""`kanal import`: the API's rules and messages, in bulk, streamed."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from starlette.testclient import TestClient

from kanal.app import create_app
from kanal.cli import main
from kanal.storage import JSON_COLUMNS, connect

from .conftest import ROOT, Api, Rows

ORDER = {
    "placed_at": "2026-05-18T10:00:00Z",
    "total_price": 49.9,
    "currency": "EUR",
    "customer": {"phone": "+33612345678", "first_name": "Marie"},
}


def run(*args: str) -> Any:
    return CliRunner().invoke(main, list(args))


def test_jsonl_import_reports_bad_lines_and_keeps_the_good(
    tmp_path: Path, db: str, keys: dict[str, Any]
) -> None:
    lines = [json.dumps({**ORDER, "external_id": f"ORDER-{n}"}) for n in range(1, 6)]
    lines.insert(2, json.dumps({**ORDER, "external_id": "", "customer": {}}))
    lines.insert(4, "{not json")
    lines.insert(5, "")
    lines.append(json.dumps({**ORDER, "external_id": "ORDER-1", "total_price": 10}))
    source = tmp_path / "orders.jsonl"
    source.write_text("\n".join(lines) + "\n")
    result = run(
        "import", str(source), "--store", "123", "--resource", "orders", "--db", db, "--batch", "2"
    )
    assert result.exit_code == 1
    assert "line 3: The external_id field is required. [external_id]" in result.output
    assert "line 3: The customer.phone field is required. [customer.phone]" in result.output
    assert "line 5: Malformed JSON: Expecting property name enclosed in double quotes" in (
        result.output
    )
    assert (
        result.output.strip()
        .splitlines()[-1]
        .startswith("6 imported (5 created, 1 updated), 2 invalid, in ")
    )
    storage = connect(db)
    stored = storage.get("orders", 123, "ORDER-1")
    storage.close()
    assert stored is not None and stored["total_price"] == "10.00"  # the later line won
    assert Rows(db).value("SELECT count(*) FROM orders") == 5
    assert Rows(db).value("SELECT count(*) FROM contacts") == 1


def test_json_array_import_and_semantic_checks(
    tmp_path: Path, db: str, keys: dict[str, Any]
) -> None:
    source = tmp_path / "orders.json"
    source.write_text(json.dumps([{**ORDER, "external_id": "ORDER-1"}]))
    assert (
        run("import", str(source), "--store", "123", "--resource", "orders", "--db", db).exit_code
        == 0
    )
    shipments = tmp_path / "shipments.json"
    shipments.write_text(
        json.dumps(
            [
                {"external_id": "S1", "order_external_id": "ORDER-1", "status": "delivered"},
                {"external_id": "S2", "order_external_id": "ORDER-404"},
            ]
        )
    )
    result = run("import", str(shipments), "--store", "123", "--resource", "shipments", "--db", db)
    assert result.exit_code == 1
    assert "line 2: The selected order_external_id is invalid. [order_external_id]" in result.output
    storage = connect(db)
    assert storage.get("shipments", 123, "S1") is not None  # a bad record undoes only itself
    assert storage.get("shipments", 123, "S2") is None
    storage.close()


def test_unknown_store_is_an_error(tmp_path: Path, db: str, keys: dict[str, Any]) -> None:
    source = tmp_path / "o.jsonl"
    source.write_text(json.dumps({**ORDER, "external_id": "O"}) + "\n")
    result = run("import", str(source), "--store", "999", "--resource", "orders", "--db", db)
    assert result.exit_code == 1 and "no store 999" in result.output


def equivalence_file() -> tuple[list[dict[str, Any]], list[str]]:
    """Checkouts to write first, then the orders' lines (JSON Lines) of the equivalence
    tests: repeated orders within a chunk (another phone, another time) and in later
    ones, orders that recover an abandoned checkout, paid orders (confirmations on),
    invalid lines."""
    now = datetime.now(UTC).replace(microsecond=0)
    stamp = (now - timedelta(minutes=5)).isoformat().replace("+00:00", "Z")
    phones = [f"+336120000{n:02d}" for n in range(40)]
    checkouts = [
        {
            "external_id": f"CHK-{n}",
            "abandoned_at": (now - timedelta(minutes=30 + n)).isoformat(),
            "total_price": 20 + n,
            "currency": "EUR",
            "recovery_url": f"https://shop.example/recover/{n}",
            "customer": {"phone": phones[n], "first_name": f"Name{n}"},
        }
        for n in range(0, 40, 3)
    ]
    lines = []
    for n in range(240):
        order = {
            # 60 orders come again in later chunks, and every tenth right after itself
            "external_id": f"ORDER-{(n - 1 if n % 10 == 9 else n) % 180}",
            "placed_at": stamp if n % 5 else (now - timedelta(minutes=1)).isoformat(),
            "total_price": 10 + n,
            "currency": "EUR",
            "financial_status": "paid" if n % 4 == 0 else "pending",
            "customer": {
                "phone": phones[(n * 7) % 40],
                "first_name": f"First{n}",
                **({"locale": "fr-FR"} if n % 2 else {}),
            },
            "tags": [f"t{n % 3}"],
            "metadata": {"n": n, "big": 10**30} if n % 50 == 0 else {"n": n},
        }
        lines.append(json.dumps(order))
        if n % 37 == 0:
            lines.append(json.dumps({**order, "customer": {"phone": "not a phone"}}))
    return checkouts, lines


def test_import_writes_what_the_api_writes(tmp_path: Path, new_db: Callable[[str], str]) -> None:
    """The same orders, POSTed one by one and imported in chunks with worker processes,
    leave the same database: orders, contacts, attributed checkouts, scheduled messages.
    The file has what the set path must get right: repeated orders within a chunk
    (another phone, another time), orders that recover an abandoned checkout, paid
    orders with confirmations on, invalid lines."""
    from kanal.bulk import import_file

    from .conftest import make_accounts

    checkouts, lines = equivalence_file()
    source = tmp_path / "orders.jsonl"
    source.write_text("\n".join(lines) + "\n")

    def prepared(name: str) -> tuple[str, Api, TestClient]:
        db = new_db(name)
        keys = make_accounts(db)
        storage = connect(db)
        storage.update_store(123, {"automations": json.dumps({"order_confirmation": True})})
        storage.close()
        client = TestClient(create_app(db))
        api = Api(client, keys["store"])
        for checkout in checkouts:
            assert api.post("checkouts", checkout).status_code == 201
        return db, api, client

    via_api, api, client_a = prepared("api")
    statuses = [api.post("orders", json.loads(line)).status_code for line in lines]
    via_import, _, client_b = prepared("import")
    report = import_file(str(source), 123, "orders", via_import, batch=50, jobs=2)
    client_a.close()
    client_b.close()

    assert report.created == statuses.count(201) > 150
    assert report.updated == statuses.count(200) > 60
    assert len(report.invalid) == statuses.count(422) == 7
    a, b = snapshot(via_api), snapshot(via_import)
    assert a["checkouts"] and any(row["recovered_order_external_id"] for row in a["checkouts"])
    assert any(row["trigger"] == "order_confirmation" for row in a["messages"])
    for table in a:  # table by table, row by row: a failure shows the row
        assert len(a[table]) == len(b[table]), table
        for row_a, row_b in zip(a[table], b[table], strict=True):
            assert row_a == row_b, table


TIMES = {"inserted_at", "updated_at", "last_activity_at", "next_attempt_at", "created_at"}


def snapshot(db: str) -> dict[str, list[dict[str, Any]]]:
    """Every table the writes touch, without the moments they were written at."""
    tables = {}
    for table in ("orders", "contacts", "checkouts", "messages"):
        tables[table] = [
            {
                # JSON as text on SQLite, already parsed by psycopg on PostgreSQL
                key: json.loads(value) if key in JSON_COLUMNS and isinstance(value, str) else value
                for key, value in row.items()
                if key not in TIMES
            }
            for row in Rows(db).all(f"SELECT * FROM {table} ORDER BY id")
        ]
    for message in tables["messages"]:
        if message["trigger"] == "order_confirmation":  # due at once: when it was written
            del message["scheduled_at"]
    return tables


def test_a_dead_checking_process_is_a_clean_error(
    tmp_path: Path, db: str, keys: dict[str, Any], monkeypatch: Any
) -> None:
    """A worker killed mid-import breaks the pool (ProcessPoolExecutor says so instead
    of waiting forever): the command answers with a sentence, not a traceback."""
    from concurrent.futures.process import BrokenProcessPool

    from kanal import bulk

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise BrokenProcessPool("A child process terminated abruptly")

    monkeypatch.setattr(bulk, "import_file", broken)
    source = tmp_path / "o.jsonl"
    source.write_text(json.dumps({**ORDER, "external_id": "O"}) + "\n")
    result = run("import", str(source), "--store", "123", "--resource", "orders", "--db", db)
    assert result.exit_code == 1
    assert "Error: a checking process died" in result.output
    assert "Traceback" not in result.output


def test_a_malformed_json_array_ends_the_import_with_a_clean_error(
    tmp_path: Path, db: str, keys: dict[str, Any]
) -> None:
    good = json.dumps({**ORDER, "external_id": "ORDER-1"})
    source = tmp_path / "orders.json"
    source.write_text(f'[{good}, {{"external_id": ')
    result = run("import", str(source), "--store", "123", "--resource", "orders", "--db", db)
    assert result.exit_code == 1
    assert "Error: malformed JSON array after item 1: parse error: premature EOF." in result.output
    assert "Traceback" not in result.output


def test_a_chunk_is_larger_on_postgresql_by_default(
    tmp_path: Path, db: str, keys: dict[str, Any], monkeypatch: Any
) -> None:
    """Without ``batch``, a chunk (one transaction, one progress step) has the engine's
    size: a PostgreSQL transaction pays a durable commit and its round trips whatever
    its size. The import runner of jobs chooses the same way."""
    from kanal import bulk
    from kanal.jobs import ImportRunner

    from .conftest import is_sqlite

    monkeypatch.setattr(bulk, "CHUNK_SQLITE", 3)
    monkeypatch.setattr(bulk, "CHUNK_POSTGRES", 5)
    source = tmp_path / "orders.jsonl"
    source.write_text(
        "".join(json.dumps({**ORDER, "external_id": f"O-{n}"}) + "\n" for n in range(10))
    )
    steps: list[int] = []
    report = bulk.import_file(
        str(source), 123, "orders", db, jobs=0, progress=lambda _, done: steps.append(done.valid)
    )
    assert report.created == 10
    assert steps == ([3, 6, 9, 10] if is_sqlite(db) else [5, 10])
    storage = connect(db)
    try:
        assert ImportRunner(storage, jobs=0).batch == (3 if is_sqlite(db) else 5)
    finally:
        storage.close()


def test_chunks_are_checked_here_while_the_checking_processes_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Starting the checking processes from a fork server (it imports the code, some
    0.4 s) holds nothing up: until one answers, chunks are checked in the importing
    process; then the next ones go to the processes. Every chunk comes back, in order."""
    from kanal import bulk

    release = threading.Event()
    start = bulk.Checking._start

    def slow_start(checking: bulk.Checking, started: Any, method: str) -> None:
        assert method == "forkserver"
        assert release.wait(30)
        start(checking, started, method)

    here: list[list[str]] = []
    check_here = bulk.Checker.check_chunk

    def counted(checker: bulk.Checker, chunk: list[tuple[int, Any]]) -> bulk.Checked:
        here.append([json.loads(line)["external_id"] for _, line in chunk])
        return check_here(checker, chunk)

    monkeypatch.setattr(bulk, "_forkable", lambda: False)  # started in a thread
    monkeypatch.setattr(bulk.Checking, "_start", slow_start)
    monkeypatch.setattr(bulk.Checker, "check_chunk", counted)
    records = [(n, json.dumps({**ORDER, "external_id": f"O-{n}"}).encode()) for n in range(1, 11)]
    ids = [[f"O-{n}", f"O-{n + 1}"] for n in range(1, 11, 2)]
    with bulk.Checking(1) as checking:
        results = checking.checked(bulk.chunked(iter(records), 2, lambda: None), "orders", "FR")
        first, second = next(results), next(results)  # the processes are not up yet
        assert here == ids[:2]
        release.set()
        assert checking.started is not None and checking.started.result(timeout=30)
        rest = list(results)
    assert here == ids[:2]  # the processes checked the rest
    checked = [first[0], second[0], *(result for result, _ in rest)]
    key = checked[0].columns.index("external_id")
    assert [[values[key] for _, values, _ in c.valid] for c in checked] == ids
    assert all(not c.invalid for c in checked)


def test_closing_while_the_checking_processes_start_leaves_none_behind(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Closed before its processes are up, a Checking waits for the start to end and
    shuts the pool it made down: no process is left running."""
    from kanal import bulk

    made: list[Any] = []
    pool_class = bulk.ProcessPoolExecutor

    def recorded(*args: Any, **kwargs: Any) -> Any:
        made.append(pool_class(*args, **kwargs))
        return made[-1]

    monkeypatch.setattr(bulk, "ProcessPoolExecutor", recorded)
    monkeypatch.setattr(bulk, "_forkable", lambda: False)  # started in a thread
    checking = bulk.Checking(1)
    checking.warm()
    checking.close()
    assert checking.pool is None and checking.started is None and checking.starting is None
    assert len(made) == 1
    with pytest.raises(RuntimeError, match="after shutdown"):
        made[0].submit(bulk._started)


FORKED = """
import os, threading
from kanal import bulk

def parent(checking):
    assert checking.started is not None
    return checking.started.result(timeout=60)

with bulk.Checking(1) as checking:  # nothing else runs here: forked from this process
    checking.warm()
    assert checking.starting is None and parent(checking) == os.getpid()
threading.Thread(target=threading.Event().wait, args=(60,), daemon=True).start()
with bulk.Checking(1) as checking:  # another thread runs: from the fork server
    checking.warm()
    assert checking.starting is not None and parent(checking) != os.getpid()
print("ok")
"""


def test_checking_processes_are_forked_only_from_a_process_running_nothing_else() -> None:
    """A copy of a process is only safe when no other thread runs in it (a lock one
    holds would stay held in the copy): then the checking processes are forked from
    the importing process, which has the code imported already; else from the fork
    server."""
    done = subprocess.run(
        [sys.executable, "-c", FORKED], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"
