"""The collector: spans from the plain OpenTelemetry API, provider wiring, retention.

The global tracer provider can be set once per process, so every scenario that needs a
provider configured by the user before the collector attaches runs in a subprocess.
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

import agenta_notebook as an
from agenta_notebook.collector import Collector
from agenta_notebook.live import Trace
from agenta_notebook.runtime import get_collector, last_trace


def run_python(code: str) -> dict[str, Any]:
    """Run `code` in a fresh interpreter; it prints one JSON object as its last line."""
    completed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    result: dict[str, Any] = json.loads(completed.stdout.strip().splitlines()[-1])
    return result


# --- in this process ----------------------------------------------------------------------------


def test_plain_opentelemetry_api_spans_inside_trace_are_recorded() -> None:
    tracer = otel_trace.get_tracer("some.instrumentation")
    with an.trace("plain api") as result:
        with tracer.start_as_current_span("http call") as outer:
            outer.set_attribute("http.method", "POST")
            with tracer.start_as_current_span("chat gpt-4o") as call:
                call.set_attributes(
                    {
                        "gen_ai.operation.name": "chat",
                        "gen_ai.request.model": "gpt-4o",
                        "gen_ai.usage.input_tokens": 40,
                        "gen_ai.usage.output_tokens": 10,
                    }
                )
        with an.span("ours", type="tool"):
            with tracer.start_as_current_span("under ours"):
                pass
    assert [(n.depth, n.name) for n in result.nodes] == [
        (0, "plain api"),
        (1, "http call"),
        (2, "chat gpt-4o"),
        (1, "ours"),
        (2, "under ours"),
    ]
    call_node = result.find("chat gpt-4o")
    assert call_node.record.scope == "some.instrumentation"
    assert result.totals.total_tokens == 50 and result.totals.model_calls == 1
    assert result.totals.cost is not None and result.totals.unpriced_calls == 0


def test_trace_yields_a_complete_trace_and_sets_last_trace() -> None:
    with an.trace("complete") as result:
        assert not result.closed
        with an.span("step"):
            pass
    assert result.closed and not result.running
    assert last_trace() is result
    assert result.root.name == "complete" and result.root.type == "workflow"
    assert result.span_count == 2


def test_a_failing_block_marks_the_root_and_reraises() -> None:
    with pytest.raises(RuntimeError), an.trace("failing") as result:
        raise RuntimeError("boom")
    assert result.root.record.status == "ERROR"
    assert result.totals.errors == 1
    assert last_trace() is result


def test_root_spans_not_opened_by_us_are_ignored(collector: Collector) -> None:
    tracer = otel_trace.get_tracer("user.code")
    with tracer.start_as_current_span("user root") as root:
        with tracer.start_as_current_span("user child"):
            pass
    assert collector.get(root.get_span_context().trace_id) is None


def test_a_new_trace_started_inside_a_block_does_not_leak_in(collector: Collector) -> None:
    tracer = otel_trace.get_tracer("background.job")
    with an.trace("cell") as result:
        # an explicit new root (a background job, another cell's work)
        with tracer.start_as_current_span("job root", context=otel_context.Context()) as job:
            with tracer.start_as_current_span("job step"):
                pass
        with tracer.start_as_current_span("mine"):
            pass
    assert job.get_span_context().trace_id != result.trace_id
    assert [n.name for n in result.nodes] == ["cell", "mine"]
    assert collector.get(job.get_span_context().trace_id) is None
    assert all(n.record.trace_id == result.trace_id for n in result.nodes)


def test_nested_trace_blocks_are_separate_traces() -> None:
    with an.trace("outer") as outer:
        with an.span("outer step"):
            with an.trace("inner") as inner, an.span("inner step"):
                pass
    assert [n.name for n in outer.nodes] == ["outer", "outer step"]
    assert [n.name for n in inner.nodes] == ["inner", "inner step"]


# --- retention ----------------------------------------------------------------------------------


def test_retention_drops_the_oldest_traces_first(collector: Collector) -> None:
    dropped: list[str] = []

    def listener(trace: Trace) -> None:
        dropped.append(trace.name)

    collector.add_drop_listener(listener)
    an.set_retention(max_traces=3)
    made: list[Trace] = []
    for index in range(5):
        with an.trace(f"t{index}") as result, an.span("step"):
            pass
        made.append(result)
    assert [t.name for t in collector.traces()] == ["t2", "t3", "t4"]
    assert dropped == ["t0", "t1"]
    assert made[0].dropped and made[1].dropped and not made[4].dropped
    # a dropped trace keeps what it had; it only stops growing
    assert [n.name for n in made[0].nodes] == ["t0", "step"]
    assert list(an.spans_dataframe()["trace_name"].unique()) == ["t2", "t3", "t4"]
    collector.remove_drop_listener(listener)
    assert listener not in collector.drop_listeners


def test_retention_by_span_count(collector: Collector) -> None:
    an.set_retention(max_traces=100, max_spans=10)
    for index in range(4):
        with an.trace(f"s{index}"):  # 4 spans per trace
            for step in range(3):
                with an.span(f"step {step}"):
                    pass
    # checked when a trace starts and when its block ends: the oldest go first
    kept = collector.traces()
    assert sum(t.span_count for t in kept) <= 10
    assert [t.name for t in kept] == ["s2", "s3"]


def test_retention_never_drops_a_trace_whose_block_is_still_running(
    collector: Collector,
) -> None:
    an.set_retention(max_traces=1)
    with an.trace("outer") as outer:
        with an.trace("inner") as inner:
            pass
        with an.span("outer step"):
            pass
    assert not outer.dropped
    assert [n.name for n in outer.nodes] == ["outer", "outer step"]
    assert inner.dropped and [n.name for n in inner.nodes] == ["inner"]
    assert [t.name for t in collector.traces()] == ["outer"]


def test_a_late_span_still_reaches_its_trace_after_retention_dropped_it(
    collector: Collector,
) -> None:
    """rollup.md rule 10: nothing that ended is dropped, even when retention dropped
    the trace while a background span was still open."""
    import contextvars
    import threading

    an.set_retention(max_traces=2)
    started, release = threading.Event(), threading.Event()

    def work() -> None:
        with an.span("late", type="llm"):
            started.set()
            release.wait(10)
            an.record_usage(model="gpt-4o", input_tokens=40, output_tokens=2)

    with an.trace("early") as early:
        thread = threading.Thread(target=contextvars.copy_context().run, args=(work,))
        thread.start()
        assert started.wait(10)
    for index in range(2):
        with an.trace(f"later {index}"):
            pass
    assert early.dropped and early.running
    changes: list[int] = []
    early.add_listener(lambda trace: changes.append(1))
    release.set()
    thread.join(10)
    assert not early.running, "the late span's end reached the dropped trace"
    assert changes, "its listeners heard of it"
    assert early.totals.total_tokens == 42 and early.totals.model_calls == 1
    assert collector.draining == 0, "forgotten once nothing is open"


def test_late_spans_reach_dropped_traces_past_the_side_map(collector: Collector) -> None:
    """More dropped traces with an open span than the side map holds: every late end
    still reaches its trace, and the side map stays bounded."""
    from agenta_notebook.collector import MAX_DRAINING

    an.set_retention(max_traces=2)
    tracer = otel_trace.get_tracer("late spans")
    pending: list[tuple[Trace, otel_trace.Span]] = []
    for index in range(MAX_DRAINING + 44):
        with an.trace(f"t{index}") as traced:
            pending.append((traced, tracer.start_span("open")))
    assert collector.draining <= MAX_DRAINING
    assert all(traced.running for traced, _ in pending)
    for _, span in pending:
        span.end()
    still = [traced.name for traced, _ in pending if traced.running]
    assert still == [], f"{len(still)} traces say running for ever"
    assert collector.draining == 0
    assert all(len(traced.nodes) == 2 for traced, _ in pending)


def test_shrinking_retention_drops_at_once(collector: Collector) -> None:
    for index in range(4):
        with an.trace(f"r{index}"):
            pass
    an.set_retention(max_traces=1)
    assert [t.name for t in collector.traces()] == ["r3"]


def test_late_spans_of_a_dropped_trace_are_not_kept(collector: Collector) -> None:
    an.set_retention(max_traces=1)
    with an.trace("old") as old:
        pending = an.span("pending")
        pending.__enter__()
    with an.trace("new"):
        pass
    pending.__exit__(None, None, None)
    assert old.dropped
    assert [t.name for t in collector.traces()] == ["new"]


# --- provider wiring, each in a fresh interpreter -------------------------------------------------


def test_user_provider_configured_first_keeps_its_exporter() -> None:
    result = run_python(
        """
        import json
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
            InMemorySpanExporter,
        )

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)

        import agenta_notebook as an

        tracer = trace.get_tracer("user.lib")
        with tracer.start_as_current_span("before"):
            pass
        with an.trace("block") as t:
            with tracer.start_as_current_span("api span") as span:
                span.set_attribute("gen_ai.operation.name", "chat")
                span.set_attribute("gen_ai.usage.input_tokens", 5)
            with an.span("ours", type="llm"):
                an.record_usage(total_tokens=7)
        with tracer.start_as_current_span("after"):
            pass
        print(json.dumps({
            "same_provider": trace.get_tracer_provider() is provider,
            "collector_on_user_provider": an.RUNTIME.tracing.provider is provider,
            "exported": sorted(s.name for s in exporter.get_finished_spans()),
            "traced": [n.name for n in t.nodes],
            "tokens": t.totals.total_tokens,
        }))
        """
    )
    assert result["same_provider"] and result["collector_on_user_provider"]
    assert result["exported"] == sorted(["before", "api span", "ours", "block", "after"])
    assert result["traced"] == ["block", "api span", "ours"]
    assert result["tokens"] == 12


def test_no_provider_configured_installs_an_sdk_one_for_the_api() -> None:
    result = run_python(
        """
        import json
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        import agenta_notebook as an

        with an.trace("block") as t:
            with trace.get_tracer("instrumentation").start_as_current_span("api span"):
                pass
        print(json.dumps({
            "sdk": isinstance(trace.get_tracer_provider(), TracerProvider),
            "traced": [n.name for n in t.nodes],
        }))
        """
    )
    assert result == {"sdk": True, "traced": ["block", "api span"]}


def test_tracer_taken_before_the_collector_attached_still_records() -> None:
    # Instrumentation libraries often take their tracer at import time, before any
    # provider exists: the API hands them a proxy that must reach our provider later.
    result = run_python(
        """
        import json
        from opentelemetry import trace
        early = trace.get_tracer("imported.early")
        import agenta_notebook as an

        with an.trace("block") as t:
            with early.start_as_current_span("early span"):
                pass
        print(json.dumps({"traced": [n.name for n in t.nodes]}))
        """
    )
    assert result["traced"] == ["block", "early span"]


def test_a_non_sdk_global_provider_warns_and_still_traces_our_spans() -> None:
    result = run_python(
        """
        import json, warnings
        from opentelemetry import trace
        trace.set_tracer_provider(trace.NoOpTracerProvider())
        import agenta_notebook as an

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with an.trace("block") as t:
                with an.span("ours"):
                    pass
        print(json.dumps({
            "warned": any("not the SDK" in str(w.message) for w in caught),
            "traced": [n.name for n in t.nodes],
        }))
        """
    )
    assert result == {"warned": True, "traced": ["block", "ours"]}


def test_collector_attaches_once_to_a_provider() -> None:
    result = run_python(
        """
        import json
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
        import agenta_notebook as an
        from agenta_notebook.collector import Collector
        from agenta_notebook.runtime import Runtime

        first = an.get_collector()
        # as after a reload of the package: a new runtime finds the collector in place
        second = Runtime().tracing.get_collector()
        processors = provider._active_span_processor._span_processors
        print(json.dumps({
            "same": first is second,
            "ours": sum(isinstance(p, Collector) for p in processors),
        }))
        """
    )
    assert result == {"same": True, "ours": 1}


def test_get_collector_is_one_per_process() -> None:
    assert get_collector() is get_collector()


# --- converting SDK spans to records ------------------------------------------------------


def test_fast_and_public_conversions_of_an_ended_span_agree() -> None:
    from opentelemetry.sdk.trace import ReadableSpan

    from agenta_notebook.collector import (
        _record_from_public_api,
        record_from_span,
        records_from_spans,
    )

    tracer = otel_trace.get_tracer("tests.conversion", "1.2")
    with an.trace("convert") as result:
        with tracer.start_as_current_span(
            "client call", kind=otel_trace.SpanKind.CLIENT, attributes={"a": 1, "b": "x"}
        ) as span:
            span.add_event("retry", {"attempt": 2})
            span.set_attribute("gen_ai.usage.input_tokens", 3)
        with pytest.raises(KeyError), tracer.start_as_current_span("failing"):
            raise KeyError("k")
    raw: list[ReadableSpan] = list(result._finished_raw)
    assert len(raw) == 3
    for finished in raw:
        public = _record_from_public_api(finished)
        assert records_from_spans([finished]) == [public]
        assert record_from_span(finished) == public
    assert records_from_spans(raw) == [_record_from_public_api(span) for span in raw]
    # The fast path was taken: an ended span's frozen attribute dict is shared, not copied.
    for finished, record in zip(raw, records_from_spans(raw), strict=True):
        assert record.attributes is finished._attributes._dict  # type: ignore[attr-defined]
    client = result.find("client call").record
    assert client.kind == "CLIENT" and client.scope == "tests.conversion"
    assert dict(client.attributes) == {"a": 1, "b": "x", "gen_ai.usage.input_tokens": 3}
    assert [(e.name, dict(e.attributes)) for e in client.events] == [("retry", {"attempt": 2})]
    failing = result.find("failing").record
    assert failing.status == "ERROR" and "KeyError" in (failing.status_message or "")
    assert [e.name for e in failing.events] == ["exception"]


def test_a_span_that_cannot_be_read_leaves_the_others_of_its_batch(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """One span object that neither the fast path nor the SDK's public API can read is
    reported and left out; the other spans of the batch are converted and kept."""
    from agenta_notebook.collector import records_from_spans

    class Broken:
        @property
        def context(self) -> object:
            raise RuntimeError("a broken span object")

    with an.trace("batch") as result:
        for index in range(3):
            with an.span(f"step {index}"):
                pass
    raw = list(result._finished_raw)
    monkeypatch.setenv("AGENTA_NOTEBOOK_STRICT", "0")
    with caplog.at_level("ERROR", logger="agenta_notebook"):
        records = records_from_spans([raw[0], Broken(), *raw[1:]])  # type: ignore[list-item]
    assert [record.name for record in records] == [span.name for span in raw]
    assert "converting a span to a record failed" in caplog.text


@pytest.mark.parametrize("converter", ["rows_from_spans", "records_from_spans"])
def test_a_trace_given_only_a_batch_converter_converts_as_spans_end(converter: str) -> None:
    """A batch converter may give (row, attributes) pairs, as the collector's does, or
    records."""
    from agenta_notebook import collector

    convert_many = getattr(collector, converter)
    with an.trace("made") as made:
        for index in range(5):
            with an.span(f"step {index}"):
                pass
    raw = list(made._finished_raw)
    trace = Trace(made.trace_id, "copy", root_span_id=made.root_span_id, convert_many=convert_many)
    trace.convert_every = 2
    for span in raw:
        trace.span_ended(span.context.span_id, span)
    assert len(trace._finished_raw) < 2  # converted in batches of 2 as they ended
    assert sorted(record.name for record in trace.records()) == sorted(span.name for span in raw)
    assert [node.name for node in trace.tree.nodes[1:]] == [span.name for span in raw[:-1]]


def test_an_ended_span_cannot_change_its_record() -> None:
    with an.trace("frozen") as result:
        with an.span("step") as span:
            span.set_attribute("before", 1)
    record = result.find("step").record
    span.set_attribute("after", 2)  # ignored by the SDK: the span has ended
    assert "after" not in record.attributes
    assert result.find("step").record.attributes["before"] == 1


def test_a_running_span_is_converted_with_a_copy_of_its_attributes() -> None:
    with an.trace("running") as result, an.span("open") as span:
        span.set_attribute("k", 1)
        record = result.find("open").record
        assert record.end_time_ns is None
        span.set_attribute("k", 2)
        assert record.attributes["k"] == 1  # a snapshot, not a view of a changing span
    assert result.find("open").record.attributes["k"] == 2


def test_building_a_tree_pauses_the_garbage_collector_and_restores_it() -> None:
    import gc

    from agenta_notebook.core.rollup import SpanRecord
    from agenta_notebook.live import Trace

    seen: list[bool] = []

    class Spy(dict[str, Any]):
        def __iter__(self) -> Any:  # called while the build reads usage
            seen.append(gc.isenabled())
            return super().__iter__()

    def build() -> None:
        records = [SpanRecord(1, 1, None, "root", 0, 1, attributes=Spy({"x": 1}))]
        assert Trace(1, "t", records=records).tree.root.name == "root"

    assert gc.isenabled()
    build()
    assert gc.isenabled()
    gc.disable()
    try:
        build()
        assert not gc.isenabled()  # a collector the user turned off stays off
    finally:
        gc.enable()
    assert seen == [False, False]


def test_the_pause_of_the_garbage_collector_is_counted_across_threads() -> None:
    """Two builds that overlap (a redraw timer's and the notebook's): the collector stays
    off until the last one ends, then comes back on."""
    import gc

    from agenta_notebook.memory import gc_paused

    inside = threading.Event()
    release = threading.Event()

    def other_build() -> None:
        with gc_paused():
            inside.set()
            release.wait(5)

    worker = threading.Thread(target=other_build)
    assert gc.isenabled()
    with gc_paused():
        worker.start()
        assert inside.wait(5)
    assert not gc.isenabled()  # the other build is still running
    release.set()
    worker.join(5)
    assert gc.isenabled()


def test_a_long_cell_lets_go_of_the_sdk_spans_as_they_end() -> None:
    """Ended spans become records in batches while the block runs: the SDK's finished
    spans (about ten garbage-collected objects each) are not kept until the end."""
    from opentelemetry.sdk.trace import ReadableSpan

    from agenta_notebook.live import CONVERT_EVERY

    def finished_sdk_spans() -> int:
        gc.collect()
        return sum(1 for item in gc.get_objects() if type(item) is ReadableSpan)

    tracer = otel_trace.get_tracer("tests.release")
    count = 2 * CONVERT_EVERY + 100
    before = finished_sdk_spans()
    with an.trace("long") as trace:
        for index in range(count):
            with tracer.start_as_current_span(f"step {index}") as span:
                span.set_attribute("index", index)
        kept = finished_sdk_spans() - before
        assert kept < CONVERT_EVERY  # the ones since the last batch, at most
        assert trace.span_count == count + 1  # and the root, running
    nodes = trace.tree.nodes[1:]
    assert [node.name for node in nodes] == [f"step {index}" for index in range(count)]
    assert [node.record.attributes["index"] for node in nodes] == list(range(count))


def test_a_long_cell_runs_few_young_collections() -> None:
    """The SDK's spans waiting for their batch (about ten tracked objects each) stay well
    under the allocations that start a young collection, so a long cell runs about one
    young collection per few hundred spans, for the rows it keeps, and no full one (issue
    14: with batches of 64 the same block ran 143 young collections and a full one
    every few hundred thousand spans; with 16, 33)."""
    threshold = gc.get_threshold()[0]
    young = [0]
    full = [0]

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            young[0] += info["generation"] == 0
            full[0] += info["generation"] == 2

    steps = 5000
    assert gc.isenabled()
    gc.collect()
    gc.callbacks.append(count)
    try:
        with an.trace("young"):
            for _ in range(steps):
                with an.span("step"), an.span("inner"):
                    pass
    finally:
        gc.callbacks.remove(count)
    # a kept span is a row and a pair (two tuples tracked until a collection lets go of
    # them); five tracked objects a span is more than twice the most this should see
    assert 0 < young[0] <= 5 * 2 * steps // threshold
    assert full[0] == 0


def test_kept_spans_are_rows_the_garbage_collector_stops_tracking() -> None:
    """A finished span is kept as a row, a tuple of plain values, and its attributes, a
    dict of them: the garbage collector stops tracking both, so a long cell's spans add
    nothing to what each of its full collections walks (issue 14). The tree's nodes hold
    the same rows and dicts, and give the span as a `SpanRecord` when asked."""
    from agenta_notebook.core.rollup import SpanRecord, join_record
    from agenta_notebook.live import CONVERT_EVERY

    tracer = otel_trace.get_tracer("tests.rows")
    with an.trace("rows") as trace:
        for index in range(3 * CONVERT_EVERY):
            with an.span("step"):
                attributes = {"index": index, "tags": ("a", "b")}
                with tracer.start_as_current_span("inner", attributes=attributes):
                    pass
        # A container is let go at a pass after its contents are: a row holds the
        # resource's (key, value) pairs in a tuple, three levels (and a collection may
        # reorder what it walks): four full collections let go of all.
        for _ in range(4):
            gc.collect()
        kept = [*trace._rows, *trace._span_attributes]
        assert len(kept) >= 10 * CONVERT_EVERY
        assert [item for item in kept if gc.is_tracked(item)] == []
    tree = trace.tree
    for _ in range(4):
        gc.collect()
    assert [node.name for node in tree.nodes if gc.is_tracked(node.row)] == []
    assert [node.name for node in tree.nodes if gc.is_tracked(node.attributes)] == []
    inner = tree.nodes[2]
    assert inner.name == "inner" and inner.record.attributes == {"index": 0, "tags": ("a", "b")}
    assert isinstance(inner.record, SpanRecord)
    assert inner.record == join_record(inner.row, inner.attributes)
    assert inner.record.scope == "tests.rows"
    assert inner.record.resource["telemetry.sdk.language"] == "python"
