"""What the conformance run checks, operation by operation: every Schemathesis check in
every phase, except the exclusions conformance/schemathesis.toml states with a reason."""

from __future__ import annotations

import pytest
import schemathesis
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig

from conformance.run import RUN_OPTIONS

from .conftest import ROOT

PHASES = ("examples", "coverage", "fuzzing", "stateful")
#: The checks the config file turns off, by operation (each with its reason there).
EXCLUDED = {"getImport": {"use_after_free"}, "listImportErrors": {"use_after_free"}}


def test_every_check_runs_on_every_operation_but_the_stated_exclusions(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Checks chosen on the command line would override the file's, exclusions included.
    assert not {"--checks", "-c", "--exclude-checks"} & set(RUN_OPTIONS)
    monkeypatch.setenv("KANAL_KEY", "k")  # the config file's header reads it
    load_all_checks()
    names = {check.__name__ for check in CHECKS.get_all() if not isinstance(check, type)}
    config = SchemathesisConfig.from_path(ROOT / "conformance" / "schemathesis.toml")
    schema = schemathesis.openapi.from_path(ROOT / "openapi.yaml", config=config)
    seen = set()
    for result in schema.get_all_operations():
        operation = result.ok()
        operation_id = operation.definition.raw["operationId"]
        seen.add(operation_id)
        for phase in PHASES:
            checks = schema.config.checks_config_for(operation=operation, phase=phase)
            enabled = {name for name in names if checks.get_by_name(name=name).enabled}
            assert enabled == names - EXCLUDED.get(operation_id, set()), (operation_id, phase)
    assert set(EXCLUDED) <= seen
    assert {"use_after_free", "positive_data_acceptance", "negative_data_rejection"} <= names
