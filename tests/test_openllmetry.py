"""OpenLLMetry's (traceloop's) OpenAI instrumentor on a reasoning model: reasoning tokens
read from `gen_ai.usage.reasoning_tokens`, costs exact against genai-prices, a failed
call one error and not unpriced.

The cases are in `openllmetry_cases.py` and run here in a fresh interpreter: the
instrumentor cannot be uninstrumented (its `uninstrument()` leaves the OpenAI client
wrapped), so it must not stay on in the process that runs the other tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CASES = Path(__file__).with_name("openllmetry_cases.py")


def test_openllmetry_openai_cases_in_their_own_process() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "pytest", str(CASES), "-q", "-p", "no:cacheprovider"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=CASES.parent.parent,
    )
    assert run.returncode == 0, run.stdout[-8000:] + run.stderr[-4000:]
    assert "2 passed" in run.stdout, run.stdout[-4000:]
