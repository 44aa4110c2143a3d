"""``kanal push``: a large file of records sent to a kanal over HTTP, as import jobs.

The file is read as ``kanal import`` reads it (JSON Lines, or a JSON array, streamed)
and cut into jobs that the API takes (at most 10,000 records and 20 MiB each: the
limits of ``POST /imports`` in openapi.yaml), each sent as JSON Lines. A store may
have 2 jobs queued or running: the next job is sent when one of them ends (and
whenever the server answers 429, after its ``Retry-After``). The jobs' progress is
polled (``GET /imports/{id}``) within the store's rate limit, and once a job has
ended its invalid records are read (``GET /imports/{id}/errors``) and reported with
the file's line numbers.

Nothing is said to be sent that the server did not accept: every job counted was
answered 202. When something stops the push (the server unreachable, the key
refused, the file malformed half way), the error says which lines were sent, in
which jobs (they run to their end on the server), and which were not.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from kanal import bulk

#: Jobs of a store that may be queued or running at once (handlers.imports).
MAX_UNFINISHED = 2
#: Of the store's rate limit, the share the polls may use (the rest stays the shop's).
POLL_SHARE = 0.5
FASTEST_POLL = 0.25
#: Attempts at a request whose connection could not be made (nothing was sent).
CONNECT_ATTEMPTS = 5
PAGE = 250

Errors = dict[str, list[str]]


def limits() -> tuple[int, int]:
    """(records, bytes) a job may hold: the contract's maxItems and x-kanal-max-bytes."""
    from kanal.spec import load_spec

    spec = load_spec()["components"]
    records = int(spec["schemas"]["ImportRecords"]["maxItems"])
    return records, int(spec["requestBodies"]["ImportRecords"]["x-kanal-max-bytes"])


class PushError(Exception):
    """The push cannot go on; the message says why, and what was sent."""


@dataclass
class Batch:
    """The body of one job (JSON Lines) and the file's line (or item) of each record."""

    body: bytearray = field(default_factory=bytearray)
    lines: list[int] = field(default_factory=list)

    def span(self) -> str:
        return f"{self.lines[0]}-{self.lines[-1]}" if len(self.lines) > 1 else f"{self.lines[0]}"


@dataclass
class Job:
    id: int
    batch: Batch
    state: str = "queued"
    processed: int = 0
    created: int = 0
    updated: int = 0
    invalid: int = 0
    failure: str | None = None

    @property
    def ended(self) -> bool:
        return self.state in ("done", "failed", "cancelled")


@dataclass
class Outcome:
    """What the push came to."""

    jobs: list[Job] = field(default_factory=list)
    #: (file line, errors) of every record not written: the jobs' and those not sent.
    invalid: list[tuple[int, Errors]] = field(default_factory=list)
    records: int = 0
    seconds: float = 0.0

    def count(self, what: str) -> int:
        return sum(getattr(job, what) for job in self.jobs)

    @property
    def problems(self) -> list[str]:
        """Jobs that did not end done, said in a sentence each."""
        return [
            f"job {job.id} (lines {job.batch.span()}) {job.state}"
            + (f": {job.failure}" if job.failure else "")
            for job in self.jobs
            if job.state != "done"
        ]


def batches(
    path: str, records: int, size: int, too_large: list[tuple[int, Errors]]
) -> Iterator[Batch]:
    """The file's records cut into job bodies of at most ``records`` records and ``size``
    bytes; a record that alone is larger than ``size`` goes to ``too_large``, unsent."""
    batch = Batch()
    with Path(path).open("rb") as stream:
        for number, item in bulk.read(stream):
            line = item if isinstance(item, bytes) else json.dumps(item).encode()
            if not line.endswith(b"\n"):
                line += b"\n"
            if len(line) > size:
                message = f"The record is larger than the {size} bytes an import takes; not sent."
                too_large.append((number, {"": [message]}))
                continue
            if batch.lines and (len(batch.lines) >= records or len(batch.body) + len(line) > size):
                yield batch
                batch = Batch()
            batch.body += line
            batch.lines.append(number)
    if batch.lines:
        yield batch


def _retry_after(response: httpx.Response, default: float = 1.0) -> float:
    value = response.headers.get("retry-after")
    if value is None:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
        except (TypeError, ValueError):
            return default


def _said(response: httpx.Response) -> str:
    """The server's own words for an error."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict):
        return str(body.get("error") or body.get("message") or body)
    return str(body)


class Pusher:
    """Sends one file to one store of a kanal, as import jobs, and follows them."""

    def __init__(
        self,
        url: str,
        key: str,
        store: int,
        resource: str,
        *,
        job_size: int | None = None,
        client: httpx.Client | None = None,
        sleep: Callable[[float], None] = time.sleep,
        progress: Callable[[int, int, bool], None] | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.netloc:
            raise PushError(f"--url must be an http:// or https:// URL, not {url!r}")
        self.base = url.rstrip("/")
        self.store, self.resource = store, resource
        self.records, self.size = limits()
        if job_size is not None:
            self.records = min(self.records, job_size)
        self.client = client or httpx.Client(timeout=httpx.Timeout(120.0, connect=10.0))
        self.headers = {"Authorization": f"Bearer {key}"}
        self.sleep = sleep
        self.progress = progress
        self.rate_limit: int | None = None
        self.outcome = Outcome()
        self.started: float | None = None

    # -- requests ---------------------------------------------------------------

    def _request(
        self, method: str, path: str, *, wait_busy: bool = True, **kwargs: Any
    ) -> httpx.Response:
        """A request to the store's API; a connection that could not be made is tried
        again (nothing was sent), a 429 waits its Retry-After (``wait_busy``; else it is
        the caller's)."""
        url = path if path.startswith("http") else f"{self.base}{path}"
        headers = {**self.headers, **kwargs.pop("headers", {})}
        attempts = 0
        while True:
            try:
                response = self.client.request(method, url, headers=headers, **kwargs)
            except httpx.ConnectError as exc:
                attempts += 1
                if attempts >= CONNECT_ATTEMPTS:
                    raise PushError(f"cannot reach {self.base}: {exc}") from None
                self.sleep(min(8.0, 0.5 * 2**attempts))
                continue
            except httpx.TransportError as exc:
                raise PushError(f"the connection to {self.base} failed: {exc}") from None
            if response.status_code in (502, 503, 504) and method == "GET":
                attempts += 1  # a read is safe to repeat; a server coming back
                if attempts < CONNECT_ATTEMPTS:
                    self.sleep(min(8.0, 0.5 * 2**attempts))
                    continue
            if "x-ratelimit-limit" in response.headers:
                self.rate_limit = int(response.headers["x-ratelimit-limit"])
            if response.status_code == 429 and wait_busy:
                self.sleep(_retry_after(response))
                continue
            return response

    def _store_path(self, rest: str) -> str:
        return f"/api/v1/stores/{self.store}/{rest}"

    def _refused(self, response: httpx.Response) -> PushError:
        """The error of an answer that stops the push (the key, the store)."""
        said = _said(response)
        if response.status_code == 401:
            return PushError(f"the key was refused: {said} (401)")
        if response.status_code == 403:
            return PushError(f"the key does not cover store {self.store}: {said} (403)")
        if response.status_code == 404:
            return PushError(f"store {self.store}: {said} (404)")
        request = response.request
        return PushError(f"{request.method} {request.url.path}: {said} ({response.status_code})")

    def check(self) -> None:
        """Before anything is sent: the URL is a kanal, the key reads the store."""
        try:
            health = self.client.get(f"{self.base}/healthz")
        except httpx.HTTPError as exc:
            raise PushError(f"cannot reach {self.base}: {exc}") from None
        if health.status_code != 200:
            answered = health.status_code
            raise PushError(f"{self.base} does not answer as kanal (GET /healthz: {answered})")
        answer = self._request("GET", self._store_path("imports?limit=1"))
        if answer.status_code != 200:
            raise self._refused(answer)

    def _poll_interval(self, polls: int) -> float:
        if not self.rate_limit:
            return 1.0
        return max(FASTEST_POLL, polls * 60.0 / (self.rate_limit * POLL_SHARE))

    # -- the push ---------------------------------------------------------------

    def run(self, path: str) -> Outcome:
        """Send the file and follow its jobs to their end."""
        self.check()
        pending = batches(path, self.records, self.size, self.outcome.invalid)
        waiting: Batch | None = None
        read_all = False
        while True:
            unfinished = [job for job in self.outcome.jobs if not job.ended]
            while len(unfinished) < MAX_UNFINISHED and not read_all:
                if waiting is None:
                    try:
                        waiting = next(pending, None)
                    except ValueError as exc:  # a JSON array that stops parsing
                        raise PushError(f"{path}: {exc}; {self.sent()}") from None
                    if waiting is None:
                        read_all = True
                        break
                    self.outcome.records += len(waiting.lines)
                job, pause = self._send(waiting)
                if job is None:  # the store is busy (its rate limit, or others' jobs)
                    self.sleep(pause)
                    break
                self.outcome.jobs.append(job)
                unfinished.append(job)
                waiting = None
            self._report_progress(read_all)
            if not unfinished and read_all and waiting is None:
                break
            self.sleep(self._poll_interval(max(1, len(unfinished))))
            for job in unfinished:
                self._follow(job)
        self.outcome.invalid.sort(key=lambda item: item[0])
        if self.started is not None:  # from the first byte sent to the last job's end
            self.outcome.seconds = time.perf_counter() - self.started
        return self.outcome

    def sent(self) -> str:
        """What was sent so far, for an error that stops the push."""
        jobs = self.outcome.jobs
        if not jobs:
            return "nothing was sent"
        spans = ", ".join(f"{job.id} (lines {job.batch.span()})" for job in jobs)
        return (
            f"{sum(len(job.batch.lines) for job in jobs)} records were sent in jobs {spans}, "
            "which run to their end on the server; nothing after them was sent (running "
            "the push again is safe: imports upsert)"
        )

    def _send(self, batch: Batch) -> tuple[Job | None, float]:
        """Upload one job; (the job, 0), or (None, seconds to wait) when the store is busy."""
        if self.started is None:
            self.started = time.perf_counter()
        response = self._request(
            "POST",
            self._store_path(f"imports?resource={self.resource}"),
            wait_busy=False,
            content=bytes(batch.body),
            headers={"Content-Type": "application/x-ndjson"},
        )
        if response.status_code == 202:
            return Job(id=int(response.json()["id"]), batch=batch), 0.0
        if response.status_code == 429:
            return None, _retry_after(response, 5.0)
        error = self._refused(response)
        raise PushError(f"lines {batch.span()} were refused: {error}; {self.sent()}")

    def _follow(self, job: Job) -> None:
        response = self._request("GET", self._store_path(f"imports/{job.id}"))
        if response.status_code != 200:
            raise PushError(f"job {job.id}: {self._refused(response)}; {self.sent()}")
        found = response.json()
        for name in ("state", "processed", "created", "updated", "invalid", "failure"):
            setattr(job, name, found[name])
        if job.ended and job.invalid:
            self._errors(job)

    def _errors(self, job: Job) -> None:
        """The job's invalid records, with the file's line numbers."""
        url: str | None = self._store_path(f"imports/{job.id}/errors?limit={PAGE}")
        while url:
            response = self._request("GET", url)
            if response.status_code != 200:
                raise PushError(f"job {job.id}'s errors: {self._refused(response)}")
            for entry in response.json()["errors"]:
                self.outcome.invalid.append((job.batch.lines[entry["line"] - 1], entry["errors"]))
            following = response.links.get("next", {}).get("url")
            url = None if following is None else str(response.url.join(following))

    def _report_progress(self, read_all: bool) -> None:
        """(records processed, records read so far, whether that is all of them)."""
        if self.progress is not None:
            self.progress(self.outcome.count("processed"), self.outcome.records, read_all)
