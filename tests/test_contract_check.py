"""Issue 14: a designer's slip in openapi.yaml stops the commands with a message, never a 500.

Each slip is made on a copy of the project (as tests/test_stubs.py does): `kanal
stubs --check` and `kanal serve` exit 1, the message names the problem and where
it is, and there is no traceback. Then the conformance runner against a kanal
running elsewhere, and its refusal to write outside conformance/reports/.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from conformance import run as conformance
from kanal import contract
from kanal.stubs import operations

from .conftest import ROOT, Server, make_accounts

ORDERS = "/api/v1/stores/{store_id}/orders"
COUNT = "/api/v1/stores/{store_id}/orders/count"
STATS = "/api/v1/stores/{store_id}/stats/recovery"

Spec = dict[str, Any]


def project(tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    copy.mkdir()
    for name in ("kanal", "handlers"):
        shutil.copytree(ROOT / name, copy / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "openapi.yaml", copy / "openapi.yaml")
    return copy


def kanal(copy: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(copy)}
    return subprocess.run(
        [sys.executable, "-m", "kanal", *args],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def edit_spec(copy: Path, change: Callable[[Spec], None]) -> None:
    path = copy / "openapi.yaml"
    spec = yaml.safe_load(path.read_text())
    change(spec)
    path.write_text(yaml.safe_dump(spec, sort_keys=False))


def edit_text(copy: Path, name: str, old: str, new: str) -> None:
    path = copy / name
    text = path.read_text()
    assert text.count(old) == 1, f"{old!r} in {name}"
    path.write_text(text.replace(old, new))


# -- the slips -----------------------------------------------------------------------


def undeclared_path_parameter(copy: Path) -> None:
    edit_spec(copy, lambda spec: spec["paths"][COUNT].pop("parameters"))


def request_body_ref_to_nothing(copy: Path) -> None:
    def change(spec: Spec) -> None:
        body = spec["components"]["requestBodies"]["OrderInput"]["content"]["application/json"]
        body["schema"] = {"$ref": "#/components/schemas/OrderInputt"}

    edit_spec(copy, change)


def duplicate_operation_id(copy: Path) -> None:
    def change(spec: Spec) -> None:
        spec["paths"][COUNT]["get"]["operationId"] = "listOrders"

    edit_spec(copy, change)


def new_query_parameter_handler_unchanged(copy: Path) -> None:
    def change(spec: Spec) -> None:
        spec["paths"][ORDERS]["post"]["parameters"] = [
            {"name": "dry_run", "in": "query", "schema": {"type": "boolean"}}
        ]

    edit_spec(copy, change)


def response_schema_ref_to_nothing(copy: Path) -> None:
    def change(spec: Spec) -> None:
        spec["paths"][COUNT]["get"]["responses"]["200"] = {
            "description": "How many.",
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Countt"}}},
        }

    edit_spec(copy, change)


def controller_module_missing(copy: Path) -> None:
    def change(spec: Spec) -> None:
        spec["paths"][COUNT]["get"]["x-openapi-router-controller"] = "handlers.order"

    edit_spec(copy, change)


def handler_missing_query_parameter(copy: Path) -> None:
    edit_text(copy, "handlers/stats.py", "from_: str, to: str)", "from_: str)")


def handler_parameter_never_passed(copy: Path) -> None:
    edit_text(
        copy,
        "handlers/orders.py",
        "async def get_order(store_id: int, external_id: str)",
        "async def get_order(store_id: int, external_id: str, verbose: bool)",
    )


def optional_parameter_without_default(copy: Path) -> None:
    def change(spec: Spec) -> None:
        spec["components"]["parameters"]["StatsTo"]["required"] = False

    edit_spec(copy, change)


def operation_id_given_twice(copy: Path) -> None:
    # Pasted twice: YAML would keep the second silently.
    edit_text(
        copy,
        "openapi.yaml",
        "      operationId: countOrders\n",
        "      operationId: countOrders\n      operationId: countOrder\n",
    )


def no_operation_id(copy: Path) -> None:
    edit_spec(copy, lambda spec: spec["paths"][COUNT]["get"].pop("operationId"))


def schema_type_misspelt(copy: Path) -> None:
    def change(spec: Spec) -> None:
        spec["components"]["schemas"]["Health"]["properties"]["status"]["type"] = "strnig"

    edit_spec(copy, change)


def handler_module_syntax_error(copy: Path) -> None:
    with (copy / "handlers" / "stats.py").open("a") as module:
        module.write("\ndef broken(:\n")


def not_yaml(copy: Path) -> None:
    with (copy / "openapi.yaml").open("a") as spec:
        spec.write("\n  bad: [unclosed\n")


def customer_input_removed(copy: Path) -> None:
    edit_spec(copy, lambda spec: spec["components"]["schemas"].pop("CustomerInput"))


@dataclass
class Slip:
    make: Callable[[Path], None]
    says: list[str]  # in every command's message
    check_says: list[str] | None = None  # `kanal stubs --check`, when it says otherwise


SLIPS = {
    "undeclared path parameter": Slip(
        undeclared_path_parameter,
        [
            f"GET {COUNT} (countOrders): the path has {{store_id}} but the operation declares "
            "no `in: path` parameter 'store_id'"
        ],
    ),
    "request body $ref to nothing": Slip(
        request_body_ref_to_nothing,
        [
            "$.components.requestBodies.OrderInput.content['application/json'].schema: "
            "$ref '#/components/schemas/OrderInputt' points to nothing "
            "(#/components/schemas has no 'OrderInputt')"
        ],
    ),
    "duplicate operationId": Slip(
        duplicate_operation_id,
        [
            f"GET {COUNT} (listOrders): operationId 'listOrders' is already the operationId "
            f"of GET {ORDERS}"
        ],
    ),
    "new query parameter, handler unchanged": Slip(
        new_query_parameter_handler_unchanged,
        [
            f"POST {ORDERS} (upsertOrder): handler handlers.orders.upsert_order does not "
            "accept query parameter 'dry_run'",
            "`dry_run: bool | None = None`",
        ],
    ),
    "response schema $ref to nothing": Slip(
        response_schema_ref_to_nothing,
        [
            f"$.paths['{COUNT}'].get.responses['200'].content['application/json'].schema: "
            "$ref '#/components/schemas/Countt' points to nothing"
        ],
    ),
    "x-openapi-router-controller names no module": Slip(
        controller_module_missing,
        [
            f"GET {COUNT} (countOrders): its x-openapi-router-controller names the module "
            "handlers.order, which does not exist (no handlers/order.py)"
        ],
        check_says=[f"missing: handlers.order.count_orders (GET {COUNT})"],
    ),
    "handler missing a query parameter": Slip(
        handler_missing_query_parameter,
        [
            f"GET {STATS} (getRecoveryStats): handler handlers.stats.get_recovery_stats does "
            "not accept query parameter 'to'"
        ],
    ),
    "handler parameter never passed": Slip(
        handler_parameter_never_passed,
        ["handler handlers.orders.get_order: parameter 'verbose' has no default"],
    ),
    "optional parameter without a default": Slip(
        optional_parameter_without_default,
        ["handlers.stats.get_recovery_stats: query parameter 'to' is optional"],
    ),
    "key given twice": Slip(
        operation_id_given_twice,
        ["the key 'operationId' is given twice in the same mapping"],
    ),
    "no operationId": Slip(no_operation_id, [f"GET {COUNT}: has no operationId"]),
    "not YAML": Slip(not_yaml, ["not valid YAML: did not find expected ','"]),
    "a schema every record uses removed": Slip(
        customer_input_removed,
        ["$ref '#/components/schemas/CustomerInput' points to nothing"],
    ),
    "schema type misspelt": Slip(
        schema_type_misspelt,
        [
            "$.components.schemas.Health.properties.status.type: 'strnig' is not one of "
            "['array', 'boolean', 'integer', "
        ],
    ),
    "handler module does not compile": Slip(
        handler_module_syntax_error,
        [
            "names the module handlers.stats, which fails to import: SyntaxError: "
            "invalid syntax (handlers/stats.py line"
        ],
        check_says=["handlers/stats.py line", "invalid syntax; nothing was written"],
    ),
}


@pytest.mark.parametrize("name", SLIPS)
def test_a_slip_stops_stubs_check_and_serve_with_its_message(tmp_path: Path, name: str) -> None:
    slip = SLIPS[name]
    copy = project(tmp_path)
    slip.make(copy)

    check = kanal(copy, "stubs", "--check")
    said = check.stdout + check.stderr
    assert check.returncode == 1, said
    assert "Traceback" not in said
    for words in slip.check_says or slip.says:
        assert words in said, said

    # Not a server that starts and answers 500: it stops at once, saying why.
    serve = kanal(copy, "serve", "--db", str(tmp_path / "kanal.db"), "--port", "0", timeout=30)
    said = serve.stdout + serve.stderr
    assert serve.returncode == 1, said
    assert "Traceback" not in said
    assert "kanal serve did not start" in said
    for words in slip.says:
        assert words in said, said


def test_worker_and_demo_check_the_contract_first(tmp_path: Path) -> None:
    copy = project(tmp_path)
    duplicate_operation_id(copy)
    db = str(tmp_path / "kanal.db")
    for command, outcome in (
        (["worker", "--once"], "kanal worker did not start"),
        (["demo", "--port", "0"], "kanal demo did not start"),
    ):
        done = kanal(copy, *command, "--db", db, timeout=30)
        said = done.stdout + done.stderr
        assert done.returncode == 1, said
        assert outcome in said and "operationId 'listOrders' is already" in said, said
        assert "Traceback" not in said
    assert not Path(db).exists()  # stopped before anything else


def test_stubs_adds_nothing_to_a_handler_that_does_not_fit_but_says_so(tmp_path: Path) -> None:
    copy = project(tmp_path)
    new_query_parameter_handler_unchanged(copy)
    before = {path: path.read_text() for path in (copy / "handlers").glob("*.py")}

    done = kanal(copy, "stubs")
    assert done.returncode == 1
    assert done.stdout.startswith(
        f"does not fit: POST {ORDERS} (upsertOrder): handler handlers.orders.upsert_order "
        "does not accept query parameter 'dry_run'"
    )
    assert "Traceback" not in done.stdout + done.stderr
    assert {path: path.read_text() for path in (copy / "handlers").glob("*.py")} == before

    # Once the handler takes it, everything fits.
    edit_text(
        copy,
        "handlers/orders.py",
        "async def upsert_order(store_id: int, body: Body)",
        "async def upsert_order(store_id: int, body: Body, dry_run: bool | None = None)",
    )
    assert kanal(copy, "stubs", "--check").returncode == 0


def test_a_broken_contract_writes_no_stub(tmp_path: Path) -> None:
    copy = project(tmp_path)

    def change(spec: Spec) -> None:
        spec["paths"]["/api/v1/stores/{store_id}/widgets/{widget_id}"] = {
            "get": {
                "operationId": "getWidget",
                "tags": ["Widgets"],
                "parameters": [{"$ref": "#/components/parameters/StoreId"}],
                "responses": {"200": {"description": "A widget."}},
            }
        }

    edit_spec(copy, change)
    done = kanal(copy, "stubs")
    assert done.returncode == 1
    assert "declares no `in: path` parameter 'widget_id'" in done.stderr
    assert not (copy / "handlers" / "widgets.py").exists()


def test_the_real_contract_passes_every_check() -> None:
    assert contract.check() == ()
    assert contract.check(handlers=False) == ()


def test_the_check_runs_once_per_process() -> None:
    contract.check()
    hits = contract.check.cache_info().hits
    assert contract.check() == ()
    assert contract.check.cache_info().hits == hits + 1


def test_what_connexion_passes_is_what_the_check_expects() -> None:
    """Python names (`from` -> `from_`), the body under x-body-name, **kwargs takes all."""
    spec: Spec = {
        "paths": {
            "/things/{thing_id}": {
                "post": {
                    "operationId": "makeThing",
                    "tags": ["Things"],
                    "parameters": [
                        {"name": "thing_id", "in": "path", "required": True, "schema": {}},
                        {"name": "from", "in": "query", "required": True, "schema": {}},
                        {"name": "limit", "in": "query", "schema": {"default": 5}},
                        {"name": "X-Trace", "in": "header", "schema": {}},
                    ],
                    "requestBody": {
                        "x-body-name": "thing",
                        "content": {"application/json": {"schema": {}}},
                    },
                    "responses": {"200": {"description": "ok"}},
                }
            }
        }
    }
    (stub,) = operations(spec)
    assert [(a.name, a.location, a.always) for a in stub.arguments] == [
        ("thing_id", "path", True),
        ("from_", "query", True),
        ("limit", "query", True),
        ("thing", "body", True),
    ]

    async def fits(thing_id: str, from_: str, limit: int, thing: dict) -> None: ...

    async def takes_all(thing_id: str, **kwargs: Any) -> None: ...

    async def wrong(thing_id: str, from_: str, body: dict) -> None: ...

    assert contract.signature_problems(stub, fits) == []
    assert contract.signature_problems(stub, takes_all) == []
    problems = contract.signature_problems(stub, wrong)
    assert any("query parameter 'limit'" in problem for problem in problems)
    assert any("the request body (passed as 'thing')" in problem for problem in problems)
    assert any("parameter 'body' has no default" in problem for problem in problems)


# -- the conformance runner ------------------------------------------------------------


def test_the_runner_writes_only_under_conformance_reports() -> None:
    reports = conformance.REPORTS.resolve()
    assert conformance.within_reports(".", "--reports") == reports
    assert conformance.within_reports("staging", "--reports") == reports / "staging"
    for outside in ("json", "ndjson"):  # how json/ and ndjson/ came to the repository root:
        # `--report json` was read as an abbreviation of the runner's `--reports`.
        args, extra = conformance.parser().parse_known_args(["--report", outside])
        assert args.reports == "." and extra == ["--report", outside]
    for escape in ("../../json", str(ROOT / "ndjson"), "/tmp/elsewhere"):
        with pytest.raises(SystemExit, match="outside conformance/reports/"):
            conformance.within_reports(escape, "--reports")
    kept, formats = conformance.passed_through(
        ["--report", "json", "--report-json-path=run.json", "--workers", "2"], reports
    )
    assert formats == ["json"]
    assert kept == ["--report-json-path", str(reports / "run.json"), "--workers", "2"]
    for escape in (["--report-junit-path", "../../junit.xml"], ["--report-dir", "out"]):
        with pytest.raises(SystemExit):
            conformance.passed_through(escape, reports)


def test_the_runner_against_a_kanal_running_elsewhere(tmp_path: Path) -> None:
    db = str(tmp_path / "kanal.db")
    keys = make_accounts(db)
    server = Server(db).start()
    name = f"test-remote-{os.getpid()}"
    reports = conformance.REPORTS / name
    try:
        # Every check; the coverage phase (some 3,500 cases, ~40 s) is left to CI's run.
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "conformance.run",
                "--url",
                server.url,
                "--key",
                keys["other"],
                "--store",
                "456",
                "--max-examples",
                "1",
                "--reports",
                name,
                "--phases",
                "examples,fuzzing,stateful",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=120,
        )
        last = done.stdout.strip().splitlines()[-1]
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert last.startswith("conformance: ") and last.endswith(" passed, 0 failed"), last
        assert int(last.split()[1]) > 0
        # Nothing local: no database, no server log; the store under test is 456.
        assert sorted(p.name for p in reports.iterdir() if not p.name.startswith(".")) == [
            "events.ndjson",
            "junit.xml",
            "openapi-remote.json",
        ]
        assert '"example": 456' in (reports / "openapi-remote.json").read_text()
    finally:
        server.stop()
        shutil.rmtree(reports, ignore_errors=True)


def test_the_runner_says_why_it_cannot_fuzz_a_remote_kanal(server: Server) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "conformance.run",
            "--url",
            server.url,
            "--key",
            "x" * 24,
            "--store",
            "123",
            "--reports",
            f"test-refused-{os.getpid()}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    shutil.rmtree(conformance.REPORTS / f"test-refused-{os.getpid()}", ignore_errors=True)
    assert done.returncode != 0
    assert "store 123 at" in done.stderr and "answers 401" in done.stderr
