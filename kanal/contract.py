"""The contract check: openapi.yaml, and the handlers it routes to, before anything runs.

A slip in the hand-written contract must not wait for a request to surface (a 500,
a traceback at start-up, a parameter silently dropped). ``kanal serve``, ``demo``,
``worker`` and ``stubs`` run this check first and stop on any problem with exit
status 1 and one line per problem, naming what is wrong and where: the JSON path
in openapi.yaml, or the operation (method, path, operationId).

The document:

- it is YAML that parses into a mapping, without a key given twice in one mapping
  (YAML keeps the last one silently: a second ``get:`` would replace the first);
- every ``$ref`` is local (``#/...``) and points to something;
- openapi-spec-validator's OpenAPI 3.0 validation, every error it finds;
- every operation has an operationId, used by no other operation;
- every ``{name}`` of a path template is declared ``in: path`` for every operation
  of that path (in the path's or the operation's parameters), and no operation
  declares a path parameter its path does not have.

The handlers (``check(handlers=True)``), as the server's resolver finds them
(``x-openapi-router-controller``, else ``handlers.<first tag>``; the snake_case of
the operationId):

- the module imports and has the function;
- the function accepts what Connexion passes it (kanal.operations.Arguments):
  every path and query parameter under its Python name (``from`` -> ``from_``),
  the request body under its name (``body``), or ``**kwargs``; an optional query
  parameter without a default in the contract needs a default in the handler (it
  is passed only when the request has it); and a handler parameter without a
  default must be one the operation passes.

The check of a given spec runs once per process (``functools.cache``), never per
request.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import re
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import yaml

from kanal.spec import SPEC
from kanal.stubs import METHODS, Stub, controller_for, operations

#: Path template parameters, as Connexion and openapi-spec-validator read them.
TEMPLATE = re.compile(r"{([^}/]+)}")
_PLAIN_KEY = re.compile(r"^[a-zA-Z][a-zA-Z0-9_]*$")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the contract, and where it is."""

    where: str  # a JSON path ($.paths['/x'].get), a line of the file, or an operation
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


def json_path(*parts: Any) -> str:
    """``$.paths['/api/v1/x'].post.responses['201']``: jsonschema's notation."""
    path = "$"
    for part in parts:
        if isinstance(part, int):
            path += f"[{part}]"
        elif _PLAIN_KEY.match(str(part)):
            path += f".{part}"
        else:
            escaped = str(part).replace("\\", "\\\\").replace("'", "\\'")
            path += f"['{escaped}']"
    return path


def operation_label(method: str, path: str, operation: Any) -> str:
    """``GET /api/v1/stores/{store_id}/orders/count (countOrders)``."""
    operation_id = operation.get("operationId") if isinstance(operation, dict) else None
    return f"{method.upper()} {path}" + (f" ({operation_id})" if operation_id else "")


# -- the document ---------------------------------------------------------------------


class _Loader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """YAML's safe loader, noting every key given twice in one mapping."""

    duplicates: list[tuple[str, int]]

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> Any:
        seen: set[tuple[str, str]] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag.endswith(":merge"):
                continue
            key = (key_node.tag, key_node.value)
            if key in seen:
                self.duplicates.append((key_node.value, key_node.start_mark.line + 1))
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load(path: Path) -> tuple[Any, list[Problem]]:
    """The parsed document, and the problems that keep it from being one."""
    name = path.name
    try:
        text = path.read_text()
    except OSError as exc:
        return None, [Problem(str(path), f"cannot be read ({exc.strerror or exc})")]
    loader = _Loader(text)
    loader.duplicates = []
    try:
        spec = loader.get_single_data()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{name} line {mark.line + 1}, column {mark.column + 1}" if mark else name
        problem = getattr(exc, "problem", None) or str(exc)
        context = getattr(exc, "context", None)
        return None, [
            Problem(where, f"not valid YAML: {problem}" + (f" ({context})" if context else ""))
        ]
    finally:
        loader.dispose()
    problems = [
        Problem(
            f"{name} line {line}",
            f"the key {key!r} is given twice in the same mapping; YAML keeps only the "
            "last one, silently",
        )
        for key, line in loader.duplicates
    ]
    if not isinstance(spec, dict):
        problems.append(Problem("$", "the document is not a mapping (an OpenAPI object)"))
        return None, problems
    return spec, problems


def _walk(node: Any, *parts: Any) -> Iterator[tuple[tuple[Any, ...], dict[str, Any]]]:
    """Every mapping of the document, with the path to it."""
    if isinstance(node, dict):
        yield parts, node
        for key, value in node.items():
            yield from _walk(value, *parts, key)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, *parts, index)


def _pointer_target(spec: dict[str, Any], ref: str) -> tuple[bool, str]:
    """Whether a local ``$ref`` resolves; if not, the part of it that is missing."""
    target: Any = spec
    walked = "#"
    for raw in ref[2:].split("/") if ref != "#" else []:
        part = unquote(raw).replace("~1", "/").replace("~0", "~")
        if isinstance(target, dict) and part in target:
            target = target[part]
        elif isinstance(target, list) and part.isdigit() and int(part) < len(target):
            target = target[int(part)]
        else:
            return False, f"{walked} has no {part!r}"
        walked += f"/{raw}"
    return True, ""


def ref_problems(spec: dict[str, Any]) -> list[Problem]:
    """Every ``$ref`` that is not local or points to nothing."""
    problems = []
    for parts, node in _walk(spec):
        if "$ref" not in node:
            continue
        ref = node["$ref"]
        where = json_path(*parts)
        if not isinstance(ref, str):
            problems.append(Problem(where, f"$ref must be a string, not {ref!r}"))
        elif not ref.startswith("#"):
            problems.append(
                Problem(where, f"$ref {ref!r} is not local (#/...): openapi.yaml is one file")
            )
        elif ref != "#" and not ref.startswith("#/"):
            problems.append(Problem(where, f"$ref {ref!r} is not a JSON pointer (#/...)"))
        else:
            found, missing = _pointer_target(spec, ref)
            if not found:
                problems.append(Problem(where, f"$ref {ref!r} points to nothing ({missing})"))
    return problems


def _local(spec: dict[str, Any], node: Any) -> Any:
    """``node``, its own ``$ref`` followed (once, or through a chain); None if broken."""
    for _ in range(32):
        if not (isinstance(node, dict) and isinstance(node.get("$ref"), str)):
            return node
        ref = node["$ref"]
        if not ref.startswith("#/") or not _pointer_target(spec, ref)[0]:
            return None
        node = spec
        for raw in ref[2:].split("/"):
            part = unquote(raw).replace("~1", "/").replace("~0", "~")
            node = node[int(part)] if isinstance(node, list) else node[part]
    return None


def _operations(spec: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any], Any]]:
    """(path, method, path item, operation) for every operation of the document."""
    paths = spec.get("paths")
    if not isinstance(paths, dict):
        return
    for path, item in paths.items():
        if not isinstance(item, dict):
            continue
        for method in (*METHODS, "trace"):
            if method in item:
                yield str(path), method, item, item[method]


def validator_problems(spec: dict[str, Any], *, refs_broken: bool) -> list[Problem]:
    """openapi-spec-validator's OpenAPI 3.0 validation: every error, with its JSON path."""
    from openapi_spec_validator import OpenAPIV30SpecValidator
    from openapi_spec_validator.validation.exceptions import (
        DuplicateOperationIDError,
        UnresolvableParameterError,
    )

    problems: list[Problem] = []
    located: set[tuple[Any, ...]] = set()
    try:
        for error in OpenAPIV30SpecValidator(spec).iter_errors():
            if isinstance(error, DuplicateOperationIDError | UnresolvableParameterError):
                continue  # operation_problems reports these, naming the operation
            parts = _locate(spec, error, located)
            located.add(parts)
            inner, message = _explain(error, _at(spec, parts))
            if len(message) > 300:
                message = message[:297] + "..."
            where = json_path(*parts, *inner)
            if all(problem.where != where for problem in problems):  # one error a place
                problems.append(Problem(where, message))
    except Exception as exc:
        # The validator follows $refs and stops at one that points to nothing; those
        # are reported by ref_problems already.
        if not refs_broken:
            problems.append(
                Problem("$", f"openapi-spec-validator stopped: {type(exc).__name__}: {exc}")
            )
    return problems


def _explain(error: Any, instance: Any) -> tuple[tuple[Any, ...], str]:
    """What is wrong, said shortly, and where under the error's own path.

    "<the whole object> is not valid under any of the schemas listed in the 'oneOf'
    keyword" says neither which rule failed nor where. The errors of the alternative
    the object nearly matches (a response rather than a $ref) are told instead: from
    the error's context, or, when the validator kept none, by checking the object
    against each alternative again.
    """
    message = _first_line(error.message)
    if error.context:
        return _nearest(error.context)
    schema_path = tuple(error.schema_path)
    alternatives = _at(error.schema, schema_path) if isinstance(error.schema, dict) else None
    if (
        not schema_path
        or schema_path[-1] not in ("oneOf", "anyOf")
        or not isinstance(alternatives, list)
        or instance is _MISSING
    ):
        return (), message
    try:
        from jsonschema.validators import validator_for

        validator = validator_for(error.schema)(error.schema)
        errors = [
            e
            for index, alternative in enumerate(alternatives)
            for e in validator.descend(instance, alternative, schema_path=index)
        ]
    except Exception:
        errors = []
    if not errors:
        return (), "matches none of the forms the OpenAPI 3.0 schema allows here"
    return _nearest(errors)


def _nearest(errors: Any) -> tuple[tuple[Any, ...], str]:
    """Among the errors of a oneOf's or anyOf's alternatives (grouped by the first
    step of their schema path), the first error of the alternative nearly matched."""
    groups: dict[Any, list[Any]] = {}
    for error in errors:
        step = error.relative_schema_path[0] if error.relative_schema_path else None
        groups.setdefault(step, []).append(error)
    nearest = min(
        groups.values(),
        key=lambda group: (
            # Lacking the alternative's own required key: not the one meant ($ref).
            any(not e.relative_path and e.validator == "required" for e in group),
            sum(not e.relative_path for e in group),
            len(group),
        ),
    )
    first = min(nearest, key=lambda e: len(e.relative_path))
    path = tuple(first.relative_path)
    if first.context:
        inner, message = _nearest(first.context)
        return (*path, *inner), message
    return path, _first_line(first.message)


def _first_line(message: Any) -> str:
    first = str(message).split("\n\n")[0]
    unknown = re.fullmatch(r"(.+) (?:does|do) not match any of the regexes: '\^x-'", first)
    if unknown:  # additionalProperties: false, with patternProperties ^x-
        return f"{unknown.group(1)}: no such field here (only x-... extensions may be added)"
    return first


_MISSING = object()


def _keys(node: Any, parts: tuple[Any, ...]) -> tuple[Any, ...]:
    """``parts`` as the document's own keys: the validator reads the key "200" as 200."""
    keys = []
    for part in parts:
        if isinstance(node, dict) and part not in node and str(part) in node:
            part = str(part)
        keys.append(part)
        node = node.get(part) if isinstance(node, dict) else _index(node, part)
    return tuple(keys)


def _index(node: Any, part: Any) -> Any:
    if isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
        return node[part]
    return None


def _at(node: Any, parts: tuple[Any, ...]) -> Any:
    for part in _keys(node, parts):
        in_list = isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        if in_list or (isinstance(node, dict) and part in node):
            node = node[part]
        else:
            return _MISSING
    return node


def _locate(spec: dict[str, Any], error: Any, taken: set[tuple[Any, ...]]) -> tuple[Any, ...]:
    """Where an error is in the document. The validator checks each schema on its own,
    and gives a path inside that schema (``$.properties.status.type``): the schema is
    the one where that path leads to the very value the error is about."""
    parts = tuple(error.absolute_path)
    if _at(spec, parts) is not _MISSING:
        return _keys(spec, parts)
    found = [
        (*base, *parts)
        for base, node in _walk(spec)
        if base and _at(node, parts) is not _MISSING and _at(node, parts) == error.instance
    ]
    return next((where for where in found if where not in taken), found[0] if found else parts)


def operation_problems(spec: dict[str, Any]) -> list[Problem]:
    """Missing or duplicated operationIds; path template parameters not declared."""
    problems = []
    first: dict[str, str] = {}
    for path, method, item, operation in _operations(spec):
        label = operation_label(method, path, operation)
        if not isinstance(operation, dict):
            continue  # the validator says what it should be
        operation_id = operation.get("operationId")
        if not operation_id:
            problems.append(
                Problem(
                    label,
                    "has no operationId; the server routes an operation to the handler "
                    "named after it",
                )
            )
        elif operation_id in first:
            problems.append(
                Problem(
                    label,
                    f"operationId {operation_id!r} is already the operationId of "
                    f"{first[operation_id]}; each operation needs its own",
                )
            )
        else:
            first[str(operation_id)] = f"{method.upper()} {path}"
        declared: dict[str, None] = {}
        for level in (item, operation):
            parameters = level.get("parameters") or []
            for parameter in parameters if isinstance(parameters, list) else []:
                parameter = _local(spec, parameter)
                if isinstance(parameter, dict) and parameter.get("in") == "path":
                    declared[str(parameter.get("name"))] = None
        in_template = TEMPLATE.findall(path)
        for name in in_template:
            if name not in declared:
                problems.append(
                    Problem(
                        label,
                        f"the path has {{{name}}} but the operation declares no `in: path` "
                        f"parameter {name!r} (declare it in the path's parameters, "
                        f"{json_path('paths', path, 'parameters')}, or the operation's)",
                    )
                )
        for name in declared:
            if name not in in_template:
                problems.append(
                    Problem(
                        label,
                        f"declares the path parameter {name!r}, which is not in the path {path}",
                    )
                )
    return problems


def document_problems(spec: dict[str, Any]) -> list[Problem]:
    """Everything wrong with the parsed document (no handler is looked at)."""
    refs = ref_problems(spec)
    return [
        *refs,
        *validator_problems(spec, refs_broken=bool(refs)),
        *operation_problems(spec),
    ]


# -- the handlers -----------------------------------------------------------------------


def _project_frame(exc: BaseException) -> str:
    """Where in the project's files an import failed: ``handlers/x.py line 3``."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{_relative(exc.filename)} line {exc.lineno}"
    root = str(SPEC.parent)
    frames = [
        frame
        for frame in traceback.extract_tb(exc.__traceback__)
        if frame.filename.startswith(root) and "importlib" not in frame.filename
    ]
    return f"{_relative(frames[-1].filename)} line {frames[-1].lineno}" if frames else ""


def _relative(filename: str) -> str:
    try:
        return str(Path(filename).resolve().relative_to(SPEC.parent))
    except ValueError:
        return filename


def _module(name: str, origin: str) -> tuple[Any, str | None]:
    """The imported module, or why it cannot be."""
    try:
        return importlib.import_module(name), None
    except ModuleNotFoundError as exc:
        if exc.name and (name == exc.name or name.startswith(exc.name + ".")):
            file = Path(*name.split(".")).with_suffix(".py")
            return None, (
                f"{origin} names the module {name}, which does not exist (no {file}); "
                "`kanal stubs` writes it with a stub for every operation"
            )
        problem = exc
    except Exception as exc:
        problem = exc
    where = _project_frame(problem)
    message = problem.msg if isinstance(problem, SyntaxError) else problem
    return None, (
        f"{origin} names the module {name}, which fails to import: "
        f"{type(problem).__name__}: {message}" + (f" ({where})" if where else "")
    )


def signature_problems(stub: Stub, function: Any) -> list[str]:
    """How a handler does not take what Connexion passes it (kanal.operations.Arguments)."""
    from connexion.decorators.parameter import unwrap_decorators

    handler = f"{stub.module}.{stub.function}"
    try:
        parameters = inspect.signature(unwrap_decorators(function)).parameters
    except (TypeError, ValueError):
        return [f"handler {handler} has no signature Python can read"]
    kinds = inspect.Parameter
    has_kwargs = any(p.kind is kinds.VAR_KEYWORD for p in parameters.values())
    by_keyword = {
        name: p
        for name, p in parameters.items()
        if p.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
    }
    problems = []
    for argument in stub.arguments:
        what = argument.description
        accepted = by_keyword.get(argument.name)
        if accepted is None and not has_kwargs:
            consequence = {
                "path": "every request to it answers 500",
                "query": f"a request's {argument.spec_name!r} is dropped unseen",
                "body": "the request body is dropped unseen",
            }[argument.location]
            problems.append(
                f"handler {handler} does not accept {what} ({consequence}); add "
                f"`{argument.declaration}` to its parameters, or **kwargs"
            )
        elif accepted is not None and not argument.always and accepted.default is accepted.empty:
            problems.append(
                f"handler {handler}: {what} is optional and has no default in the contract, "
                f"so it is passed only when a request has it; give `{argument.name}` a default "
                f"(`{argument.declaration}`)"
            )
    passed = {argument.name for argument in stub.arguments}
    for name, parameter in parameters.items():
        if parameter.kind is kinds.POSITIONAL_ONLY:
            problems.append(
                f"handler {handler}: parameter {name!r} is positional-only, and Connexion "
                "passes every argument by name"
            )
        elif (
            parameter.kind in (kinds.POSITIONAL_OR_KEYWORD, kinds.KEYWORD_ONLY)
            and name not in passed
            and parameter.default is parameter.empty
        ):
            problems.append(
                f"handler {handler}: parameter {name!r} has no default, and the operation "
                f"passes nothing under that name (no path or query parameter {name!r}"
                + ("" if stub.body else ", no request body")
                + "); every request to it would answer 500"
            )
    return problems


def handler_problems(spec: dict[str, Any], *, skip: tuple[Stub, ...] = ()) -> list[Problem]:
    """Each operation's handler: its module imports, has the function, takes its arguments.

    ``skip``: operations not to look at (``kanal stubs`` reports those as missing).
    """
    problems = []
    skipped = {(stub.method, stub.path) for stub in skip}
    raw = {(method, path): operation for path, method, _, operation in _operations(spec)}
    failed: dict[str, str] = {}
    importlib.invalidate_caches()
    for stub in operations(spec):
        if (stub.method, stub.path) in skipped:
            continue
        operation = raw[(stub.method, stub.path)]
        label = operation_label(stub.method, stub.path, operation)
        origin = (
            "its x-openapi-router-controller"
            if operation.get("x-openapi-router-controller")
            else f"its first tag (no x-openapi-router-controller) {controller_for(operation)!r}"
        )
        if stub.module in failed:
            problems.append(Problem(label, failed[stub.module]))
            continue
        module, why = _module(stub.module, origin)
        if module is None:
            failed[stub.module] = why or ""
            problems.append(Problem(label, failed[stub.module]))
            continue
        function = getattr(module, stub.function, None)
        if not callable(function):
            problems.append(
                Problem(
                    label,
                    f"{stub.module} has no function {stub.function} (the snake_case of "
                    f"operationId {operation.get('operationId')}); `kanal stubs` writes a "
                    "stub that answers 501",
                )
            )
            continue
        problems += [Problem(label, what) for what in signature_problems(stub, function)]
    return problems


# -- the check ------------------------------------------------------------------------


@functools.cache
def check(spec_path: Path = SPEC, *, handlers: bool = True) -> tuple[Problem, ...]:
    """Every problem of the contract at ``spec_path`` (with its handlers', if asked);
    once per process for a given spec."""
    spec, problems = load(spec_path)
    if spec is None:
        return tuple(problems)
    problems += document_problems(spec)
    if handlers and not problems:
        # The handlers are looked at only for a sound document (their arguments come
        # from its parameters).
        problems += handler_problems(spec)
    return tuple(problems)


def report(
    problems: tuple[Problem, ...] | list[Problem], outcome: str, spec_path: Path = SPEC
) -> str:
    """The message that stops a command: what is wrong, where, one problem a line."""
    count = f"{len(problems)} problem" + ("" if len(problems) == 1 else "s")
    lines = [f"{spec_path.name}: the contract has {count}; {outcome}."]
    lines += [f"  {problem}" for problem in problems]
    return "\n".join(lines)
