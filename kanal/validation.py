"""Request validation against openapi.yaml, reported in Laravel's 422 shape.

Connexion's own validators stop at the first error and answer a 400 problem.
These replace them (through Connexion's ``validator_map``): the JSON body is
parsed strictly (UTF-8, no NaN/Infinity, no duplicate keys; a lone surrogate
escape is a 422 naming the field), validated with a compiled Draft 4 validator
(plus OpenAPI ``nullable``) that is built once per schema, and every failing
field is listed with a Laravel-style message.

Formats are really checked here: ``date-time`` (RFC 3339, parsed the same way the
handlers parse it; out of range in UTC, the message says so), ``email``
(email-validator), ``uri`` (RFC 3986) and the custom ``phone`` (phonenumbers, in
the store's default region).
"""

from __future__ import annotations

import functools
import json
import mmap
import re
from collections.abc import Iterable, Iterator
from typing import Any

import jsonschema_rs
import rfc3987
from connexion.datastructures import MediaTypeDict
from connexion.json_schema import Draft4RequestValidator, Draft4ResponseValidator
from connexion.validators import (
    AbstractRequestBodyValidator,
    JSONResponseBodyValidator,
    ParameterValidator,
    TextResponseBodyValidator,
)
from email_validator import EmailNotValidError, validate_email
from jsonschema import Draft4Validator, FormatChecker, ValidationError
from jsonschema.exceptions import best_match
from jsonschema.validators import extend
from starlette.types import Receive, Scope

from kanal import formats
from kanal.checks import Check, merged
from kanal.errors import ValidationFailed, error
from kanal.formats import current_region
from kanal.operations import BODY

FORMAT_CHECKER = FormatChecker(formats=())


@FORMAT_CHECKER.checks("date-time")
def _is_datetime(value: object) -> bool:
    return not isinstance(value, str) or formats.parse_timestamp(value) is not None


@FORMAT_CHECKER.checks("email")
def _is_email(value: object) -> bool:
    return not isinstance(value, str) or _valid_email(value)


@functools.lru_cache(maxsize=65536)
def _valid_email(value: str) -> bool:
    try:
        # Syntax only (RFC 5321/5322): no DNS, and special-use domains such as
        # example.test are addresses too.
        validate_email(
            value, check_deliverability=False, globally_deliverable=False, test_environment=True
        )
    except EmailNotValidError:
        return False
    return True


@FORMAT_CHECKER.checks("uri")
def _is_uri(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        parts = rfc3987.parse(value, rule="URI")
    except ValueError:
        return False
    return bool(parts.get("scheme"))


@FORMAT_CHECKER.checks("phone")
def _is_phone(value: object) -> bool:
    return not isinstance(value, str) or formats.e164(value, current_region.get()) is not None


TYPE_MESSAGES = {
    "string": "The {} field must be a string.",
    "integer": "The {} field must be an integer.",
    "number": "The {} field must be a number.",
    "boolean": "The {} field must be true or false.",
    "array": "The {} field must be an array.",
    "object": "The {} field must be an object.",
}
FORMAT_MESSAGES = {
    "date-time": "The {} field must be a valid date.",
    "email": "The {} field must be a valid email address.",
    "uri": "The {} field must be a valid URL.",
    "phone": "The {} field must be a valid phone number.",
}
#: A date-time that is RFC 3339 but not an instant kanal can hold (it overflows in UTC).
DATE_RANGE_MESSAGE = "The {} field must be a date between 0001-01-01 and 9999-12-31 in UTC."
#: A string, or an object key, holding a lone surrogate (``"\ud800"``): valid JSON
#: syntax, but not Unicode text, so it can be neither stored nor sent on.
UNICODE_MESSAGE = "The {} field must be valid Unicode text (no lone surrogate)."
UNICODE_NAME_MESSAGE = "The name of the {} field must be valid Unicode text (no lone surrogate)."


def format_message(name: str | None, value: object) -> str:
    """The message template for a value that fails format ``name``: why it failed when
    the reason is not the obvious one (a date-time that overflows in UTC)."""
    if (
        name == "date-time"
        and isinstance(value, str)
        and formats.timestamp_problem(value) == formats.OUT_OF_RANGE
    ):
        return DATE_RANGE_MESSAGE
    return FORMAT_MESSAGES.get(name or "", "The {} field is invalid.")


def _number(value: float | int) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def _join(path: Iterable[Any]) -> str:
    return ".".join(str(p) for p in path)


def laravel_messages(err: ValidationError, prefix: Iterable[Any] = ()) -> Iterator[tuple[str, str]]:
    """Yield (dot path, message) pairs for one jsonschema error."""
    path = [*prefix, *err.absolute_path]
    field = _join(path)
    kind, value = err.validator, err.validator_value
    schema = err.schema if isinstance(err.schema, dict) else {}
    if kind == "required":
        for name in value:
            if isinstance(err.instance, dict) and name not in err.instance:
                yield _join([*path, name]), f"The {_join([*path, name])} field is required."
    elif kind == "additionalProperties" and value is False:
        known = set(schema.get("properties", {}))
        for name in err.instance:
            if name not in known:
                yield _join([*path, name]), f"The {_join([*path, name])} field is prohibited."
    elif kind == "type" and err.instance is None:
        yield field, f"The {field} field is required."
    elif kind == "type":
        yield field, TYPE_MESSAGES.get(value, "The {} field is invalid.").format(field)
    elif kind in ("oneOf", "anyOf") and err.context:
        # A nullable reference (oneOf: [Enum, NoStatus]): report the closest branch.
        yield from laravel_messages(best_match(err.context), prefix)
    elif kind == "enum":
        yield field, f"The selected {field} is invalid."
    elif kind == "not" and isinstance(value, dict) and "enum" in value:
        # A reserved value (an external_id named like a path: `count`).
        names = " or ".join(json.dumps(v) for v in value["enum"])
        yield field, f"The {field} field must not be {names}: the API's paths use that name."
    elif kind == "minLength" and value == 1:
        yield field, f"The {field} field is required."
    elif kind == "minLength":
        yield field, f"The {field} field must be at least {value} characters."
    elif kind == "maxLength":
        yield field, f"The {field} field must not be greater than {value} characters."
    elif kind == "minimum":
        yield field, f"The {field} field must be at least {_number(value)}."
    elif kind == "maximum":
        yield field, f"The {field} field must not be greater than {_number(value)}."
    elif kind == "minItems":
        yield field, f"The {field} field must have at least {value} items."
    elif kind == "maxItems":
        yield field, f"The {field} field must not have more than {value} items."
    elif kind == "pattern" and err.instance == "" and schema.get("minLength"):
        return  # an empty value is reported once, as required (minLength)
    elif kind == "format" or (kind == "pattern" and schema.get("format") in FORMAT_MESSAGES):
        yield field, format_message(schema.get("format"), err.instance).format(field)
    elif kind == "pattern":
        yield field, f"The {field} field format is invalid."
    else:
        yield field, f"The {field} field is invalid."


def collect(errors: Iterable[ValidationError], prefix: Iterable[Any] = ()) -> dict[str, list[str]]:
    """Group every error's messages by dot path, first error first, no repeats."""
    grouped: dict[str, list[str]] = {}
    for err in errors:
        for path, message in laravel_messages(err, prefix):
            messages = grouped.setdefault(path, [])
            if message not in messages:
                messages.append(message)
    return grouped


def _nullable_all_of(validator: Any, all_of: Any, instance: Any, schema: dict) -> Any:
    """``nullable: true`` beside ``allOf`` admits null (a nullable reference in OAS 3.0)."""
    if instance is None and schema.get("nullable"):
        return
    yield from Draft4Validator.VALIDATORS["allOf"](validator, all_of, instance, schema)


@functools.cache
def _ecma(pattern: str) -> re.Pattern[str]:
    """A JSON Schema (ECMA-262) pattern for Python: there ``$`` is the very end of the
    string; Python's ``$`` also matches before a final newline (``"EUR\\n"``)."""
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1] + r"\Z"
    return re.compile(pattern)


def _ecma_pattern(validator: Any, pattern: str, instance: Any, schema: dict) -> Any:
    if isinstance(instance, str) and not _ecma(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


OPENAPI_KEYWORDS = {"allOf": _nullable_all_of, "pattern": _ecma_pattern}
RequestValidator = extend(Draft4RequestValidator, OPENAPI_KEYWORDS)
ResponseValidator = extend(Draft4ResponseValidator, OPENAPI_KEYWORDS)
_compiled: dict[tuple[int, bool], tuple[dict, Any]] = {}


def compiled(schema: dict, *, response: bool = False) -> Any:
    """The Draft 4 (+ OpenAPI nullable) validator for a schema, built once."""
    key = (id(schema), response)
    entry = _compiled.get(key)
    if entry is None or entry[0] is not schema:
        kind = ResponseValidator if response else RequestValidator
        entry = (schema, kind(schema, format_checker=FORMAT_CHECKER))
        _compiled[key] = entry
    return entry[1]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return result


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)


#: The escapes of JSON text that decide whether a string holds a lone surrogate, matched
#: left to right: an escaped backslash (consumed, so ``\\ud800`` is no escape), a
#: surrogate pair (one astral character) and, in group 1, a lone surrogate.
_ESCAPES = re.compile(
    rb"\\\\|\\u[dD][89abAB][0-9a-fA-F]{2}\\u[dD][c-fC-F][0-9a-fA-F]{2}"
    rb"|(\\u[dD][89a-fA-F][0-9a-fA-F]{2})"
)
_SURROGATE = re.compile("[\ud800-\udfff]")


def has_lone_surrogate(text: bytes | mmap.mmap) -> bool:
    """Whether JSON text escapes a lone surrogate (``"\\ud800"``), the only way one can
    get into a parsed string: strict UTF-8 refuses an encoded surrogate. Two substring
    searches unless the text escapes a surrogate at all."""
    if text.find(b"\\ud") < 0 and text.find(b"\\uD") < 0:
        return False
    return any(match.group(1) for match in _ESCAPES.finditer(text))


def _field(path: tuple[Any, ...]) -> str:
    """A dot path from a linked path ``(key, parent)``, a lone surrogate as its escape."""
    keys = []
    while path:
        key, path = path
        keys.append(str(key).encode("utf-8", "backslashreplace").decode("utf-8"))
    return ".".join(reversed(keys))


def unicode_errors(body: Any) -> dict[str, list[str]]:
    """Every string of a parsed body, value or object key, holding a lone surrogate, by
    dot path in document order (the body itself, not an object, is left to the caller)."""
    errors: dict[str, list[str]] = {}
    stack: list[tuple[tuple[Any, ...], Any, bool]] = [((), body, False)]
    while stack:  # a loop: as deep as the decoder admits, recursion would be too deep
        path, node, bad_name = stack.pop()
        if bad_name:
            field = _field(path)
            errors.setdefault(field, []).append(UNICODE_NAME_MESSAGE.format(field))
        if isinstance(node, dict):
            children = [((k, path), v, bool(_SURROGATE.search(k))) for k, v in node.items()]
            stack.extend(reversed(children))
        elif isinstance(node, list):
            stack.extend(reversed([((i, path), v, False) for i, v in enumerate(node)]))
        elif isinstance(node, str) and path and _SURROGATE.search(node):
            field = _field(path)
            errors.setdefault(field, []).append(UNICODE_MESSAGE.format(field))
    return errors


def parse_json(raw: bytes, *, unicode: bool = True) -> Any:
    """Parse a request body strictly; a malformed one is a 400 ``{"error": ...}``, one
    with a lone surrogate (valid JSON, not Unicode text) a 422 naming each field (unless
    ``unicode`` is False: then the caller reports them, see ``BodyValidator``)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise error(400, "The request body is not valid UTF-8.") from None
    try:
        body = _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise error(
            400, f"Malformed JSON: {exc.msg} at line {exc.lineno} column {exc.colno}."
        ) from None
    except ValueError as exc:
        raise error(400, f"Malformed JSON: {exc}.") from None
    except RecursionError:
        raise error(400, "Malformed JSON: nested too deeply.") from None
    if unicode and has_lone_surrogate(raw):
        errors = unicode_errors(body)
        if errors:
            raise ValidationFailed(errors)
    return body


def _escaped(text: str) -> str:
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def without_surrogates(body: Any) -> Any:
    """``body`` with each lone surrogate written as its escape (``\\ud800``, as the
    422 names it): what the schema's rules and the checks can look at safely (SQLite,
    the Rust validator and some format checkers cannot take one). A field that held
    one is reported for it already, under that same path."""
    root: list[Any] = [None]
    stack: list[tuple[Any, Any, Any]] = [(root, 0, body)]
    while stack:  # a loop: as deep as the decoder admits, recursion would be too deep
        parent, slot, node = stack.pop()
        if isinstance(node, dict):
            copy: Any = {}
            for key, value in node.items():
                name = _escaped(key)
                copy[name] = None
                stack.append((copy, name, value))
        elif isinstance(node, list):
            copy = [None] * len(node)
            stack.extend((copy, index, value) for index, value in enumerate(node))
        else:
            copy = _escaped(node) if isinstance(node, str) else node
        parent[slot] = copy
    return root[0]


def json_schema(node: Any) -> Any:
    """An OpenAPI 3.0 schema as plain JSON Schema: ``nullable`` becomes a null type."""
    if isinstance(node, list):
        return [json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    out = {
        key: json_schema(value)
        for key, value in node.items()
        if key not in ("nullable", "example", "examples", "description", "components")
        and not key.startswith("x-")
    }
    if node.get("nullable"):
        if "type" in out:
            out["type"] = [out["type"], "null"]
            if "enum" in out and None not in out["enum"]:
                out["enum"] = [*out["enum"], None]
        else:
            out = {"anyOf": [out, {"type": "null"}]}
    return out


FAST_FORMATS = {name: FORMAT_CHECKER.checkers[name][0] for name in FORMAT_CHECKER.checkers}
_fast: dict[int, tuple[dict, Any]] = {}


def fast(schema: dict) -> Any:
    """A compiled Rust (jsonschema-rs) validator for a schema, with the same formats.

    It answers "valid or not" in microseconds; only an invalid body goes through the
    Python validator, which words every error. tests/test_validation.py checks that
    the two agree on every field rule.
    """
    entry = _fast.get(id(schema))
    if entry is None or entry[0] is not schema:
        validator = jsonschema_rs.Draft4Validator(
            json_schema(schema), formats=FAST_FORMATS, validate_formats=True
        )
        entry = (schema, validator)
        _fast[id(schema)] = entry
    return entry[1]


class BodyValidator(AbstractRequestBodyValidator):
    """Validates a JSON body and reports every failing field at once: the schema's
    and those of the operation's own checks (``kanal.checks``), in one 422."""

    #: The operation's checks beyond the schema (set by the operation that builds this).
    checks: Check | None = None

    async def wrap_receive(self, receive: Receive, *, scope: Scope) -> tuple[Receive, Scope]:
        messages = []
        more_body = True
        while more_body:
            message = await receive()
            messages.append(message)
            more_body = message.get("more_body", False)
        raw = b"".join(m.get("body", b"") for m in messages)
        if not raw.strip():
            raise error(400, "The request body must be a JSON object.")
        body = parse_json(raw, unicode=False)
        if not isinstance(body, dict):
            raise error(400, "The request body must be a JSON object.")
        # Every failing field in one 422: lone surrogates, the schema's rules, the checks.
        errors, checked = {}, body
        if has_lone_surrogate(raw):
            errors = unicode_errors(body)
            checked = without_surrogates(body) if errors else body
        if errors or not fast(self._schema).is_valid(checked):
            found = collect(compiled(self._schema).iter_errors(checked))
            errors = {**found, **errors} if errors else found
        errors = await merged(errors, self.checks, checked)
        if errors:
            raise ValidationFailed(errors)
        scope.setdefault("kanal", {})[BODY] = body  # the handler gets this object
        return self._insert_messages(receive, messages=messages), scope


class ParametersValidator(ParameterValidator):
    """Validates path and query parameters, reporting every failure at once. With
    strict validation (kanal's setting), a query parameter the operation does not
    define is a 400 naming it: a mistyped filter never quietly returns other data."""

    def validate_request(self, request: Any) -> None:
        if self.strict_validation:
            unknown = self.validate_query_parameter_list(request, self.security_query_params)
            if unknown:
                raise error(400, unknown_parameters(sorted(unknown), self.parameters))
        errors: dict[str, list[str]] = {}
        for location, values in (
            ("path", request.path_params),
            ("query", request.query_params),
        ):
            for param in self.parameters.get(location, []):
                name = param["name"]
                value = values.get(name.replace("-", "_") if location == "path" else name)
                if value is None:
                    if param.get("required"):
                        errors.setdefault(name, []).append(f"The {name} field is required.")
                    continue
                schema = param.get("schema", {})
                if fast(schema).is_valid(value):
                    continue
                found = collect(compiled(schema).iter_errors(value), prefix=[name])
                for path, messages in found.items():
                    errors.setdefault(path, []).extend(messages)
        if errors:
            raise ValidationFailed(errors)


def unknown_parameters(names: list[str], parameters: dict[str, list[dict[str, Any]]]) -> str:
    """The 400 message for query parameters an operation does not define."""
    known = [parameter["name"] for parameter in parameters.get("query", [])]
    listed = ", ".join(names)
    takes = f"it takes {', '.join(known)}" if known else "it takes none"
    plural = "s" if len(names) > 1 else ""
    return f"Unknown query parameter{plural} for this operation: {listed} ({takes})."


class ResponseBodyValidator(JSONResponseBodyValidator):
    """Connexion's response validation, with the same compiled (nullable-aware) validators."""

    @property
    def validator(self) -> Any:
        return compiled(self._schema, response=True)


VALIDATOR_MAP = {
    "parameter": ParametersValidator,
    "body": MediaTypeDict({"*/*json": BodyValidator}),
    "response": MediaTypeDict(
        {"*/*json": ResponseBodyValidator, "text/plain": TextResponseBodyValidator}
    ),
}
