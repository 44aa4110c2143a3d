"""``kanal stubs``: a handler for every operation of openapi.yaml that has none yet.

For each operation, the handler is the snake_case of its operationId in the
module named by ``x-openapi-router-controller`` (or ``handlers.<first tag>``),
exactly where the server's resolver looks. A missing function is appended to
its module (created if needed) with the parameters Connexion passes (path and
query parameters, ``body`` when there is a request body), the operation's
summary as docstring, and a body that answers 501. Existing functions are never
touched, so running it twice changes nothing. Each operation's ``arguments`` are
what Connexion passes its handler; kanal.contract checks existing handlers
against them.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from connexion.decorators.parameter import pythonic

from kanal.spec import resolve

METHODS = ("get", "put", "post", "patch", "delete", "head", "options")
TYPES = {
    "integer": "int",
    "number": "float",
    "boolean": "bool",
    "string": "str",
    "array": "list",
    "object": "dict",
}


def snake_case(name: str) -> str:
    """``upsertOrder`` -> ``upsert_order``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def controller_for(operation: dict[str, Any]) -> str:
    """The module an operation's handler lives in."""
    controller = operation.get("x-openapi-router-controller")
    if controller:
        return str(controller)
    tags = operation.get("tags") or ["default"]
    return "handlers." + re.sub(r"\W+", "_", snake_case(str(tags[0]).replace(" ", ""))).strip("_")


@dataclass(frozen=True)
class Argument:
    """What Connexion passes a handler for one parameter, or for the request body
    (kanal.operations.Arguments: names made pythonic, query defaults from the spec)."""

    name: str  # the Python name it arrives under: `from` -> `from_`
    location: str  # "path", "query" or "body"
    spec_name: str  # its name in openapi.yaml
    kind: str  # the Python type a stub declares
    always: bool  # passed with every request (path, body, required, or with a default)

    @property
    def declaration(self) -> str:
        """The parameter as a stub declares it: ``dry_run: bool | None = None``."""
        return f"{self.name}: {self.kind}" + ("" if self.always else " | None = None")

    @property
    def description(self) -> str:
        if self.location == "body":
            return f"the request body (passed as {self.name!r})"
        spec = "" if self.spec_name == self.name else f" (passed as {self.name!r})"
        return f"{self.location} parameter {self.spec_name!r}{spec}"


@dataclass
class Stub:
    module: str
    function: str
    method: str
    path: str
    summary: str
    parameters: list[tuple[str, str, bool]]  # (name, python type, required)
    body: bool
    body_name: str = "body"
    arguments: list[Argument] = field(default_factory=list)

    @property
    def label(self) -> str:
        return f"{self.module}.{self.function} ({self.method.upper()} {self.path})"

    def source(self) -> str:
        args = [f"{name}: {kind}" for name, kind, required in self.parameters if required]
        if self.body:
            args.append(f"{self.body_name}: dict")
        args += [
            f"{name}: {kind} | None = None"
            for name, kind, required in self.parameters
            if not required
        ]
        head = f"async def {self.function}("
        tail = ") -> tuple[dict[str, str], int]:"
        one_line = head + ", ".join(args) + tail
        signature = (
            one_line
            if len(one_line) <= 100
            else (head + "\n" + "".join(f"    {arg},\n" for arg in args) + tail)
        )
        summary = self.summary.replace('"""', "'''") or f"{self.method.upper()} {self.path}"
        return f'{signature}\n    """{summary}"""\n    return {{"error": "Not implemented"}}, 501\n'


def operations(spec: dict[str, Any]) -> list[Stub]:
    """Every operation of the spec, as the stub that would implement it."""
    found = []
    for path, item in spec.get("paths", {}).items():
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            # The operation's parameters override the path's of the same name and place.
            declared = {}
            for param in [*item.get("parameters", []), *op.get("parameters", [])]:
                param = resolve(spec, param)
                declared[(param["name"], param["in"])] = param
            params, arguments = [], []
            for param in declared.values():
                if param["in"] not in ("path", "query"):
                    continue
                schema = param.get("schema", {})
                name, kind = pythonic(param["name"]), TYPES.get(schema.get("type"), "str")
                required = bool(param.get("required"))
                params.append((name, kind, required))
                # Connexion fills a query parameter's default (an object's always).
                always = (
                    param["in"] == "path"
                    or required
                    or "default" in param
                    or "default" in schema
                    or schema.get("type") == "object"
                )
                arguments.append(Argument(name, param["in"], param["name"], kind, always))
            body_name = "body"
            if "requestBody" in op:
                body_name = pythonic(resolve(spec, op["requestBody"]).get("x-body-name", "body"))
                arguments.append(Argument(body_name, "body", body_name, "dict", True))
            found.append(
                Stub(
                    module=controller_for(op),
                    function=snake_case(op["operationId"]),
                    method=method,
                    path=path,
                    summary=op.get("summary", ""),
                    parameters=params,
                    body="requestBody" in op,
                    body_name=body_name,
                    arguments=arguments,
                )
            )
    return found


def module_file(root: Path, module: str) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def defined_functions(path: Path) -> set[str]:
    if not path.exists():
        return set()
    try:
        tree = ast.parse(path.read_text(), filename=str(path))
    except SyntaxError as exc:
        raise ValueError(f"{path} line {exc.lineno}: {exc.msg}") from None
    return {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
    }


def missing(root: Path, spec_path: Path) -> list[Stub]:
    """The operations whose handler function does not exist yet."""
    spec = yaml.safe_load(spec_path.read_text())
    return [
        stub
        for stub in operations(spec)
        if stub.function not in defined_functions(module_file(root, stub.module))
    ]


def write(root: Path, stubs: list[Stub]) -> list[Path]:
    """Append the stubs to their modules, creating modules and packages as needed."""
    written = []
    for stub in stubs:
        path = module_file(root, stub.module)
        for parent in reversed(path.relative_to(root).parents[:-1]):
            package = root / parent
            package.mkdir(exist_ok=True)
            init = package / "__init__.py"
            if not init.exists():
                init.write_text(f'"""{parent.name}."""\n')
        text = (
            path.read_text()
            if path.exists()
            else (f'"""Handlers of {stub.module} (stubs written by `kanal stubs`)."""\n')
        )
        path.write_text(text.rstrip("\n") + "\n\n\n" + stub.source())
        written.append(path)
    return written
