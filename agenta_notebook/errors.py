"""What happens when our own code fails: one policy for the whole package.

The user's code is never broken by ours (OpenTelemetry's rule for instrumentation): a
failure inside the collector, a view's redraw, an exporter or a hook is caught where it
happens. But nothing of ours fails silently: every such failure goes to the
`agenta_notebook` logger with its traceback, where a developer sees it (Jupyter shows
warnings and errors of the logging module in the cell's output). Under the test suite
(`AGENTA_NOTEBOOK_STRICT=1`, which `tests/conftest.py` sets for the test process and every
kernel it starts), the failure is raised instead, so a test cannot pass over a bug.

What a *user* did wrong is not an internal error: a bad option is a `UsageError`, a
malformed attribute is a warning on its span, a broken file is a `TraceFileError`.
"""

from __future__ import annotations

import logging
import os
from typing import Final

__all__ = ["LOGGER", "STRICT_VARIABLE", "internal_error", "strict"]

#: The package's logger: `logging.getLogger("agenta_notebook")`.
LOGGER: Final = logging.getLogger("agenta_notebook")
#: Set to 1 to raise our internal errors instead of logging them (the test suite does).
STRICT_VARIABLE: Final = "AGENTA_NOTEBOOK_STRICT"


def strict() -> bool:
    """True when internal errors are raised rather than logged (under the test suite)."""
    return os.environ.get(STRICT_VARIABLE, "") not in ("", "0")


def internal_error(what: str) -> None:
    """Report the exception being handled as a failure of ours, then carry on.

    Call it from an `except` block: it logs `what` and the traceback to the
    `agenta_notebook` logger, or re-raises the exception when `strict()`.

        try:
            listener(trace)
        except Exception:  # a broken view must not break the traced code
            internal_error("a trace listener")
    """
    if strict():
        raise  # the exception being handled, as documented
    LOGGER.error("agenta_notebook: %s failed (your code was not affected)", what, exc_info=True)
