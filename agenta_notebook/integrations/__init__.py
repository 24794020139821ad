"""Integrations with model clients: one module per client library.

`instrument` (the module) holds `agenta_notebook.instrument()`, which instruments every
supported client at once; it is not re-exported here, so that
`agenta_notebook.integrations.instrument` stays the module.
"""

from __future__ import annotations

from agenta_notebook.integrations.instrument import Outcome, uninstrument
from agenta_notebook.integrations.openai import (
    instrument_openai,
    maybe_instrument_on_load,
    uninstrument_openai,
)

__all__ = [
    "Outcome",
    "instrument_openai",
    "maybe_instrument_on_load",
    "uninstrument",
    "uninstrument_openai",
]
