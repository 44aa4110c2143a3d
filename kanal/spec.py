"""openapi.yaml, read once, and its local ``$ref``s."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import yaml

SPEC = Path(__file__).resolve().parent.parent / "openapi.yaml"


@functools.cache
def load_spec() -> dict[str, Any]:
    """openapi.yaml, parsed once per process (with libyaml when it is there)."""
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    return yaml.load(SPEC.read_text(), Loader=loader)


def resolve(spec: dict[str, Any], node: Any) -> Any:
    """``node`` with every local ``$ref`` (``#/components/...``) inlined."""
    if isinstance(node, list):
        return [resolve(spec, item) for item in node]
    if not isinstance(node, dict):
        return node
    if "$ref" in node:
        target: Any = spec
        for part in node["$ref"].lstrip("#/").split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        return resolve(spec, target)
    return {key: resolve(spec, value) for key, value in node.items()}
