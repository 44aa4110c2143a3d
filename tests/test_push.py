"""`kanal push`'s logic against a fake kanal (httpx.MockTransport): jobs cut within the
limits and sent two at a time, Retry-After honoured, polls within the rate limit, the
jobs' errors paged and told with the file's line numbers, and what was sent said
when the push stops. tests/test_imports_live.py runs it against real servers."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx
import pytest

from kanal.push import Pusher, PushError, limits

URL = "http://kanal.test"


class FakeKanal:
    """Answers as kanal does: each poll moves a job on (queued, running, done); a record
    that is not JSON or has no external_id is invalid; errors come two a page."""

    def __init__(self, *, busy: int = 0, rate_limit: int = 100_000) -> None:
        self.busy, self.rate_limit = busy, rate_limit
        self.jobs: dict[int, dict[str, Any]] = {}
        self.most_unfinished = 0
        self.requests: list[str] = []

    def unfinished(self) -> int:
        return sum(job["state"] != "done" for job in self.jobs.values())

    def __call__(self, request: httpx.Request) -> httpx.Response:
        path, method = request.url.path, request.method
        self.requests.append(f"{method} {path}")
        headers = {"X-RateLimit-Limit": str(self.rate_limit), "X-RateLimit-Remaining": "1"}
        if path == "/healthz":
            return httpx.Response(200, json={"status": "ok"})
        found = re.fullmatch(r"/api/v1/stores/123/imports(?:/(\d+))?(/errors)?", path)
        assert found is not None, path
        number, errors = found.groups()
        if method == "POST":
            if self.busy:
                self.busy -= 1
                return httpx.Response(429, json={"message": "busy"}, headers={"Retry-After": "3"})
            assert request.headers["content-type"] == "application/x-ndjson"
            records = [line for line in request.content.split(b"\n") if line.strip()]
            assert request.content.endswith(b"\n") and len(records) == len(
                request.content.strip(b"\n").split(b"\n")
            )  # one record a line, no blank line
            job_id = len(self.jobs) + 1
            self.jobs[job_id] = {"records": records, "state": "queued"}
            self.most_unfinished = max(self.most_unfinished, self.unfinished())
            return httpx.Response(202, json={"id": job_id}, headers=headers)
        if number is None:
            return httpx.Response(200, json={"imports": []}, headers=headers)
        job = self.jobs[int(number)]
        invalid = [n for n, record in enumerate(job["records"], 1) if not self._valid(record)]
        if errors:
            start = int(request.url.params.get("page_info", "0"))
            page = [{"line": n, "errors": {"": [f"bad {n}"]}} for n in invalid[start : start + 2]]
            if start + 2 < len(invalid):
                headers["Link"] = f'<{path}?limit=250&page_info={start + 2}>; rel="next"'
            return httpx.Response(200, json={"errors": page}, headers=headers)
        job["state"] = {"queued": "running", "running": "done"}.get(job["state"], "done")
        total = len(job["records"])
        done = job["state"] == "done"
        body = {
            "state": job["state"],
            "processed": total if done else total // 2,
            "created": total - len(invalid) if done else 0,
            "updated": 0,
            "invalid": len(invalid) if done else 0,
            "failure": None,
        }
        return httpx.Response(200, json=body, headers=headers)

    @staticmethod
    def _valid(record: bytes) -> bool:
        try:
            return "external_id" in json.loads(record)
        except ValueError:
            return False


def pusher(fake: FakeKanal, sleeps: list[float], **options: Any) -> Pusher:
    client = httpx.Client(transport=httpx.MockTransport(fake))
    return Pusher(URL, "k" * 24, 123, "orders", client=client, sleep=sleeps.append, **options)


def write(tmp_path: Path, *lines: str) -> str:
    path = tmp_path / "records.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def good(n: int) -> str:
    return json.dumps({"external_id": f"O{n}"})


def test_the_file_goes_as_jobs_two_at_a_time_and_errors_carry_the_files_lines(
    tmp_path: Path,
) -> None:
    lines = [good(n) for n in range(25)]
    lines[3] = "{oops"
    lines.insert(5, "")
    lines[12] = json.dumps({"no": "id"})
    lines[13] = "   "
    lines[14] = "[1]"
    lines[20] = "{"
    fake, sleeps = FakeKanal(), []
    outcome = pusher(fake, sleeps, job_size=10).run(write(tmp_path, *lines))
    assert [len(job["records"]) for job in fake.jobs.values()] == [10, 10, 4]
    assert fake.most_unfinished == 2  # never a third of its own
    assert [line for line, _ in outcome.invalid] == [4, 13, 15, 21]
    assert outcome.invalid[0] == (4, {"": ["bad 4"]})  # the job's line 4 is the file's 4
    assert [job.state for job in outcome.jobs] == ["done"] * 3
    assert outcome.records == 24
    errors_pages = [r for r in fake.requests if r.endswith("/errors")]
    assert len(errors_pages) == 3  # job 2's three invalid records took two pages


def test_a_busy_store_is_waited_for_as_retry_after_says(tmp_path: Path) -> None:
    fake, sleeps = FakeKanal(busy=2), []
    outcome = pusher(fake, sleeps).run(write(tmp_path, good(1), good(2)))
    assert sleeps.count(3.0) == 2  # each 429, its Retry-After
    assert len(outcome.jobs) == 1 and outcome.jobs[0].state == "done"


def test_polls_stay_within_half_the_stores_rate_limit(tmp_path: Path) -> None:
    fake, sleeps = FakeKanal(rate_limit=60), []
    pusher(fake, sleeps, job_size=1).run(write(tmp_path, good(1), good(2), good(3)))
    assert set(sleeps) <= {2.0, 4.0} and 4.0 in sleeps  # a poll a job: 60 / (60 / 2) s each
    fast, sleeps = FakeKanal(), []
    pusher(fast, sleeps).run(write(tmp_path, good(1)))
    assert set(sleeps) == {0.25}


def test_a_record_larger_than_a_job_takes_is_reported_and_not_sent(tmp_path: Path) -> None:
    fake, sleeps = FakeKanal(), []
    push = pusher(fake, sleeps)
    push.size = 100
    big = json.dumps({"external_id": "BIG", "pad": "x" * 200})
    outcome = push.run(write(tmp_path, good(1), big, good(2)))
    assert outcome.invalid == [
        (2, {"": ["The record is larger than the 100 bytes an import takes; not sent."]})
    ]
    assert [len(job["records"]) for job in fake.jobs.values()] == [2]


def test_jobs_are_cut_by_bytes_too(tmp_path: Path) -> None:
    fake, sleeps = FakeKanal(), []
    push = pusher(fake, sleeps)
    push.size = 3 * len(good(10) + "\n")
    push.run(write(tmp_path, *(good(n) for n in range(10, 20))))
    assert [len(job["records"]) for job in fake.jobs.values()] == [3, 3, 3, 1]


def test_the_limits_are_the_contracts() -> None:
    assert limits() == (10_000, 20 * 1024 * 1024)


def test_a_json_array_that_stops_parsing_says_what_was_sent(tmp_path: Path) -> None:
    path = tmp_path / "records.json"
    path.write_text("[" + ", ".join([good(1), good(2), good(3)]) + ', {"external_id": ')
    fake, sleeps = FakeKanal(), []
    with pytest.raises(PushError) as stopped:
        pusher(fake, sleeps, job_size=1).run(str(path))
    assert str(stopped.value).startswith(f"{path}: malformed JSON array after item 3: ")
    assert str(stopped.value).endswith(
        "; 2 records were sent in jobs 1 (lines 1), 2 (lines 2), which run to their end on "
        "the server; nothing after them was sent (running the push again is safe: "
        "imports upsert)"
    )


def test_a_refused_upload_stops_the_push_saying_what_was_sent(tmp_path: Path) -> None:
    calls = []

    def refuse_second(request: httpx.Request) -> httpx.Response:
        if request.method == "POST":
            calls.append(1)
            if len(calls) == 2:
                return httpx.Response(403, json={"error": "API key does not authorize this store"})
        return FakeKanal.__call__(fake, request)

    fake, sleeps = FakeKanal(), []
    client = httpx.Client(transport=httpx.MockTransport(refuse_second))
    push = Pusher(URL, "k" * 24, 123, "orders", client=client, sleep=sleeps.append, job_size=1)
    with pytest.raises(PushError) as stopped:
        push.run(write(tmp_path, good(1), "", good(2)))
    assert str(stopped.value) == (
        "lines 3 were refused: the key does not cover store 123: API key does not "
        "authorize this store (403); 1 records were sent in jobs 1 (lines 1), which run to "
        "their end on the server; nothing after them was sent (running the push again is "
        "safe: imports upsert)"
    )
