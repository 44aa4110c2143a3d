"""``--cpu-affinity auto``. ``kanal serve --workers N``: on SQLite each worker process
runs on a CPU of its own (every thread of it), claimed as it starts and freed when it
ends; never on PostgreSQL, with ``off``, with one worker or more workers than CPUs.
``kanal import``: on PostgreSQL the writer and each checking process on CPUs of their
own while it runs, this process's CPUs as before once it is over."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from kanal import affinity
from tests.conftest import ROOT, Server, is_sqlite
from tests.test_serve_processes import alive, children

pytestmark = pytest.mark.skipif(not affinity.available(), reason="Linux's sched_setaffinity")
CPUS = sorted(os.sched_getaffinity(0)) if affinity.available() else []
several = pytest.mark.skipif(len(CPUS) < 2, reason="needs two CPUs")


def test_when_workers_are_bound() -> None:
    assert not affinity.wanted("auto", 1, postgres=False)
    assert not affinity.wanted("off", len(CPUS), postgres=False)
    assert not affinity.wanted("auto", len(CPUS), postgres=True)
    assert not affinity.wanted("auto", len(CPUS) + 1, postgres=False)
    assert affinity.wanted("auto", len(CPUS), postgres=False) == (len(CPUS) >= 2)


CLAIM = (
    "import sys; from kanal.affinity import claim; "
    "print(claim(sys.argv[1]), flush=True); sys.stdin.read()"
)


def claimer(slots: str) -> tuple[subprocess.Popen[str], str]:
    """A process that claims a CPU and holds it until its stdin closes; its answer."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CLAIM, slots],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def release(proc: subprocess.Popen[str]) -> None:
    proc.communicate(timeout=10)


def test_claims_are_exclusive_and_freed_with_their_process() -> None:
    slots = affinity.make_slots()  # a slot for each CPU this process may use
    assert slots.endswith(":" + ",".join(map(str, CPUS)))
    assert affinity.make_slots() != slots  # each set is a new one
    first, cpu = claimer(slots)
    try:
        assert cpu == str(CPUS[0])
        second, other = claimer(slots)
        release(second)
        assert other == (str(CPUS[1]) if len(CPUS) > 1 else "None")
    finally:
        release(first)
    again, cpu = claimer(slots)  # the first one's CPU is free again
    release(again)
    assert cpu == str(CPUS[0])


def bound_cpus(pid: int) -> set[str]:
    """The CPU lists that the threads of process ``pid`` may run on."""
    lists = set()
    for task in Path(f"/proc/{pid}/task").iterdir():
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                lists.add(line.split(":", 1)[1].strip())
    return lists


@several
def is_worker(pid: int) -> bool:
    """A worker process of the server's (not multiprocessing's resource tracker)."""
    return alive(pid) and b"resource_tracker" not in Path(f"/proc/{pid}/cmdline").read_bytes()


@pytest.mark.parametrize(
    ("http", "setting"), [("granian", "auto"), ("granian", "off"), ("uvicorn", "auto")]
)
def test_each_worker_runs_on_a_cpu_of_its_own(
    db: str, keys: dict[str, Any], http: str, setting: str
) -> None:
    server = Server(db, workers=2)
    server.options = ["--server", http, "--cpu-affinity", setting]
    server.start()
    try:
        assert server.proc is not None
        workers = [pid for pid in children(server.proc.pid) if is_worker(pid)]
        assert len(workers) == 2
        placed = [bound_cpus(pid) for pid in workers]
        if setting == "auto" and is_sqlite(db):
            # Every thread of a worker on one CPU, and the two workers on different ones.
            assert all(len(cpus) == 1 for cpus in placed), placed
            assert placed[0] != placed[1]
            assert {cpu for cpus in placed for cpu in cpus} <= {str(cpu) for cpu in CPUS}
        else:  # left where the kernel puts them (PostgreSQL: see kanal.affinity.wanted)
            parent = bound_cpus(server.proc.pid)
            assert placed == [parent, parent]
    finally:
        server.stop()


def test_when_an_import_binds_its_processes() -> None:
    assert not affinity.import_wanted("auto", 0, postgres=True)  # checked in the writer
    assert not affinity.import_wanted("off", 1, postgres=True)
    assert not affinity.import_wanted("auto", 1, postgres=False)
    assert not affinity.import_wanted("auto", len(CPUS), postgres=True)  # no CPU left over
    assert affinity.import_wanted("auto", len(CPUS) - 1, postgres=True) == (len(CPUS) >= 2)


@several
def test_an_import_binds_the_writer_and_each_checking_process_while_it_runs() -> None:
    from kanal.bulk import Checking

    before = os.sched_getaffinity(0)
    with affinity.bound_import("auto", 1, postgres=True) as cpus:
        assert cpus is not None
        assert os.sched_getaffinity(0) == {CPUS[0]}  # the writer
        with Checking(1, cpus) as checking:
            checking.warm()
            assert checking.started is not None
            checking.started.result(timeout=60)
            assert checking.pool is not None
            assert checking.pool.submit(os.sched_getaffinity, 0).result() == {CPUS[1]}
    assert os.sched_getaffinity(0) == before  # as it was once the import is over
    assert cpus is not None
    again, cpu = claimer(cpus)  # the writer's claim is released with it
    release(again)
    assert cpu == str(CPUS[0])
    with affinity.bound_import("off", 1, postgres=True) as cpus:
        assert cpus is None and os.sched_getaffinity(0) == before


def test_kanal_import_with_its_processes_bound(
    tmp_path: Path, db: str, keys: dict[str, Any]
) -> None:
    """The whole command with a checking process, on each engine (bound on PostgreSQL,
    not on SQLite): every record written, and this process's CPUs as before after it."""
    from click.testing import CliRunner

    from kanal.cli import main

    order = {
        "placed_at": "2026-05-18T10:00:00Z",
        "total_price": 49.9,
        "customer": {"phone": "+33612345678"},
    }
    source = tmp_path / "orders.jsonl"
    source.write_text(
        "".join(json.dumps({**order, "external_id": f"O-{n}"}) + "\n" for n in range(60))
    )
    before = os.sched_getaffinity(0)
    args = ["import", str(source), "--store", "123", "--resource", "orders", "--db", db]
    done = CliRunner().invoke(main, [*args, "--jobs", "1", "--batch", "7"])
    assert done.exit_code == 0, done.output
    assert "60 imported (60 created, 0 updated), 0 invalid" in done.output
    assert os.sched_getaffinity(0) == before
