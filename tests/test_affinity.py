"""``kanal serve --workers N --cpu-affinity auto``: on SQLite each worker process runs on
a CPU of its own (every thread of it), claimed as it starts and freed when it ends;
never on PostgreSQL, with ``off``, with one worker or more workers than CPUs."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
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


def claimer(directory: Path) -> tuple[subprocess.Popen[str], str]:
    """A process that claims a CPU and holds it until its stdin closes; its answer."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CLAIM, str(directory)],
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, proc.stdout.readline().strip()


def release(proc: subprocess.Popen[str]) -> None:
    proc.communicate(timeout=10)


def test_claims_are_exclusive_and_freed_with_their_process(tmp_path: Path) -> None:
    first, cpu = claimer(tmp_path)
    try:
        assert cpu == str(CPUS[0])
        second, other = claimer(tmp_path)
        release(second)
        assert other == (str(CPUS[1]) if len(CPUS) > 1 else "None")
    finally:
        release(first)
    again, cpu = claimer(tmp_path)  # the first one's CPU is free again
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


def slot_directories() -> set[Path]:
    return set(Path(tempfile.gettempdir()).glob("kanal-cpus-*"))


@several
@pytest.mark.parametrize("setting", ["auto", "off"])
def test_each_worker_runs_on_a_cpu_of_its_own(db: str, keys: dict[str, Any], setting: str) -> None:
    server = Server(db, workers=2)
    server.options = ["--cpu-affinity", setting]
    before = slot_directories()
    server.start()
    try:
        assert server.proc is not None
        workers = [pid for pid in children(server.proc.pid) if alive(pid)]
        assert len(workers) == 2
        placed = [bound_cpus(pid) for pid in workers]
        made = slot_directories() - before
        if setting == "auto" and is_sqlite(db):
            # Every thread of a worker on one CPU, and the two workers on different ones.
            assert all(len(cpus) == 1 for cpus in placed), placed
            assert placed[0] != placed[1]
            assert {cpu for cpus in placed for cpu in cpus} <= {str(cpu) for cpu in CPUS}
            assert len(made) == 1
        else:  # left where the kernel puts them (PostgreSQL: see kanal.affinity.wanted)
            parent = bound_cpus(server.proc.pid)
            assert placed == [parent, parent]
            assert not made
    finally:
        server.stop()
    assert not any(directory.exists() for directory in made)  # they go with the server
