"""The breaking-change guard's own check: request limits that got tighter."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from conformance.breaking import narrowing

from .conftest import ROOT

SPEC: dict[str, Any] = yaml.safe_load((ROOT / "openapi.yaml").read_text())


def changed(edit: Any) -> list[str]:
    new = copy.deepcopy(SPEC)
    edit(new["components"]["schemas"])
    return narrowing(SPEC, new)


def test_unchanged_spec_has_no_narrowing() -> None:
    assert narrowing(SPEC, copy.deepcopy(SPEC)) == []


def test_shorter_max_length_is_breaking() -> None:
    found = changed(lambda s: s["ExternalId"].__setitem__("maxLength", 100))
    assert any("external_id: maxLength 255 -> 100" in f for f in found)


def test_longer_max_length_is_not_breaking() -> None:
    assert changed(lambda s: s["ExternalId"].__setitem__("maxLength", 300)) == []


def test_new_pattern_higher_minimum_and_lost_nullable_are_breaking() -> None:
    def edit(schemas: dict[str, Any]) -> None:
        schemas["OrderInput"]["properties"]["financial_status"]["pattern"] = "^[a-z]+$"
        schemas["Money"]["minimum"] = 1
        schemas["Currency"]["nullable"] = False

    found = " | ".join(changed(edit))
    assert "financial_status: pattern" in found
    assert "total_price(allOf 0): minimum 0 -> 1" in found
    assert "currency: no longer nullable" in found


def test_closing_additional_properties_is_breaking() -> None:
    found = changed(lambda s: s["OrderInput"].__setitem__("additionalProperties", False))
    assert any("additionalProperties closed" in f for f in found)
