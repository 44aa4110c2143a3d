"""Contacts: one WhatsApp identity per (store, E.164 phone), read-only."""

from typing import Any

from kanal import formats, reads
from kanal.errors import not_found
from kanal.records import Body, storage


async def list_contacts(store_id: int, **params: Any) -> tuple[Body, int, dict[str, str]]:
    """List contacts."""
    return await reads.listing("contacts", store_id, params)


async def count_contacts(store_id: int, **params: Any) -> Body:
    """Count contacts."""
    return await reads.counting("contacts", store_id, params)


async def get_contact(store_id: int, phone: str) -> Body:
    """Retrieve a contact by its E.164 phone number."""
    return await reads.retrieve("contacts", store_id, [("phone", "=", _number(phone))])


async def update_contact(store_id: int, phone: str, body: Body) -> Body:
    """Record a contact's opt-out (or opt-in); opting out cancels its pending messages."""
    number = _number(phone)
    if not await storage().set_opt_out(store_id, number, body["opted_out"]):
        raise not_found("Contact")
    return await reads.retrieve("contacts", store_id, [("phone", "=", number)])


def _number(phone: str) -> str:
    number = formats.e164(phone, None)
    if number is None:
        raise not_found("Contact")
    return number
