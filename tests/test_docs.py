"""The running service serves its contract and interactive docs under the API's base path."""

from __future__ import annotations

import yaml
from starlette.testclient import TestClient

from .conftest import ROOT


def test_spec_is_served_as_json_and_yaml(client: TestClient) -> None:
    source = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    as_json = client.get("/api/v1/openapi.json")
    assert as_json.status_code == 200
    assert as_json.headers["content-type"] == "application/json"
    as_yaml = client.get("/api/v1/openapi.yaml")
    assert as_yaml.status_code == 200
    assert as_yaml.headers["content-type"] == "application/yaml"
    for served in (as_json.json(), yaml.safe_load(as_yaml.text)):
        # The contract as written ($refs and named components intact), so that clients
        # generated from the served document are the same as from openapi.yaml ...
        assert {k: v for k, v in served.items() if k != "servers"} == {
            k: v for k, v in source.items() if k != "servers"
        }
        # ... but "Try it out" calls the host that serves it.
        assert [s["url"] for s in served["servers"]] == [""]


def test_swagger_ui_is_served(client: TestClient) -> None:
    page = client.get("/api/v1/ui/")
    assert page.status_code == 200
    assert "swagger-ui" in page.text
    assert 'url: "/api/v1/openapi.json"' in page.text
    assert client.get("/api/v1/ui/swagger-ui-bundle.js").status_code == 200
