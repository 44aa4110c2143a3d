"""``kanal worker``: deliver due messages from the outbox.

Several workers (and a worker thread inside ``kanal serve --with-worker``) may
run at once: a claim is one atomic UPDATE that moves due messages to
``sending`` with a lease. A worker that dies mid-send leaves its lease to
expire, and the message is claimed again: retried, not lost. Delivery is at
least once towards the provider, and exactly once when the provider drops a
repeated ``Idempotency-Key`` (the webhook sender sends one); the window for a
repeat is a crash between the provider's answer and the database write.

A paused store's messages wait, neither sent nor cancelled (the claim passes them
by), and go out when the store is active again. Just before sending, the worker
skips a message that is out of date (state ``cancelled``, reason ``skipped: ...``),
which also covers a worker that was down for a long time; see :func:`out_of_date`.
"""

from __future__ import annotations

import logging
import random
import threading
from datetime import datetime, timedelta
from typing import Any

import httpx

from kanal import formats
from kanal.automations import settings
from kanal.senders import NotConfigured, Outcome, sender_for
from kanal.storage import Storage

log = logging.getLogger("kanal.worker")
BACKOFF_BASE = 30.0  # seconds before the first retry (on average 3/4 of it)
BACKOFF_CAP = 3600.0
#: An order confirmation this late after its scheduled time is skipped, not sent.
CONFIRMATION_MAX_DELAY = timedelta(hours=24)


def backoff(attempt: int, rng: random.Random) -> float:
    """Exponential backoff with "equal jitter": half of the delay fixed, half random."""
    delay = min(BACKOFF_CAP, BACKOFF_BASE * 2 ** (attempt - 1))
    return delay / 2 + rng.uniform(0, delay / 2)


def out_of_date(
    storage: Storage, message: dict[str, Any], store: dict[str, Any], now: datetime
) -> str | None:
    """Why a due message should no longer go out (``skipped: ...``), or None.

    - recovery: the checkout's or cart's attribution window (``attribution_days``
      after ``abandoned_at``) closed after the step was due: an order now would
      not count as recovered and it reads ``not_recovered``; or a later step of the
      same checkout or cart is due too (only the latest due step goes);
    - shipping: the shipment's status is no longer the one the message announces;
    - order confirmation: more than 24 hours after its scheduled time.

    A record that cannot be found (kanal never deletes one) decides nothing.
    """
    scheduled = datetime.fromisoformat(message["scheduled_at"])
    if message["trigger"] == "order_confirmation":
        if now - scheduled > CONFIRMATION_MAX_DELAY:
            return "skipped: more than 24 hours late"
        return None
    try:
        record = storage.get_by_id(message["record_table"], message["record_id"])
    except AssertionError:
        return None
    if record is None:  # get_by_id under python -O
        return None
    if message["trigger"] == "recovery":
        days = store.get("attribution_days")
        if days and record.get("abandoned_at"):
            try:
                closes = datetime.fromisoformat(record["abandoned_at"]) + timedelta(days=days)
            except OverflowError:  # abandoned at the end of time: never closes
                closes = datetime.max.replace(tzinfo=now.tzinfo)
            if scheduled < closes < now:
                return "skipped: past the attribution window"
        later = storage.later_step_due(message, now.isoformat())
        if later is not None:
            return f"skipped: {later} is due too"
    elif message["trigger"] == "shipping":
        announced = message["step"].removeprefix("shipping_")
        if record.get("status") != announced:
            return f"skipped: shipment is now {record.get('status')}"
    return None


class Worker:
    def __init__(
        self,
        storage: Storage,
        *,
        client: httpx.Client | None = None,
        lease_seconds: float = 60.0,
        batch: int = 20,
        rng: random.Random | None = None,
    ) -> None:
        self.storage = storage
        self.client = client or httpx.Client(timeout=10.0)
        self.lease_seconds = lease_seconds
        self.batch = batch
        self.rng = rng or random.Random()

    def run_once(self) -> int:
        """Claim what is due now and deliver it; the number of messages handled."""
        now = formats.utcnow()
        lease = (now + timedelta(seconds=self.lease_seconds)).isoformat()
        claimed = self.storage.claim_messages(now.isoformat(), lease, self.batch)
        for message in claimed:
            self.deliver(message, lease)
        return len(claimed)

    def deliver(self, message: dict[str, Any], lease: str) -> None:
        store = self.storage.get_store(message["store_id"]) or {}
        if store.get("paused"):  # paused since the claim: put it back, untried
            changes = {"state": "scheduled", "attempts": message["attempts"] - 1}
            self.storage.finish_message(message["id"], lease, changes)
            return
        skipped = out_of_date(self.storage, message, store, formats.utcnow())
        if skipped is not None:
            changes = {"state": "cancelled", "cancelled_reason": skipped}
            if not self.storage.finish_message(message["id"], lease, changes):
                log.warning("message %s: lease lost before the skip was recorded", message["id"])
            return
        config = settings(store)
        try:
            sender = sender_for(config, self.client)
            outcome = (
                Outcome(sent=False, error="no phone (erased)")
                if not message["contact_phone"]
                else sender.send(message)
            )
            name = sender.name
        except NotConfigured as exc:
            outcome, name = Outcome(sent=False, error=str(exc)), config["sender"]
        now = formats.utcnow()
        changes: dict[str, Any] = {"sender": name, "last_error": outcome.error}
        if outcome.sent:
            changes |= {
                "state": "sent",
                "provider_id": outcome.provider_id,
                "sent_at": now.isoformat(),
            }
        elif outcome.retry and message["attempts"] < config["max_attempts"]:
            delay = outcome.retry_after
            if delay is None:
                delay = backoff(message["attempts"], self.rng)
            changes |= {
                "state": "scheduled",
                "next_attempt_at": (now + timedelta(seconds=delay)).isoformat(),
            }
        else:
            changes |= {"state": "failed"}
        if not self.storage.finish_message(message["id"], lease, changes):
            log.warning("message %s: lease lost before the outcome was recorded", message["id"])

    def run(self, interval: float = 1.0, stop: threading.Event | None = None) -> None:
        """Deliver until stopped, sleeping ``interval`` seconds when nothing is due."""
        stop = stop or threading.Event()
        while not stop.is_set():
            try:
                busy = self.run_once()
            except Exception:  # keep the worker alive through a bad message or a lock
                log.exception("worker iteration failed")
                busy = 0
            if not busy:
                stop.wait(interval)
