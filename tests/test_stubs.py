"""The designer's loop: add an operation to the spec, run `kanal stubs`, the server answers 501."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import yaml

from kanal.stubs import Stub, operations

from .conftest import ROOT, Server, make_accounts

NEW_OPERATION = {
    "get": {
        "operationId": "getWidgetStock",
        "tags": ["Widgets"],
        "summary": "Read a widget's stock level",
        "description": "A new operation, not implemented yet.",
        "parameters": [
            {"$ref": "#/components/parameters/StoreId"},
            {
                "name": "widget_id",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "maxLength": 64},
            },
            {"name": "warehouse", "in": "query", "schema": {"type": "integer"}},
        ],
        "responses": {"200": {"description": "The stock level."}},
    }
}


def kanal(copy: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    return subprocess.run(
        [sys.executable, "-m", "kanal", *args], cwd=copy, env=env, capture_output=True, text=True
    )


def test_stub_loop_on_a_copy_of_the_project(tmp_path: Path) -> None:
    copy = tmp_path / "project"
    copy.mkdir()
    for name in ("kanal", "handlers"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    spec: dict[str, Any] = yaml.safe_load((ROOT / "openapi.yaml").read_text())
    spec["paths"]["/api/v1/stores/{store_id}/widgets/{widget_id}/stock"] = NEW_OPERATION
    (copy / "openapi.yaml").write_text(yaml.safe_dump(spec, sort_keys=False))

    check = kanal(copy, "stubs", "--check")
    assert check.returncode == 1
    assert "missing: handlers.widgets.get_widget_stock (GET " in check.stdout
    assert not (copy / "handlers" / "widgets.py").exists()

    first = kanal(copy, "stubs")
    assert first.returncode == 0, first.stderr
    assert first.stdout.startswith("wrote handlers.widgets.get_widget_stock")
    module = (copy / "handlers" / "widgets.py").read_text()
    function = next(
        node for node in ast.parse(module).body if isinstance(node, ast.AsyncFunctionDef)
    )
    assert function.name == "get_widget_stock"
    assert [(a.arg, ast.unparse(a.annotation)) for a in function.args.args] == [
        ("store_id", "int"),
        ("widget_id", "str"),
        ("warehouse", "int | None"),
    ]
    assert '"""Read a widget\'s stock level"""' in module
    orders_before = (copy / "handlers" / "orders.py").read_text()

    again = kanal(copy, "stubs")
    assert "nothing to write" in again.stdout
    assert (copy / "handlers" / "widgets.py").read_text() == module
    assert (copy / "handlers" / "orders.py").read_text() == orders_before
    assert kanal(copy, "stubs", "--check").returncode == 0

    db = str(tmp_path / "kanal.db")
    keys = make_accounts(db)
    server = Server(db)
    server.cwd, server.env = copy, {"PYTHONPATH": str(copy)}
    server.start()
    try:
        headers = {"Authorization": f"Bearer {keys['store']}"}
        stock = httpx.get(
            f"{server.url}/api/v1/stores/123/widgets/w-1/stock?warehouse=2", headers=headers
        )
        assert (stock.status_code, stock.json()) == (501, {"error": "Not implemented"})
        order = httpx.post(
            f"{server.url}/api/v1/stores/123/orders",
            headers=headers,
            json={
                "external_id": "O-1",
                "placed_at": "2026-05-18T10:00:00Z",
                "total_price": 1,
                "customer": {"phone": "+33612345678"},
            },
        )
        assert order.status_code == 201
        assert httpx.get(f"{server.url}/healthz").status_code == 200
    finally:
        server.stop()


def test_long_signatures_wrap_one_parameter_a_line() -> None:
    stub = Stub(
        "handlers.x",
        "do_it",
        "post",
        "/x",
        "Do it",
        [(f"parameter_number_{i}", "str", True) for i in range(6)],
        body=True,
    )
    source = stub.source()
    assert source.splitlines()[1] == "    parameter_number_0: str,"
    assert all(len(line) <= 100 for line in source.splitlines())
    compile(source, "<stub>", "exec")


def test_parameter_names_are_pythonic_as_connexion_passes_them() -> None:
    """Found writing the stats stub: a query parameter named `from` arrives as `from_`."""
    spec = {
        "paths": {
            "/stats": {
                "get": {
                    "operationId": "getStats",
                    "tags": ["Stats"],
                    "summary": "Stats",
                    "parameters": [
                        {
                            "name": "from",
                            "in": "query",
                            "required": True,
                            "schema": {"type": "string"},
                        }
                    ],
                    "responses": {"200": {"description": "ok"}},
                }
            }
        }
    }
    (stub,) = operations(spec)
    assert (stub.module, stub.function) == ("handlers.stats", "get_stats")
    assert stub.parameters == [("from_", "str", True)]
    compile(stub.source(), "<stub>", "exec")
