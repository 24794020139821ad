"""Run one notebook of `notebooks/` under nbval in a real kernel (a pytest subprocess)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run_nbval(notebook: str, *, drop_env: Iterable[str] = (), sanitize: bool = True) -> None:
    """Validate `notebooks/<notebook>` with nbval; environment variables named in `drop_env`
    (or starting with one that ends in `_`) are removed, so no key reaches a real provider."""
    dropped = tuple(drop_env)
    environment = {
        key: value
        for key, value in os.environ.items()
        if not any(key == name or (name.endswith("_") and key.startswith(name)) for name in dropped)
        # the spend ledger stays in the test run's folder (tests/conftest.py), whatever is dropped
        or key == "AGENTA_NOTEBOOK_LEDGER"
    }
    command = [sys.executable, "-m", "pytest", "--nbval", "--nbval-current-env"]
    if sanitize:
        command += ["--nbval-sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg")]
    command += ["-p", "no:cacheprovider", "-q", str(ROOT / "notebooks" / notebook)]
    result = subprocess.run(
        command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout[-5000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
