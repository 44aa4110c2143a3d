"""Contacts: one WhatsApp identity per (store, E.164 phone), read-only."""

from typing import Any

from kanal import formats, reads
from kanal.errors import not_found
from kanal.records import Body


async def list_contacts(store_id: int, **params: Any) -> tuple[Body, int, dict[str, str]]:
    """List contacts."""
    return reads.listing("contacts", store_id, params)


async def count_contacts(store_id: int, **params: Any) -> Body:
    """Count contacts."""
    return reads.counting("contacts", store_id, params)


async def get_contact(store_id: int, phone: str) -> Body:
    """Retrieve a contact by its E.164 phone number."""
    number = formats.e164(phone, None)
    if number is None:
        raise not_found("Contact")
    return reads.retrieve("contacts", store_id, [("phone = ?", (number,))])
