"""Crash safety: a server killed with SIGKILL at a random moment loses no acknowledged write."""

from __future__ import annotations

import random
import signal
import threading
import time
from typing import Any

import httpx

from .conftest import STORE, Server


def writer(
    url: str, key: str, name: str, acknowledged: dict[str, dict[str, Any]], stop: threading.Event
) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    n = 0
    with httpx.Client(timeout=5) as client:
        while not stop.is_set():
            n += 1
            body = {
                "external_id": f"{name}-{n}",
                "placed_at": "2026-05-18T10:00:00Z",
                "total_price": n + 0.5,
                "financial_status": name,
                "customer": {"phone": "+33612345678"},
                "tags": [name, str(n)],
            }
            try:
                response = client.post(url, json=body, headers=headers)
            except httpx.HTTPError:
                continue  # the server is gone: this write was never acknowledged
            if response.status_code == 201:
                acknowledged[body["external_id"]] = response.json()


def test_sigkill_loses_no_acknowledged_write(db: str, keys: dict[str, Any]) -> None:
    server = Server(db).start()
    url = f"{server.url}/api/v1/stores/{STORE}/orders"
    acknowledged: dict[str, dict[str, Any]] = {}
    stop = threading.Event()
    threads = [
        threading.Thread(target=writer, args=(url, keys["store"], f"w{i}", acknowledged, stop))
        for i in range(4)
    ]
    for thread in threads:
        thread.start()
    time.sleep(random.uniform(1.0, 2.0))
    assert server.proc is not None
    server.proc.send_signal(signal.SIGKILL)  # no shutdown, no flush: gone
    server.proc.wait(timeout=10)
    stop.set()
    for thread in threads:
        thread.join(timeout=10)
    server.proc = None
    assert len(acknowledged) > 50
    restarted = Server(db).start()
    try:
        headers = {"Authorization": f"Bearer {keys['store']}"}
        with httpx.Client(base_url=restarted.url, headers=headers, timeout=10) as client:
            lost = []
            for external_id, written in acknowledged.items():
                response = client.get(f"/api/v1/stores/{STORE}/orders/{external_id}")
                if response.status_code != 200:
                    lost.append(external_id)
                    continue
                stored = response.json()
                assert {k: stored[k] for k in written} == written
            assert lost == []
    finally:
        restarted.stop()
