"""The runtime: the one object that holds what the package keeps during a session.

Its parts are exercised by the tests of each module (collector, prices, views, export,
instrumentation, threads); here: that the package's functions act on the default
runtime, that a user can see all of it in one place, and that one call resets it.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from pathlib import Path

import openai
import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider
from otlp_receiver import OtlpReceiver

import agenta_notebook as an
from agenta_notebook.collector import DEFAULT_MAX_SPANS, DEFAULT_MAX_TRACES, Collector
from agenta_notebook.integrations import openai as openai_integration
from agenta_notebook.io.otlp import current_export
from agenta_notebook.live import Trace
from agenta_notebook.runtime import RUNTIME, Runtime, user_prices
from agenta_notebook.threads import enable_thread_propagation, is_propagating
from agenta_notebook.views.display import TraceDisplay, open_view_count

pytestmark = pytest.mark.usefixtures("fresh_runtime")

#: A model no price table knows: only a user price prices it.
HOUSE = "house-model-runtime"


def house_call(name: str = "runtime") -> Trace:
    """A traced block with one call of 1M input tokens of the house model."""
    with an.trace(name) as trace, an.span("call", type="llm"):
        an.record_usage(model=HOUSE, input_tokens=1_000_000, output_tokens=0)
    return trace


class Names(SpanProcessor):
    """A processor of the test's, added everywhere: it notes the names of ended spans."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def on_end(self, span: ReadableSpan) -> None:
        self.names.append(span.name)


def processors_of(provider: TracerProvider) -> tuple[SpanProcessor, ...]:
    processors: tuple[SpanProcessor, ...] = provider._active_span_processor._span_processors
    return processors


def test_the_package_functions_act_on_the_default_runtime() -> None:
    trace = house_call()
    assert an.last_trace() is trace and RUNTIME.tracing.last_trace is trace
    assert an.get_collector() is RUNTIME.tracing.collector
    assert an.get_collector().get(trace.trace_id) is trace

    an.set_retention(max_traces=7, max_spans=70)
    collector = RUNTIME.tracing.collector
    assert collector is not None and (collector.max_traces, collector.max_spans) == (7, 70)

    version = user_prices().version
    an.set_prices(HOUSE, input=2, output=0)
    assert RUNTIME.prices.current() is user_prices()
    assert set(user_prices().by_model) == {HOUSE} and user_prices().version == version + 1
    assert an.calculate_cost(HOUSE, {"input_tokens": 1_000_000}) == Decimal(2)
    assert trace.totals.cost == Decimal(2), "a kept trace is priced with the new prices"
    an.clear_prices(HOUSE)
    assert an.calculate_cost(HOUSE, {"input_tokens": 1_000_000}) is None
    assert trace.totals.cost is None and trace.totals.unpriced_calls == 1


def test_traces_from_a_file_or_by_hand_read_the_runtime_prices(tmp_path: Path) -> None:
    path = tmp_path / "house.otlp.json"
    house_call("saved").save(path)
    loaded = an.load(path)
    by_hand = Trace(1, "by hand", records=loaded.records())
    assert loaded.totals.cost is None and by_hand.totals.cost is None
    an.set_prices(HOUSE, input="0.5", output=0)
    assert loaded.totals.cost == Decimal("0.5")
    assert by_hand.totals.cost == Decimal("0.5")


def test_describe_shows_what_is_attached_retained_priced_exported_and_open() -> None:
    fresh = Runtime()
    assert "collector: not installed yet" in fresh.describe()
    assert repr(fresh).startswith("<Runtime traces=0 ")

    with OtlpReceiver() as receiver:
        export = an.export_to(receiver.url, schedule_delay_millis=50)
        trace = house_call("described")
        an.set_prices(HOUSE, input=1, output=1)
        shown = TraceDisplay(trace, widget=True)
        assert enable_thread_propagation()
        an.instrument_openai()
        text = RUNTIME.describe()
        an.stop_export(wait=1.0)
    shown.close()
    lines = text.splitlines()
    assert lines[0] == "agenta_notebook runtime"
    assert (
        f"retained: 1 traces (0 running), 2 spans; at most {DEFAULT_MAX_TRACES:,} traces / "
        f"{DEFAULT_MAX_SPANS:,} spans"
    ) in text
    assert "last trace: 'described' (2 spans)" in text
    assert "(ours)" in text and "global provider: " in text
    processors_line = next(line for line in lines if "processors on each: " in line)
    assert processors_line.split(": ", 1)[1].split(", ")[0] == "Collector"
    assert "_ExportProcessor" in processors_line and "_StreamWatch" in processors_line
    assert f"user prices (version {user_prices().version}): {HOUSE}" in text
    assert f"export: <OtlpExport {export.endpoint} " in text
    assert "open views: 1 (of 1 traces)" in text
    assert "instrumented: openai (instrument_openai)" in text
    assert "thread propagation: on" in text
    assert repr(RUNTIME).startswith("<Runtime traces=1 ")


def test_reset_puts_the_session_back_in_one_call() -> None:
    collector = an.get_collector()
    provider = RUNTIME.tracing.provider
    assert provider is not None
    processors_before = processors_of(provider)
    request_before = openai.OpenAI.request

    # A session that did a bit of everything.
    names = Names()
    RUNTIME.tracing.attach_everywhere(names)
    dropped: list[Trace] = []
    collector.add_drop_listener(dropped.append)
    an.set_retention(max_traces=3, max_spans=30)
    an.set_prices(HOUSE, input=1, output=0)
    kept = house_call("before the reset")
    assert kept.totals.cost == Decimal(1)
    shown = TraceDisplay(kept, widget=True)
    assert enable_thread_propagation() and is_propagating()
    assert an.instrument_openai() and openai_integration.is_instrumented()
    assert openai.OpenAI.request is not request_before
    with OtlpReceiver() as receiver:
        an.export_to(receiver.url, schedule_delay_millis=50)
        assert current_export() is not None
        assert len(processors_of(provider)) == len(processors_before) + 3

        RUNTIME.reset()

    # Everything is back as after the import ...
    assert collector.traces() == [] and an.last_trace() is None
    assert (collector.max_traces, collector.max_spans) == (DEFAULT_MAX_TRACES, DEFAULT_MAX_SPANS)
    assert collector.drop_listeners == (RUNTIME.views.trace_dropped,)
    assert dropped == [kept], "the traces it forgot were dropped, as by retention"
    assert user_prices().by_model == {}
    assert kept.totals.cost is None, "no tree built under the old prices survives"
    assert shown.closed and open_view_count() == 0
    assert not RUNTIME.threads.active
    assert not openai_integration.is_instrumented()
    assert openai.OpenAI.request is request_before
    assert current_export() is None and RUNTIME.exports.processor is None
    assert processors_of(provider) == processors_before, "only the collector stays"
    assert RUNTIME.tracing.processors() == (collector,)

    # ... and the collector still collects: its wiring is process-wide and stays.
    names.names.clear()
    again = house_call("after the reset")
    assert an.get_collector() is collector and collector.get(again.trace_id) is again
    assert names.names == [], "a processor withdrawn by the reset sees nothing"
    assert "retained: 1 traces" in RUNTIME.describe()


def test_reset_turns_propagation_off_but_leaves_the_threading_wrappers() -> None:
    assert enable_thread_propagation()
    start = threading.Thread.start
    RUNTIME.reset()
    assert threading.Thread.start is start, "process-wide: installed once, never removed"
    seen: list[bool] = []
    with an.trace("threads"), an.span("parent"):
        current = otel_context.get_current()
        worker = threading.Thread(target=lambda: seen.append(otel_context.get_current() == current))
        worker.start()
        worker.join()
    assert seen == [False], "off: the thread does not inherit the span"


def test_the_collector_cannot_be_withdrawn() -> None:
    collector = an.get_collector()
    assert isinstance(collector, Collector)
    with pytest.raises(ValueError, match="collector stays"):
        RUNTIME.tracing.withdraw(collector)
