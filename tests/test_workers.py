"""Real `kanal worker` processes: racing over 1,000 due messages, and killed mid-send."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kanal import formats
from kanal.storage import connect
from kanal.worker import Worker

from .conftest import ROOT, STORE, Rows
from .fake_whatsapp import FakeWhatsApp


@pytest.fixture
def hook(db: str, keys: dict[str, Any]) -> Iterator[FakeWhatsApp]:
    server = FakeWhatsApp().start()
    storage = connect(db)
    storage.update_store(
        STORE,
        {
            "automations": json.dumps(
                {"sender": "webhook", "webhook": {"url": f"{server.url}/hook", "secret": "s"}}
            )
        },
    )
    storage.close()
    yield server
    server.stop()


def due_messages(db: str, count: int) -> None:
    storage = connect(db)
    past = formats.now()
    with storage.transaction():
        for n in range(count):
            storage.schedule_message(
                STORE,
                {
                    "trigger": "shipping",
                    "step": "shipping_delivered",
                    "dedupe_key": f"race:{n}",
                    "record_table": "shipments",
                    "record_id": n,
                    "record_external_id": f"SHIP-{n}",
                    "contact_phone": "+33612345678",
                    "template": "shipping_update",
                    "language": "fr",
                    "sender": "webhook",
                    "parameters": {"n": n},
                },
                past,
            )
    storage.close()


def worker(db: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "kanal", "worker", "--db", db, *args],
        cwd=ROOT,
        env={**os.environ},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_two_workers_racing_over_1000_messages_send_each_once(db: str, hook: FakeWhatsApp) -> None:
    due_messages(db, 1000)
    racers = [worker(db, "--once", "--batch", "10") for _ in range(2)]
    outputs = [racer.communicate(timeout=120)[0] for racer in racers]
    handled = [int(out.strip().splitlines()[-1].split()[1]) for out in outputs]
    assert sum(handled) == 1000 and all(h > 0 for h in handled), outputs  # both took part
    keys = Counter(request["headers"]["idempotency-key"] for request in hook.requests)
    assert len(hook.requests) == 1000 and len(keys) == 1000  # each sent exactly once
    states = Rows(db).all("SELECT state, attempts, count(*) FROM messages GROUP BY state, attempts")
    assert [tuple(row.values()) for row in states] == [("sent", 1, 1000)]


def test_a_worker_killed_mid_send_is_retried_not_lost_not_doubled(
    db: str, hook: FakeWhatsApp
) -> None:
    due_messages(db, 1)
    hook.delay = 30.0  # the provider is slow: the worker is killed while it waits
    doomed = worker(db, "--lease", "2", "--interval", "0.1")
    deadline = time.monotonic() + 30
    while not hook.requests and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(hook.requests) == 1
    doomed.send_signal(signal.SIGKILL)
    doomed.wait(timeout=10)
    hook.delay = 0.0
    assert Rows(db).value("SELECT state FROM messages ORDER BY id LIMIT 1") == "sending"
    storage = connect(db)  # claimed, leased, never finished
    time.sleep(2.1)  # the lease runs out
    with httpx.Client(timeout=5) as client:
        assert Worker(storage, client=client).run_once() == 1
    storage.close()
    row = Rows(db).one("SELECT state, attempts FROM messages ORDER BY id LIMIT 1")
    assert tuple(row.values()) == ("sent", 2)  # retried, not lost
    first, second = (request["headers"]["idempotency-key"] for request in hook.requests)
    assert first == second  # the same key: the receiver recognises the repeat ...
    assert len(hook.delivered) == 1  # ... and delivers it once
