"""OTLP export against a real HTTP receiver on 127.0.0.1: delivery, then faults."""

from __future__ import annotations

import json
import logging
import os
import re
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat import NotebookNode
from otlp_receiver import OtlpReceiver, ReceivedSpan

import agenta_notebook as an
from agenta_notebook.core.rollup import SpanEvent, SpanRecord, build_tree
from agenta_notebook.core.vocabulary import RECEIVER_KEYS
from agenta_notebook.io import otlp as otlp_module
from agenta_notebook.io.otlp import (
    OtlpExport,
    OtlpExportWarning,
    current_export,
    export_to,
    maybe_export_on_load,
    resolve_endpoint,
    stop_export,
)
from agenta_notebook.live import Trace
from agenta_notebook.runtime import RUNTIME, get_tracer

#: The exporter's per-request timeout in these tests (seconds).
TIMEOUT = 3.0
_OTEL_ENV = (
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_HEADERS",
    "OTEL_EXPORTER_OTLP_TRACES_HEADERS",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    "OTEL_EXPORTER_OTLP_TIMEOUT",
    "OTEL_EXPORTER_OTLP_TRACES_TIMEOUT",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SDK_DISABLED",
)


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in _OTEL_ENV:
        monkeypatch.delenv(name, raising=False)
    yield
    stop_export(wait=1.0)


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as running:
        yield running


@pytest.fixture
def export(receiver: OtlpReceiver) -> OtlpExport:
    return export_to(
        receiver.url, headers={"x-test": "agenta"}, timeout=TIMEOUT, schedule_delay_millis=50
    )


def traced_block(name: str = "exported", calls: int = 2) -> tuple[Trace, float]:
    """A traced block with usage, an error and nesting; returns it and its duration."""
    started = time.perf_counter()
    with an.trace(name) as trace:
        with an.span("agent", type="agent"):
            for index in range(calls):
                with an.span(f"llm {index}", type="llm"):
                    an.record_usage(model="gpt-4o", input_tokens=100, output_tokens=20)
            with an.span("local", type="llm"):
                an.record_usage(model="my-local-llama", input_tokens=7, output_tokens=3)
        with pytest.raises(ValueError), an.span("tool", type="tool"), an.span("deep"):
            raise ValueError("tool failed")
    return trace, time.perf_counter() - started


def assert_trace_intact(trace: Trace, calls: int = 2) -> None:
    """The in-notebook trace has every span and the right figures, whatever the network."""
    totals = trace.totals
    assert len(trace.nodes) == 5 + calls
    assert totals.input_tokens == 100 * calls + 7
    assert totals.output_tokens == 20 * calls + 3
    assert totals.model_calls == calls + 1
    assert totals.unpriced_calls == 1
    assert totals.errors == 1
    assert totals.cost is not None and totals.cost > 0
    assert trace.closed and not trace.running


def as_record(span: ReceivedSpan) -> SpanRecord:
    status = {0: "UNSET", 1: "OK", 2: "ERROR"}[span.status_code]
    return SpanRecord(
        trace_id=span.trace_id,
        span_id=span.span_id,
        parent_span_id=span.parent_span_id,
        name=span.name,
        start_time_ns=span.start_time_ns,
        end_time_ns=span.end_time_ns,
        status=status,  # type: ignore[arg-type]
        status_message=span.status_message or None,
        attributes=span.attributes,
        events=tuple(SpanEvent(name, 0, attributes) for name, attributes in span.events),
        scope=span.scope or None,
    )


@pytest.fixture
def otel_logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="opentelemetry")
    caplog.set_level(logging.DEBUG, logger="urllib3")
    return caplog


def noisy_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.levelno >= logging.WARNING
        and (record.name.startswith("opentelemetry") or record.name.startswith("urllib3"))
    ]


def our_warnings(caught: list[warnings.WarningMessage]) -> list[str]:
    return [str(w.message) for w in caught if issubclass(w.category, OtlpExportWarning)]


# -- delivery -------------------------------------------------------------------------------


def test_every_span_of_a_traced_block_arrives_once(
    receiver: OtlpReceiver, export: OtlpExport
) -> None:
    tracer = get_tracer()
    outside = tracer.start_span("outside any traced block")
    outside.end()
    with tracer.start_as_current_span("someone else's root") as other_root:
        tracer.start_span("someone else's child").end()
    untracked = {
        outside.get_span_context().trace_id,
        other_root.get_span_context().trace_id,
    }

    trace, _ = traced_block()
    assert export.flush()
    records = {record.span_id: record for record in trace.records()}
    received = receiver.wait_for(trace.trace_id, len(records))

    assert sorted(span.span_id for span in received) == sorted(records)  # each exactly once
    by_id = {span.span_id: span for span in received}
    for span_id, record in records.items():
        span = by_id[span_id]
        assert span.parent_span_id == record.parent_span_id
        assert span.name == record.name
        # Every key the span has, as it is; and only receivers' keys added.
        assert {k: span.attributes[k] for k in record.attributes} == dict(record.attributes)
        assert set(span.attributes) - set(record.attributes) <= RECEIVER_KEYS
        assert span.start_time_ns == record.start_time_ns
        assert span.end_time_ns == record.end_time_ns
    llm = next(span for span in received if span.name == "llm 0")
    assert llm.attributes["ag.type.node"] == "llm"
    assert llm.attributes["ag.metrics.unit.tokens.prompt"] == 100
    assert llm.attributes["ag.metrics.unit.tokens.completion"] == 20
    # ... and the receivers' vocabulary: a model call with its tokens for any backend.
    assert llm.attributes["openinference.span.kind"] == "LLM"
    assert llm.attributes["gen_ai.operation.name"] == "chat"
    assert llm.attributes["llm.model_name"] == "gpt-4o"
    assert llm.attributes["gen_ai.request.model"] == "gpt-4o"
    assert llm.attributes["llm.token_count.prompt"] == 100
    assert llm.attributes["llm.token_count.completion"] == 20
    assert llm.attributes["llm.token_count.total"] == 120
    assert llm.attributes["gen_ai.usage.input_tokens"] == 100
    assert llm.attributes["gen_ai.usage.output_tokens"] == 20
    kinds = {span.name: span.attributes.get("openinference.span.kind") for span in received}
    assert kinds == {
        "exported": "CHAIN",
        "agent": "AGENT",
        "llm 0": "LLM",
        "llm 1": "LLM",
        "local": "LLM",
        "tool": "TOOL",
        "deep": "CHAIN",
    }
    assert export.spans_translated == len(records)
    root = by_id[trace.root_span_id or 0]
    assert root.attributes["agenta_notebook.root"] is True
    deep = next(span for span in received if span.name == "deep")
    assert deep.status_code == 2
    assert [name for name, _ in deep.events] == ["exception"]

    # The backend rolls the exported spans up to the same figures as the notebook.
    rebuilt = build_tree([as_record(span) for span in received], trace.root_span_id)
    assert rebuilt.totals == trace.totals

    # Only traces the collector keeps are exported, none of the other spans.
    assert trace.trace_id not in untracked
    assert not untracked & {span.trace_id for span in receiver.spans}
    assert not [span for span in receiver.spans if span.name.startswith(("outside", "someone"))]
    assert receiver.paths == ["/v1/traces"] * receiver.requests
    assert all(h["x-test"] == "agenta" for h in receiver.headers)
    assert all(h["content-type"] == "application/x-protobuf" for h in receiver.headers)
    assert export.spans_sent >= len(records)
    assert (export.spans_failed, export.failing, export.outages) == (0, False, 0)


def test_environment_configures_export_on_load(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.base_url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", "authorization=ApiKey%20secret,x-team=blue")
    started = maybe_export_on_load()
    assert started is not None and started is current_export()
    assert started.endpoint == receiver.url

    trace, _ = traced_block("from the environment", calls=1)
    assert started.flush()
    received = receiver.wait_for(trace.trace_id, len(trace.records()))
    assert len(received) == len(trace.records())
    assert receiver.headers[-1]["authorization"] == "ApiKey secret"
    assert receiver.headers[-1]["x-team"] == "blue"


@pytest.mark.parametrize(
    "settings",
    [
        {},  # no endpoint: nothing is sent anywhere
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_SDK_DISABLED": "true"},
        {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "OTEL_TRACES_EXPORTER": "console"},
    ],
)
def test_environment_without_an_otlp_endpoint_exports_nothing(
    settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert maybe_export_on_load() is None
    assert current_export() is None


def test_unsupported_protocol_is_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://127.0.0.1:9/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    with pytest.warns(OtlpExportWarning, match="'grpc' is not supported"):
        assert maybe_export_on_load() is None
    assert current_export() is None


def test_endpoint_resolution(monkeypatch: pytest.MonkeyPatch) -> None:
    assert resolve_endpoint() == "http://localhost:4318/v1/traces"
    assert resolve_endpoint("https://cloud.agenta.ai/api/otlp/v1/traces") == (
        "https://cloud.agenta.ai/api/otlp/v1/traces"
    )
    assert resolve_endpoint("http://host:4318/") == "http://host:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318/")
    assert resolve_endpoint() == "http://base:4318/v1/traces"
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://exact:1/custom")
    assert resolve_endpoint() == "http://exact:1/custom"


def test_a_new_export_replaces_the_old_one(receiver: OtlpReceiver, export: OtlpExport) -> None:
    with OtlpReceiver() as second:
        replacement = export_to(second.url, timeout=TIMEOUT, schedule_delay_millis=50)
        trace, _ = traced_block("after the switch", calls=1)
        assert replacement.flush()
        count = len(trace.records())
        assert len(second.wait_for(trace.trace_id, count)) == count
        assert receiver.spans_of(trace.trace_id) == []
        assert not export.flush()  # the old export is stopped


# -- faults ----------------------------------------------------------------------------------


def run_outage(
    receiver: OtlpReceiver,
    export: OtlpExport,
    caplog: pytest.LogCaptureFixture,
    recover: object,
) -> None:
    """Two traced blocks while the endpoint fails, then recovery; checks every promise."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        during = []
        for attempt in range(2):
            trace, seconds = traced_block(f"during outage {attempt}")
            # The block never waits on the network: far less than one exporter timeout.
            assert seconds < TIMEOUT / 2, f"traced block took {seconds:.2f}s"
            assert_trace_intact(trace)
            export.flush()
            during.append(trace)
        assert export.failing
        messages = our_warnings(caught)
        assert len(messages) == 1, messages  # one warning for the outage, not one per span
        assert export.endpoint in messages[0]
        assert "not affected" in messages[0]
        assert export.outages == 1
        assert export.spans_failed >= sum(len(t.records()) for t in during)

        assert callable(recover)
        recover()
        after, seconds = traced_block("after recovery")
        assert seconds < TIMEOUT / 2
        assert export.flush()
        count = len(after.records())
        assert len(receiver.wait_for(after.trace_id, count)) == count
        assert not export.failing
        assert len(our_warnings(caught)) == 1  # recovery is silent

    for trace in during:  # the in-notebook traces are untouched by the outage
        assert_trace_intact(trace)
    assert noisy_records(caplog) == []  # the exporter's own log lines are silenced


def test_endpoint_down_then_back(
    receiver: OtlpReceiver, export: OtlpExport, otel_logs: pytest.LogCaptureFixture
) -> None:
    receiver.stop()
    run_outage(receiver, export, otel_logs, receiver.start)
    assert export.last_error is not None


def test_endpoint_answering_500_then_healthy(
    receiver: OtlpReceiver, export: OtlpExport, otel_logs: pytest.LogCaptureFixture
) -> None:
    receiver.status = 500

    def heal() -> None:
        receiver.status = 200

    run_outage(receiver, export, otel_logs, heal)
    assert receiver.refused >= 1
    assert export.last_error is not None and "500" in export.last_error


def test_endpoint_slower_than_the_timeout_then_fast(
    receiver: OtlpReceiver, export: OtlpExport, otel_logs: pytest.LogCaptureFixture
) -> None:
    receiver.delay = TIMEOUT + 1.0

    def speed_up() -> None:
        receiver.delay = 0.0

    run_outage(receiver, export, otel_logs, speed_up)


def test_slow_endpoint_delivers_without_slowing_the_block(
    receiver: OtlpReceiver, export: OtlpExport
) -> None:
    receiver.delay = 1.0
    # Keep the exporter busy with a slow request while the next block runs.
    first, _ = traced_block("keeps the exporter busy", calls=1)
    time.sleep(0.2)
    trace, seconds = traced_block("while the endpoint is slow", calls=20)
    assert seconds < receiver.delay, f"traced block took {seconds:.2f}s"
    assert_trace_intact(trace, calls=20)
    assert export.flush()
    for done in (first, trace):
        count = len(done.records())
        assert len(receiver.wait_for(done.trace_id, count)) == count
    assert not export.failing


def test_full_queue_during_outage_is_quiet_and_keeps_the_trace(
    receiver: OtlpReceiver, otel_logs: pytest.LogCaptureFixture
) -> None:
    receiver.stop()
    export = export_to(
        receiver.url,
        timeout=TIMEOUT,
        schedule_delay_millis=60_000,
        max_queue_size=4,
        max_export_batch_size=4,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trace, seconds = traced_block("overflow", calls=30)
        assert seconds < TIMEOUT / 2
        assert_trace_intact(trace, calls=30)
        export.flush()
        assert len(our_warnings(caught)) == 1
    assert noisy_records(otel_logs) == []


def test_second_outage_warns_again(receiver: OtlpReceiver, export: OtlpExport) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")  # the registry must not hide the second outage
        for _ in range(2):
            receiver.status = 500
            traced_block("fails")
            export.flush()
            receiver.status = 200
            trace, _ = traced_block("works")
            export.flush()
            assert receiver.wait_for(trace.trace_id, len(trace.records()))
        assert len(our_warnings(caught)) == 2
    assert export.outages == 2


# -- in a real kernel -------------------------------------------------------------------------

KERNEL_SETUP = """
import json, time
import agenta_notebook as an
from agenta_notebook.io.otlp import maybe_export_on_load
export = maybe_export_on_load()
print("STARTED", export is not None)
"""

KERNEL_BLOCK = """
started = time.perf_counter()
with an.trace("kernel cell") as t:
    with an.span("agent", type="agent"):
        for i in range(3):
            with an.span(f"llm {i}", type="llm"):
                an.record_usage(model="gpt-4o", input_tokens=100, output_tokens=20)
elapsed = time.perf_counter() - started
print("RESULT " + json.dumps({"trace_id": t.trace_id, "spans": len(t.records()),
      "tokens": t.totals.total_tokens, "elapsed": elapsed}))
"""


def test_kernel_cells_export_and_survive_an_outage(receiver: OtlpReceiver, tmp_path: Path) -> None:
    notebook = nbformat.v4.new_notebook()  # type: ignore[no-untyped-call]
    client = NotebookClient(
        notebook,
        timeout=120,
        kernel_name="python3",
        resources={"metadata": {"path": str(tmp_path)}},
    )
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parent.parent),
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.base_url,
        "OTEL_EXPORTER_OTLP_TIMEOUT": str(TIMEOUT),
        # Batches leave only when a cell flushes, so any warning shows in that cell.
        "OTEL_BSP_SCHEDULE_DELAY": "600000",
    }

    def run(source: str) -> NotebookNode:
        cell: NotebookNode = nbformat.v4.new_code_cell(source)  # type: ignore[no-untyped-call]
        notebook.cells.append(cell)
        client.execute_cell(cell, len(notebook.cells) - 1)
        return cell

    def streams(cell: NotebookNode, name: str) -> str:
        return "".join(
            o["text"] for o in cell.outputs if o["output_type"] == "stream" and o["name"] == name
        )

    def block() -> tuple[dict[str, Any], NotebookNode]:
        cell = run(KERNEL_BLOCK)
        result = json.loads(streams(cell, "stdout").split("RESULT ", 1)[1])
        assert result["spans"] == 5 and result["tokens"] == 360  # the trace is whole
        assert result["elapsed"] < TIMEOUT / 2, result  # the cell never waits on the network
        assert streams(cell, "stderr") == ""
        return result, cell

    with client.setup_kernel(env=env):
        assert "STARTED True" in streams(run(KERNEL_SETUP), "stdout")
        healthy, _ = block()
        run("export.flush()")
        assert len(receiver.wait_for(healthy["trace_id"], 5)) == 5

        receiver.status = 500
        stderr = ""
        for _ in range(2):
            block()
            stderr += streams(run("export.flush()"), "stderr")
        assert stderr.count("OtlpExportWarning") == 1, stderr
        assert "500" in stderr

        receiver.status = 200
        recovered, _ = block()
        recovery_cell = run("export.flush()")
        assert len(receiver.wait_for(recovered["trace_id"], 5)) == 5
        assert streams(recovery_cell, "stderr") == ""
        # The exporter's own log lines are silenced: its text appears only in our warning.
        assert stderr.count("Failed to export") == 1, stderr


def test_overflowing_queue_with_a_working_endpoint_is_one_warning(
    receiver: OtlpReceiver, otel_logs: pytest.LogCaptureFixture
) -> None:
    receiver.delay = 0.3
    export = export_to(
        receiver.url,
        timeout=TIMEOUT,
        schedule_delay_millis=60_000,
        max_queue_size=4,
        max_export_batch_size=4,
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        traces = [traced_block(f"burst {n}", calls=30)[0] for n in range(2)]
        assert export.flush()
        messages = our_warnings(caught)
    for trace in traces:
        assert_trace_intact(trace, calls=30)
    total = sum(len(trace.records()) for trace in traces)
    assert export.spans_dropped > 0
    assert export.spans_sent + export.spans_dropped == total  # every span accounted for
    assert len(receiver.spans) == export.spans_sent
    assert len(messages) == 1, messages
    assert "OTEL_BSP_MAX_QUEUE_SIZE" in messages[0]
    assert re.search(r"; [1-9]\d* spans were left out of the export", messages[0])
    assert not export.failing
    assert noisy_records(otel_logs) == []


def test_spans_that_end_after_the_block_are_exported_too(
    receiver: OtlpReceiver, export: OtlpExport
) -> None:
    with an.trace("with a late span") as trace:
        late = get_tracer().start_span("ends after the block")
    assert export.flush()
    assert [span.name for span in receiver.wait_for(trace.trace_id, 1)] == ["with a late span"]
    late.end()
    assert export.flush()
    received = {span.name: span for span in receiver.wait_for(trace.trace_id, 2)}
    assert received.keys() == {"with a late span", "ends after the block"}
    assert received["ends after the block"].parent_span_id == trace.root_span_id
    assert trace.find("ends after the block").parent is trace.root


# -- the receivers' vocabulary ----------------------------------------------------------------

USAGE_PREFIXES = ("gen_ai.usage.", "llm.token_count.", "llm.cost.")


def usage_keys_of(span: ReceivedSpan) -> dict[str, Any]:
    return {k: v for k, v in span.attributes.items() if k.startswith(USAGE_PREFIXES)}


def test_spans_of_a_running_block_wait_for_it_and_carry_the_finished_trees_keys(
    receiver: OtlpReceiver,
) -> None:
    # Each span would go out alone as soon as it ends (batches of one, 10 ms delay):
    # the spans of the running block are held, and translated once the tree is whole.
    export = export_to(
        receiver.url, timeout=TIMEOUT, schedule_delay_millis=10, max_export_batch_size=1
    )
    framework = get_tracer_of("openinference.instrumentation.langchain")
    client = get_tracer_of("opentelemetry.instrumentation.openai_v2")
    call = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 3,
    }
    with an.trace("held") as trace:
        with an.span("agent", type="agent"):
            an.record_usage(input_tokens=300, output_tokens=30)  # a claim over the two below
            for name, tokens in (("llm 100", 100), ("llm 200", 200)):
                with an.span(name, type="llm"):
                    an.record_usage(model="gpt-4o", input_tokens=tokens, output_tokens=10)
        # One call recorded by a framework and by the client, side by side (rule 13).
        outer = framework.start_span("ChatOpenAI", attributes=call)
        time.sleep(0.001)
        client.start_span("chat gpt-4o-mini", attributes=call).end()
        time.sleep(0.3)  # the worker ran many times: nothing of this block went out yet
        assert receiver.spans_of(trace.trace_id) == []
        assert export.spans_held == 4
        outer.end()
    assert export.flush()
    count = len(trace.records())
    received = {span.name: span for span in receiver.wait_for(trace.trace_id, count)}
    assert len(received) == count and export.spans_held == 0
    assert trace.find("ChatOpenAI").role == "recorded twice"
    assert not usage_keys_of(received["agent"])
    assert received["agent"].attributes["openinference.span.kind"] == "AGENT"
    assert usage_keys_of(received["llm 100"])["llm.token_count.prompt"] == 100
    assert usage_keys_of(received["chat gpt-4o-mini"])["llm.token_count.prompt"] == 12
    assert "llm.token_count.prompt" not in received["ChatOpenAI"].attributes
    assert received["ChatOpenAI"].attributes["openinference.span.kind"] == "LLM"
    # A backend summing its spans gets the notebook's totals.
    summed = sum(int(span.attributes.get("llm.token_count.total", 0)) for span in received.values())
    assert summed == trace.totals.total_tokens == 300 + 20 + 15
    rebuilt = build_tree([as_record(span) for span in received.values()], trace.root_span_id)
    assert rebuilt.totals.total_tokens == trace.totals.total_tokens


def get_tracer_of(scope: str) -> Any:
    """A tracer of another instrumentation scope, on the provider the collector is on."""
    get_tracer()
    provider = RUNTIME.tracing.provider
    assert provider is not None
    return provider.get_tracer(scope)


def test_flush_sends_the_spans_of_a_block_still_running(receiver: OtlpReceiver) -> None:
    export = export_to(receiver.url, timeout=TIMEOUT, schedule_delay_millis=10)
    with an.trace("flushed while running") as trace:
        with an.span("call", type="llm"):
            an.record_usage(model="gpt-4o", input_tokens=7, output_tokens=1)
        assert export.flush()
        [call] = receiver.wait_for(trace.trace_id, 1)
        assert call.attributes["llm.token_count.total"] == 8
        assert export.spans_held == 0
    assert export.flush()
    assert len(receiver.wait_for(trace.trace_id, 2)) == 2


def test_a_long_block_sends_its_spans_after_the_hold_time(
    receiver: OtlpReceiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(otlp_module, "HOLD_SECONDS", 0.2)
    export = export_to(
        receiver.url, timeout=TIMEOUT, schedule_delay_millis=10, max_export_batch_size=1
    )
    with an.trace("long block") as trace:
        with an.span("early", type="llm"):
            an.record_usage(model="gpt-4o", input_tokens=5, output_tokens=1)
        time.sleep(0.4)
        with an.span("later", type="tool"):
            pass
        # No flush: the hold time passed, so the next export sent what was waiting.
        arrived = receiver.wait_for(trace.trace_id, 1, timeout=5.0)
        assert [span.name for span in arrived][:1] == ["early"]
        assert arrived[0].attributes["llm.token_count.prompt"] == 5
    assert export.flush()
    assert len(receiver.wait_for(trace.trace_id, 3)) == 3


def test_nothing_is_added_on_the_traced_codes_path(
    receiver: OtlpReceiver, export: OtlpExport
) -> None:
    trace, _ = traced_block("hot path", calls=1)
    assert export.flush()
    receiver.wait_for(trace.trace_id, len(trace.records()))
    for record in trace.records():  # the spans themselves keep only what was set
        assert not set(record.attributes) & RECEIVER_KEYS, record.name


def test_a_value_otlp_cannot_encode_goes_out_as_text_with_one_warning(
    receiver: OtlpReceiver,
    export: OtlpExport,
    otel_logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    from opentelemetry import trace as otel_trace

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with an.trace("huge") as trace:
            for index in range(3):
                with an.span(f"call {index}", type="llm"):
                    an.record_usage(model="gpt-4o", input_tokens=10**30, output_tokens=7)
                    current = otel_trace.get_current_span()
                    current.set_attribute("sizes", (1, 2**64))
                    current.add_event("note", {"count": -(2**63) - 1, "fine": 3})
            with an.span("huge int", type="tool"):
                otel_trace.get_current_span().set_attribute("n", 10**5000)
        assert export.flush()
        received = receiver.wait_for(trace.trace_id, 5)
    assert len(received) == 5, "every span still goes out"
    by_name = {span.name: span for span in received}
    call = by_name["call 1"]
    assert call.attributes["ag.metrics.unit.tokens.prompt"] == str(10**30)  # not lost
    assert call.attributes["ag.metrics.unit.tokens.completion"] == 7
    assert call.attributes["llm.token_count.completion"] == 7
    assert call.attributes["sizes"] == ("1", str(2**64))
    assert call.events == (("note", {"count": str(-(2**63) - 1), "fine": 3}),)
    assert by_name["huge int"].attributes["n"] == "(an integer of 16610 bits)"
    assert len(our_warnings(caught)) == 1, our_warnings(caught)
    assert "OTLP cannot encode" in our_warnings(caught)[0]
    assert [record.getMessage() for record in otel_logs.records if record.levelno >= 30] == []
    assert "Traceback" not in capfd.readouterr().err
    assert export.values_replaced == 4
    assert not export.failing
