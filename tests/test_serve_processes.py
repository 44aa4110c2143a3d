"""``kanal serve``'s worker processes end with it, even when it is killed with SIGKILL:
none keeps serving (and holding its port) on its own."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from typing import Any

import pytest

from tests.conftest import Server


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True).stdout
    return [int(line) for line in out.split()]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is gone for good: it waits only for its (new) parent to reap it.
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(")")[-1].split()[0] != "Z"


@pytest.mark.parametrize("workers", [1, 2])
def test_workers_end_with_a_killed_server(db: str, keys: dict[str, Any], workers: int) -> None:
    server = Server(db, workers=workers).start()
    try:
        assert server.proc is not None
        workers_of = children(server.proc.pid)
        assert len(workers_of) >= workers
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(timeout=10)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers_of) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(alive(pid) for pid in workers_of)
    finally:
        server.proc = None
