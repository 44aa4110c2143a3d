"""The code-first peer: FastAPI with a Pydantic v2 model of the order, a bearer-key
check, and the same one-row upsert as the plain stack (``bench/onerow.py``).

The model has openapi.yaml's field rules for ``OrderInput`` (``CustomerInput``,
``LineItem``, ``Tags``, ``Money``...): the same required fields, lengths, limits,
patterns and types (strict: no string for a number, no 2.0 for an integer), the
reserved id ``count``, and the same formats checked by the same parsers (RFC 3339
timestamps and phone numbers with kanal.formats, in the bench store's region FR;
email with email-validator), so it refuses what kanal refuses field by field
(tests/test_bench_refs.py checks a set of bodies on both). Its 422 is FastAPI's
own shape. The key is checked against the SHA-256 of the database's keys, read at start.

    KANAL_DB=... uvicorn --factory bench.peer:create_app
"""

import contextlib
import functools
from collections.abc import AsyncIterator
from typing import Annotated, Any

from email_validator import EmailNotValidError, validate_email
from fastapi import Depends, FastAPI, HTTPException
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from bench.onerow import OneRow, bearer_store
from kanal import formats

REGION = "FR"  # the bench store's region: where national numbers are read
MAX_MONEY = 999999999999.99
MAX_INT64 = 2**63 - 1
BEARER = HTTPBearer(auto_error=False)


def _not_count(value: str) -> str:
    if value == "count":
        raise ValueError('must not be "count": the API\'s paths use that name')
    return value


def _timestamp(value: str) -> str:
    if formats.parse_timestamp(value) is None:
        raise ValueError("must be an RFC 3339 date-time between 0001 and 9999 in UTC")
    return value


def _phone(value: str) -> str:
    if formats.e164(value, REGION) is None:
        raise ValueError("must be a valid phone number")
    return value


@functools.lru_cache(maxsize=65536)
def _valid_email(value: str) -> bool:
    try:
        validate_email(
            value, check_deliverability=False, globally_deliverable=False, test_environment=True
        )
    except EmailNotValidError:
        return False
    return True


def _email(value: str) -> str:
    if not _valid_email(value):
        raise ValueError("must be a valid email address")
    return value


NO_CONTROL = r"^[^\x00-\x1F\x7F]+$"
NO_NUL = r"^[^\x00]*$"
ExternalId = Annotated[
    str,
    StringConstraints(min_length=1, max_length=255, pattern=NO_CONTROL),
    AfterValidator(_not_count),
]
Timestamp = Annotated[str, AfterValidator(_timestamp)]
Money = Annotated[float, Field(ge=0, le=MAX_MONEY)]
WholeNumber = Annotated[int, Field(ge=0, le=MAX_INT64)]
Text64 = Annotated[str, StringConstraints(max_length=64, pattern=NO_NUL)]
Name = Annotated[str, StringConstraints(max_length=255, pattern=NO_NUL)]
Tag = Annotated[str, StringConstraints(max_length=255)]
Phone = Annotated[str, StringConstraints(min_length=1, max_length=64), AfterValidator(_phone)]
Email = Annotated[str, StringConstraints(max_length=254), AfterValidator(_email)]


class Rules(BaseModel):
    # additionalProperties: true, and no coercion (JSON Schema's types).
    model_config = ConfigDict(strict=True, extra="allow")


class Customer(Rules):
    external_id: ExternalId | None = None
    phone: Phone
    first_name: Name | None = None
    last_name: Name | None = None
    email: Email | None = None
    locale: Annotated[str, StringConstraints(max_length=10, pattern=NO_NUL)] | None = None
    tags: list[Tag] | None = None
    lifetime_value: WholeNumber | None = None
    orders_count: WholeNumber | None = None


class LineItem(Rules):
    title: Name | None = None
    quantity: WholeNumber | None = None
    price: Money | None = None
    sku: Name | None = None


class Order(Rules):
    external_id: ExternalId
    placed_at: Timestamp
    total_price: Money
    currency: Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$")] | None = None
    financial_status: Text64 | None = None
    fulfillment_status: Text64 | None = None
    customer: Customer
    line_items: list[LineItem] | None = None
    tags: list[Tag] | None = None
    metadata: dict[str, Any] | None = None


def create_app() -> FastAPI:
    rows = OneRow()
    keys = rows.key_hashes()

    def store_key(
        store_id: int,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)],
    ) -> None:
        header = f"Bearer {credentials.credentials}" if credentials else None
        known, key_store = bearer_store(header, keys)
        if not known:
            raise HTTPException(401, "Invalid API key")
        if key_store != store_id:
            raise HTTPException(403, "API key does not authorize this store")

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await rows.open()
        yield
        await rows.close()

    app = FastAPI(lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)

    @app.post("/api/v1/stores/{store_id}/orders", dependencies=[Depends(store_key)])
    async def upsert_order(store_id: int, order: Order) -> dict[str, Any]:
        await rows.upsert(store_id, order.external_id, order.model_dump_json())
        return {"external_id": order.external_id, "store_id": store_id}

    return app
