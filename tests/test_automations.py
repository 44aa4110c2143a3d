"""Automations: recovery and shipping messages scheduled, sent, retried and cancelled,
exactly once. Time is a fake clock the tests move; WhatsApp is a local fake."""

from __future__ import annotations

import hashlib
import hmac
import json
import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from kanal import formats
from kanal.storage import Storage, connect
from kanal.worker import Worker

from .conftest import STORE, Api
from .fake_whatsapp import FakeWhatsApp

PHONE = "+33612345678"
T0 = datetime(2026, 5, 18, 9, 40, tzinfo=UTC)


class Clock:
    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def move(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock(T0 + timedelta(minutes=5))
    monkeypatch.setattr(formats, "clock", fake)
    return fake


@pytest.fixture
def fake() -> Iterator[FakeWhatsApp]:
    server = FakeWhatsApp().start()
    yield server
    server.stop()


def configure(storage: Storage, **settings: Any) -> None:
    storage.update_store(STORE, {"automations": json.dumps(settings)})


@pytest.fixture
def whatsapp(storage: Storage, fake: FakeWhatsApp) -> FakeWhatsApp:
    configure(
        storage,
        sender="whatsapp",
        whatsapp={
            "base_url": f"{fake.url}/v21.0",
            "phone_number_id": "1055",
            "access_token": "EAAG-token",
        },
    )
    return fake


@pytest.fixture
def worker(db: str, client: Any) -> Iterator[Worker]:
    store = connect(db)
    with httpx.Client(timeout=5) as http:
        yield Worker(store, client=http, rng=random.Random(7))
    store.close()


def checkout(api: Api, name: str = "CHECKOUT-7700", **extra: Any) -> dict[str, Any]:
    body = {
        "external_id": name,
        "abandoned_at": T0.isoformat(),
        "total_price": 49.9,
        "currency": "EUR",
        "recovery_url": "https://shop.example.com/checkout/recover/7700",
        "customer": {
            "external_id": "CUST-42",
            "phone": PHONE,
            "first_name": "Marie",
            "locale": "fr",
        },
        **extra,
    }
    response = api.post("checkouts", body)
    assert response.status_code in (200, 201), response.text
    return response.json()


def messages(api: Api, **params: Any) -> list[dict[str, Any]]:
    response = api.client.get(api.url("messages"), params=params, headers=api.headers())
    assert response.status_code == 200, response.text
    return response.json()["messages"]


def read(api: Api, path: str) -> dict[str, Any]:
    response = api.client.get(api.url(path), headers=api.headers())
    assert response.status_code == 200, response.text
    return response.json()


def test_full_recovery_sequence(
    api: Api, clock: Clock, whatsapp: FakeWhatsApp, worker: Worker
) -> None:
    checkout(api)
    scheduled = messages(api)
    assert [(m["step"], m["state"], m["scheduled_at"]) for m in scheduled] == [
        ("recovery_1", "scheduled", "2026-05-18T10:40:00+00:00"),
        ("recovery_2", "scheduled", "2026-05-19T09:40:00+00:00"),
    ]
    state = read(api, "checkouts/CHECKOUT-7700")
    assert state["notification_status"] == "scheduled"
    assert state["notifications_scheduled_at"] == [m["scheduled_at"] for m in scheduled]
    assert worker.run_once() == 0  # nothing due yet
    clock.move(minutes=56)  # 10:41
    assert worker.run_once() == 1
    (request,) = whatsapp.requests
    assert request["path"] == "/v21.0/1055/messages"
    assert request["headers"]["authorization"] == "Bearer EAAG-token"
    assert request["json"] == {
        "messaging_product": "whatsapp",
        "to": "33612345678",
        "type": "template",
        "template": {
            "name": "abandoned_checkout",
            "language": {"code": "fr"},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "Marie"},
                        {"type": "text", "text": "https://shop.example.com/checkout/recover/7700"},
                        {"type": "text", "text": "49.90"},
                        {"type": "text", "text": "EUR"},
                    ],
                }
            ],
        },
    }
    first = messages(api)[0]
    assert (first["state"], first["provider_id"], first["attempts"]) == ("sent", "wamid.1", 1)
    assert first["sent_at"] == "2026-05-18T10:41:00+00:00" and first["sender"] == "whatsapp"
    assert read(api, "checkouts/CHECKOUT-7700")["notification_status"] == "sent"
    clock.move(hours=23)
    assert worker.run_once() == 1
    assert [m["state"] for m in messages(api)] == ["sent", "sent"]
    assert read(api, "messages/count?state=sent") == {"count": 2}
    assert worker.run_once() == 0 and len(whatsapp.requests) == 2


def test_steps_already_past_are_skipped_not_sent_late(
    api: Api, clock: Clock, worker: Worker
) -> None:
    clock.move(hours=3)
    checkout(api)
    assert [m["step"] for m in messages(api)] == ["recovery_2"]
    assert worker.run_once() == 0


CAUSES = {
    "recovered": lambda api: api.patch("checkouts/CHECKOUT-7700", {"status": "recovered"}),
    "completed": lambda api: api.patch("checkouts/CHECKOUT-7700", {"status": "completed"}),
    "expired": lambda api: api.patch("checkouts/CHECKOUT-7700", {"status": "expired"}),
    "disabled": lambda api: api.patch("checkouts/CHECKOUT-7700", {"notifications_enabled": False}),
    "order": lambda api: api.post(
        "orders",
        {
            "external_id": "ORDER-1",
            "placed_at": "2026-05-18T09:50:00Z",
            "total_price": 49.9,
            "customer": {"phone": PHONE},
        },
    ),
    "erasure": lambda api: api.delete("customers/CUST-42"),
    "opt-out": lambda api: api.patch("contacts/%2B33612345678", {"opted_out": True}),
    "no recovery_url": lambda api: api.patch("checkouts/CHECKOUT-7700", {"recovery_url": None}),
}


@pytest.mark.parametrize("cause", CAUSES)
def test_every_cause_cancels_the_pending_steps(
    api: Api, clock: Clock, worker: Worker, cause: str
) -> None:
    checkout(api)
    api.post("customers", {"external_id": "CUST-42", "phone": PHONE, "first_name": "Marie"})
    assert CAUSES[cause](api).status_code in (200, 201, 204)
    states = [(m["state"], m["cancelled_reason"]) for m in messages(api)]
    assert len(states) == 2 and all(state == "cancelled" and reason for state, reason in states)
    clock.move(days=2)
    assert worker.run_once() == 0


def test_reenabling_brings_future_steps_back(api: Api, clock: Clock) -> None:
    checkout(api)
    api.patch("checkouts/CHECKOUT-7700", {"notifications_enabled": False})
    clock.move(hours=2)  # step 1 is now in the past
    api.patch("checkouts/CHECKOUT-7700", {"notifications_enabled": True})
    assert [(m["step"], m["state"]) for m in messages(api)] == [
        ("recovery_1", "cancelled"),
        ("recovery_2", "scheduled"),
    ]


def test_a_recovery_between_two_steps(
    api: Api, clock: Clock, whatsapp: FakeWhatsApp, worker: Worker
) -> None:
    checkout(api)
    clock.move(hours=1)
    assert worker.run_once() == 1
    api.post(
        "orders",
        {
            "external_id": "ORDER-1",
            "placed_at": "2026-05-18T12:00:00Z",
            "total_price": 49.9,
            "customer": {"phone": PHONE},
        },
    )
    first, second = messages(api)
    assert first["state"] == "sent"
    assert (second["state"], second["cancelled_reason"]) == ("cancelled", "cancelled: recovered")
    clock.move(days=2)
    assert worker.run_once() == 0 and len(whatsapp.requests) == 1


def test_replayed_requests_schedule_nothing_new(
    api: Api, clock: Clock, worker: Worker, storage: Storage
) -> None:
    configure(storage, order_confirmation=True)
    for _ in range(3):
        checkout(api)
        api.patch("checkouts/CHECKOUT-7700", {"tags": ["again"]})
    order = {
        "external_id": "ORDER-1",
        "placed_at": "2026-05-17T10:00:00Z",
        "total_price": 20,
        "financial_status": "paid",
        "customer": {"phone": "+33699999999"},
    }
    shipment = {"external_id": "SHIP-1", "order_external_id": "ORDER-1", "status": "in_transit"}
    for _ in range(3):
        api.post("orders", order)
        api.patch("orders/ORDER-1", {"financial_status": "paid"})
        api.post("shipments", shipment)
    assert sorted(m["step"] for m in messages(api)) == [
        "order_paid",
        "recovery_1",
        "recovery_2",
        "shipping_in_transit",
    ]
    assert worker.run_once() == 2  # the order and shipping messages are due at once
    for _ in range(2):  # replays after sending send nothing new either
        api.post("shipments", shipment)
        api.patch("orders/ORDER-1", {"financial_status": "paid"})
    assert worker.run_once() == 0


def test_one_shipping_message_per_status(
    api: Api, clock: Clock, worker: Worker, storage: Storage
) -> None:
    api.post(
        "orders",
        {
            "external_id": "ORDER-1",
            "placed_at": "2026-05-17T10:00:00Z",
            "total_price": 20,
            "customer": {"phone": PHONE, "first_name": "Marie"},
        },
    )
    ship = {
        "external_id": "SHIP-1",
        "order_external_id": "ORDER-1",
        "tracking_number": "1Z999",
        "tracking_url": "https://track.example.com/1Z999",
    }
    for status in ("pending", "in_transit", "delivered", "in_transit", "failed", "returned"):
        api.post("shipments", {**ship, "status": status})
    assert [m["step"] for m in messages(api)] == [
        "shipping_in_transit",
        "shipping_delivered",
        "shipping_failed",
        "shipping_returned",
    ]
    assert messages(api)[0]["parameters"] == {
        "first_name": "Marie",
        "order": "ORDER-1",
        "status": "in_transit",
        "tracking_number": "1Z999",
        "tracking_url": "https://track.example.com/1Z999",
        "carrier": None,
    }
    configure(storage, shipping_statuses=["delivered"])
    api.post("shipments", {**ship, "external_id": "SHIP-2", "status": "in_transit"})
    assert read(api, "messages/count?trigger=shipping") == {"count": 4}


def test_order_confirmation_is_off_by_default(api: Api, clock: Clock) -> None:
    api.post(
        "orders",
        {
            "external_id": "ORDER-1",
            "placed_at": "2026-05-17T10:00:00Z",
            "total_price": 20,
            "financial_status": "paid",
            "customer": {"phone": PHONE},
        },
    )
    assert messages(api) == []


def test_retries_honour_retry_after_then_back_off_then_succeed(
    api: Api, clock: Clock, whatsapp: FakeWhatsApp, worker: Worker
) -> None:
    checkout(api)
    clock.move(hours=1)
    whatsapp.respond(
        429, {"error": {"message": "Rate limit hit", "code": 130429}}, {"Retry-After": "7"}
    )
    assert worker.run_once() == 1
    message = messages(api)[0]
    assert (message["state"], message["attempts"]) == ("scheduled", 1)
    assert message["last_error"] == "HTTP 429: Rate limit hit (code 130429)"
    assert message["next_attempt_at"] == (clock.now + timedelta(seconds=7)).isoformat()
    clock.move(seconds=7)
    whatsapp.respond(500, {"error": {"message": "Service unavailable", "code": 2}})
    assert worker.run_once() == 1
    message = messages(api)[0]
    delay = datetime.fromisoformat(message["next_attempt_at"]) - clock.now
    assert timedelta(seconds=30) <= delay <= timedelta(seconds=60)  # 2nd attempt: 60s, jittered
    clock.now = datetime.fromisoformat(message["next_attempt_at"])
    assert worker.run_once() == 1
    message = messages(api)[0]
    assert (message["state"], message["attempts"], message["provider_id"]) == ("sent", 3, "wamid.3")
    assert len(whatsapp.requests) == 3


def test_permanent_failure_records_the_provider_error(
    api: Api, clock: Clock, whatsapp: FakeWhatsApp, worker: Worker
) -> None:
    checkout(api)
    clock.move(hours=1)
    whatsapp.respond(
        400, {"error": {"message": "(#132001) Template name does not exist", "code": 132001}}
    )
    worker.run_once()
    message = messages(api)[0]
    assert (message["state"], message["attempts"]) == ("failed", 1)
    assert message["last_error"] == (
        "HTTP 400: (#132001) Template name does not exist (code 132001)"
    )
    clock.move(days=1)
    worker.run_once()
    assert messages(api)[0]["state"] == "failed" and len(whatsapp.requests) == 2  # step 2 only


def test_retries_stop_at_the_limit(
    api: Api, clock: Clock, whatsapp: FakeWhatsApp, worker: Worker, storage: Storage
) -> None:
    configure(
        storage,
        sender="whatsapp",
        max_attempts=2,
        whatsapp={
            "base_url": f"{whatsapp.url}/v21.0",
            "phone_number_id": "1055",
            "access_token": "t",
        },
    )
    checkout(api)
    clock.move(hours=1)
    for _ in range(2):
        whatsapp.respond(503)
        worker.run_once()
        clock.move(hours=1)
    message = messages(api)[0]
    assert (message["state"], message["attempts"]) == ("failed", 2)


def test_network_errors_are_retried(
    api: Api, clock: Clock, worker: Worker, storage: Storage
) -> None:
    configure(
        storage,
        sender="whatsapp",
        whatsapp={
            "base_url": "http://127.0.0.1:9/v21.0",
            "phone_number_id": "1",
            "access_token": "t",
        },
    )
    checkout(api)
    clock.move(hours=1)
    worker.run_once()
    message = messages(api)[0]
    assert message["state"] == "scheduled" and message["last_error"].startswith("network:")


def test_unconfigured_sender_fails_with_a_reason(
    api: Api, clock: Clock, worker: Worker, storage: Storage
) -> None:
    configure(storage, sender="whatsapp")
    checkout(api)
    clock.move(hours=1)
    worker.run_once()
    message = messages(api)[0]
    assert message["state"] == "failed"
    assert message["last_error"] == (
        "whatsapp sender needs base_url, phone_number_id, access_token"
    )


def test_log_sender_is_the_default_and_calls_nobody(api: Api, clock: Clock, worker: Worker) -> None:
    checkout(api)
    clock.move(hours=1)
    assert worker.run_once() == 1
    message = messages(api)[0]
    assert (message["state"], message["sender"]) == ("sent", "log")
    assert message["provider_id"] == f"log-{message['id']}"


def test_webhook_sender_signs_the_body(
    api: Api, clock: Clock, fake: FakeWhatsApp, worker: Worker, storage: Storage
) -> None:
    configure(storage, sender="webhook", webhook={"url": f"{fake.url}/hook", "secret": "s3cret"})
    checkout(api)
    clock.move(hours=1)
    assert worker.run_once() == 1
    (request,) = fake.requests
    expected = hmac.new(b"s3cret", request["raw"], hashlib.sha256).hexdigest()
    assert request["headers"]["x-kanal-signature"] == f"sha256={expected}"
    message = messages(api)[0]
    assert request["headers"]["idempotency-key"] == f"kanal-message-{message['id']}"
    assert request["json"]["to"] == PHONE and request["json"]["step"] == "recovery_1"
    assert request["json"]["record"] == {"type": "checkouts", "external_id": "CHECKOUT-7700"}


def test_a_worker_dying_after_its_claim_leaves_the_message_to_another(
    api: Api, clock: Clock, whatsapp: FakeWhatsApp, worker: Worker, storage: Storage
) -> None:
    checkout(api)
    clock.move(hours=1)
    lease = (clock.now + timedelta(seconds=60)).isoformat()
    (claimed,) = storage.claim_messages(clock.now.isoformat(), lease, batch=10)  # then "dies"
    assert worker.run_once() == 0  # still leased: not taken twice
    clock.move(seconds=61)
    assert worker.run_once() == 1
    message = messages(api)[0]
    assert (message["state"], message["attempts"]) == ("sent", 2)
    assert len(whatsapp.requests) == 1  # not lost, not doubled
    # The dead worker's late outcome is ignored: its lease is gone.
    assert not storage.finish_message(claimed["id"], lease, {"state": "failed"})


def test_erasure_cancels_and_scrubs(api: Api, clock: Clock, worker: Worker) -> None:
    checkout(api)
    clock.move(hours=1)
    worker.run_once()  # step 1 sent
    api.post("customers", {"external_id": "CUST-42", "phone": PHONE})
    assert api.delete("customers/CUST-42").status_code == 204
    sent, pending = messages(api)
    assert pending["state"] == "cancelled"
    for message in (sent, pending):
        assert message["contact_phone"] is None and message["parameters"] is None
    assert "Marie" not in json.dumps(messages(api))


def test_retry_after_is_capped_at_a_day() -> None:
    from kanal.senders import retry_after

    assert retry_after("7") == 7.0
    assert retry_after("99999999999999") == 86400.0
    assert retry_after("soon") is None
