"""Lint the contract: Redocly (recommended) and Spectral (spectral:oas), zero errors and
zero warnings, then the breaking-change guard.

    python -m conformance.lint

The npm tools come from package.json / package-lock.json (``npm ci``).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conformance import breaking

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / "node_modules" / ".bin"


def redocly() -> bool:
    result = subprocess.run(
        [str(BIN / "redocly"), "lint", "openapi.yaml", "--format=json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    report = json.loads(result.stdout)
    totals = report["totals"]
    for problem in report["problems"]:
        where = problem["location"][0]["pointer"] if problem.get("location") else ""
        print(f"    {problem['severity']}: {problem['ruleId']}: {problem['message']} {where}")
    print(f"redocly (recommended): {totals['errors']} errors, {totals['warnings']} warnings")
    return totals["errors"] == 0 and totals["warnings"] == 0


def spectral() -> bool:
    result = subprocess.run(
        [str(BIN / "spectral"), "lint", "openapi.yaml", "--fail-severity=hint", "--format=stylish"],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    print(f"spectral (spectral:oas): {result.stdout.strip()}")
    return result.returncode == 0


def main() -> int:
    ok = redocly()
    ok &= spectral()
    ok &= breaking.main() == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
