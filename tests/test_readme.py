"""Every curl example of the README, run as written against `kanal demo` (what `make run` runs)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

from .conftest import ROOT, free_port

README = (ROOT / "README.md").read_text()
EXAMPLE = re.compile(r"```sh\n(curl .*?)\n# -> (\d{3})\n```", re.S)


def test_readme_curl_examples_answer_as_documented(tmp_path: Path) -> None:
    examples = EXAMPLE.findall(README)
    assert len(examples) >= 8
    port = free_port()
    demo = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kanal",
            "demo",
            "--port",
            str(port),
            "--db",
            str(tmp_path / "kanal.db"),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):
            try:
                if httpx.get(f"{base}/healthz").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        for command, status in examples:
            command = command.replace("http://127.0.0.1:8080", base)
            out = subprocess.run(
                ["bash", "-c", command + " -s -w '\\n%{http_code}'"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            body, code = out.rsplit("\n", 1)
            assert code == status, (command, body)
            if status == "422":
                shown = re.search(r"```json\n(.*?)\n```", README, re.S)
                assert shown is not None and json.loads(body) == json.loads(shown.group(1))
    finally:
        demo.terminate()
        out, _ = demo.communicate(timeout=15)
    assert "8fK2pX9mWq4Ld7Vb3Nc6Ts1Z" in out
