"""Senders: how a message leaves kanal. Chosen per store (``kanal stores update --sender``).

- ``log``: records the message as sent, with no network call (the default, so a
  fresh install sends nothing by surprise);
- ``whatsapp``: a template message through the WhatsApp Cloud API
  (``POST {base_url}/{phone_number_id}/messages``, bearer access token);
- ``webhook``: the message as JSON to the merchant's URL, signed with
  HMAC-SHA256 over the body (``X-Kanal-Signature: sha256=<hex>``) and carrying
  ``Idempotency-Key: kanal-message-<id>`` so the receiver can drop a repeat.

An HTTP answer is classified once: 2xx sent; 429 and 5xx (and network errors)
retried, honouring ``Retry-After``; any other 4xx a permanent failure with the
provider's own error message.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any, Protocol

import httpx

from kanal import formats

log = logging.getLogger("kanal.senders")
MAX_RETRY_AFTER = 86400.0  # a provider's Retry-After is honoured up to a day
Message = dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    sent: bool
    provider_id: str | None = None
    error: str | None = None
    retry: bool = False
    retry_after: float | None = None


class Sender(Protocol):
    name: str

    def send(self, message: Message) -> Outcome: ...


class NotConfigured(Exception):
    """The store chose a sender without giving what it needs."""


class LogSender:
    name = "log"

    def send(self, message: Message) -> Outcome:
        log.info(
            "message %s to %s: %s %s",
            message["id"],
            message["contact_phone"],
            message["template"],
            json.dumps(message["parameters"]),
        )
        return Outcome(sent=True, provider_id=f"log-{message['id']}")


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    if value.strip().isdigit():
        return min(float(value), MAX_RETRY_AFTER)
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return min(MAX_RETRY_AFTER, max(0.0, (moment - formats.utcnow()).total_seconds()))


def provider_error(response: httpx.Response) -> str:
    """The provider's own words for a failure (WhatsApp: error.message)."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code}: {response.text[:500]}"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        detail = body["error"]
        return f"HTTP {response.status_code}: {detail.get('message')} (code {detail.get('code')})"
    return f"HTTP {response.status_code}: {json.dumps(body)[:500]}"


class HttpSender:
    name = "http"

    def __init__(self, client: httpx.Client) -> None:
        self.client = client

    def post(self, url: str, content: bytes, headers: dict[str, str]) -> Outcome:
        try:
            response = self.client.post(url, content=content, headers=headers)
        except httpx.HTTPError as exc:
            return Outcome(sent=False, error=f"network: {exc!r}", retry=True)
        if response.is_success:
            return Outcome(sent=True, provider_id=self.provider_id(response))
        if response.status_code == 429 or response.status_code >= 500:
            return Outcome(
                sent=False,
                error=provider_error(response),
                retry=True,
                retry_after=retry_after(response.headers.get("Retry-After")),
            )
        return Outcome(sent=False, error=provider_error(response))

    @staticmethod
    def provider_id(response: httpx.Response) -> str | None:
        try:
            body = response.json()
        except ValueError:
            return None
        if isinstance(body, dict):
            messages = body.get("messages")
            if isinstance(messages, list) and messages and isinstance(messages[0], dict):
                return str(messages[0].get("id"))
            if body.get("id") is not None:
                return str(body["id"])
        return None


def whatsapp_payload(message: Message) -> dict[str, Any]:
    """A WhatsApp Cloud API template message: the parameters in order, as text."""
    parameters = message["parameters"] or {}
    return {
        "messaging_product": "whatsapp",
        "to": (message["contact_phone"] or "").lstrip("+"),
        "type": "template",
        "template": {
            "name": message["template"],
            "language": {"code": message["language"]},
            "components": [
                {
                    "type": "body",
                    "parameters": [
                        {"type": "text", "text": "" if value is None else str(value)}
                        for value in parameters.values()
                    ],
                }
            ],
        },
    }


class WhatsAppSender(HttpSender):
    name = "whatsapp"

    def __init__(self, client: httpx.Client, config: dict[str, Any]) -> None:
        super().__init__(client)
        missing = [k for k in ("base_url", "phone_number_id", "access_token") if not config.get(k)]
        if missing:
            raise NotConfigured(f"whatsapp sender needs {', '.join(missing)}")
        self.url = f"{config['base_url'].rstrip('/')}/{config['phone_number_id']}/messages"
        self.token = config["access_token"]

    def send(self, message: Message) -> Outcome:
        body = json.dumps(whatsapp_payload(message)).encode()
        return self.post(
            self.url,
            body,
            {"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )


def webhook_payload(message: Message) -> dict[str, Any]:
    return {
        "id": message["id"],
        "store_id": message["store_id"],
        "trigger": message["trigger"],
        "step": message["step"],
        "to": message["contact_phone"],
        "template": message["template"],
        "language": message["language"],
        "parameters": message["parameters"],
        "record": {"type": message["record_table"], "external_id": message["record_external_id"]},
        "scheduled_at": message["scheduled_at"],
    }


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class WebhookSender(HttpSender):
    name = "webhook"

    def __init__(self, client: httpx.Client, config: dict[str, Any]) -> None:
        super().__init__(client)
        if not config.get("url") or not config.get("secret"):
            raise NotConfigured("webhook sender needs url and secret")
        self.url, self.secret = config["url"], config["secret"]

    def send(self, message: Message) -> Outcome:
        body = json.dumps(webhook_payload(message), separators=(",", ":")).encode()
        return self.post(
            self.url,
            body,
            {
                "Content-Type": "application/json",
                "X-Kanal-Signature": signature(self.secret, body),
                "Idempotency-Key": f"kanal-message-{message['id']}",
            },
        )


def sender_for(config: dict[str, Any], client: httpx.Client) -> Sender:
    """The sender a store's automation settings name."""
    kind = config["sender"]
    if kind == "whatsapp":
        return WhatsAppSender(client, config["whatsapp"])
    if kind == "webhook":
        return WebhookSender(client, config["webhook"])
    if kind == "log":
        return LogSender()
    raise NotConfigured(f"unknown sender {kind!r}")
