"""Import jobs end to end, on SQLite and on PostgreSQL: `kanal push` against a real
`kanal serve --with-worker`, and a `kanal worker` SIGKILLed in the middle of a job."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from kanal.storage import connect
from kanal.throwaway import fresh_database, server

from .conftest import ROOT, STORE, Server, make_accounts

ENGINES = ["sqlite", "postgres"]


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    with server() as url:
        yield url


@pytest.fixture(params=ENGINES)
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield str(tmp_path / "kanal.db")
        return
    with fresh_database(request.getfixturevalue("cluster"), "kanal_imports") as url:
        yield url


def order(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "external_id": f"ORDER-{n}",
        "placed_at": "2026-05-18T10:00:00Z",
        "total_price": 10 + n % 90,
        "currency": "EUR",
        "customer": {"phone": f"+336120{n % 500:05d}", "first_name": f"N{n}"},
        **extra,
    }


def kanal(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kanal", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def count(database: str, table: str) -> int:
    storage = connect(database)
    try:
        return int(storage.count(table, STORE))
    finally:
        storage.close()


def test_push_sends_a_file_as_jobs_and_reports_its_invalid_lines(
    database: str, tmp_path: Path
) -> None:
    """2,400 orders (100 of them twice) and 4 bad lines, pushed in jobs of 500 records:
    more jobs than a store may have unfinished, so the push waits for the worker."""
    keys = make_accounts(database)
    lines = [json.dumps(order(n)) for n in range(2_300)]
    lines += [json.dumps(order(n, total_price=1)) for n in range(100)]  # updates
    lines.insert(10, json.dumps({"external_id": "NO-CUSTOMER", "placed_at": "x"}))
    lines.insert(600, "")
    lines.insert(601, "{oops")
    lines.insert(1_800, json.dumps(order(9_999, customer={"phone": "not a phone"})))
    lines.append("[1]")
    source = tmp_path / "orders.jsonl"
    source.write_text("\n".join(lines) + "\n")
    host = Server(database)
    host.options = ["--with-worker"]
    host.start()
    try:
        pushed = kanal(
            "push", str(source), "--url", host.url, "--key", keys["store"],
            "--store", str(STORE), "--resource", "orders", "--job-size", "500",
        )  # fmt: skip
        imports = httpx.get(
            f"{host.url}/api/v1/stores/{STORE}/imports?limit=250",
            headers={"Authorization": f"Bearer {keys['store']}"},
        ).json()["imports"]
    finally:
        host.stop()
    assert pushed.returncode == 1, pushed.stderr
    assert "Traceback" not in pushed.stderr
    assert pushed.stderr.splitlines() == [
        "line 11: The total_price field is required. [total_price]",
        "line 11: The customer field is required. [customer]",
        "line 11: The placed_at field must be a valid date. [placed_at]",
        "line 602: Malformed JSON: Expecting property name enclosed in double quotes at "
        "line 1 column 2.",
        "line 1801: The customer.phone field must be a valid phone number. [customer.phone]",
        "line 2405: The record must be a JSON object.",
    ]
    summary = pushed.stdout.strip().splitlines()[-1]
    assert summary.startswith(
        "2404 records in 5 jobs: 2400 imported (2300 created, 100 updated), 4 invalid, in "
    )
    assert [job["state"] for job in imports] == ["done"] * 5
    assert [job["total"] for job in imports] == [500, 500, 500, 500, 404]
    assert sum(job["invalid"] for job in imports) == 4
    assert count(database, "orders") == 2_300
    assert count(database, "contacts") == 500


def test_push_of_a_json_array(database: str, tmp_path: Path) -> None:
    keys = make_accounts(database)
    source = tmp_path / "orders.json"
    source.write_text(json.dumps([order(n) for n in range(30)] + [{"external_id": "X"}]))
    host = Server(database)
    host.options = ["--with-worker"]
    host.start()
    try:
        pushed = kanal(
            "push", str(source), "--url", host.url, "--key", keys["store"],
            "--store", str(STORE), "--resource", "orders",
        )  # fmt: skip
    finally:
        host.stop()
    assert pushed.returncode == 1
    assert pushed.stderr.splitlines()[0] == "line 31: The placed_at field is required. [placed_at]"
    assert pushed.stdout.startswith("31 records in 1 jobs: 30 imported (30 created, 0 updated)")
    assert count(database, "orders") == 30


def test_push_with_bad_input_says_so_in_one_line(tmp_path: Path, db: str) -> None:
    """A missing file, a URL that is not one or where nothing answers, a refused key, an
    unknown store: one line each, exit status 2, no traceback, nothing sent."""
    keys = make_accounts(db)
    source = tmp_path / "orders.jsonl"
    source.write_text(json.dumps(order(1)) + "\n")
    host = Server(db)
    host.options = ["--with-worker"]
    host.start()
    try:
        base = ["--store", str(STORE), "--resource", "orders"]
        cases = [
            (["nope.jsonl", "--url", host.url, "--key", keys["store"], *base],
             "Error: cannot read nope.jsonl: No such file or directory"),
            ([str(source), "--url", "localhost:8080", "--key", keys["store"], *base],
             "Error: --url must be an http:// or https:// URL, not 'localhost:8080'"),
            ([str(source), "--url", host.url, "--key", "x" * 24, *base],
             "Error: the key was refused: Invalid API key (401)"),
            ([str(source), "--url", host.url, "--key", keys["store"], "--store", "999",
              "--resource", "orders"],
             "Error: store 999: Store not found or paused (404)"),
            ([str(source), "--url", host.url, "--key", keys["other"], *base],
             f"Error: the key does not cover store {STORE}: API key does not authorize "
             "this store (403)"),
        ]  # fmt: skip
        for args, said in cases:
            pushed = kanal("push", *args)
            assert (pushed.returncode, pushed.stderr.strip(), pushed.stdout) == (2, said, ""), args
        imports = httpx.get(
            f"{host.url}/api/v1/stores/{STORE}/imports",
            headers={"Authorization": f"Bearer {keys['store']}"},
        ).json()["imports"]
        assert imports == []  # nothing was sent
    finally:
        url = host.url
        host.stop()
    gone = kanal("push", str(source), "--url", url, "--key", keys["store"], *base)
    assert gone.returncode == 2 and gone.stderr.startswith(f"Error: cannot reach {url}: ")
    assert len(gone.stderr.strip().splitlines()) == 1


def start_worker(database: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "kanal", "worker", "--db", database, "--lease", "2",
             "--interval", "0.1"],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip


def test_a_worker_killed_mid_job_leaves_it_to_the_next_one(database: str, tmp_path: Path) -> None:
    """A job of 10,000 records (some twice, some invalid): its worker is SIGKILLed once the
    job is part done; a new worker takes it over when the lease runs out and finishes it.
    Every record is present once and the counts are exact."""
    keys = make_accounts(database)
    headers = {"Authorization": f"Bearer {keys['store']}"}
    host = Server(database).start()  # no worker in it: the workers are the test's
    log = tmp_path / "workers.log"
    try:
        for attempt in range(3):  # until a kill lands in the middle of a job
            first = attempt * 10_000
            records = [json.dumps(order(first + n)) for n in range(9_900)]
            records += [json.dumps(order(first + n, total_price=1)) for n in range(50)]
            records += [json.dumps({"external_id": f"BAD-{n}"}) for n in range(50)]
            job = httpx.post(
                f"{host.url}/api/v1/stores/{STORE}/imports?resource=orders",
                content="\n".join(records) + "\n",
                headers={**headers, "Content-Type": "application/x-ndjson"},
            ).json()
            url = f"{host.url}/api/v1/stores/{STORE}/imports/{job['id']}"
            worker = start_worker(database, log)
            try:
                deadline = time.monotonic() + 120
                while time.monotonic() < deadline:
                    found = httpx.get(url, headers=headers).json()
                    if found["processed"] > 0 or found["state"] == "done":
                        break
                    time.sleep(0.01)
            finally:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
            killed = httpx.get(url, headers=headers).json()
            if killed["state"] == "running" and killed["processed"] < killed["total"]:
                break
            if killed["state"] == "running":  # every chunk in, not yet marked done
                time.sleep(2.5)  # the lease runs out
                assert kanal("worker", "--once", "--db", database).returncode == 0
            assert httpx.get(url, headers=headers).json()["state"] == "done"
        else:
            pytest.skip("the worker finished every job before it could be killed")
        assert 0 < killed["processed"] < 10_000
        again = start_worker(database, log)
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                done = httpx.get(url, headers=headers).json()
                if done["state"] != "running":
                    break
                time.sleep(0.1)
        finally:
            os.killpg(again.pid, signal.SIGTERM)
            again.wait(timeout=30)
        errors = httpx.get(f"{url}/errors?limit=250", headers=headers).json()["errors"]
    finally:
        host.stop()
    assert {
        k: done[k] for k in ("state", "total", "processed", "created", "updated", "invalid")
    } == {
        "state": "done",
        "total": 10_000,
        "processed": 10_000,
        "created": 9_900,
        "updated": 50,
        "invalid": 50,
    }, log.read_text()
    assert [entry["line"] for entry in errors] == list(range(9_951, 10_001))  # each once
    assert count(database, "orders") == 9_900 * (attempt + 1)
    storage = connect(database)
    try:
        stored = storage.get("orders", STORE, f"ORDER-{first + 7}")
        assert stored is not None and stored["total_price"] == "1.00"
    finally:
        storage.close()
