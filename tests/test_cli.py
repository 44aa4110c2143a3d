"""The ``kanal`` command line, as users' scripts call it."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner

from kanal.cli import main
from kanal.storage import connect

from .conftest import ROOT, Server


def run(*args: str, db: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [*args, "--db", db])
    return result.exit_code, result.output


def test_store_and_key_lifecycle(db: str) -> None:
    code, out = run(
        "stores",
        "create",
        "--id",
        "123",
        "--name",
        "Demo shop",
        "--team",
        "7",
        "--region",
        "fr",
        "--rate-limit",
        "120",
        db=db,
    )
    assert (
        code == 0
        and "store 123 'Demo shop' team=7 region=FR rate_limit=120/min "
        "attribution=7d sender=log active"
        in out
    )
    code, out = run("stores", "create", "--id", "123", "--name", "Again", db=db)
    assert code == 1 and "exists already" in out
    code, out = run("keys", "create", "--store", "123", "--name", "production-shop", db=db)
    token = out.strip().splitlines()[-1]
    assert code == 0 and len(token) == 24 and token.isalnum()
    code, out = run("keys", "create", "--team", "7", db=db)
    assert code == 0 and len(out.strip().splitlines()[-1]) == 24
    code, out = run("keys", "list", db=db)
    assert code == 0 and "production-shop" in out and token not in out
    assert "store=123" in out and "team=7" in out
    code, out = run("keys", "revoke", "1", db=db)
    assert code == 0
    code, out = run("keys", "revoke", "1", db=db)
    assert code == 1 and "no key 1" in out


def test_key_needs_exactly_one_scope(db: str) -> None:
    run("stores", "create", "--id", "1", "--name", "S", db=db)
    assert run("keys", "create", db=db)[0] == 2
    assert run("keys", "create", "--store", "1", "--team", "1", db=db)[0] == 2
    assert run("keys", "create", "--store", "2", db=db)[0] == 1
    assert run("keys", "create", "--team", "9", db=db)[0] == 1


def test_paused_flag_and_update(db: str) -> None:
    code, out = run("stores", "create", "--id", "5", "--name", "S", "--paused", db=db)
    assert code == 0 and out.strip().endswith("paused")
    code, out = run("stores", "update", "5", "--active", "--rate-limit", "600", db=db)
    assert code == 0 and "rate_limit=600/min attribution=7d sender=log active" in out
    assert run("stores", "update", "6", "--paused", db=db)[0] == 1


def test_region_must_be_known(db: str) -> None:
    code, out = run("stores", "create", "--id", "1", "--name", "S", "--region", "XX", db=db)
    assert code == 2 and "not a region" in out
    code, out = run("stores", "create", "--id", "1", "--name", "S", db=db)
    assert code == 0 and "region=None" in out


def test_db_defaults_to_env_then_kanal_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_db = tmp_path / "env.db"
    result = CliRunner().invoke(
        main, ["stores", "create", "--id", "1", "--name", "S"], env={"KANAL_DB": str(env_db)}
    )
    assert result.exit_code == 0 and env_db.exists()
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["stores", "list"], env={"KANAL_DB": None})
    assert result.exit_code == 0 and (tmp_path / "kanal.db").exists()


def test_installed_command_serves_and_revocation_is_immediate(db: str) -> None:
    kanal = [sys.executable, "-m", "kanal"]
    subprocess.run(
        [*kanal, "stores", "create", "--id", "123", "--name", "Demo shop", "--db", db],
        check=True,
        cwd=ROOT,
        capture_output=True,
    )
    out = subprocess.run(
        [*kanal, "keys", "create", "--store", "123", "--db", db],
        check=True,
        cwd=ROOT,
        capture_output=True,
        text=True,
    ).stdout
    headers = {"Authorization": f"Bearer {out.strip().splitlines()[-1]}"}
    server = Server(db).start()
    try:
        url = f"{server.url}/api/v1/stores/123/customers"
        body = {"phone": "+33612345678"}
        assert httpx.post(url, json=body, headers=headers).status_code == 201
        subprocess.run(
            [*kanal, "keys", "revoke", "1", "--db", db], check=True, cwd=ROOT, capture_output=True
        )
        response = httpx.post(url, json=body, headers=headers)
        assert response.status_code == 401
    finally:
        server.stop()


def test_automation_settings(db: str) -> None:
    run("stores", "create", "--id", "5", "--name", "S", db=db)
    code, out = run(
        "stores",
        "update",
        "5",
        "--sender",
        "webhook",
        "--webhook-url",
        "http://127.0.0.1:9/hook",
        "--webhook-secret",
        "s",
        "--recovery-steps",
        "30,720",
        "--template",
        "recovery=my_recovery",
        "--order-confirmation",
        db=db,
    )
    assert code == 0 and "sender=webhook" in out
    from kanal.automations import settings

    store = connect(db).get_store(5)
    assert store is not None
    config = settings(store)
    assert config["recovery_steps"] == [30, 720] and config["order_confirmation"] is True
    assert config["templates"]["recovery"] == "my_recovery"
    assert config["templates"]["shipping"] == "shipping_update"  # defaults kept
    assert config["webhook"] == {"url": "http://127.0.0.1:9/hook", "secret": "s"}
    assert run("stores", "update", "5", "--recovery-steps", "a,b", db=db)[0] == 2
    assert run("stores", "update", "5", "--shipping-statuses", "lost", db=db)[0] == 2
    assert run("stores", "update", "5", "--template", "nope", db=db)[0] == 2
