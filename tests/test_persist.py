"""Save and load traces as OTLP JSON: round trips, files from other tools, bad files."""

from __future__ import annotations

import base64
import gzip
import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import pandas
import pytest
from google.protobuf import json_format  # type: ignore[import-untyped]
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor

import agenta_notebook as an
from agenta_notebook.core.rollup import SpanEvent, SpanRecord
from agenta_notebook.core.vocabulary import RECEIVER_KEYS
from agenta_notebook.io.persist import (
    DEFAULT_MAX_BYTES,
    TraceFileError,
    decode_value,
    encode_span,
    encode_value,
    load,
    load_all,
    save_trace,
    trace_to_otlp,
)
from agenta_notebook.live import Trace
from agenta_notebook.runtime import RUNTIME, get_collector, get_tracer

UNICODE = "naïve café — 東京 🚀 עברית\u200f e\u0301 \u0000 tab\tnew\nline \U0001f9ea"
LONE_SURROGATE = "broken \ud800 half"


# -- comparing ----------------------------------------------------------------------------


def canonical(value: Any) -> Any:
    """A comparable form that keeps types apart (1 vs 1.0 vs True) and NaN equal to NaN."""
    if isinstance(value, float):
        return ("float", repr(value))
    if isinstance(value, bool | int | str | bytes) or value is None:
        return (type(value).__name__, value)
    if isinstance(value, Mapping):
        return ("map", tuple((key, canonical(item)) for key, item in value.items()))
    if isinstance(value, tuple | list):
        return ("array", tuple(canonical(item) for item in value))
    raise AssertionError(f"unexpected attribute value {value!r}")


def record_key(record: SpanRecord) -> tuple[Any, ...]:
    return (
        record.trace_id,
        record.span_id,
        record.parent_span_id,
        record.name,
        record.start_time_ns,
        record.end_time_ns,
        record.status,
        record.status_message,
        canonical(record.attributes),
        tuple((e.name, e.timestamp_ns, canonical(e.attributes)) for e in record.events),
        record.kind,
        record.scope,
        canonical(record.resource),
    )


def tree_figures(trace: Trace) -> list[tuple[Any, ...]]:
    return [
        (
            node.span_id,
            node.name,
            node.parent.span_id if node.parent is not None else None,
            node.depth,
            node.detached,
            node.synthetic,
            node.role,
            node.own,
            node.subtotal,
            node.is_error_origin,
            node.running,
            node.mismatch,
            node.warnings,
            node.priced,
        )
        for node in trace.tree.nodes
    ]


def without_receiver_keys(record: SpanRecord, original: SpanRecord) -> SpanRecord:
    """`record` (loaded) less the receivers' keys the save added to `original`'s.

    Checks that only those keys were added, and never over a key the span had.
    """
    added = set(record.attributes) - set(original.attributes)
    assert added <= RECEIVER_KEYS, added - RECEIVER_KEYS
    attributes = {k: v for k, v in record.attributes.items() if k not in added}
    return replace(record, attributes=attributes)


def assert_same_trace(loaded: Trace, original: Trace, *, exact: bool = False) -> None:
    """Same trace, same figures. Unless `exact` (a file saved without receiver keys),
    the loaded spans may carry the receivers' keys the save added, and nothing else."""
    assert loaded.name == original.name
    assert loaded.trace_id == original.trace_id
    assert loaded.root_span_id == original.root_span_id
    originals = {record.span_id: record for record in original.records()}
    loaded_list = loaded.records()
    assert sorted(r.span_id for r in loaded_list) == sorted(originals)
    if not exact:
        loaded_list = [without_receiver_keys(r, originals[r.span_id]) for r in loaded_list]
    original_records = sorted(map(record_key, originals.values()))
    loaded_records = sorted(map(record_key, loaded_list))
    assert len(loaded_records) == len(original_records)
    for got, expected in zip(loaded_records, original_records, strict=True):
        assert got == expected
    assert tree_figures(loaded) == tree_figures(original)
    assert loaded.totals == original.totals
    assert loaded.summary() == original.summary()
    pandas.testing.assert_frame_equal(loaded.to_dataframe(), original.to_dataframe())


# -- traces to save -----------------------------------------------------------------------


def rich_trace() -> tuple[Trace, Any]:
    """A real trace with every kind of span; returns it and a span left running."""
    tracer = get_tracer()
    with an.trace("rich ✨ trace") as trace:
        with an.span("agent", type="agent"):
            with an.span("priced call", type="llm"):
                an.record_usage(
                    model="gpt-4o", input_tokens=1200, output_tokens=300, cache_read_tokens=200
                )
            with an.span("local call", type="llm"):
                an.record_usage(model="my-local-llama", input_tokens=1000, output_tokens=10)
            with an.span("reported cost", type="chat"):
                an.record_usage(model="gpt-4o-mini", input_tokens=10, output_tokens=2, cost=0.25)
        with pytest.raises(ValueError), an.span("outer"), an.span("middle"), an.span("inner"):
            raise ValueError("deep ☠ failure")
        with an.span("bad attributes", type="llm") as bad:
            bad.set_attribute("gen_ai.usage.input_tokens", "abc")
            bad.set_attribute("gen_ai.usage.output_tokens", -5)
            bad.set_attribute("llm.token_count.total", math.nan)
            bad.set_attribute("llm.cost.total", math.inf)
            bad.set_attribute("gen_ai.usage.cache_read.input_tokens", True)
            bad.set_attribute("negative float", -math.inf)
            bad.set_attribute("minus zero", -0.0)
        with an.span(f"unicode {UNICODE}", type="tool") as odd:
            odd.set_attribute("text", UNICODE)
            odd.set_attribute("large", "x" * 1_000_000 + "end")
            odd.set_attribute("ints", tuple(range(-5, 10_000)))
            odd.set_attribute("floats", (0.1, 1e300, -2.5, 3.0))
            odd.set_attribute("bools", (True, False, True))
            odd.set_attribute("strings", ("a", "", UNICODE))
            odd.set_attribute("empty", ())
            odd.set_attribute("int64", 2**63 - 1)
            odd.set_attribute("float that looks like an int", 7.0)
            odd.add_event("note", {"when": "now", "count": 3, "ratio": 0.5, "ok": False})
        late = tracer.start_span("late")  # a child of the root that ends after it
        running = tracer.start_span("running")  # still open when the trace is saved
    late.end()
    start = trace.root.record.start_time_ns
    trace.add_records(
        [SpanRecord(trace.trace_id, 0xD7, 0xFEEDFACE, "detached", start + 5, start + 9)]
    )
    return trace, running


def handmade_records(trace_id: int = 0xABC) -> list[SpanRecord]:
    """Odd cases that real spans rarely produce."""
    resource = {"service.name": "handmade", "deployment": ("a", "b")}
    return [
        SpanRecord(trace_id, 1, None, "top one", 100, 900, resource=resource, scope="mine"),
        SpanRecord(trace_id, 2, None, "top two", 150, 950, status="OK", status_message="fine"),
        SpanRecord(
            trace_id,
            3,
            1,
            "llm",
            110,
            200,
            status="ERROR",
            status_message="boom",
            attributes={
                "ag.type.node": "llm",
                "gen_ai.response.model": "gpt-4o",
                "gen_ai.usage.input_tokens": 10,
                "gen_ai.usage.output_tokens": 4,
            },
            events=(
                SpanEvent(
                    "exception",
                    150,
                    {"exception.type": "ValueError", "exception.message": "boom"},
                ),
            ),
            kind="CLIENT",
        ),
        SpanRecord(trace_id, 4, 0xDEAD, "detached", 120, 130, kind="SERVER"),
        SpanRecord(trace_id, 5, 1, "late", 800, 5000, kind="PRODUCER"),
        SpanRecord(trace_id, 6, 2, "running", 300, None, kind="CONSUMER"),
        SpanRecord(
            trace_id,
            7,
            2,
            "unpriced",
            310,
            320,
            attributes={
                "ag.type.node": "llm",
                "ag.meta.response.model": "my-local-llama",
                "ag.metrics.unit.tokens.prompt": 1000,
            },
        ),
        SpanRecord(trace_id, 8, 9, "cycle a", 400, 410),
        SpanRecord(trace_id, 9, 8, "cycle b", 401, 409),
        SpanRecord(trace_id, 10, 0, "parent zero", 402, 403),
        SpanRecord(
            trace_id,
            0xFFFF_FFFF_FFFF_FFFF,
            1,
            "max id",
            404,
            405,
            attributes={
                "none": None,
                "bytes": b"\x00\xff",
                "mapping": {"inner": 1, "deeper": {"x": (1, 2)}},
                "list": [1, 2, 3],
            },
        ),
    ]


# -- round trips --------------------------------------------------------------------------


def test_real_trace_round_trips(tmp_path: Path) -> None:
    trace, running = rich_trace()
    try:
        path = tmp_path / "rich.otlp.json"
        trace.save(path)
        assert path.stat().st_mode & 0o777 == 0o644  # readable by others, like any file
        loaded = load(path)
        assert_same_trace(loaded, trace)

        # The comparison is not vacuous: the figures that make this trace odd are there.
        totals = loaded.totals
        assert totals.errors == 1
        assert totals.unpriced_calls >= 1
        assert totals.cost is not None and totals.cost > 0
        assert loaded.find("detached").detached
        assert loaded.find("running").running
        assert not loaded.find("late").running
        late = loaded.find("late").record
        assert late.end_time_ns is not None
        assert late.end_time_ns > (loaded.root.record.end_time_ns or 0)
        inner = loaded.find("inner")
        assert inner.is_error_origin
        assert [event.name for event in inner.record.events] == ["exception"]
        unicode_node = loaded.find(f"unicode {UNICODE}")
        attributes = unicode_node.record.attributes
        assert attributes["text"] == UNICODE
        assert len(attributes["large"]) == 1_000_003
        assert attributes["ints"] == tuple(range(-5, 10_000))
        assert type(attributes["float that looks like an int"]) is float
        assert type(attributes["int64"]) is int
        bad = loaded.find("bad attributes")
        assert math.isnan(bad.record.attributes["llm.token_count.total"])
        assert bad.warnings  # the bad values are still reported as bad after loading
        assert loaded.closed and not loaded.running
    finally:
        running.end()


def test_without_receiver_keys_a_trace_round_trips_exactly(tmp_path: Path) -> None:
    trace, running = rich_trace()
    try:
        path = tmp_path / "exact.otlp.json"
        path.write_text(json.dumps(trace_to_otlp(trace, receiver_keys=False)))
        assert_same_trace(load(path), trace, exact=True)
    finally:
        running.end()


def test_handmade_odd_spans_round_trip(tmp_path: Path) -> None:
    original = Trace(0xABC, "handmade", records=handmade_records())
    path = tmp_path / "handmade.json"
    save_trace(original, path)
    loaded = load(path)
    assert_same_trace(loaded, original)
    assert loaded.root.synthetic  # two top-level spans and no root id: a synthetic root
    assert loaded.find("detached").detached
    assert loaded.find("running").running
    assert loaded.find("parent zero").record.parent_span_id == 0
    assert loaded.find("max id").record.attributes["mapping"] == {
        "inner": 1,
        "deeper": {"x": (1, 2)},
    }
    assert loaded.find("llm").record.kind == "CLIENT"


def test_root_span_id_and_name_are_kept_even_without_the_root_marker(tmp_path: Path) -> None:
    records = handmade_records()
    original = Trace(0xABC, "named by hand", root_span_id=2, records=records)
    save_trace(original, tmp_path / "t.json")
    loaded = load(tmp_path / "t.json")
    assert loaded.name == "named by hand"
    assert loaded.root_span_id == 2
    assert_same_trace(loaded, original)


def test_trace_saved_while_running_loads_as_running(tmp_path: Path) -> None:
    path = tmp_path / "running.json"
    with an.trace("in progress") as trace:
        with an.span("done", type="llm"):
            an.record_usage(model="gpt-4o", input_tokens=5, output_tokens=5)
        with an.span("open"):
            trace.save(path)
            loaded = load(path)
    assert loaded.root.running
    assert loaded.find("open").running
    assert not loaded.find("done").running
    assert loaded.tree.running_count == 2
    assert loaded.totals.total_tokens == 10
    assert '"endTimeUnixNano":"0"' in path.read_text()


def test_empty_trace_keeps_its_name_and_id(tmp_path: Path) -> None:
    original = Trace(0x1234, "nothing happened")
    save_trace(original, tmp_path / "empty.json")
    loaded = load(tmp_path / "empty.json")
    assert (loaded.name, loaded.trace_id, loaded.records()) == ("nothing happened", 0x1234, [])


def test_decimal_and_other_values_outside_otel_types_are_saved_as_text(tmp_path: Path) -> None:
    attributes = {"cost": Decimal("0.10"), "huge": 2**64, "tiny": -(2**63) - 1, "ok": -(2**63)}
    record = SpanRecord(1, 1, None, "root", 0, 1, attributes=attributes)
    save_trace(Trace(1, "t", records=[record]), tmp_path / "t.json")
    json_format.Parse((tmp_path / "t.json").read_text(), ExportTraceServiceRequest())
    assert load(tmp_path / "t.json").records()[0].attributes == {
        "cost": "0.10",
        "huge": str(2**64),
        "tiny": str(-(2**63) - 1),
        "ok": -(2**63),
    }


otel_scalars = (
    st.text()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
)
otel_values = otel_scalars | st.one_of(
    st.lists(st.text(), max_size=4).map(tuple),
    st.lists(st.booleans(), max_size=4).map(tuple),
    st.lists(st.integers(min_value=-(2**63), max_value=2**63 - 1), max_size=4).map(tuple),
    st.lists(st.floats(), max_size=4).map(tuple),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.text(), otel_values, max_size=6))
def test_any_attribute_value_round_trips_through_json(attributes: dict[str, Any]) -> None:
    encoded = json.dumps([{"key": k, "value": encode_value(v)} for k, v in attributes.items()])
    decoded = {item["key"]: decode_value(item["value"]) for item in json.loads(encoded)}
    assert canonical(decoded) == canonical(attributes)


# -- the files are OTLP JSON that other tools read, and we read theirs --------------------


def test_saved_file_is_valid_otlp_json_for_protobuf(tmp_path: Path) -> None:
    trace, running = rich_trace()
    running.end()
    path = tmp_path / "t.json"
    trace.save(path)
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") == 1  # one request per line, as the Collector writes
    document = json.loads(text)
    # Strict protobuf JSON parsing: no unknown fields, every field of the right type.
    request = json_format.Parse(text, ExportTraceServiceRequest())
    spans = [
        span
        for resource_spans in request.resource_spans
        for scope_spans in resource_spans.scope_spans
        for span in scope_spans.spans
    ]
    records = {record.span_id: record for record in trace.records()}
    assert len(spans) == len(records)
    raw_spans = [
        span
        for resource_spans in document["resourceSpans"]
        for scope_spans in resource_spans["scopeSpans"]
        for span in scope_spans["spans"]
    ]
    for span, raw in zip(spans, raw_spans, strict=True):
        # OTLP JSON ids are hex, not protobuf's base64.
        record = records[int(raw["spanId"], 16)]
        assert raw["traceId"] == f"{record.trace_id:032x}"
        assert span.name == record.name
        assert span.start_time_unix_nano == record.start_time_ns
        assert span.end_time_unix_nano == (record.end_time_ns or 0)
        assert span.status.code == {"UNSET": 0, "OK": 1, "ERROR": 2}[record.status]
        assert span.kind == 1  # SPAN_KIND_INTERNAL
        parsed = {a.key: a.value for a in span.attributes}
        assert parsed.keys() >= record.attributes.keys()
        assert parsed.keys() - record.attributes.keys() <= RECEIVER_KEYS
        for key, value in record.attributes.items():
            which = parsed[key].WhichOneof("value")
            if isinstance(value, bool):
                assert (which, parsed[key].bool_value) == ("bool_value", value)
            elif isinstance(value, int):
                assert (which, parsed[key].int_value) == ("int_value", value)
            elif isinstance(value, float):
                assert which == "double_value"
                assert repr(parsed[key].double_value) == repr(value)
            elif isinstance(value, str):
                assert which == "string_value"
            else:
                assert which == "array_value"
                assert len(parsed[key].array_value.values) == len(value)


class SpanCapture(SpanProcessor):
    """Keeps the SDK's own span objects, for the traces it is asked to watch."""

    def __init__(self) -> None:
        self.active = False
        self.spans: dict[int, list[ReadableSpan]] = {}

    def on_end(self, span: ReadableSpan) -> None:
        context = span.context
        if self.active and context is not None and get_collector().get(context.trace_id):
            self.spans.setdefault(context.trace_id, []).append(span)


_capture: SpanCapture | None = None


def otel_sdk_spans() -> tuple[Trace, list[ReadableSpan]]:
    """A real trace and the SDK's own span objects for it."""
    global _capture
    if _capture is None:
        get_collector()
        assert RUNTIME.tracing.provider is not None
        _capture = SpanCapture()
        RUNTIME.tracing.provider.add_span_processor(_capture)
    _capture.active = True
    try:
        with an.trace("from the sdk") as trace:
            with an.span("call", type="llm"):
                an.record_usage(model="gpt-4o", input_tokens=100, output_tokens=20)
            with pytest.raises(KeyError), an.span("fails"):
                raise KeyError("k")
    finally:
        _capture.active = False
    spans = _capture.spans.pop(trace.trace_id)
    assert len(spans) == 3
    return trace, spans


def test_loads_protobuf_json_written_by_the_official_encoder(tmp_path: Path) -> None:
    trace, spans = otel_sdk_spans()
    request = encode_spans(spans)  # the encoder the OTLP exporters use
    # Plain protobuf JSON: base64 ids, enum names, snake_case or camelCase names.
    for name, text in {
        "camel": json_format.MessageToJson(request),
        "snake": json_format.MessageToJson(request, preserving_proto_field_name=True),
    }.items():
        path = tmp_path / f"{name}.json"
        path.write_text(text)
        loaded = load(path)
        assert loaded.root_span_id == trace.root_span_id
        assert loaded.name == "from the sdk"
        assert sorted(map(record_key, loaded.records())) == sorted(map(record_key, trace.records()))
        assert tree_figures(loaded) == tree_figures(trace)


def test_loads_a_collector_file_with_several_traces_over_several_lines(tmp_path: Path) -> None:
    trace, spans = otel_sdk_spans()
    other, other_spans = otel_sdk_spans()

    def collector_line(batch: list[ReadableSpan]) -> str:
        # What the Collector's file exporter writes: OTLP JSON, hex ids, one request a line.
        document = json.loads(json_format.MessageToJson(encode_spans(batch), indent=None))
        for resource_spans in document["resourceSpans"]:
            for scope_spans in resource_spans["scopeSpans"]:
                for span in scope_spans["spans"]:
                    for key in ("traceId", "spanId", "parentSpanId"):
                        if key in span:
                            span[key] = base64.b64decode(span[key]).hex()
        return json.dumps(document, separators=(",", ":"))

    # The first trace's spans are split over two lines, with the other trace between.
    lines = [
        collector_line(spans[:1] + other_spans[:2]),
        collector_line(other_spans[2:] + spans[1:]),
    ]
    path = tmp_path / "collector.jsonl"
    path.write_text("\n".join(lines) + "\n")
    traces = load_all(path)
    assert [t.trace_id for t in traces] == [trace.trace_id, other.trace_id]
    for loaded, original in zip(traces, (trace, other), strict=True):
        assert sorted(map(record_key, loaded.records())) == sorted(
            map(record_key, original.records())
        )
        assert tree_figures(loaded) == tree_figures(original)
    assert load(path).trace_id == trace.trace_id
    assert load(path, trace_id=f"{other.trace_id:032x}").trace_id == other.trace_id
    assert load(path, trace_id=other.trace_id).totals == other.totals
    with pytest.raises(KeyError):
        load(path, trace_id=12345)


def test_loads_a_hand_written_otlp_json_file(tmp_path: Path) -> None:
    # Written the way the OTLP specification's example and the Collector present it.
    text = """{
  "resourceSpans": [
    {
      "resource": {
        "attributes": [{"key": "service.name", "value": {"stringValue": "rag-service"}}]
      },
      "scopeSpans": [
        {
          "scope": {"name": "my.library", "version": "1.0.0"},
          "spans": [
            {
              "traceId": "5b8efff798038103d269b633813fc60c",
              "spanId": "eee19b7ec3c1b174",
              "parentSpanId": "",
              "name": "answer question",
              "startTimeUnixNano": "1544712660000000000",
              "endTimeUnixNano": "1544712661000000000",
              "kind": 2,
              "flags": 1,
              "traceState": "",
              "droppedAttributesCount": 0,
              "attributes": [{"key": "http.route", "value": {"stringValue": "/ask"}}],
              "events": [],
              "links": [],
              "status": {}
            },
            {
              "traceId": "5b8efff798038103d269b633813fc60c",
              "spanId": "eee19b7ec3c1b173",
              "parentSpanId": "eee19b7ec3c1b174",
              "name": "chat gpt-4o",
              "startTimeUnixNano": "1544712660100000000",
              "endTimeUnixNano": "1544712660900000000",
              "kind": 3,
              "attributes": [
                {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o"}},
                {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "1000"}},
                {"key": "gen_ai.usage.output_tokens", "value": {"intValue": 200}},
                {"key": "temperature", "value": {"doubleValue": 0.5}}
              ],
              "events": [
                {
                  "timeUnixNano": "1544712660500000000",
                  "name": "exception",
                  "attributes": [
                    {"key": "exception.message", "value": {"stringValue": "rate limited"}}
                  ]
                }
              ],
              "status": {"code": 2, "message": "rate limited"}
            }
          ]
        }
      ]
    }
  ]
}
"""
    path = tmp_path / "spec-example.json"
    path.write_text(text)
    trace = load(path)
    assert trace.name == "answer question"  # the single span without a parent is the root
    assert trace.root_span_id == 0xEEE19B7EC3C1B174
    assert trace.trace_id == 0x5B8EFFF798038103D269B633813FC60C
    call = trace.find("chat gpt-4o")
    assert call.parent is trace.root
    assert call.record.kind == "CLIENT" and call.record.status == "ERROR"
    assert call.record.status_message == "rate limited"
    assert call.record.attributes["temperature"] == 0.5
    assert call.record.events[0].attributes == {"exception.message": "rate limited"}
    assert call.record.scope == "my.library"
    assert call.record.resource == {"service.name": "rag-service"}
    assert trace.totals.total_tokens == 1200
    assert trace.totals.model_calls == 1
    assert trace.totals.errors == 1
    assert trace.totals.cost is not None and trace.totals.cost > 0
    assert trace.root.duration_ms == 1000.0

    gz = tmp_path / "spec-example.json.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    assert load(gz).totals == trace.totals


def test_without_metadata_the_marked_root_wins(tmp_path: Path) -> None:
    with an.trace("marked root") as trace, an.span("child"):
        pass
    document = trace_to_otlp(trace)
    for resource_spans in document["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            del scope_spans["scope"]["attributes"]  # as if another tool rewrote the file
    # A second parentless span, started first: only the root marker tells the root.
    stray = SpanRecord(trace.trace_id, 0x77, None, "stray", 0, 1)
    document["resourceSpans"][0]["scopeSpans"][0]["spans"].append(encode_span(stray))
    path = tmp_path / "t.json"
    path.write_text(json.dumps(document))
    loaded = load(path)
    assert loaded.root_span_id == trace.root_span_id
    assert loaded.name == "marked root"
    assert loaded.find("stray").parent is loaded.root
    assert loaded.find("child").parent is loaded.root


def test_a_lone_surrogate_is_saved_as_a_replacement_character(tmp_path: Path) -> None:
    with an.trace(f"name {LONE_SURROGATE}") as trace, an.span("s") as span:
        span.set_attribute("text", LONE_SURROGATE)
        span.set_attribute(LONE_SURROGATE, 1)
    trace.save(tmp_path / "t.json")
    json_format.Parse((tmp_path / "t.json").read_text(), ExportTraceServiceRequest())
    loaded = load(tmp_path / "t.json")
    assert loaded.name == "name broken \ufffd half"
    assert loaded.find("s").record.attributes["text"] == "broken \ufffd half"
    assert loaded.find("s").record.attributes["broken \ufffd half"] == 1


def test_several_saved_traces_appended_into_one_file(tmp_path: Path) -> None:
    with an.trace("first") as first:
        pass
    with an.trace("second") as second:
        pass
    save_trace(first, tmp_path / "a.json")
    save_trace(second, tmp_path / "b.json")
    both = tmp_path / "both.jsonl"
    both.write_text((tmp_path / "a.json").read_text() + (tmp_path / "b.json").read_text())
    assert [t.name for t in load_all(both)] == ["first", "second"]
    assert load(both).name == "first"
    array = tmp_path / "array.json"
    array.write_text(json.dumps([trace_to_otlp(first), trace_to_otlp(second)]))
    assert [t.name for t in load_all(array)] == ["first", "second"]


# -- bad files ----------------------------------------------------------------------------


def saved_text(tmp_path: Path) -> str:
    with an.trace("to damage") as trace, an.span("child", type="llm"):
        an.record_usage(model="gpt-4o", input_tokens=1, output_tokens=1)
    save_trace(trace, tmp_path / "good.json")
    return (tmp_path / "good.json").read_text()


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 0.999])
def test_truncated_file_is_a_clear_error(tmp_path: Path, fraction: float) -> None:
    text = saved_text(tmp_path)
    cut = text[: int(len(text.rstrip("\n")) * fraction)]
    path = tmp_path / "cut.json"
    path.write_text(cut)
    with pytest.raises(TraceFileError) as caught:
        load(path)
    message = str(caught.value)
    assert str(path) in message
    assert ("truncated" in message) or ("empty" in message)
    assert isinstance(caught.value, ValueError)


def test_bad_line_in_json_lines_names_the_line_and_loads_nothing(tmp_path: Path) -> None:
    text = saved_text(tmp_path)
    path = tmp_path / "lines.jsonl"
    path.write_text(text + text[: len(text) // 2] + "\n")
    with pytest.raises(TraceFileError, match=r"line 2: not valid JSON"):
        load_all(path)
    with pytest.raises(TraceFileError):
        load(path)  # the good first trace is not returned from a damaged file


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: {"something": "else"}, "not an OTLP trace request"),
        (lambda d: {"resourceSpans": 5}, "expected a JSON array"),
        (
            lambda d: d["resourceSpans"][0]["scopeSpans"][0]["spans"][0].update(traceId="xyz"),
            "traceId",
        ),
        (
            lambda d: d["resourceSpans"][0]["scopeSpans"][0]["spans"][0].pop("spanId"),
            "spanId: missing",
        ),
        (
            lambda d: d["resourceSpans"][0]["scopeSpans"][0]["spans"][0].update(
                startTimeUnixNano="soon"
            ),
            "startTimeUnixNano",
        ),
        (
            lambda d: d["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["attributes"][0].update(
                value={"intValue": "many"}
            ),
            r"spans\[1\]\.attributes\[0\]\.value",
        ),
        (
            lambda d: d["resourceSpans"][0]["scopeSpans"][0]["spans"][1]["attributes"][0].update(
                value={"strangeValue": 1}
            ),
            "unknown AnyValue field",
        ),
        (
            lambda d: d["resourceSpans"][0]["scopeSpans"][0]["spans"][0].update(kind=99),
            "unknown span kind",
        ),
        (
            lambda d: d["resourceSpans"][0]["scopeSpans"][0]["spans"][0].update(status={"code": 7}),
            "unknown status code",
        ),
        (lambda d: d["resourceSpans"][0]["scopeSpans"][0].update(spans=[]), "holds no spans"),
    ],
)
def test_malformed_structure_is_a_clear_error(tmp_path: Path, mutate: Any, expected: str) -> None:
    document = json.loads(saved_text(tmp_path))
    # No trace metadata: a file with no spans must be an error, not an empty trace.
    for resource_spans in document["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            scope_spans["scope"].pop("attributes")
    replaced = mutate(document)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(replaced if isinstance(replaced, dict) else document))
    with pytest.raises(TraceFileError, match=expected) as caught:
        load(path)
    assert str(path) in str(caught.value)


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b"", "empty"),
        (b"   \n\n", "empty"),
        (b"[]", "holds no spans"),
        (b"\xff\xfe\x00garbage", "not UTF-8"),
        (b"\x1f\x8b\x08\x00garbage", "gzip"),
        (b"null", "expected a JSON object"),
        (b'{"resourceSpans": [{"scopeSpans": [{"spans": [42]}]}]}', "expected a JSON object"),
    ],
)
def test_not_a_trace_file(tmp_path: Path, content: bytes, expected: str) -> None:
    path = tmp_path / "bad.json"
    path.write_bytes(content)
    with pytest.raises(TraceFileError, match=expected):
        load(path)


def test_a_failed_save_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "keep.json"
    good = saved_text(tmp_path)
    path.write_text(good)
    bad = Trace(1, "bad", records=[SpanRecord(2**130, 1, None, "too wide", 0, 1)])
    with pytest.raises(ValueError, match="trace id"):
        save_trace(bad, path)
    assert path.read_text() == good
    assert sorted(os.listdir(tmp_path)) == ["good.json", "keep.json"]


# -- hostile files and careless saves (issue 12) ------------------------------------------

BOMB_SCRIPT = """
import json, resource, sys
from agenta_notebook.io.persist import TraceFileError, load
# A guard for the machine: code that inflates it all fails fast here instead of using GBs.
hard = resource.getrlimit(resource.RLIMIT_AS)[1]
soft = 1 << 30 if hard == resource.RLIM_INFINITY else min(1 << 30, hard)
resource.setrlimit(resource.RLIMIT_AS, (soft, hard))
try:
    load(sys.argv[1])
except TraceFileError as error:
    outcome = str(error)
except MemoryError:
    outcome = "MemoryError"
else:
    outcome = "loaded"
# The peak resident memory of this process's own address space (VmHWM, KiB). Not
# `ru_maxrss`: Linux carries that over from before `exec`, so a child of a big test
# process would report its parent's memory.
with open("/proc/self/status", encoding="ascii") as status:
    peak_kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print("REPORT " + json.dumps({"outcome": outcome, "peak_kib": peak_kib}))
"""


def write_gzip_bomb(path: Path, inflated: int) -> None:
    """A gzip file of whitespace inflating to `inflated` bytes, written member by member."""
    member = gzip.compress(b" " * (1 << 20), compresslevel=9)
    with path.open("wb") as file:
        for _ in range(inflated >> 20):
            file.write(member)


def test_a_gzip_bomb_is_refused_while_streaming_with_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "bomb.json.gz"
    write_gzip_bomb(path, 4 * 1024**3)
    assert path.stat().st_size < 8 * 1024**2
    script = tmp_path / "bomb.py"
    script.write_text(BOMB_SCRIPT, encoding="utf-8")
    environment = {key: value for key, value in os.environ.items()}
    environment.pop("AGENTA_NOTEBOOK_MAX_LOAD_BYTES", None)  # the default cap
    done = subprocess.run(
        [sys.executable, str(script), str(path)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env=environment,
    )
    assert "REPORT " in done.stdout, done.stderr[-3000:]
    report = json.loads(done.stdout.split("REPORT ", 1)[1])
    outcome = report["outcome"]
    assert outcome != "MemoryError"
    assert str(path) in outcome
    assert f"{DEFAULT_MAX_BYTES:,} bytes" in outcome
    assert "max_bytes=" in outcome and "AGENTA_NOTEBOOK_MAX_LOAD_BYTES" in outcome
    assert report["peak_kib"] < 200 * 1024


def test_the_default_cap_holds_a_million_span_trace(tmp_path: Path) -> None:
    # A saved 10k-span trace of model calls (about 11 MB) times 100, with room to spare.
    with an.trace("ten thousand") as trace:
        for index in range(10_000):
            with an.span(f"call {index}", type="llm"):
                an.record_usage(model="gpt-4o", input_tokens=100 + index, output_tokens=20)
    path = tmp_path / "10k.json"
    trace.save(path)
    assert DEFAULT_MAX_BYTES > 1.5 * 100 * path.stat().st_size
    assert len(load(path).nodes) == 10_001


def test_max_bytes_and_its_environment_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    text = saved_text(tmp_path).encode()
    plain = tmp_path / "plain.json"
    plain.write_bytes(text)
    packed = tmp_path / "packed.json.gz"
    packed.write_bytes(gzip.compress(text))
    for path in (plain, packed):
        assert load(path, max_bytes=len(text)).name == "to damage"
        with pytest.raises(TraceFileError, match=f"limit of {len(text) - 1:,} bytes"):
            load(path, max_bytes=len(text) - 1)
        with pytest.raises(TraceFileError, match="max_bytes="):
            load_all(path, max_bytes=10)
        monkeypatch.setenv("AGENTA_NOTEBOOK_MAX_LOAD_BYTES", str(len(text) - 1))
        with pytest.raises(TraceFileError, match="AGENTA_NOTEBOOK_MAX_LOAD_BYTES"):
            load(path)
        assert load(path, max_bytes=len(text)).name == "to damage"  # the keyword wins
        monkeypatch.setenv("AGENTA_NOTEBOOK_MAX_LOAD_BYTES", "lots")
        with pytest.raises(ValueError, match="AGENTA_NOTEBOOK_MAX_LOAD_BYTES='lots'"):
            load(path)
        monkeypatch.delenv("AGENTA_NOTEBOOK_MAX_LOAD_BYTES")
    with pytest.raises(ValueError, match="positive"):
        load(plain, max_bytes=0)
    with pytest.raises(TypeError, match="int"):
        load(plain, max_bytes="1000")  # type: ignore[arg-type]


# A gzip document just past the in-memory threshold: measured, then read again.
def test_a_big_gzip_document_under_the_cap_loads(tmp_path: Path) -> None:
    text = saved_text(tmp_path).rstrip("\n")
    padded = text + " " * (17 * 1024**2) + "\n"
    path = tmp_path / "padded.json.gz"
    path.write_bytes(gzip.compress(padded.encode(), compresslevel=1))
    assert load(path).name == "to damage"
    with pytest.raises(TraceFileError, match="decompressed"):
        load(path, max_bytes=len(padded) - 1)


UMASK_SCRIPT = """
import os, sys
import agenta_notebook as an
os.umask(int(sys.argv[2], 8))
with an.trace("private") as trace:
    pass
trace.save(sys.argv[1])
print(oct(os.stat(sys.argv[1]).st_mode & 0o777))
"""


@pytest.mark.parametrize(("umask", "mode"), [("077", "0o600"), ("027", "0o640"), ("002", "0o664")])
def test_a_new_file_honours_the_umask(tmp_path: Path, umask: str, mode: str) -> None:
    script = tmp_path / "umask.py"
    script.write_text(UMASK_SCRIPT, encoding="utf-8")
    path = tmp_path / "private.json"
    done = subprocess.run(
        [sys.executable, str(script), str(path), umask],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == mode
    assert load(path).name == "private"


def test_an_existing_file_keeps_its_mode_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "shared.json"
    path.write_text("old")
    path.chmod(0o640)
    with an.trace("again") as trace:
        pass
    previous = os.umask(0o077)
    try:
        trace.save(path)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640
    assert load(path).name == "again"


def test_saving_through_a_symlink_updates_its_target_and_keeps_the_link(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "trace.json"
    target.write_text("old content")
    target.chmod(0o600)
    link = tmp_path / "link.json"
    link.symlink_to(Path("real") / "trace.json")  # relative, as `ln -s` makes them
    chain = tmp_path / "chain.json"
    chain.symlink_to(link)
    with an.trace("through the link") as trace:
        pass
    trace.save(link)
    assert link.is_symlink() and os.readlink(link) == os.path.join("real", "trace.json")
    assert load(target).name == "through the link"
    assert target.stat().st_mode & 0o777 == 0o600
    with an.trace("through two links") as second:
        pass
    second.save(chain)
    assert chain.is_symlink() and link.is_symlink()
    assert load(target).name == "through two links"
    # No temporary left anywhere, and nothing new beside the links.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["chain.json", "link.json", "real"]
    assert [p.name for p in (tmp_path / "real").iterdir()] == ["trace.json"]
    # A dangling link: the file it names is created.
    dangling = tmp_path / "dangling.json"
    dangling.symlink_to(tmp_path / "real" / "new.json")
    trace.save(dangling)
    assert dangling.is_symlink()
    assert load(tmp_path / "real" / "new.json").name == "through the link"


def id_file(tmp_path: Path, field: str, value: str) -> Path:
    """A saved two-span file whose child span ("child") has `field` set to `value`."""
    document = json.loads(saved_text(tmp_path))
    spans = document["resourceSpans"][0]["scopeSpans"][0]["spans"]
    (child,) = [span for span in spans if span["name"] == "child"]
    child[field] = value
    path = tmp_path / "ids.json"
    path.write_text(json.dumps(document))
    return path


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("spanId", "-000000000000002"),
        ("spanId", "0x00000000000002"),
        ("spanId", "0000_00000000002"),
        ("spanId", " 000000000000002"),
        ("spanId", "+000000000000002"),
        ("spanId", "0000000000000000"),
        ("traceId", "0x" + "0" * 29 + "abc"),
        ("traceId", "-" + "0" * 28 + "abc"),
        ("traceId", "0" * 32),
        ("parentSpanId", "0x00000000000001"),
    ],
)
def test_ids_must_be_exact_hex_and_not_zero(tmp_path: Path, field: str, value: str) -> None:
    path = id_file(tmp_path, field, value)
    with pytest.raises(TraceFileError, match=rf"{field}: .*\(span \"child\"\)") as caught:
        load(path)
    assert str(path) in str(caught.value)


def test_an_all_zero_parent_is_a_missing_parent_and_saves_again(tmp_path: Path) -> None:
    path = id_file(tmp_path, "parentSpanId", "0" * 16)
    loaded = load(path)
    child = loaded.find("child")
    assert child.record.parent_span_id == 0 and child.detached
    assert not loaded.root.synthetic and loaded.root.name == "to damage"
    loaded.save(tmp_path / "again.json")
    assert load(tmp_path / "again.json").name == "to damage"


def test_a_zero_root_span_id_in_the_metadata_is_refused(tmp_path: Path) -> None:
    document = json.loads(saved_text(tmp_path))
    for pair in document["resourceSpans"][0]["scopeSpans"][0]["scope"]["attributes"]:
        if pair["key"] == "agenta_notebook.trace.root_span_id":
            pair["value"] = {"stringValue": "0" * 16}
    path = tmp_path / "zero-root.json"
    path.write_text(json.dumps(document))
    with pytest.raises(TraceFileError, match="root_span_id: all zero"):
        load(path)


@pytest.mark.parametrize("name", [123, None, b"bytes", ("a", "b")])
def test_a_trace_name_that_is_not_text_is_refused_before_anything_starts(name: Any) -> None:
    before = an.last_trace()
    retained = RUNTIME.describe()
    with pytest.raises(TypeError, match="name must be a str"), an.trace(name):
        raise AssertionError("the block must not run")
    assert an.last_trace() is before
    assert RUNTIME.describe() == retained
