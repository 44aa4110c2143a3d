"""``kanal stubs``: a handler for every operation of openapi.yaml that has none yet.

For each operation, the handler is the snake_case of its operationId in the
module named by ``x-openapi-router-controller`` (or ``handlers.<first tag>``),
exactly where the server's resolver looks. A missing function is appended to
its module (created if needed) with the parameters Connexion passes (path and
query parameters, ``body`` when there is a request body), the operation's
summary as docstring, and a body that answers 501. Existing functions are never
touched, so running it twice changes nothing.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
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


@dataclass
class Stub:
    module: str
    function: str
    method: str
    path: str
    summary: str
    parameters: list[tuple[str, str, bool]]  # (name, python type, required)
    body: bool

    @property
    def label(self) -> str:
        return f"{self.module}.{self.function} ({self.method.upper()} {self.path})"

    def source(self) -> str:
        args = [f"{name}: {kind}" for name, kind, required in self.parameters if required]
        if self.body:
            args.append("body: dict")
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
            params = []
            for param in [*item.get("parameters", []), *op.get("parameters", [])]:
                param = resolve(spec, param)
                if param["in"] not in ("path", "query"):
                    continue
                schema = resolve(spec, param.get("schema", {}))
                params.append(
                    (
                        pythonic(param["name"]),
                        TYPES.get(schema.get("type"), "str"),
                        bool(param.get("required")),
                    )
                )
            found.append(
                Stub(
                    module=controller_for(op),
                    function=snake_case(op["operationId"]),
                    method=method,
                    path=path,
                    summary=op.get("summary", ""),
                    parameters=params,
                    body="requestBody" in op,
                )
            )
    return found


def module_file(root: Path, module: str) -> Path:
    return root.joinpath(*module.split(".")).with_suffix(".py")


def defined_functions(path: Path) -> set[str]:
    if not path.exists():
        return set()
    tree = ast.parse(path.read_text())
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
