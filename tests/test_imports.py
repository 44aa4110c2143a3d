"""Import jobs (POST /imports): the API, and the job runner, in process, on each engine.

The runner is driven here by hand (``ImportRunner.run_once``); tests/test_imports_live.py
runs it in `kanal serve --with-worker` and `kanal worker`, on SQLite and PostgreSQL.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from kanal import bulk, formats
from kanal.app import create_app
from kanal.jobs import MAX_ATTEMPTS, ImportRunner
from kanal.storage import Storage, connect

from .conftest import Api, make_accounts

ORDER = {
    "placed_at": "2026-05-18T10:00:00Z",
    "total_price": 49.9,
    "currency": "EUR",
    "customer": {"phone": "+33612345678", "first_name": "Marie"},
}
NDJSON = {"Content-Type": "application/x-ndjson"}
JSON = {"Content-Type": "application/json"}


def order(n: int, **extra: Any) -> dict[str, Any]:
    return {**ORDER, "external_id": f"ORDER-{n}", **extra}


def lines(*records: Any) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records)


def upload(api: Api, body: str | list[Any], resource: str = "orders", **kw: Any) -> httpx.Response:
    url = api.url(f"imports?resource={resource}", kw.pop("store", None))
    headers = {**api.headers(kw.pop("key", None)), **kw.pop("headers", {})}
    if isinstance(body, str):
        return api.client.post(url, content=body, headers={**NDJSON, **headers})
    content = json.dumps(body)  # escapes what it holds (a lone surrogate too)
    return api.client.post(url, content=content, headers={**JSON, **headers})


def posted(api: Api, resource: str, record: dict[str, Any]) -> Any:
    """What POST /{resource} answers for the record (sent as json.dumps writes it)."""
    url, headers = api.url(resource), {**api.headers(), **JSON}
    return api.client.post(url, content=json.dumps(record), headers=headers).json()


def get(api: Api, path: str, **kw: Any) -> httpx.Response:
    return api.client.get(api.url(path), headers=api.headers(), **kw)


def run_jobs(db: str, **options: Any) -> int:
    """Run every waiting job to its end, as a worker would; how many ran."""
    storage = connect(db)
    runner = ImportRunner(storage, jobs=options.pop("jobs", 0), **options)
    ran = 0
    try:
        while runner.run_once():
            ran += 1
    finally:
        runner.close()
        storage.close()
    return ran


def test_an_upload_answers_202_with_the_job_and_its_location(api: Api, db: str) -> None:
    started = upload(api, lines(order(1), order(2)))
    assert started.status_code == 202
    job = started.json()
    assert started.headers["location"] == f"/api/v1/stores/123/imports/{job['id']}"
    assert {k: job[k] for k in ("resource", "state", "total", "processed", "invalid")} == {
        "resource": "orders",
        "state": "queued",
        "total": 2,
        "processed": 0,
        "invalid": 0,
    }
    assert job["started_at"] is None and job["finished_at"] is None and job["failure"] is None
    assert api.client.get(started.headers["location"], headers=api.headers()).json() == job
    assert run_jobs(db) == 1
    done = api.client.get(started.headers["location"], headers=api.headers()).json()
    assert {k: done[k] for k in ("state", "total", "processed", "created", "updated")} == {
        "state": "done",
        "total": 2,
        "processed": 2,
        "created": 2,
        "updated": 0,
    }
    assert done["started_at"] <= done["finished_at"]
    assert get(api, "orders/ORDER-2").status_code == 200


def test_invalid_records_are_listed_with_their_line_and_the_422_of_a_post(
    api: Api, db: str
) -> None:
    """Line numbers are the body's: blank lines count, a JSON array counts items. Each
    record's errors are those POST /orders answers for it."""
    bad = [
        order(3, customer={}),
        {"external_id": "X", "total_price": -1},
        order(4, placed_at="yesterday", currency="euro"),
    ]
    body = lines(order(1), bad[0], "", "{not json", bad[1], "   ", "[1, 2]", order(2), bad[2])
    job = upload(api, body).json()
    run_jobs(db)
    found = get(api, f"imports/{job['id']}").json()
    assert (found["total"], found["created"], found["invalid"]) == (7, 2, 5)
    errors = get(api, f"imports/{job['id']}/errors").json()["errors"]
    assert [entry["line"] for entry in errors] == [2, 4, 5, 7, 9]
    for entry, record in zip([errors[0], errors[2], errors[4]], bad, strict=True):
        assert entry["errors"] == posted(api, "orders", record)["errors"]
    assert errors[1]["errors"] == {
        "": [
            "Malformed JSON: Expecting property name enclosed in double quotes at line 1 column 2."
        ]
    }
    assert errors[3]["errors"] == {"": ["The record must be a JSON object."]}

    surrogate = order(7, customer={"phone": "+33612345678", "first_name": "\ud800"})
    huge = order(11, total_price=10**30)
    array = upload(api, [order(5), bad[0], order(6), surrogate, huge]).json()
    run_jobs(db)
    errors = get(api, f"imports/{array['id']}/errors").json()["errors"]
    assert [entry["line"] for entry in errors] == [2, 4, 5]  # the items' positions
    for entry, record in zip(errors, [bad[0], surrogate, huge], strict=True):
        assert entry["errors"] == posted(api, "orders", record)["errors"]


def test_checks_beyond_the_schema_are_reported_too(api: Api, db: str) -> None:
    """A shipment of an order that does not exist is invalid, as POST /shipments says."""
    assert api.post("orders", order(1)).status_code == 201
    shipments = [
        {"external_id": "S1", "order_external_id": "ORDER-1", "status": "delivered"},
        {"external_id": "S2", "order_external_id": "ORDER-404"},
        {"external_id": "S3", "order_external_id": "ORDER-404", "carrier": 5},
    ]
    job = upload(api, shipments, resource="shipments").json()
    run_jobs(db)
    assert get(api, f"imports/{job['id']}").json()["created"] == 1
    errors = get(api, f"imports/{job['id']}/errors").json()["errors"]
    assert [entry["line"] for entry in errors] == [2, 3]
    for entry, record in zip(errors, shipments[1:], strict=True):
        assert entry["errors"] == posted(api, "shipments", record)["errors"]
    assert get(api, "shipments/S1").status_code == 200


@pytest.mark.parametrize("resource", ["checkouts", "carts", "customers"])
def test_every_resource_goes_through_its_post(api: Api, db: str, resource: str) -> None:
    record = {
        "checkouts": {**ORDER, "external_id": "K1", "abandoned_at": "2026-05-18T09:00:00Z"},
        "carts": {**ORDER, "external_id": "C1", "abandoned_at": "2026-05-18T09:00:00Z"},
        "customers": {"external_id": "CUST-1", "phone": "06 12 34 56 78"},
    }[resource]
    job = upload(api, [record, {"phone": "not a phone"}], resource=resource).json()
    run_jobs(db)
    assert get(api, f"imports/{job['id']}").json()["created"] == 1
    assert get(api, f"{resource}/{record['external_id']}").status_code == 200


def test_ten_thousand_records_pass_and_one_more_is_a_413_naming_the_limit(api: Api) -> None:
    body = "{}\n" * 10_000
    assert upload(api, body).status_code == 202
    over = upload(api, body + "{}\n")
    assert over.status_code == 413
    assert over.json() == {
        "error": "An import holds at most 10000 records; this one has 10001. "
        "Send them in several imports."
    }
    assert upload(api, [{}] * 10_001).status_code == 413


def test_twenty_mib_pass_and_one_byte_more_is_a_413_naming_the_limit(api: Api) -> None:
    line = json.dumps(order(1, metadata={"pad": "x" * 4000})) + "\n"
    lines_needed = (20 * 1024 * 1024) // len(line)
    body = line * lines_needed
    body += " " * (20 * 1024 * 1024 - len(body.encode()))  # exactly 20 MiB
    assert len(body.encode()) == 20 * 1024 * 1024
    assert upload(api, body).status_code == 202
    over = upload(api, body + " ")
    assert over.status_code == 413
    assert over.json() == {"error": "The request body must not be larger than 20971520 bytes."}
    # Other operations keep their own limit.
    assert api.post("orders", order(1, metadata={"pad": "x" * 1024 * 1024})).status_code == 413


def test_malformed_uploads_are_a_clean_400_or_415(api: Api) -> None:
    cases = [
        (lambda: upload(api, ""), "The request body holds no record."),
        (lambda: upload(api, "\n  \n"), "The request body holds no record."),
        (lambda: upload(api, []), "The request body holds no record."),
        (
            lambda: upload(api, {"records": []}),
            "The request body must be a JSON array of records (or JSON Lines, sent as "
            "application/x-ndjson).",
        ),
        (
            lambda: api.client.post(
                api.url("imports?resource=orders"),
                content=b"[{}, ",
                headers={**api.headers(), "Content-Type": "application/json"},
            ),
            "Malformed JSON: Expecting value at line 1 column 6.",
        ),
    ]
    for send, message in cases:
        answer = send()
        assert (answer.status_code, answer.json()) == (400, {"error": message})
    plain = upload(api, "x", headers={"Content-Type": "text/plain"})
    assert plain.status_code == 415
    assert plain.json() == {
        "error": "Unsupported content type; send application/x-ndjson or application/json."
    }
    unknown = upload(api, "{}\n", resource="products")
    assert unknown.status_code == 422
    assert list(unknown.json()["errors"]) == ["resource"]


def test_the_upload_counts_as_one_request_against_the_rate_limit(
    api: Api, storage: Storage
) -> None:
    storage.update_store(123, {"rate_limit": 5})
    remaining = [int(upload(api, "{}\n" * 500).headers["x-ratelimit-remaining"])]
    remaining.append(int(get(api, "imports").headers["x-ratelimit-remaining"]))
    assert remaining == [4, 3]


def test_a_third_unfinished_job_is_a_429_with_retry_after(
    api: Api, db: str, keys: dict[str, Any]
) -> None:
    first, second = upload(api, lines(order(1))).json(), upload(api, lines(order(2))).json()
    third = upload(api, lines(order(3)))
    assert third.status_code == 429
    assert third.headers["retry-after"] == "5"
    assert third.json() == {
        "message": "The store has 2 imports queued or running, the most it may have: wait "
        "for one to end (Retry-After) or cancel one."
    }
    team = upload(api, lines(order(9)), key=keys["team"])
    assert team.status_code == 429  # the store's two, whichever key asks
    other = Api(api.client, keys["other"], store=456)
    assert upload(other, lines(order(9))).status_code == 202  # another store has its own
    assert api.delete(f"imports/{first['id']}").status_code == 200
    assert upload(api, lines(order(3))).status_code == 202
    run_jobs(db)
    assert upload(api, lines(order(4))).status_code == 202  # done jobs do not count
    assert get(api, f"imports/{second['id']}").json()["state"] == "done"


def test_cancel_a_queued_job_and_a_finished_one_is_a_409(api: Api, db: str) -> None:
    job = upload(api, lines(order(1), order(2))).json()
    cancelled = api.delete(f"imports/{job['id']}")
    assert cancelled.status_code == 200
    assert cancelled.json()["state"] == "cancelled" and cancelled.json()["finished_at"]
    assert run_jobs(db) == 0  # a worker never takes it
    assert get(api, "orders/ORDER-1").status_code == 404
    read = get(api, f"imports/{job['id']}")  # still readable, as it ended
    assert read.status_code == 200 and read.json() == cancelled.json()
    assert get(api, f"imports/{job['id']}/errors").json() == {"errors": []}
    again = api.delete(f"imports/{job['id']}")
    assert again.status_code == 409
    assert again.json() == {
        "error": f"Import {job['id']} has ended (cancelled); only a queued or running "
        "import can be cancelled."
    }
    done = upload(api, lines(order(3))).json()
    run_jobs(db)
    assert api.delete(f"imports/{done['id']}").status_code == 409
    assert api.delete("imports/999").json() == {"error": "Import not found"}
    assert get(api, "imports/999/errors").status_code == 404


def test_a_job_is_its_stores_alone(api: Api, keys: dict[str, Any]) -> None:
    job = upload(api, lines(order(1))).json()
    other = Api(api.client, keys["other"], store=456)
    assert get(other, f"imports/{job['id']}").status_code == 404
    assert other.delete(f"imports/{job['id']}").status_code == 404
    assert other.client.get(other.url("imports"), headers=other.headers()).json() == {"imports": []}
    assert upload(other, lines(order(1)), key=keys["store"]).status_code == 403


def test_errors_are_paged_with_cursors_bound_to_their_job(api: Api, db: str) -> None:
    first = upload(api, lines(*({"external_id": f"B{n}"} for n in range(7)))).json()
    second = upload(api, lines({"external_id": "C"}, order(1))).json()
    run_jobs(db)
    seen, url = [], api.url(f"imports/{first['id']}/errors?limit=3")
    pages = 0
    while url:
        page = api.client.get(url, headers=api.headers())
        assert page.status_code == 200
        seen += [entry["line"] for entry in page.json()["errors"]]
        pages += 1
        links = httpx.Response(200, headers=page.headers).links
        url = links.get("next", {}).get("url")
    assert seen == list(range(1, 8)) and pages == 3
    page = get(api, f"imports/{first['id']}/errors?limit=3")
    cursor = httpx.Response(200, headers=page.headers).links["next"]["url"].split("page_info=")[1]
    foreign = get(api, f"imports/{second['id']}/errors?page_info={cursor}")
    assert foreign.status_code == 400  # a cursor serves its own job's errors
    back = httpx.Response(200, headers=page.headers).links
    assert "previous" not in back


def test_the_list_filters_and_pages_as_the_other_lists(api: Api, db: str) -> None:
    ids = [upload(api, lines(order(n))).json()["id"] for n in range(2)]
    run_jobs(db)
    ids += [upload(api, [order(2)], resource="orders").json()["id"]]
    ids += [upload(api, [{"phone": "+33612345678"}], resource="customers").json()["id"]]
    everything = get(api, "imports").json()["imports"]
    assert [job["id"] for job in everything] == ids
    assert [j["id"] for j in get(api, "imports?state=done").json()["imports"]] == ids[:2]
    assert [j["id"] for j in get(api, "imports?resource=customers").json()["imports"]] == ids[3:]
    assert [j["id"] for j in get(api, f"imports?since_id={ids[1]}").json()["imports"]] == ids[2:]
    page = get(api, "imports?limit=2")
    assert [j["id"] for j in page.json()["imports"]] == ids[:2]
    assert 'rel="next"' in page.headers["link"]
    assert get(api, "imports?status=done").status_code == 400  # not a filter of this list


# -- the job runner ------------------------------------------------------------------


def prepared(new_db: Callable[[str], str], name: str) -> tuple[str, Api, TestClient]:
    db = new_db(name)
    keys = make_accounts(db)
    client = TestClient(create_app(db))
    return db, Api(client, keys["store"]), client


def test_a_job_writes_what_the_same_records_posted_one_by_one_write(
    new_db: Callable[[str], str],
) -> None:
    """The file of tests/test_import.py's equivalence test (orders that recover
    checkouts, paid orders with confirmations on, an order again within a chunk and in
    later ones, invalid lines), POSTed one by one into one database and uploaded as
    import jobs into another: orders, contacts, checkouts and messages come out the
    same, and the jobs' counts are the POSTs' statuses. The jobs run in chunks of 50
    with a checking process, as a large job does."""
    from .test_import import equivalence_file, snapshot

    checkouts, records = equivalence_file()
    databases = []
    statuses: list[int] = []
    for name in ("api", "jobs"):
        db, api, client = prepared(new_db, name)
        storage = connect(db)
        storage.update_store(123, {"automations": json.dumps({"order_confirmation": True})})
        storage.close()
        for checkout in checkouts:
            assert api.post("checkouts", checkout).status_code == 201
        if name == "api":
            statuses = [api.post("orders", json.loads(line)).status_code for line in records]
        else:
            half = len(records) // 2
            jobs = [
                upload(api, "\n".join(records[:half]) + "\n").json(),
                upload(api, [json.loads(line) for line in records[half:]]).json(),
            ]
            # Two checking processes, chunks of 50: the path of a large job.
            assert run_jobs(db, jobs=2, batch=50) == 2
            counted = [get(api, f"imports/{job['id']}").json() for job in jobs]
        client.close()
        databases.append(db)
    assert sum(job["created"] for job in counted) == statuses.count(201) > 150
    assert sum(job["updated"] for job in counted) == statuses.count(200) > 60
    assert sum(job["invalid"] for job in counted) == statuses.count(422) == 7
    a, b = snapshot(databases[0]), snapshot(databases[1])
    assert any(row["recovered_order_external_id"] for row in a["checkouts"])
    assert any(row["trigger"] == "order_confirmation" for row in a["messages"])
    for table in a:  # table by table, row by row: a failure shows the row
        assert len(a[table]) == len(b[table]), table
        for row_a, row_b in zip(a[table], b[table], strict=True):
            assert row_a == row_b, table


class Crash(BaseException):
    """A worker dying in the middle of a chunk (nothing catches it, as nothing catches a
    SIGKILL)."""


def claimed(storage: Storage, lease_seconds: float = 60) -> tuple[dict[str, Any], str]:
    lease = (formats.utcnow() + timedelta(seconds=lease_seconds)).isoformat()
    job = storage.claim_import(formats.now(), lease)
    assert job is not None
    return job, lease


def test_a_worker_dying_mid_chunk_leaves_the_job_to_the_next_one_counted_once(
    api: Api, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [order(n) for n in range(95)] + [order(5, total_price=1)]
    records.insert(40, {"external_id": "BAD"})
    job = upload(api, lines(*records)).json()
    storage = connect(db)
    runner = ImportRunner(storage, jobs=0, batch=10, lease_seconds=1)
    real, calls = storage.upsert_many, []

    def dying(*args: Any, **kwargs: Any) -> list[bool]:
        calls.append(1)
        if len(calls) == 4:  # the fourth chunk dies half written
            real(*args, **kwargs)
            raise Crash
        return real(*args, **kwargs)

    monkeypatch.setattr(storage, "upsert_many", dying)
    with pytest.raises(Crash):
        runner.run_once()
    monkeypatch.setattr(storage, "upsert_many", real)
    stopped = get(api, f"imports/{job['id']}").json()
    assert (stopped["state"], stopped["processed"], stopped["created"]) == ("running", 30, 30)
    assert storage.count("orders", 123) == 30  # the fourth chunk was rolled back
    assert not runner.run_once()  # its lease still holds
    later = datetime.now(UTC) + timedelta(seconds=2)
    monkeypatch.setattr(formats, "clock", lambda: later)
    assert runner.run_once()  # the lease ran out: taken over, resumed after chunk 3
    done = get(api, f"imports/{job['id']}").json()
    assert {
        k: done[k] for k in ("state", "total", "processed", "created", "updated", "invalid")
    } == {
        "state": "done",
        "total": 97,
        "processed": 97,
        "created": 95,
        "updated": 1,
        "invalid": 1,
    }
    assert storage.count("orders", 123) == 95
    assert storage.get("orders", 123, "ORDER-5")["total_price"] == "1.00"  # type: ignore[index]
    errors = get(api, f"imports/{job['id']}/errors").json()["errors"]
    assert [entry["line"] for entry in errors] == [41]  # reported once
    runner.close()
    storage.close()


def test_a_cancel_is_seen_between_chunks_and_what_was_written_stays(
    api: Api, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = upload(api, lines(*(order(n) for n in range(100)))).json()
    storage = connect(db)
    runner = ImportRunner(storage, jobs=0, batch=10)
    real, written = bulk.Writer.write, []

    def write_then_cancel(self: bulk.Writer, *args: Any, **kwargs: Any) -> bulk.Tally:
        tally = real(self, *args, **kwargs)
        written.append(tally.processed)
        if len(written) == 3:  # a DELETE arrives while the third chunk commits
            assert api.delete(f"imports/{job['id']}").status_code == 200
        return tally

    monkeypatch.setattr(bulk.Writer, "write", write_then_cancel)
    assert runner.run_once()
    assert written == [10, 10, 10]  # the fourth chunk saw the cancel and was not written
    found = get(api, f"imports/{job['id']}").json()
    assert (found["state"], found["processed"], found["created"]) == ("cancelled", 30, 30)
    assert storage.count("orders", 123) == 30
    assert storage.import_payload(123, job["id"]) is None  # the payload is gone
    runner.close()
    storage.close()


def test_a_job_that_cannot_go_on_fails_with_a_message(api: Api, db: str) -> None:
    """A payload that does not parse as a whole (stored here directly: the upload refuses
    one) and a job its workers died on too often end failed, saying why."""
    storage = connect(db)
    good = json.dumps([order(n) for n in range(3)])
    broken = storage.create_import(
        123, {"resource": "orders", "format": "json", "total": 4}, good[:-1].encode() + b", {", 9
    )
    assert broken is not None
    run_jobs(db, batch=2)
    failed = get(api, f"imports/{broken['id']}").json()
    assert (failed["state"], failed["processed"]) == ("failed", 0)
    assert failed["failure"] == (
        "malformed JSON array: Expecting property name enclosed in double quotes: "
        f"line 1 column {len(good) + 3} (char {len(good) + 2})"
    )

    doomed = upload(api, lines(order(9))).json()
    for _ in range(MAX_ATTEMPTS):  # a worker claims it and dies, again and again
        claimed(storage, lease_seconds=-1)
    assert run_jobs(db) == 1
    ended = get(api, f"imports/{doomed['id']}").json()
    assert ended["state"] == "failed"
    assert ended["failure"] == (
        f"the workers running it stopped {MAX_ATTEMPTS} times before it ended; "
        "0 records were processed (their chunks are written)"
    )
    storage.close()


def test_a_paused_stores_jobs_wait(api: Api, db: str, storage: Storage) -> None:
    job = upload(api, lines(order(1))).json()
    storage.update_store(123, {"paused": 1})
    assert run_jobs(db) == 0
    storage.update_store(123, {"paused": 0})
    assert run_jobs(db) == 1
    assert get(api, f"imports/{job['id']}").json()["state"] == "done"


def test_a_dead_checking_process_leaves_the_job_to_be_resumed(
    api: Api, db: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A checking process killed (the kernel's OOM killer, say) breaks the pool: the job
    is left to its lease and resumed by the next claim, with new processes."""
    from concurrent.futures.process import BrokenProcessPool

    job = upload(api, lines(order(1), order(2))).json()
    storage = connect(db)
    runner = ImportRunner(storage, jobs=0, lease_seconds=1)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise BrokenProcessPool("A child process terminated abruptly")
        yield  # a generator, as the real one

    monkeypatch.setattr(runner.checking, "checked", broken)
    assert runner.run_once()
    assert get(api, f"imports/{job['id']}").json()["state"] == "running"
    monkeypatch.undo()
    later = datetime.now(UTC) + timedelta(seconds=2)
    monkeypatch.setattr(formats, "clock", lambda: later)
    assert runner.run_once()
    done = get(api, f"imports/{job['id']}").json()
    assert (done["state"], done["created"], done["processed"]) == ("done", 2, 2)
    runner.close()
    storage.close()
