"""The bodies of import jobs (``POST /imports``): many records, taken whole and checked later.

An import's body is a list of records (the spec's ``ImportRecords``): JSON Lines
(``application/x-ndjson``) or a JSON array (``application/json``). What the upload
checks is the list, not the records: a JSON body must parse and be an array; the
number of records must be within the schema's ``minItems`` and ``maxItems`` (over the
maximum: 413 naming it; the 20 MiB is the request body's limit, ``x-kanal-max-bytes``,
enforced before anything is read). Each record is checked by the job, with the rules
and messages of ``POST /{resource}`` (``kanal.bulk``), and reported in the job's errors
when it is not valid: one bad line never refuses the other 9,999.

The handler receives an :class:`Upload`: the body as sent (stored as the job's
payload, so its line numbers are the client's), its format and its count.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import orjson
from connexion.datastructures import MediaTypeDict
from connexion.validators import AbstractRequestBodyValidator
from starlette.types import Receive, Scope

from kanal import validation
from kanal.errors import error
from kanal.operations import BODY
from kanal.validation import BodyValidator, parse_json

NOT_AN_ARRAY = (
    "The request body must be a JSON array of records (or JSON Lines, sent as "
    "application/x-ndjson)."
)


@dataclass(frozen=True)
class Upload:
    """An import's body as sent: ``ndjson`` (one record a non-blank line) or ``json`` (a
    JSON array), and how many records it holds."""

    format: str
    payload: bytes
    total: int


async def _body(receive: Receive) -> tuple[bytes, list[Any]]:
    messages = []
    more_body = True
    while more_body:
        message = await receive()
        messages.append(message)
        more_body = message.get("more_body", False)
    return b"".join(m.get("body", b"") for m in messages), messages


def count_lines(raw: bytes) -> int:
    """The records of a JSON Lines body: its non-blank lines (as ``kanal.bulk`` reads them)."""
    return sum(1 for line in raw.split(b"\n") if line.strip())


def check_count(schema: dict[str, Any], total: int) -> None:
    """The schema's bounds on the number of records: none is a 400, too many a 413."""
    least, most = schema.get("minItems", 1), schema.get("maxItems")
    if total < least:
        raise error(
            400,
            "The request body holds no record."
            if total == 0
            else f"The request body holds {total} records; an import takes at least {least}.",
        )
    if most is not None and total > most:
        raise error(
            413,
            f"An import holds at most {most} records; this one has {total}. "
            "Send them in several imports.",
        )


class NdjsonRecordsValidator(AbstractRequestBodyValidator):
    """A JSON Lines body of records: counted here, each line checked by the job."""

    async def wrap_receive(self, receive: Receive, *, scope: Scope) -> tuple[Receive, Scope]:
        raw, messages = await _body(receive)
        upload = Upload("ndjson", raw, count_lines(raw))
        check_count(self._schema, upload.total)
        scope.setdefault("kanal", {})[BODY] = upload
        return self._insert_messages(receive, messages=messages), scope


class JsonBodyValidator(BodyValidator):
    """The API's JSON body validator; for a body whose schema is an array of records (an
    import), the array as a whole: it parses, it is an array, it holds as many records
    as the schema admits. The records are the job's to check."""

    async def wrap_receive(self, receive: Receive, *, scope: Scope) -> tuple[Receive, Scope]:
        if self._schema.get("type") != "array":
            return await super().wrap_receive(receive, scope=scope)
        raw, messages = await _body(receive)
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            # The API's strict parser has the words for what is wrong (a 400); it takes
            # a lone surrogate escape, which the job reports as a 422 would.
            body = parse_json(raw, unicode=False)
        if not isinstance(body, list):
            raise error(400, NOT_AN_ARRAY)
        upload = Upload("json", raw, len(body))
        check_count(self._schema, upload.total)
        scope.setdefault("kanal", {})[BODY] = upload
        return self._insert_messages(receive, messages=messages), scope


class _ContentTypeChosen(logging.Filter):
    """Connexion warns, whenever it builds a part of an operation that takes two media
    types, that it "uses" the first; kanal chooses by each request's Content-Type
    (kanal.operations), so the warning says nothing true."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("this operation accepts multiple content types")


logging.getLogger("connexion.operations.openapi3").addFilter(_ContentTypeChosen())

#: kanal.validation's validators, with the bodies of imports.
VALIDATOR_MAP = {
    **validation.VALIDATOR_MAP,
    "body": MediaTypeDict(
        {"*/*json": JsonBodyValidator, "application/x-ndjson": NdjsonRecordsValidator}
    ),
}
