"""Import jobs (``POST /imports``): run by ``kanal worker`` and ``kanal serve --with-worker``.

A job's records wait in the database (``import_payloads``), so a worker on any host
can run it. A worker claims one job at a time with a lease (one atomic UPDATE; on
PostgreSQL ``FOR UPDATE SKIP LOCKED``), as it claims messages, and runs it through
the engine of ``kanal import`` (``kanal.bulk``): the API's schema and messages, orders
written as sets, attribution and automations set off as single POSTs would.

Progress is committed chunk by chunk, in the chunk's own transaction: its writes, its
invalid records' errors, the job's counts and a renewed lease commit together or not
at all. A worker killed in the middle of a job leaves the chunk it was writing
uncommitted and its lease to run out; the next worker to claim the job skips the
records already processed and goes on, so every record is written and counted once.

Each chunk's transaction starts by checking that the job is still this worker's
(``hold_import``): a cancel (``DELETE /imports/{id}``), or another worker's claim after
the lease ran out, is seen there, between chunks, and the worker stops. A job that
cannot go on as a whole (its payload does not parse, the worker stopped on it too
often) ends ``failed`` with a ``failure`` message; what its chunks wrote stays.
"""

from __future__ import annotations

import itertools
import logging
import sqlite3
import threading
from concurrent.futures.process import BrokenProcessPool
from datetime import timedelta
from typing import Any

import psycopg

from kanal import bulk, formats

log = logging.getLogger("kanal.jobs")
#: Claims of one job after which it fails instead of being tried again (a job whose
#: worker keeps dying on it must not take every worker down in turn).
MAX_ATTEMPTS = 5
#: Seconds between claims while no job is waiting: an upload waits this long at most.
IDLE = 0.2
#: Errors that say the database was out of reach for a moment: the job is left to its
#: lease, and taken up again from its last committed chunk.
TRANSIENT = (sqlite3.OperationalError, psycopg.OperationalError)


class LeaseLost(Exception):
    """The job is no longer this worker's: cancelled, or claimed by another worker."""


class ImportRunner:
    """Claims import jobs and runs them, chunk by chunk, over one storage connection."""

    def __init__(
        self,
        storage: Any,
        *,
        lease_seconds: float = 60.0,
        batch: int | None = None,
        jobs: int | None = None,
    ) -> None:
        self.storage = storage
        self.lease_seconds = lease_seconds
        #: The records of one chunk: one transaction, one progress step.
        self.batch = batch or bulk.default_batch(storage)
        #: Checking processes (kanal.bulk): None chooses by the size of each payload.
        self.jobs = jobs
        self.checking = bulk.Checking(bulk.default_checkers() if jobs is None else jobs)

    def close(self) -> None:
        self.checking.close()

    def _lease(self) -> str:
        return (formats.utcnow() + timedelta(seconds=self.lease_seconds)).isoformat()

    def run_once(self) -> bool:
        """Claim one job and run it; whether there was one."""
        lease = self._lease()
        job = self.storage.claim_import(formats.now(), lease)
        if job is None:
            return False
        self.run_job(job, lease)
        return True

    def run_job(self, job: dict[str, Any], lease: str) -> str | None:
        """Run a claimed job from where it stands to its end; its final state, or None
        when it stopped being this worker's (cancelled, taken over, or left to its lease
        after the database failed)."""
        store_id, job_id = job["store_id"], job["id"]
        label = f"import {job_id} of store {store_id}"
        if job["attempts"] > MAX_ATTEMPTS:
            failure = (
                f"the workers running it stopped {MAX_ATTEMPTS} times before it ended; "
                f"{job['processed']} records were processed (their chunks are written)"
            )
            return self._finish(job, lease, "failed", failure)
        shop = self.storage.get_store(store_id)
        payload = self.storage.import_payload(store_id, job_id)
        if shop is None or payload is None:  # ended meanwhile
            return None
        held, renewals = [lease], list[str]()

        def before() -> None:
            if self.storage.hold_import(store_id, job_id, held[0]) is None:
                raise LeaseLost

        def after(tally: bulk.Tally) -> None:
            renewed = self._lease()
            progress = {
                "processed": tally.processed,
                "created": tally.created,
                "updated": tally.updated,
                "invalid": len(tally.invalid),
            }
            if not self.storage.advance_import(
                store_id, job_id, held[0], progress, tally.invalid, renewed
            ):
                raise LeaseLost
            renewals.append(renewed)  # the lease once this chunk commits

        array = job["format"] == "json"
        checkers = None if self.jobs is not None or len(payload) > bulk.SMALL_FILE else 0
        try:
            with bulk.writing(self.storage, shop, job["resource"]) as writer:
                # Records already processed (committed by an earlier claim) are skipped.
                left = itertools.islice(bulk.records(payload, array), job["processed"], None)
                chunks = bulk.chunked(left, self.batch, lambda: None)
                for checked, _ in self.checking.checked(
                    chunks, job["resource"], shop["region"], checkers
                ):
                    writer.write(checked, before=before, after=after)
                    held[0] = renewals.pop()
        except LeaseLost:
            log.info("%s: no longer this worker's (cancelled or taken over); stopped", label)
            return None
        except BrokenProcessPool:  # a checking process died (killed): start afresh later
            log.exception("%s: a checking process died; left to its lease, to be resumed", label)
            self.checking.close()
            return None
        except ValueError as exc:  # the payload does not parse as a whole
            return self._finish(job, held[0], "failed", str(exc))
        except TRANSIENT:
            log.exception("%s: the database failed; left to its lease, to be resumed", label)
            return None
        except Exception as exc:
            log.exception("%s failed", label)
            failure = (
                f"the import stopped on an unexpected error ({type(exc).__name__}); "
                "the chunks before it are written"
            )
            return self._finish(job, held[0], "failed", failure)
        return self._finish(job, held[0], "done")

    def _finish(
        self, job: dict[str, Any], lease: str, state: str, failure: str | None = None
    ) -> str | None:
        if self.storage.finish_import(job["store_id"], job["id"], lease, state, failure):
            log.info("import %s of store %s: %s", job["id"], job["store_id"], state)
            return state
        return None

    def run(self, interval: float = IDLE, stop: threading.Event | None = None) -> None:
        """Run jobs until stopped, sleeping ``interval`` seconds when none is waiting. The
        checking processes start meanwhile (``Checking.warm``)."""
        stop = stop or threading.Event()
        self.checking.warm()
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # keep the runner alive through a lock or a lost connection
                log.exception("import runner iteration failed")
                busy = False
            if not busy:
                stop.wait(interval)
