"""Everything of kanal that leans on Connexion's internals, in this one module
(Connexion is pinned; tests/test_fastpath.py fails on an upgrade that changes what
is relied on here).

Connexion's operation layer, with its per-operation work done once. Connexion 3's
``AsyncOperation`` builds a new ``StarletteDecorator`` on every request, and that
decorator wraps the handler again (``inspect.signature``, parameter and response
decorators) and builds a new URI parser, also on every request. None of that
depends on the request. Here it is built once per operation; what Connexion does
per request (parameters parsed and typed by its URI parser, the response built by
its response decorator) is unchanged.

The JSON body is parsed once: the body validator keeps the object it validated
in ``scope["kanal"]["body"]`` and the handler receives that very object instead
of a second parse of the same bytes.

The fast path (``FastPathMiddleware``, ``FastOperation``): right inside Connexion's
exception middleware, a request that Connexion's own router matches to an operation
whose body is JSON (or absent) and whose handler is a coroutine function runs in one
call built at start from the objects Connexion resolved for that operation: kanal's
auth and rate limit, Connexion's request validation, the context, the handler's
arguments by Connexion's rules, the handler, the response by Connexion's response
decorator (and Connexion's response validation when it is on). Anything else (the
docs, no route, another media type such as ``application/x-ndjson``) goes through
Connexion's middleware stack as before. ``KANAL_FAST_PATH=0`` turns it off.
"""

from __future__ import annotations

import copy
import functools
import inspect
from copy import deepcopy
from typing import Any

from connexion.apps.asynchronous import AsyncApi, AsyncASGIApp, AsyncOperation
from connexion.context import _context, _operation, _receive, _scope, operation, receive, scope
from connexion.datastructures import MediaTypeDict
from connexion.decorators import StarletteDecorator
from connexion.decorators.parameter import (
    AsyncParameterDecorator,
    _get_query_defaults,
    _get_val_from_param,
    unwrap_decorators,
)
from connexion.decorators.response import AsyncResponseDecorator
from connexion.lifecycle import ConnexionRequest, ConnexionResponse
from connexion.middleware import ConnexionMiddleware
from connexion.middleware.abstract import ROUTING_CONTEXT
from connexion.middleware.context import ContextMiddleware
from connexion.middleware.exceptions import ExceptionMiddleware
from connexion.middleware.request_validation import (
    RequestValidationAPI,
    RequestValidationMiddleware,
    RequestValidationOperation,
)
from connexion.middleware.response_validation import (
    ResponseValidationMiddleware,
    ResponseValidationOperation,
)
from connexion.middleware.routing import RoutingMiddleware
from connexion.middleware.security import SecurityMiddleware
from connexion.uri_parsing import AbstractURIParser
from connexion.utils import inspect_function_arguments, is_nullable, split_content_type
from starlette.responses import JSONResponse as StarletteJSONResponse
from starlette.responses import Response as StarletteResponse
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kanal.auth import AuthMiddleware, guard, with_rate_limit_headers
from kanal.checks import BODY_CHECKS
from kanal.formats import current_region
from kanal.storage import AccountChanged
from kanal.storage import current as current_storage

#: Valid parameter sets an operation remembers (then it starts again).
VALID_PARAMETERS_KEPT = 4096
#: Where the body validator leaves the parsed body (scope["kanal"][BODY]).
BODY = "body"


class ValidatedRequest(ConnexionRequest):
    """A request whose JSON body is the object the body validator parsed and checked."""

    async def json(self) -> Any:
        state = self._starlette_request.scope.get("kanal") or {}
        if BODY in state:
            return state[BODY]
        return await super().json()


class Arguments:
    """How one operation's request becomes its handler's keyword arguments.

    The rules are Connexion's (``connexion.decorators.parameter.get_arguments``):
    path and query parameters typed by their schema, query defaults from the spec,
    the JSON body under the body's name, names made pythonic (``from`` -> ``from_``),
    only the arguments the handler accepts. What Connexion works out again for
    every request (definitions by name, defaults, sanitized names) is worked out
    here once, for the operation.
    """

    def __init__(self, op: Any, function: Any, sanitize: Any) -> None:
        arguments, has_kwargs = inspect_function_arguments(unwrap_decorators(function))
        accepted = (lambda name: True) if has_kwargs else (lambda name: name in arguments)
        by_location: dict[str, dict[str, Any]] = {"path": {}, "query": {}}
        for parameter in op.parameters:
            if parameter["in"] in by_location:
                by_location[parameter["in"]][parameter["name"]] = parameter
        self.sanitize = sanitize
        self.path = {
            name: (sanitize(name), definition) for name, definition in by_location["path"].items()
        }
        self.query = {
            name: (sanitize(name), definition)
            for name, definition in by_location["query"].items()
            if accepted(sanitize(name))
        }
        self.defaults = {
            name: value
            for name, value in _get_query_defaults(by_location["query"]).items()
            if name in self.query
        }
        body_name = sanitize(op.body_name("application/json"))
        self.body = body_name if op.is_request_body_defined and accepted(body_name) else None
        self.body_default = op.body_schema("application/json").get("default", {})

    async def __call__(self, request: ConnexionRequest) -> dict[str, Any]:
        kwargs = self.parameters(request)
        if self.body is not None:
            kwargs[self.body] = self.body_value(await request.json())
        return kwargs

    def body_value(self, body: Any) -> Any:
        """The handler's body argument for a parsed body (None: the schema's default)."""
        return deepcopy(self.body_default) if body is None else body

    def parameters(self, request: ConnexionRequest) -> dict[str, Any]:
        """The path and query arguments (a function of the path and the query string)."""
        kwargs = {}
        for name, value in request.path_params.items():
            sanitized, definition = self.path.get(name, (self.sanitize(name), None))
            kwargs[sanitized] = (
                value if definition is None else _get_val_from_param(value, definition)
            )
        if self.query:
            values = {**self.defaults, **request.query_params}
            for name, value in values.items():
                if name in self.query:
                    sanitized, definition = self.query[name]
                    kwargs[sanitized] = _get_val_from_param(value, definition)
        return kwargs


class ArgumentsDecorator(AsyncParameterDecorator):
    """Connexion's parameter decorator for a JSON API, with ``Arguments`` built once."""

    def __call__(self, function: Any) -> Any:
        prepared: list[Arguments] = []

        @functools.wraps(function)
        async def wrapper(request: ConnexionRequest) -> Any:
            if not prepared:  # the operation is known from the first request on
                prepared.append(Arguments(operation, function, self.sanitize_fn))
            return await function(**await prepared[0](request))

        return wrapper


class ResponseDecorator(AsyncResponseDecorator):
    """Connexion's response decorator; the content type an operation produces, when
    the handler names none, is worked out once instead of for every response."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._produced: dict[type, str | None] = {}

    def _infer_content_type(self, data: Any, headers: dict) -> str | None:
        # Connexion's answer depends on the headers, and otherwise only on the kind of
        # data (none, text, bytes, anything else): one answer per type of data.
        if headers and any(name.lower() == "content-type" for name in headers):
            return super()._infer_content_type(data, headers)
        kind = type(data)
        if kind not in self._produced:
            self._produced[kind] = super()._infer_content_type(data, headers)
        return self._produced[kind]


class OnceDecorator(StarletteDecorator):
    """``StarletteDecorator`` that wraps the handler and builds the URI parser once."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._parser: AbstractURIParser | None = None

    @property
    def uri_parser(self) -> AbstractURIParser:
        if self._parser is None:  # the operation is known from the first request on
            uri_parser_class = self.uri_parser_class or operation.uri_parser_class
            self._parser = uri_parser_class(operation.parameters, operation.body_definition())
        return self._parser

    @property
    def _parameter_decorator_cls(self) -> type[AsyncParameterDecorator]:
        return ArgumentsDecorator

    @property
    def _response_decorator_cls(self) -> type[AsyncResponseDecorator]:
        return ResponseDecorator

    def __call__(self, function: Any) -> Any:
        decorated = self.decorate(function)

        @functools.wraps(function)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            request = ValidatedRequest(scope, receive, uri_parser=self.uri_parser)
            return await decorated(request)

        return wrapper


class OnceOperation(AsyncOperation):
    """``AsyncOperation`` whose decorated handler is built at the first request, not at each."""

    @functools.cached_property
    def fn(self) -> Any:  # type: ignore[override]
        decorator = OnceDecorator(pythonic_params=self.pythonic_params, jsonifier=self.jsonifier)
        return decorator(self._fn)


class OnceApi(AsyncApi):
    """Connexion's ASGI API, making ``OnceOperation``s."""

    def make_operation(self, operation: Any) -> AsyncOperation:
        return OnceOperation.from_operation(
            operation, pythonic_params=self.pythonic_params, jsonifier=self.jsonifier
        )


class OnceRequestValidation(RequestValidationOperation):
    """Connexion's request validation, its validators built once per operation.

    Connexion builds a URI parser, a parameter validator, a media-type table and a
    body validator for every request; they depend on the operation only. The steps
    and their order are Connexion's: parameters, then the media type, then the body.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        op = self._operation
        self._uri_parser = op._uri_parser_class(op.parameters, op.body_definition())
        self._parameters = self._validator_map["parameter"](
            op.parameters,
            uri_parser=self._uri_parser,
            strict_validation=self.strict_validation,
            security_query_params=self.security_query_params,
        )
        self._consumes = MediaTypeDict([(c.lower(), None) for c in op.consumes])
        self._accepted: set[str] = set()  # media types found acceptable
        self._bodies: dict[tuple[str, str], Any] = {}
        self._valid_parameters: set[tuple[Any, ...]] = set()

    def extract_content_type(self, headers: list[tuple[bytes, bytes]]) -> tuple[str, str]:
        """Connexion's rule (the header's media type and charset, else the operation's
        first media type and UTF-8) without its per-call typing constructs."""
        for name, value in headers:
            if name.lower() == b"content-type":
                mime_type, encoding = split_content_type(value.decode("latin-1"))
                break
        else:
            mime_type, encoding = None, None
        if mime_type is None:
            consumes = self._operation.consumes
            mime_type = consumes[0] if consumes else "application/octet-stream"
        return mime_type, encoding or "utf-8"

    def validate_mime_type(self, mime_type: str) -> None:
        if mime_type in self._accepted:
            return
        if self._consumes and mime_type.lower() not in self._consumes:
            super().validate_mime_type(mime_type)  # raises Connexion's 415 problem
        if len(self._accepted) < VALID_PARAMETERS_KEPT:
            self._accepted.add(mime_type)

    def _body_validator(self, mime_type: str, encoding: str) -> Any:
        key = (mime_type, encoding)
        if key not in self._bodies:
            op = self._operation
            schema = op.body_schema(mime_type)
            validator_cls = self._validator_map["body"].get(mime_type) if schema else None
            validator = validator_cls and validator_cls(
                schema=schema,
                required=op.request_body.get("required", False),
                nullable=is_nullable(op.body_definition(mime_type)),
                encoding=encoding,
                strict_validation=self.strict_validation,
                uri_parser=self._uri_parser,
            )
            if validator:  # the checks the spec cannot state, reported with its own
                validator.checks = BODY_CHECKS.get(op._operation.get("operationId"))
            self._bodies[key] = validator
        return self._bodies[key]

    async def validate(self, scope: Scope, receive: Receive) -> tuple[Receive, Scope]:
        """Connexion's steps, in its order: parameters, the media type, the body. Raises
        what a failing step raises; the ``receive`` and scope that carry on."""
        # Parameters passed once pass again: remember the valid ones (path values,
        # query string, the store's region in which phone numbers are read).
        seen = (
            tuple(scope.get("path_params", {}).items()),
            scope.get("query_string", b""),
            current_region.get(),
        )
        if seen not in self._valid_parameters:
            self._parameters.validate(scope)
            if len(self._valid_parameters) >= VALID_PARAMETERS_KEPT:
                self._valid_parameters.clear()
            self._valid_parameters.add(seen)
        mime_type, encoding = self.extract_content_type(scope["headers"])
        self.validate_mime_type(mime_type)
        validator = self._body_validator(mime_type, encoding)
        if validator is not None:
            receive, scope = await validator.wrap_receive(receive, scope=scope)
        return receive, scope

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        receive, scope = await self.validate(scope, receive)
        await self.next_app(scope, receive, send)


class OnceRequestValidationAPI(RequestValidationAPI):
    def make_operation(self, operation: Any) -> RequestValidationOperation:
        return OnceRequestValidation(
            self.next_app,
            operation=operation,
            strict_validation=self.strict_validation,
            validator_map=self.validator_map,
        )


class OnceRequestValidationMiddleware(RequestValidationMiddleware):
    """Connexion's request validation middleware, making ``OnceRequestValidation``s."""

    api_cls = OnceRequestValidationAPI


# -- the fast path ----------------------------------------------------------------


def is_json(media_type: str) -> bool:
    """Whether a media type is JSON (``application/json``, ``application/problem+json``)."""
    mime = media_type.split(";", 1)[0].strip().lower()
    return mime == "application/json" or (
        mime.startswith("application/") and mime.endswith("+json")
    )


#: Values a remembered argument may hold (handed to every request as they are).
IMMUTABLE = frozenset({str, int, float, bool, type(None)})
#: Responses whose sending is exactly its status, headers and body.
PLAIN_RESPONSES = frozenset({StarletteResponse, StarletteJSONResponse})


class FastOperation:
    """One operation's whole request path in one callable, built from the objects
    Connexion resolved for it: kanal's auth and rate limit, Connexion's request
    validation (``OnceRequestValidation.validate``: parameters, media type, body),
    Connexion's response validation when it is on, the context Connexion's handlers
    see, the handler's arguments by Connexion's rules (``Arguments``), the handler,
    and the response built by Connexion's response decorator. What the middlewares
    between them did for this operation (routing twice, security, lifespan, context)
    is done once here; an exception goes out to Connexion's exception middleware, as
    from any of them."""

    def __init__(
        self,
        operation: Any,
        handler: OnceOperation,
        validation: OnceRequestValidation,
        response_validation: Any,
        guard: Any,
        wrap_send: Any,
    ) -> None:
        self.operation = operation
        self.function = handler._fn
        self.validation = validation
        self.guard = guard
        self.wrap_send = wrap_send
        # What OnceOperation's decorators would build for this operation, built here.
        framework = OnceDecorator.framework
        parameters = ArgumentsDecorator(
            framework=framework, pythonic_params=handler.pythonic_params
        )
        self.uri_parser = operation.uri_parser_class(
            operation.parameters, operation.body_definition()
        )
        self.arguments = Arguments(operation, self.function, parameters.sanitize_fn)
        self.parameters: dict[tuple[Any, ...], dict[str, Any]] = {}
        self.response = ResponseDecorator(framework=framework, jsonifier=handler.jsonifier)
        self.framework = framework
        self.endpoint: Any = self.respond
        if isinstance(response_validation, ResponseValidationOperation):
            # Connexion's response validation around the handler (its send wrapper), with
            # the rate-limit headers added inside it, as in the middleware stack.
            validating = copy.copy(response_validation)
            validating.next_app = self.respond_with_headers
            self.endpoint = validating

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """The request, served with its key and store as remembered by the storage
        (``guard``'s ``remembered``: on PostgreSQL the request's first statement
        verifies them); if they changed meanwhile (``AccountChanged``: nothing was
        written, nothing sent), served again from the start with them read afresh,
        its body replayed."""
        if not current_storage.get().remembers_accounts:  # SQLite: always exact
            await self.serve(scope, receive, send, remembered=False)
            return
        received: list[Message] = []

        async def recording() -> Message:
            message = await receive()
            received.append(message)
            return message

        try:
            await self.serve(scope, recording, send, remembered=True)
        except AccountChanged:
            replay = iter(list(received))

            async def replaying() -> Message:
                return next(replay, None) or await receive()

            # (The request counts against the rate limit again: a store's limit may be
            # what changed; a permit more spent, never one too many granted.)
            for entry in (BODY, "headers"):
                scope.get("kanal", {}).pop(entry, None)
            await self.serve(scope, replaying, send, remembered=False)

    async def serve(self, scope: Scope, receive: Receive, send: Send, remembered: bool) -> None:
        """Guard, validation, handler and response; with ``remembered``, the account is
        verified before anything is answered (a response or an error) that has not
        used the database yet."""
        store = current_storage.get()

        async def verified_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                await store.verify_account()
            await send(message)

        try:
            await self.guard(scope, remembered)
            receive, scope = await self.validation.validate(scope, receive)
            await self.endpoint(scope, receive, verified_send if remembered else send)
        except AccountChanged:
            raise
        except Exception:
            if remembered:
                await store.verify_account()
            raise

    async def respond_with_headers(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.respond(scope, receive, self.wrap_send(scope, send))

    async def respond(self, scope: Scope, receive: Receive, send: Send) -> None:
        # The context Connexion's ContextMiddleware gives the handler.
        _context.set(scope.get("extensions", {}).get("connexion_context", {}))
        _operation.set(self.operation)
        _receive.set(receive)
        _scope.set(scope)
        result = await self.function(**await self.kwargs(scope, receive))
        # As Connexion's AsyncResponseDecorator.
        if self.framework.is_framework_response(result):
            response = result
        elif isinstance(result, ConnexionResponse):
            response = self.framework.connexion_to_framework_response(result)
        else:
            response = self.response.build_framework_response(result)
        if type(response) in PLAIN_RESPONSES and response.background is None:
            # What Starlette's Response.__call__ sends for it.
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status_code,
                    "headers": response.raw_headers,
                }
            )
            await send({"type": "http.response.body", "body": response.body})
        else:
            await response(scope, receive, send)

    async def kwargs(self, scope: Scope, receive: Receive) -> dict[str, Any]:
        """The handler's arguments by Connexion's rules (``Arguments``): the path and
        query arguments remembered per path and query string when they are plain
        values, the body the validator parsed."""
        key = (tuple(scope["path_params"].items()), scope.get("query_string", b""))
        parameters = self.parameters.get(key)
        request = None
        if parameters is None:
            request = ValidatedRequest(scope, receive, uri_parser=self.uri_parser)
            parameters = self.arguments.parameters(request)
            if all(type(value) in IMMUTABLE for value in parameters.values()):
                if len(self.parameters) >= VALID_PARAMETERS_KEPT:
                    self.parameters.clear()
                self.parameters[key] = parameters
        kwargs = dict(parameters)
        if self.arguments.body is not None:
            state = scope.get("kanal") or {}
            if BODY in state:
                body = state[BODY]
            else:
                request = request or ValidatedRequest(scope, receive, uri_parser=self.uri_parser)
                body = await request.json()
            kwargs[self.arguments.body] = self.arguments.body_value(body)
        return kwargs


class FastPathMiddleware(RoutingMiddleware):
    """Connexion's routing, then each operation's ``FastOperation`` in one call.

    It sits right inside Connexion's exception middleware (so every error is rendered
    as before) and routes with Connexion's own router (the routes and path converters
    Connexion made from openapi.yaml). A request that fully matches an operation the
    fast path can take goes to that operation's ``FastOperation``; anything else (no
    route, a method the path does not take, the docs, an operation whose request body
    is not JSON, a handler that is not a coroutine function) goes on through
    Connexion's middleware stack unchanged.
    """

    #: Routing results remembered (method and path -> operation and path parameters).
    ROUTES_KEPT = 4096

    def __init__(self, app: ASGIApp) -> None:
        super().__init__(app)
        self.operations: dict[tuple[str, str | None], FastOperation | None] | None = None
        self.routes: dict[tuple[str, str], tuple[Any, str, str, dict[str, Any]] | None] = {}

    def _build(self, stack: list[Any]) -> None:
        """Each operation's FastOperation (None where it falls back), from the middleware
        stack Connexion built."""

        def operations_of(kind: type) -> dict[tuple[str, str | None], Any]:
            found: dict[tuple[str, str | None], Any] = {}
            for layer in stack:
                if isinstance(layer, kind):
                    for base_path, apis in layer.apis.items():
                        for api in apis:
                            for operation_id, operation in api.operations.items():
                                found.setdefault((base_path, operation_id), operation)
            return found

        contexts = operations_of(ContextMiddleware)
        validations = operations_of(OnceRequestValidationMiddleware)
        responses = operations_of(ResponseValidationMiddleware)
        handlers = operations_of(AsyncASGIApp)
        built: dict[tuple[str, str | None], FastOperation | None] = {}
        for key, context in contexts.items():
            operation = context.operation
            handler = handlers.get(key)
            validation = validations.get(key)
            takes = (
                isinstance(handler, OnceOperation)
                and isinstance(validation, OnceRequestValidation)
                and inspect.iscoroutinefunction(handler._fn)
                and (not operation.is_request_body_defined or all(map(is_json, operation.consumes)))
            )
            built[key] = (
                FastOperation(
                    operation,
                    handler,
                    validation,
                    responses.get(key),
                    guard,
                    with_rate_limit_headers,
                )
                if takes
                else None
            )
        self.operations = built

    def route(self, scope: Scope) -> tuple[Any, str, str, dict[str, Any]] | None:
        """(FastOperation, api base path, operation id, path parameters) of a request
        that fully matches an operation the fast path takes, else None: by Connexion's
        router (Starlette's routes, converters and methods), remembered per method and
        path."""
        key = (scope["method"], scope["path"])
        if key in self.routes:
            return self.routes[key]
        found = None
        for mount in self.router.routes:
            match, child = mount.matches(scope)
            if match is not Match.FULL:
                continue
            inner = {**scope, **child}
            for route in mount.app.routes:
                match, leaf = route.matches(inner)
                if match is Match.NONE:
                    continue
                if match is Match.FULL:
                    operation_id = route.endpoint.operation_id
                    base_path = mount.path
                    assert self.operations is not None
                    fast = self.operations.get((base_path, operation_id))
                    if fast is not None:
                        found = (fast, base_path, operation_id, leaf["path_params"])
                break  # Starlette takes the first route that matches the path
            break
        if len(self.routes) >= self.ROUTES_KEPT:
            self.routes.clear()
        self.routes[key] = found
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if self.operations is None:
            self._build(scope["app"].middleware_stack)
        found = self.route(scope)
        if found is None:
            await self.app(scope, receive, send)  # Connexion's middleware stack
            return
        fast, base_path, operation_id, path_params = found
        scope["path_params"] = dict(path_params)
        extensions = scope.setdefault("extensions", {})
        extensions.setdefault(ROUTING_CONTEXT, {}).update(
            {"api_base_path": base_path, "operation_id": operation_id}
        )
        await fast(scope, receive, send)


def middlewares(inner: list[Any], *, fast: bool = True) -> list[Any]:
    """The middleware stack kanal gives Connexion: Connexion's own, with kanal's
    security (``AuthMiddleware``) and request validation in place of Connexion's, the
    fast path right inside the exception middleware (unless ``fast`` is False), and
    ``inner`` just before the context middleware."""
    replaced = {
        SecurityMiddleware: AuthMiddleware,
        RequestValidationMiddleware: OnceRequestValidationMiddleware,
    }
    stack = [replaced.get(m, m) for m in ConnexionMiddleware.default_middlewares]
    if fast:
        stack.insert(stack.index(ExceptionMiddleware) + 1, FastPathMiddleware)
    for middleware in inner:
        stack.insert(stack.index(ContextMiddleware), middleware)
    return stack


def install(app: Any) -> None:
    """Before ``add_api``: Connexion's operations built once, not per request."""
    app._middleware_app.api_cls = OnceApi
