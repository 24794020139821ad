"""Shared fixtures for the core's tests (others may add small entries below)."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from collections.abc import Iterator
from typing import Any

import pytest

# Our own failures raise under the test suite instead of being logged (errors.py): set
# before the package is imported, and inherited by every kernel and interpreter a test starts.
os.environ["AGENTA_NOTEBOOK_STRICT"] = "1"
# The spend ledger never writes to the user's data folder under the tests: a folder of the
# test run instead, inherited by every kernel and interpreter (tests/test_ledger.py moves it).
os.environ["AGENTA_NOTEBOOK_LEDGER"] = tempfile.mkdtemp(prefix="agenta-notebook-ledger-")

from agenta_notebook.collector import Collector
from agenta_notebook.core.rollup import SpanEvent, SpanRecord, StatusCode
from agenta_notebook.core.usage import AG_TYPE
from agenta_notebook.runtime import RUNTIME, Runtime, get_collector

atexit.register(shutil.rmtree, os.environ["AGENTA_NOTEBOOK_LEDGER"], True)

TRACE_ID = 0xABC


def keys(values: dict[str, Any]) -> dict[str, Any]:
    """Span attributes with dotted keys, typed for `RecordFactory.add(**keys({...}))`."""
    return values


class RecordFactory:
    """Builds hand-made `SpanRecord`s of one trace with increasing ids and times.

    >>> records = RecordFactory()
    >>> root = records.add("root")
    >>> llm = records.add("call", root, type="llm", **keys({"gen_ai.usage.input_tokens": 5}))
    """

    def __init__(self, trace_id: int = TRACE_ID) -> None:
        self.trace_id = trace_id
        self.all: list[SpanRecord] = []
        self._next_id = 1
        self._clock = 1_000

    def add(
        self,
        name: str,
        parent: SpanRecord | int | None = None,
        *,
        type: str | None = None,
        status: StatusCode = "UNSET",
        running: bool = False,
        events: tuple[SpanEvent, ...] = (),
        **attributes: Any,
    ) -> SpanRecord:
        """A record under `parent` (a record or a raw parent span id); kept in `all`."""
        span_id = self._next_id
        self._next_id += 1
        self._clock += 10
        if type is not None:
            attributes[AG_TYPE] = type
        parent_id = parent.span_id if isinstance(parent, SpanRecord) else parent
        record = SpanRecord(
            trace_id=self.trace_id,
            span_id=span_id,
            parent_span_id=parent_id,
            name=name,
            start_time_ns=self._clock,
            end_time_ns=None if running else self._clock + 5,
            status=status,
            attributes=attributes,
            events=events,
        )
        self.all.append(record)
        return record


@pytest.fixture
def records() -> RecordFactory:
    """A fresh factory of hand-made span records."""
    return RecordFactory()


@pytest.fixture
def fresh_runtime() -> Iterator[Runtime]:
    """The default runtime, reset before and after the test (`RUNTIME.reset()`): no
    trace, no user price, no export, no instrumentation, no open view, default
    retention, thread propagation off. A module opts in for all its tests with
    `pytestmark = pytest.mark.usefixtures("fresh_runtime")`."""
    RUNTIME.reset()
    yield RUNTIME
    RUNTIME.reset()


@pytest.fixture
def collector() -> Iterator[Collector]:
    """The process's collector, fresh: no trace, default retention, no other drop
    listener than the runtime's; the same again afterwards (the rest of the runtime,
    an export or thread propagation, is left as it is)."""
    collector = get_collector()
    RUNTIME.tracing.reset()
    yield collector
    RUNTIME.tracing.reset()


@pytest.fixture
def threads_propagate_context() -> Iterator[None]:
    """Thread context propagation on (as the IPython extension turns it on).

    Undone afterwards only if this fixture turned it on.
    """
    from agenta_notebook import threads

    already = threads.is_propagating()
    if not already:
        assert threads.enable_thread_propagation()
    yield
    if not already:
        threads.disable_thread_propagation()
