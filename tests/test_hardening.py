"""Long sessions, concurrency, bad input and faulty neighbours.

- 1,000 traced cells in one real kernel: the collector keeps at most `max_traces`
  traces, dropped traces' widgets are closed, no span processor, hook, listener or
  thread accumulates, and live objects stop growing once retention is full;
- 100 threads and 1,000 asyncio tasks making spans in one traced block (in-process and
  in a traced cell of a real kernel): every span once, under the right parent;
- fuzzed attributes (hypothesis): a tree, a DataFrame and static HTML without raising;
- a user's span processor or exporter that raises does not break our trace, and ours
  never breaks theirs (in a subprocess, with a user-configured provider).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from live_kernel import Kernel, started

import agenta_notebook as an
from agenta_notebook.core.rollup import SpanEvent, SpanRecord
from agenta_notebook.io.frame import trace_dataframe
from agenta_notebook.live import Trace
from agenta_notebook.views.html import static_html, text_summary

# -- a real kernel -------------------------------------------------------------------------


KERNEL_HELPERS = r"""
import asyncio, gc, json, threading
import agenta_notebook as an
from agenta_notebook.views import display as _display
from agenta_notebook.runtime import RUNTIME, get_collector
from agenta_notebook.live import Trace
from agenta_notebook.views.widget import live_widget_count

def parents(t):
    # name -> list of parent names, every span of the trace once
    out = {}
    for node in t.nodes:
        out.setdefault(node.name, []).append(node.parent.name if node.parent else None)
    return out

def census():
    shell = get_ipython()
    magics = shell._agenta_notebook_magics
    gc.collect()
    return {
        "traces": len(get_collector().traces()),
        "spans": sum(t.span_count for t in get_collector().traces()),
        "live_traces": sum(1 for o in gc.get_objects() if type(o) is Trace),
        "processors": len(RUNTIME.tracing.provider._active_span_processor._span_processors),
        "drop_listeners": len(get_collector().drop_listeners),
        "pre_run": len(shell.events.callbacks["pre_run_cell"]),
        "post_run": len(shell.events.callbacks["post_run_cell"]),
        "transformers": len(shell.input_transformers_cleanup),
        "open_cells": len(magics._open),
        # pending redraw timers end by themselves: counted apart from other threads
        "threads": sum(1 for t in threading.enumerate() if not isinstance(t, threading.Timer)),
        "timers": sum(1 for t in threading.enumerate() if isinstance(t, threading.Timer)),
        "open_views": _display.open_view_count(),
        "widgets": live_widget_count(),
    }
"""

CONCURRENT_CELL = r"""%%agenta_trace concurrent --quiet
def thread_work(i):
    with an.span(f"thread {i} step"):
        with an.span(f"thread {i} leaf"):
            pass

threads = []
for i in range(100):
    with an.span(f"thread {i}"):
        worker = threading.Thread(target=thread_work, args=(i,))
        worker.start()
        threads.append(worker)
for worker in threads:
    worker.join()

async def task_work(i):
    async with an.span(f"task {i}"):
        await asyncio.sleep(0)
        with an.span(f"task {i} leaf"):
            await asyncio.sleep(0)

with an.span("gather"):
    await asyncio.gather(*(task_work(i) for i in range(1000)))
"""


def check_concurrent_parents(parents: dict[str, list[str | None]]) -> None:
    """Every span of the concurrent workload once, under the right parent."""
    for i in range(100):
        assert parents[f"thread {i}"] == ["concurrent"]
        assert parents[f"thread {i} step"] == [f"thread {i}"]
        assert parents[f"thread {i} leaf"] == [f"thread {i} step"]
    assert parents["gather"] == ["concurrent"]
    for i in range(1000):
        assert parents[f"task {i}"] == ["gather"]
        assert parents[f"task {i} leaf"] == [f"task {i}"]
    assert sum(len(names) for names in parents.values()) == 1 + 300 + 1 + 2000


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    with started(Kernel, tmp_path_factory.mktemp("hardening"), KERNEL_HELPERS) as live:
        yield live


def test_threads_and_tasks_in_one_traced_cell(kernel: Kernel) -> None:
    kernel.run(CONCURRENT_CELL)
    check_concurrent_parents(kernel.value("parents(an.last_trace())"))


CELLS = 1_000
#: Cells shown with the live view: a few at the start (dropped by retention by the end,
#: so their widgets must be closed) and a few at the end (still shown).
DISPLAYED = frozenset((*range(5), *range(CELLS - 5, CELLS)))
SPANS_PER_CELL = 4


def test_a_thousand_traced_cells_stay_within_bounds(kernel: Kernel) -> None:
    kernel.run("an.set_retention(max_traces=200)\nlast_shown = None")
    before = kernel.value("census()")
    censuses: dict[int, dict[str, int]] = {}
    widgets_per_view = 0
    for index in range(CELLS):
        quiet = "" if index in DISPLAYED else " --quiet"
        kernel.run(
            f"%%agenta_trace cell{quiet}\n"
            f"# cell {index}\n"
            "with an.span('step', type='agent'):\n"
            "    for _ in range(2):\n"
            "        with an.span('call', type='llm'):\n"
            "            an.record_usage(model='gpt-4o', input_tokens=10, output_tokens=2)\n"
        )
        if index == 0:
            widgets_per_view = kernel.value("live_widget_count()") - before["widgets"]
        if index + 1 in (500, CELLS):
            censuses[index + 1] = kernel.value("census()")
    middle, after = censuses[500], censuses[CELLS]
    assert widgets_per_view > 0, "a displayed cell creates a widget view"

    # retention: the collector keeps the last 200 traces, whole
    assert after["traces"] == 200
    assert after["spans"] == 200 * SPANS_PER_CELL
    assert kernel.value("an.last_trace().name") == "cell"
    # the views of dropped cells were closed; the last five are still open
    assert after["open_views"] == 5
    assert after["widgets"] - before["widgets"] <= 5 * widgets_per_view
    # nothing accumulates per cell (the display registers its drop listener once)
    for key in ("processors", "pre_run", "post_run", "transformers"):
        assert after[key] == middle[key] == before[key], key
    assert after["drop_listeners"] == middle["drop_listeners"] <= before["drop_listeners"] + 1
    assert after["open_cells"] == 0
    assert after["threads"] <= before["threads"] + 2
    assert after["timers"] <= 2 * after["open_views"]  # at most the view's and the magic's
    # live Trace objects plateau once retention is full: nothing (the magic's map of
    # cells, a closed view) keeps a dropped trace alive; no growth from cell 500 to 1,000
    assert after["live_traces"] <= middle["live_traces"]
    assert after["live_traces"] <= 200 + 5


# -- in-process concurrency ---------------------------------------------------------------


def test_threads_and_tasks_in_one_traced_block(threads_propagate_context: None) -> None:
    def thread_work(i: int) -> None:
        with an.span(f"thread {i} step"), an.span(f"thread {i} leaf"):
            pass

    async def task_work(i: int) -> None:
        async with an.span(f"task {i}"):
            await asyncio.sleep(0)
            with an.span(f"task {i} leaf"):
                await asyncio.sleep(0)

    async def tasks() -> None:
        with an.span("gather"):
            await asyncio.gather(*(task_work(i) for i in range(1000)))

    with an.trace("concurrent") as trace:
        workers = []
        for i in range(100):
            with an.span(f"thread {i}"):
                worker = threading.Thread(target=thread_work, args=(i,))
                worker.start()
                workers.append(worker)
        for worker in workers:
            worker.join()
        asyncio.run(tasks())

    parents: dict[str, list[str | None]] = {}
    for node in trace.nodes:
        parents.setdefault(node.name, []).append(node.parent.name if node.parent else None)
    check_concurrent_parents(parents)
    assert not any(node.detached for node in trace.nodes)


# -- fuzzed attributes --------------------------------------------------------------------

USAGE_KEYS = (
    "ag.type.node",
    "ag.metrics.unit.tokens.prompt",
    "ag.metrics.unit.tokens.completion",
    "ag.metrics.unit.tokens.total",
    "ag.metrics.unit.costs.total",
    "ag.meta.response.model",
    "gen_ai.usage.input_tokens",
    "gen_ai.usage.output_tokens",
    "gen_ai.usage.cache_read.input_tokens",
    "gen_ai.request.model",
    "gen_ai.operation.name",
    "gen_ai.system",
    "llm.token_count.prompt",
    "llm.token_count.total",
    "llm.model_name",
    "llm.cost.total",
    "openinference.span.kind",
)
HTML_PAYLOADS = ("<script>alert(1)</script>", '"><img src=x onerror=alert(1)>', "&amp;<b>")

keys = st.one_of(st.sampled_from(USAGE_KEYS), st.text(min_size=1, max_size=12))
texts = st.one_of(
    st.text(max_size=20),
    st.sampled_from((*HTML_PAYLOADS, "llm", "LLM", "gpt-4o", "12", "-5", "nan", "1e400")),
)
#: What OpenTelemetry lets a span carry: str, bool, int, float, homogeneous sequences.
otel_values = st.one_of(
    texts,
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.lists(texts, max_size=3),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=3),
    st.lists(st.floats(), max_size=3),
    st.lists(st.booleans(), max_size=3),
)


class Unprintable:
    """An object whose str() and repr() raise."""

    def __str__(self) -> str:
        raise RuntimeError("no str")

    def __repr__(self) -> str:
        raise RuntimeError("no repr")


#: What a hand-made record may carry: anything.
any_values = st.recursive(
    st.one_of(
        otel_values,
        st.none(),
        st.integers(min_value=-(10**400), max_value=10**400),
        st.just(math.nan),
        st.decimals(allow_nan=True, allow_infinity=True),
        st.binary(max_size=8),
        st.complex_numbers(),
        st.builds(object),
        st.builds(Unprintable),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.dictionaries(st.text(max_size=5), inner, max_size=3),
        st.tuples(inner, inner),
    ),
    max_leaves=6,
)


def render_everything(trace: Trace) -> None:
    tree = trace.tree
    assert len(tree.nodes) >= 1
    frame = trace_dataframe(trace)
    assert len(frame) == len(tree.nodes)
    html = static_html(trace)
    for payload in HTML_PAYLOADS:
        assert payload not in html, "names and values are escaped"
    text_summary(trace)
    trace.summary()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    spans=st.lists(
        st.tuples(texts, st.dictionaries(keys, otel_values, max_size=6), st.booleans()),
        min_size=1,
        max_size=6,
    )
)
def test_fuzzed_otel_attributes_on_real_spans(
    spans: list[tuple[str, dict[str, Any], bool]],
) -> None:
    with an.trace("fuzz") as trace:
        for name, attributes, nested in spans:
            with an.span(name, attributes=attributes) as outer:
                outer.set_attributes(attributes)
                if nested:
                    with an.span(name, type="llm") as inner:
                        inner.set_attributes(attributes)
    render_everything(trace)


span_ids = st.integers(min_value=1, max_value=12)
records = st.builds(
    SpanRecord,
    trace_id=st.just(7),
    span_id=span_ids,
    parent_span_id=st.one_of(st.none(), span_ids),
    name=texts,
    start_time_ns=st.integers(min_value=0, max_value=2**64),
    end_time_ns=st.one_of(st.none(), st.integers(min_value=0, max_value=2**64)),
    status=st.sampled_from(("UNSET", "OK", "ERROR")),
    status_message=st.one_of(st.none(), texts),
    attributes=st.dictionaries(keys, any_values, max_size=6),
    events=st.lists(
        st.builds(
            SpanEvent,
            name=st.sampled_from(("exception", "log")),
            timestamp_ns=st.integers(min_value=0, max_value=2**64),
            attributes=st.dictionaries(
                st.sampled_from(("exception.type", "exception.message", "exception.stacktrace")),
                any_values,
                max_size=3,
            ),
        ),
        max_size=2,
    ).map(tuple),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(records, min_size=1, max_size=12), root=st.one_of(st.none(), span_ids))
def test_fuzzed_hand_made_records(batch: list[SpanRecord], root: int | None) -> None:
    trace = Trace(7, "fuzz", root_span_id=root, records=batch)
    render_everything(trace)
    ids = [node.span_id for node in trace.nodes if not node.synthetic]
    assert len(ids) == len(set(ids)) == len({record.span_id for record in batch})


def test_nan_huge_and_nested_values_are_warnings_not_errors() -> None:
    record = SpanRecord(
        7,
        1,
        None,
        "call",
        0,
        10,
        attributes={
            "ag.type.node": "llm",
            "gen_ai.usage.input_tokens": math.nan,
            "gen_ai.usage.output_tokens": 10**400,
            "ag.metrics.unit.costs.total": Decimal("NaN"),
            "llm.model_name": {"nested": ["mapping"]},
        },
    )
    trace = Trace(7, "t", records=[record])
    render_everything(trace)
    node = trace.root
    assert node.own.input_tokens is None
    assert node.usage.warnings


# -- faulty neighbours --------------------------------------------------------------------

NEIGHBOURS = r"""
import json
from opentelemetry import trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor, SimpleSpanProcessor, SpanExporter, SpanExportResult,
)
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

class RaisingProcessor(SpanProcessor):
    def __init__(self):
        self.ended = 0
    def on_end(self, span):
        self.ended += 1
        if span.name in ("boom 1", "boom 2", "boom root"):
            raise RuntimeError("the user's processor failed")

class RaisingExporter(SpanExporter):
    def export(self, spans):
        raise RuntimeError("the user's exporter failed")
    def shutdown(self):
        pass

# The user's provider, set up before the extension: a raising processor BEFORE ours.
provider = TracerProvider()
early = RaisingProcessor()
provider.add_span_processor(early)
provider.add_span_processor(SimpleSpanProcessor(RaisingExporter()))
provider.add_span_processor(BatchSpanProcessor(RaisingExporter()))
theirs = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(theirs))
trace.set_tracer_provider(provider)

import agenta_notebook as an
from agenta_notebook.live import Trace

collector = an.get_collector()
late = RaisingProcessor()
provider.add_span_processor(late)  # and one added after ours
processors = provider._active_span_processor._span_processors
report = {"ours_first": processors[0] is collector, "processors": len(processors)}

# 1. The user's processors raise: the errors reach the user's code (SDK behaviour),
#    but our trace still has every span.
raised = 0
with an.trace("root") as ours:
    for name in ("ok 1", "boom 1", "ok 2", "boom 2"):
        try:
            with an.span(name):
                with an.span(name + " child"):
                    pass
        except RuntimeError:
            raised += 1
report["raised"] = raised
report["ours"] = sorted(
    (node.name, node.parent.name if node.parent else None) for node in ours.nodes
)
report["their_spans_1"] = len(theirs.get_finished_spans())
try:
    with an.trace("boom root") as failed_root:
        with an.span("inside"):
            pass
except RuntimeError:
    report["root_raised"] = True
report["failed_root"] = [
    failed_root.closed, an.last_trace() is failed_root, [n.name for n in failed_root.nodes]
]
report["early_ended"] = early.ended
report["late_ended"] = late.ended
theirs.clear()

# 2. Ours fails inside (a broken view, a failing drop listener, our own bookkeeping):
#    the user's code and processors never notice.
def failing(*args):
    raise RuntimeError("ours failed")

collector.add_drop_listener(failing)
Trace.span_ended = failing
Trace.span_started = failing
with an.trace("root 2") as second:
    second.add_listener(failing)
    for index in range(3):
        with an.span(f"ok {index}"):
            pass
collector.set_retention(max_traces=1)
tracer = provider.get_tracer("user")
with tracer.start_as_current_span("the user's own span"):
    pass
report["their_spans_2"] = sorted(span.name for span in theirs.get_finished_spans())
provider.shutdown()
print("REPORT " + json.dumps(report))
"""


def test_faulty_user_processors_and_ours_do_not_break_each_other(tmp_path: Path) -> None:
    script = tmp_path / "neighbours.py"
    script.write_text(textwrap.dedent(NEIGHBOURS), encoding="utf-8")
    # As a user runs it: our failures are logged, not raised (errors.py's policy).
    environment = {**os.environ, "AGENTA_NOTEBOOK_STRICT": "0"}
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=environment,
    )
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout.split("REPORT ", 1)[1])
    # ours runs first, whether the user's processors came before or after it
    assert report["ours_first"]
    assert report["processors"] == 6
    # the user's processor raised on the two "boom" spans, into the user's code
    assert report["raised"] == 2
    # ... and our trace still has every span under its parent
    expected: list[list[str | None]] = [["root", None]]
    for name in ("ok 1", "boom 1", "ok 2", "boom 2"):
        expected += [[name, "root"], [name + " child", name]]
    assert report["ours"] == sorted(expected)
    # the user's own exporter after the raising one saw what the SDK let through
    # (a raising processor stops the ones after it: SDK behaviour, not ours)
    assert report["early_ended"] == 11
    # a root span whose end raises in the user's processor still closes our trace
    assert report["root_raised"]
    assert report["failed_root"] == [True, True, ["boom root", "inside"]]
    assert report["late_ended"] == 7 + 1
    assert report["their_spans_1"] == 7
    # when ours fails inside, the user's processors still see every span
    assert report["their_spans_2"] == sorted(
        ["root 2", "ok 0", "ok 1", "ok 2", "the user's own span"]
    )
    # ... and nothing of ours failed in silence: each failure is logged, with its traceback
    for what in (
        "the collector's on_start",
        "the collector's on_end",
        "a listener of dropped traces",
    ):
        assert f"agenta_notebook: {what} failed" in done.stderr
    assert "RuntimeError: ours failed" in done.stderr
