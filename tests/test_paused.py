"""A paused store's messages wait (neither sent nor cancelled) and go out when it is
active again; one that is out of date by then is skipped with its reason. Time is
a fake clock the tests move; WhatsApp is a local fake."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from kanal import formats
from kanal.cli import main
from kanal.storage import Storage, connect
from kanal.worker import Worker

from .conftest import OTHER_STORE, STORE, Api, Rows
from .fake_whatsapp import FakeWhatsApp
from .test_automations import PHONE, T0, Clock, checkout, configure

SKIPPED_WINDOW = "skipped: past the attribution window"


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(T0 + timedelta(minutes=5))
    monkeypatch.setattr(formats, "clock", fake)
    return fake


@pytest.fixture
def whatsapp(storage: Storage) -> Iterator[FakeWhatsApp]:
    server = FakeWhatsApp().start()
    for store in (STORE, OTHER_STORE):
        storage.update_store(
            store,
            {
                "automations": json.dumps(
                    {
                        "sender": "whatsapp",
                        "whatsapp": {
                            "base_url": f"{server.url}/v21.0",
                            "phone_number_id": "1055",
                            "access_token": "t",
                        },
                    }
                )
            },
        )
    yield server
    server.stop()


@pytest.fixture
def worker(db: str, client: Any) -> Iterator[Worker]:
    store = connect(db)
    with httpx.Client(timeout=5) as http:
        yield Worker(store, client=http, rng=random.Random(7))
    store.close()


def pause(storage: Storage, paused: bool = True, store: int = STORE) -> None:
    storage.update_store(store, {"paused": int(paused)})


@contextmanager
def open_for_writes(storage: Storage) -> Iterator[None]:
    """The paused store's data changes (through the API, opened for the moment; no
    worker runs in it), as an integration catching up would change it."""
    pause(storage, False)
    try:
        yield
    finally:
        pause(storage)


def outbox(db: str, store: int = STORE) -> list[tuple[str, str, str | None]]:
    """(step, state, cancelled_reason) of the store's messages, read past the API
    (which answers 404 while the store is paused)."""
    rows = Rows(db).all(
        "SELECT step, state, cancelled_reason FROM messages WHERE store_id = ? ORDER BY id", store
    )
    return [tuple(row.values()) for row in rows]


def shipment(api: Api, status: str) -> None:
    response = api.post(
        "shipments", {"external_id": "SHIP-1", "order_external_id": "ORDER-1", "status": status}
    )
    assert response.status_code in (200, 201), response.text


def order(api: Api, **extra: Any) -> None:
    body = {
        "external_id": "ORDER-1",
        "placed_at": "2026-05-18T09:00:00Z",
        "total_price": 20,
        "customer": {"phone": PHONE, "first_name": "Marie"},
        **extra,
    }
    response = api.post("orders", body)
    assert response.status_code in (200, 201), response.text


def test_a_paused_store_s_messages_wait_then_go_out_when_it_is_active(
    api: Api,
    keys: dict[str, Any],
    clock: Clock,
    whatsapp: FakeWhatsApp,
    worker: Worker,
    storage: Storage,
    db: str,
) -> None:
    checkout(api)
    checkout(Api(api.client, keys["other"], OTHER_STORE))
    clock.move(hours=1)  # step 1 of both is due
    pause(storage)
    assert worker.run_once() == 1  # the other store's message only
    assert outbox(db, OTHER_STORE)[0][1] == "sent"
    clock.move(hours=1)
    assert worker.run_once() == 0
    assert outbox(db) == [
        ("recovery_1", "scheduled", None),  # waiting, not cancelled
        ("recovery_2", "scheduled", None),
    ]
    pause(storage, False)
    assert worker.run_once() == 1
    assert outbox(db)[0] == ("recovery_1", "sent", None)
    assert len(whatsapp.requests) == 2


def test_a_lapsed_lease_of_a_paused_store_waits_too(
    api: Api, clock: Clock, whatsapp: FakeWhatsApp, worker: Worker, storage: Storage, db: str
) -> None:
    checkout(api)
    clock.move(hours=1)
    lease = (clock.now + timedelta(seconds=60)).isoformat()
    assert len(storage.claim_messages(clock.now.isoformat(), lease, batch=10)) == 1  # then dies
    pause(storage)
    clock.move(minutes=5)  # the lease runs out while the store is paused
    assert worker.run_once() == 0
    pause(storage, False)
    assert worker.run_once() == 1
    state, attempts = (
        Rows(db).one("SELECT state, attempts FROM messages ORDER BY id LIMIT 1").values()
    )
    assert (state, attempts) == ("sent", 2) and len(whatsapp.requests) == 1


def test_a_store_paused_after_the_claim_gets_its_message_back_untried(
    api: Api, clock: Clock, whatsapp: FakeWhatsApp, worker: Worker, storage: Storage, db: str
) -> None:
    checkout(api)
    clock.move(hours=1)
    lease = (clock.now + timedelta(seconds=60)).isoformat()
    (claimed,) = storage.claim_messages(clock.now.isoformat(), lease, batch=10)
    pause(storage)
    worker.deliver(claimed, lease)
    state, attempts = (
        Rows(db).one("SELECT state, attempts FROM messages ORDER BY id LIMIT 1").values()
    )
    assert (state, attempts) == ("scheduled", 0) and not whatsapp.requests
    pause(storage, False)
    assert worker.run_once() == 1
    assert outbox(db)[0] == ("recovery_1", "sent", None)


def test_a_shipment_that_moved_on_while_paused_skips_the_old_status(
    api: Api, clock: Clock, whatsapp: FakeWhatsApp, worker: Worker, storage: Storage, db: str
) -> None:
    order(api)
    shipment(api, "in_transit")
    pause(storage)
    assert worker.run_once() == 0
    clock.move(days=2)
    with open_for_writes(storage):
        shipment(api, "delivered")
    assert worker.run_once() == 0
    pause(storage, False)
    assert worker.run_once() == 2
    assert outbox(db) == [
        ("shipping_in_transit", "cancelled", "skipped: shipment is now delivered"),
        ("shipping_delivered", "sent", None),
    ]
    (request,) = whatsapp.requests
    assert request["json"]["template"]["name"] == "shipping_update"


def test_paused_past_the_attribution_window_skips_recovery(
    api: Api, clock: Clock, whatsapp: FakeWhatsApp, worker: Worker, storage: Storage, db: str
) -> None:
    checkout(api)
    pause(storage)
    clock.move(days=8)  # the window is 7 days after abandoned_at
    assert worker.run_once() == 0
    pause(storage, False)
    assert worker.run_once() == 2
    assert outbox(db) == [
        ("recovery_1", "cancelled", SKIPPED_WINDOW),
        ("recovery_2", "cancelled", SKIPPED_WINDOW),
    ]
    assert not whatsapp.requests


def test_a_step_set_at_the_window_s_end_still_goes(
    api: Api, clock: Clock, whatsapp: FakeWhatsApp, worker: Worker, storage: Storage, db: str
) -> None:
    storage.update_store(STORE, {"attribution_days": 1})  # step 2 is due as the window closes
    checkout(api)
    clock.move(hours=1)
    assert worker.run_once() == 1
    clock.now = T0 + timedelta(days=1, minutes=1)  # a minute late, a minute past the window
    assert worker.run_once() == 1
    assert outbox(db) == [("recovery_1", "sent", None), ("recovery_2", "sent", None)]
    assert len(whatsapp.requests) == 2


def test_only_the_latest_due_recovery_step_goes(
    api: Api, clock: Clock, whatsapp: FakeWhatsApp, worker: Worker, storage: Storage, db: str
) -> None:
    checkout(api)
    pause(storage)
    clock.move(hours=25)  # both steps due, inside the window
    assert worker.run_once() == 0
    pause(storage, False)
    assert worker.run_once() == 2
    assert outbox(db) == [
        ("recovery_1", "cancelled", "skipped: recovery_2 is due too"),
        ("recovery_2", "sent", None),
    ]
    assert len(whatsapp.requests) == 1


@pytest.mark.parametrize(("hours", "state"), [(23, "sent"), (25, "cancelled")])
def test_an_order_confirmation_waits_a_day_at_most(
    api: Api,
    clock: Clock,
    worker: Worker,
    storage: Storage,
    db: str,
    hours: int,
    state: str,
) -> None:
    configure(storage, order_confirmation=True)
    order(api, financial_status="paid")
    pause(storage)
    clock.move(hours=hours)
    assert worker.run_once() == 0
    pause(storage, False)
    assert worker.run_once() == 1
    reason = "skipped: more than 24 hours late" if state == "cancelled" else None
    assert outbox(db) == [("order_paid", state, reason)]


def test_pause_and_resume_through_the_cli(
    api: Api, db: str, clock: Clock, storage: Storage
) -> None:
    checkout(api)
    clock.move(hours=1)

    def kanal(*args: str) -> str:
        result = CliRunner().invoke(main, [*args, "--db", db])
        assert result.exit_code == 0, result.output
        return result.output

    assert kanal("stores", "update", str(STORE), "--paused").strip().endswith("paused")
    assert api.client.get(api.url("messages"), headers=api.headers()).status_code == 404
    assert "handled 0 messages" in kanal("worker", "--once")
    assert outbox(db)[0] == ("recovery_1", "scheduled", None)
    assert kanal("stores", "update", str(STORE), "--active").strip().endswith("active")
    assert "handled 1 messages" in kanal("worker", "--once")
    response = api.client.get(api.url("messages"), headers=api.headers())
    assert [m["state"] for m in response.json()["messages"]] == ["sent", "scheduled"]
