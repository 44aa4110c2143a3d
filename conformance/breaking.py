"""Breaking-change guard for openapi.yaml.

    python -m conformance.breaking

Compares each of the last commits that changed openapi.yaml with the version
before it (and the working tree with HEAD, when they differ) in two ways:

- Optic (``optic diff --check``), the maintained tool: removed operations,
  status codes and response properties, request properties made required,
  enum values removed, types changed;
- a narrowing check of its own for what Optic lets through: a request field
  whose limit got tighter (maxLength, minLength, minimum, maximum, maxItems,
  minItems), a pattern, format or ``not`` added or changed, ``nullable`` removed,
  ``additionalProperties`` closed.

A breaking change passes only when it is marked as intended: a commit whose
message carries the trailer ``Breaking-Change: intended`` (say why in the
message), or, for uncommitted work, ``KANAL_ALLOW_BREAKING=1``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
SPEC = "openapi.yaml"
MARK = "Breaking-Change: intended"
RECENT = 10
METHODS = ("get", "put", "post", "patch", "delete")
UPPER = ("maxLength", "maximum", "maxItems")
LOWER = ("minLength", "minimum", "minItems")


def git(*args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout


def resolve(doc: dict[str, Any], node: Any) -> Any:
    """Follow local ``$ref``s until a schema that is not a reference."""
    seen = 0
    while isinstance(node, dict) and "$ref" in node and seen < 50:
        target: Any = doc
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node, seen = target, seen + 1
    return node


def request_schemas(doc: dict[str, Any]) -> dict[str, Any]:
    """Every request body and parameter schema, keyed by operation and name."""
    found: dict[str, Any] = {}
    for path, item in doc.get("paths", {}).items():
        shared = item.get("parameters", [])
        for method in METHODS:
            op = item.get(method)
            if op is None:
                continue
            label = f"{method.upper()} {path}"
            for param in [*shared, *op.get("parameters", [])]:
                param = resolve(doc, param)
                found[f"{label} {param['in']} parameter {param['name']}"] = param.get("schema")
            body = resolve(doc, op.get("requestBody", {}))
            for media, content in body.get("content", {}).items():
                found[f"{label} body {media}"] = content.get("schema")
    return found


#: Formats that refuse nothing (Connexion routes a ``path`` parameter over ``/`` too).
WIDENING_FORMATS = ("path",)


def narrowed(doc_old: dict, old: Any, doc_new: dict, new: Any, where: str) -> Iterator[str]:
    """What a client that was valid against ``old`` could now be refused for."""
    old, new = resolve(doc_old, old), resolve(doc_new, new)
    if not isinstance(old, dict) or not isinstance(new, dict):
        return
    for key in UPPER:
        if key in new and (key not in old or new[key] < old[key]):
            yield f"{where}: {key} {old.get(key, 'unset')} -> {new[key]}"
    for key in LOWER:
        if key in new and (key not in old or new[key] > old[key]):
            yield f"{where}: {key} {old.get(key, 'unset')} -> {new[key]}"
    for key in ("pattern", "format", "not"):
        # `format: path` constrains no value: it lets a path parameter take a `/` too.
        if key in new and new.get(key) != old.get(key) and new[key] not in WIDENING_FORMATS:
            yield f"{where}: {key} {old.get(key, 'unset')!r} -> {new[key]!r}"
    if old.get("nullable") and not new.get("nullable"):
        yield f"{where}: no longer nullable"
    if (
        old.get("additionalProperties", True) is not False
        and new.get("additionalProperties", True) is False
    ):
        yield f"{where}: additionalProperties closed"
    old_props, new_props = old.get("properties", {}), new.get("properties", {})
    for name in old_props.keys() & new_props.keys():
        yield from narrowed(doc_old, old_props[name], doc_new, new_props[name], f"{where}.{name}")
    if "items" in old and "items" in new:
        yield from narrowed(doc_old, old["items"], doc_new, new["items"], f"{where}[]")
    for i, (a, b) in enumerate(zip(old.get("allOf", []), new.get("allOf", []), strict=False)):
        yield from narrowed(doc_old, a, doc_new, b, f"{where}(allOf {i})")


def narrowing(old_doc: dict[str, Any], new_doc: dict[str, Any]) -> list[str]:
    old, new = request_schemas(old_doc), request_schemas(new_doc)
    return [
        problem
        for key in sorted(old.keys() & new.keys())
        for problem in narrowed(old_doc, old[key], new_doc, new[key], key)
    ]


def optic(old_text: str, new_text: str) -> tuple[bool, str]:
    """Run Optic's breaking-change checks on two versions of the spec."""
    with tempfile.TemporaryDirectory() as tmp:
        old_path, new_path = Path(tmp, "old.yaml"), Path(tmp, "new.yaml")
        old_path.write_text(old_text)
        new_path.write_text(new_text)
        # Loose validation: Optic's strict validator rejects valid OpenAPI 3.0.3
        # link objects with a requestBody map (openapi-spec-validator, Redocly
        # and Spectral accept them; the spec is validated by those in CI).
        result = subprocess.run(
            [
                str(ROOT / "node_modules/.bin/optic"),
                "diff",
                str(old_path),
                str(new_path),
                "--check",
                "--validation",
                "loose",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
        )
    return result.returncode == 0, result.stdout + result.stderr


def compare(label: str, old_text: str, new_text: str, intended: bool) -> bool:
    ok, report = optic(old_text, new_text)
    problems = narrowing(yaml.safe_load(old_text), yaml.safe_load(new_text))
    if ok and not problems:
        print(f"{label}: no breaking change")
        return True
    print(f"{label}: BREAKING" + (" (marked as intended)" if intended else ""))
    if not ok:
        print("\n".join("    " + line for line in report.splitlines() if line.strip()))
    for problem in problems:
        print(f"    narrowed: {problem}")
    return intended


def main() -> int:
    good = True
    commits = git("log", f"-n{RECENT}", "--format=%H", "--", SPEC).split()
    for commit in commits:
        try:
            old = git("show", f"{commit}~1:{SPEC}")
        except subprocess.CalledProcessError:
            continue  # the commit that created the spec
        new = git("show", f"{commit}:{SPEC}")
        message = git("log", "-1", "--format=%B", commit)
        good &= compare(f"commit {commit[:10]}", old, new, MARK in message)
    if commits:
        tree = (ROOT / SPEC).read_text()
        head = git("show", f"HEAD:{SPEC}")
        if tree != head:
            allowed = os.environ.get("KANAL_ALLOW_BREAKING") == "1"
            good &= compare("working tree", head, tree, allowed)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
