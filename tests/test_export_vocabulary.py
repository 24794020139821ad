"""Exports speak the receiver's vocabulary: kind, model and counted usage keys.

Spans leave the notebook (saved files, OTLP export) with the OpenTelemetry GenAI
conventions' and OpenInference's keys next to Agenta's, added at export from the built
tree: usage keys only where the roll-up counts that field, so a backend that sums its
spans (Phoenix, Langfuse) gets our totals; and a span carrying several vocabularies is
read back once.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from opentelemetry import trace as otel_trace
from opentelemetry.trace import Status, StatusCode

import agenta_notebook as an
from agenta_notebook.core.rollup import SpanRecord, build_tree
from agenta_notebook.core.usage import read_usage
from agenta_notebook.core.vocabulary import (
    RECEIVER_KEYS,
    exported_attributes,
    genai_operation,
    openinference_kind,
    receiver_attributes,
)
from agenta_notebook.io.persist import load, trace_to_otlp
from agenta_notebook.live import Trace
from agenta_notebook.runtime import RUNTIME, get_collector

INPUT_KEYS = ("gen_ai.usage.input_tokens", "llm.token_count.prompt")
OUTPUT_KEYS = ("gen_ai.usage.output_tokens", "llm.token_count.completion")
USAGE_KEY_PREFIXES = ("gen_ai.usage.", "llm.token_count.", "llm.cost.")


def tracer(scope: str) -> otel_trace.Tracer:
    """A tracer of another instrumentation scope, on the provider our collector watches."""
    get_collector()
    provider = RUNTIME.tracing.provider
    assert provider is not None
    return provider.get_tracer(scope)


def saved_spans(trace: Trace) -> dict[str, dict[str, Any]]:
    """Span name -> attributes, as `Trace.save` writes them (decoded from the JSON)."""
    document = json.loads(json.dumps(trace_to_otlp(trace)))
    spans: dict[str, dict[str, Any]] = {}
    for resource_spans in document["resourceSpans"]:
        for scope_spans in resource_spans["scopeSpans"]:
            for span in scope_spans["spans"]:
                attributes = {}
                for pair in span["attributes"]:
                    (kind, value), *_ = pair["value"].items()
                    attributes[pair["key"]] = int(value) if kind == "intValue" else value
                assert span["name"] not in spans, "test spans need distinct names"
                spans[span["name"]] = attributes
    return spans


def usage_keys(attributes: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in attributes.items() if k.startswith(USAGE_KEY_PREFIXES)}


def receiver_sum(spans: Mapping[str, Mapping[str, Any]], key: str) -> int:
    """What a backend that sums one key over every span of the trace gets."""
    return sum(int(attributes.get(key, 0)) for attributes in spans.values())


# -- kind ---------------------------------------------------------------------------------


def test_every_span_type_gets_an_openinference_kind_and_model_calls_an_operation() -> None:
    types = {
        "llm": ("LLM", "chat"),
        "chat": ("LLM", "chat"),
        "completion": ("LLM", "text_completion"),
        "embedding": ("EMBEDDING", "embeddings"),
        "rerank": ("RERANKER", None),
        "agent": ("AGENT", None),
        "tool": ("TOOL", None),
        "retriever": ("RETRIEVER", None),
        "chain": ("CHAIN", None),
        "task": ("CHAIN", None),
        "my own step": ("CHAIN", None),
    }
    with an.trace("kinds") as trace:
        for span_type in types:
            with an.span(span_type, type=span_type):
                pass
        with an.span("default type"):  # span() without a type is a task
            pass
    spans = saved_spans(trace)
    assert spans["kinds"]["openinference.span.kind"] == "CHAIN"  # the root: a workflow
    assert spans["default type"]["openinference.span.kind"] == "CHAIN"
    for span_type, (kind, operation) in types.items():
        attributes = spans[span_type]
        assert attributes["ag.type.node"] == span_type  # Agenta's key stays
        assert attributes["openinference.span.kind"] == kind, span_type
        assert attributes.get("gen_ai.operation.name") == operation, span_type
        assert not usage_keys(attributes)  # nothing reported, nothing added


def test_kind_of_foreign_vocabularies() -> None:
    assert openinference_kind("invoke_agent", False) == "AGENT"
    assert openinference_kind("execute_tool", False) == "TOOL"
    assert openinference_kind("embeddings", True) == "EMBEDDING"
    assert openinference_kind("generate_content", True) == "LLM"
    # A model call whatever its declared type says (rollup.md: any vocabulary decides).
    assert openinference_kind("agent", True) == "LLM"
    assert openinference_kind("something new", True) == "LLM"
    assert openinference_kind(None, False) is None
    assert genai_operation("embedding") == "embeddings"
    assert genai_operation("rerank") == ""


def test_a_span_without_any_type_gets_no_kind() -> None:
    with an.trace("untyped") as trace:
        tracer("some.http.library").start_span("GET /").end()
    assert "openinference.span.kind" not in saved_spans(trace)["GET /"]


# -- model and usage ----------------------------------------------------------------------


def test_a_model_call_carries_model_provider_and_every_usage_field() -> None:
    with an.trace("one call") as trace, an.span("call", type="llm"):
        an.record_usage(
            model="gpt-4o",
            provider="openai",
            input_tokens=1200,
            output_tokens=300,
            cache_read_tokens=200,
            cache_write_tokens=100,
            reasoning_tokens=50,
        )
    attributes = saved_spans(trace)["call"]
    assert attributes["openinference.span.kind"] == "LLM"
    assert attributes["gen_ai.operation.name"] == "chat"
    assert attributes["gen_ai.request.model"] == "gpt-4o"
    assert attributes["gen_ai.response.model"] == "gpt-4o"
    assert attributes["llm.model_name"] == "gpt-4o"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert attributes["llm.provider"] == "openai"
    assert usage_keys(attributes) == {
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.cache_read.input_tokens": 200,
        "gen_ai.usage.cache_creation.input_tokens": 100,
        "gen_ai.usage.reasoning.output_tokens": 50,
        "llm.token_count.prompt": 1200,
        "llm.token_count.completion": 300,
        "llm.token_count.total": 1500,
        "llm.token_count.prompt_details.cache_read": 200,
        "llm.token_count.prompt_details.cache_write": 100,
        "llm.token_count.completion_details.reasoning": 50,
    }
    # Agenta's keys are there as recorded, the cache-read one by Agenta's own name.
    assert attributes["ag.metrics.unit.tokens.prompt"] == 1200
    assert attributes["ag.metrics.unit.tokens.cache_read"] == 200


def test_cost_key_only_for_a_cost_the_span_reported() -> None:
    with an.trace("costs") as trace:
        with an.span("reported", type="llm"):
            an.record_usage(model="gpt-4o", input_tokens=10, output_tokens=2, cost=0.0042)
        with an.span("priced", type="llm"):
            an.record_usage(model="gpt-4o", input_tokens=10, output_tokens=2)
    spans = saved_spans(trace)
    assert spans["reported"]["llm.cost.total"] == 0.0042
    assert "llm.cost.total" not in spans["priced"]  # our price table's, not reported
    assert trace.find("priced").own.cost is not None


def test_claims_get_no_usage_keys_so_a_receiver_sum_equals_our_totals() -> None:
    with an.trace("claims") as trace:
        with an.span("agent", type="agent"):
            an.record_usage(model="gpt-4o", input_tokens=300, output_tokens=30)
            with an.span("llm a", type="llm"):
                an.record_usage(model="gpt-4o", input_tokens=100, output_tokens=10)
            with an.span("llm b", type="llm"):
                an.record_usage(model="gpt-4o", input_tokens=200, output_tokens=20)
        with an.span("lonely agent", type="agent"):  # a claim nothing below reports
            an.record_usage(model="gpt-4o", input_tokens=50, output_tokens=5)
    spans = saved_spans(trace)
    assert not usage_keys(spans["agent"])
    assert spans["agent"]["openinference.span.kind"] == "AGENT"
    assert usage_keys(spans["llm a"])["llm.token_count.prompt"] == 100
    assert usage_keys(spans["lonely agent"])["gen_ai.usage.input_tokens"] == 50
    totals = trace.totals
    assert (totals.input_tokens, totals.output_tokens, totals.total_tokens) == (350, 35, 385)
    for key in INPUT_KEYS:
        assert receiver_sum(spans, key) == 350
    for key in OUTPUT_KEYS:
        assert receiver_sum(spans, key) == 35
    assert receiver_sum(spans, "llm.token_count.total") == 385


def test_claims_over_claims_count_once() -> None:
    # rollup.md: root -> A (claims 300) -> B (claims 300) -> {C 100, D 200}: 300.
    with an.trace("nested claims") as trace, an.span("A", type="agent"):
        an.record_usage(input_tokens=300)
        with an.span("B", type="chain"):
            an.record_usage(input_tokens=300)
            for name, count in (("C", 100), ("D", 200)):
                with an.span(name, type="llm"):
                    an.record_usage(model="gpt-4o", input_tokens=count)
    spans = saved_spans(trace)
    assert not usage_keys(spans["A"]) and not usage_keys(spans["B"])
    assert receiver_sum(spans, "llm.token_count.prompt") == 300 == trace.totals.input_tokens


def test_a_wrapper_over_an_instrumented_call_is_a_model_call_without_usage() -> None:
    inner = tracer("openinference.instrumentation.openai")
    with an.trace("wrapper") as trace:
        with an.span("my llm function", type="llm"):
            with inner.start_as_current_span("ChatCompletion") as call:
                call.set_attributes(
                    {
                        "openinference.span.kind": "LLM",
                        "llm.model_name": "gpt-4o-mini",
                        "llm.provider": "openai",
                        "llm.token_count.prompt": 40,
                        "llm.token_count.completion": 2,
                        "llm.token_count.total": 42,
                    }
                )
        with an.span("llm over llm", type="llm"):  # reports the same 40 as the call below
            an.record_usage(model="gpt-4o-mini", input_tokens=40, output_tokens=2)
            with inner.start_as_current_span("ChatCompletion 2") as call:
                call.set_attributes(
                    {
                        "openinference.span.kind": "LLM",
                        "llm.model_name": "gpt-4o-mini",
                        "llm.token_count.prompt": 40,
                        "llm.token_count.completion": 2,
                    }
                )
    spans = saved_spans(trace)
    wrapper = spans["my llm function"]
    assert wrapper["openinference.span.kind"] == "LLM"
    assert not usage_keys(wrapper)
    assert not usage_keys(spans["llm over llm"])
    call = spans["ChatCompletion"]
    # The instrumentor's own keys stay as they are; the GenAI ones are added.
    assert call["llm.token_count.prompt"] == 40
    assert call["gen_ai.usage.input_tokens"] == 40
    assert call["gen_ai.usage.output_tokens"] == 2
    assert call["gen_ai.operation.name"] == "chat"
    assert call["gen_ai.request.model"] == "gpt-4o-mini"
    assert call["gen_ai.provider.name"] == "openai"
    assert receiver_sum(spans, "llm.token_count.prompt") == 80 == trace.totals.input_tokens
    assert trace.totals.model_calls == 2


def test_usage_keys_field_by_field() -> None:
    # rollup.md: an LLM function that reported $0.0042 over a client span of 1,000 tokens
    # on a model missing from the price table: the tokens count at the client span, the
    # cost at the function.
    inner = tracer("opentelemetry.instrumentation.openai_v2")
    with an.trace("field by field") as trace, an.span("llm function", type="llm"):
        an.record_usage(cost=0.0042)
        with inner.start_as_current_span("chat my-local-llama") as call:
            call.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.request.model": "my-local-llama",
                    "gen_ai.usage.input_tokens": 900,
                    "gen_ai.usage.output_tokens": 100,
                }
            )
    assert trace.totals.total_tokens == 1000
    assert trace.totals.cost == Decimal("0.0042")
    spans = saved_spans(trace)
    assert usage_keys(spans["llm function"]) == {"llm.cost.total": 0.0042}
    call_keys = usage_keys(spans["chat my-local-llama"])
    assert call_keys["llm.token_count.prompt"] == 900
    assert call_keys["llm.token_count.total"] == 1000
    assert "llm.cost.total" not in call_keys
    assert spans["chat my-local-llama"]["openinference.span.kind"] == "LLM"
    assert spans["chat my-local-llama"]["llm.model_name"] == "my-local-llama"
    assert "gen_ai.response.model" not in spans["chat my-local-llama"]  # none was stated


def test_a_call_recorded_twice_gets_usage_keys_once() -> None:
    # rollup.md rule 13: a framework's chat span and the client's span of one call,
    # siblings, two scopes, the framework's around the client's in time.
    framework = tracer("openinference.instrumentation.langchain")
    client = tracer("opentelemetry.instrumentation.openai_v2")
    attributes = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": "gpt-4o-mini",
        "gen_ai.usage.input_tokens": 12,
        "gen_ai.usage.output_tokens": 3,
    }
    with an.trace("twice") as trace, an.span("chain", type="chain"):
        outer = framework.start_span("ChatOpenAI", attributes=attributes)
        time.sleep(0.001)
        client.start_span("chat gpt-4o-mini", attributes=attributes).end()
        time.sleep(0.001)
        outer.end()
    assert trace.totals.model_calls == 1
    assert trace.find("ChatOpenAI").role == "recorded twice"
    spans = saved_spans(trace)
    counted, twin = spans["chat gpt-4o-mini"], spans["ChatOpenAI"]
    assert counted["llm.token_count.prompt"] == 12
    assert twin["openinference.span.kind"] == "LLM"  # still a model call for the receiver
    assert not {k for k in usage_keys(twin) if k not in attributes}
    assert receiver_sum(spans, "llm.token_count.prompt") == 12


def test_a_failed_call_gets_its_requested_model_and_no_usage() -> None:
    client = tracer("opentelemetry.instrumentation.openai_v2")
    with an.trace("failed") as trace:
        span = client.start_span(
            "chat gpt-4o",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o",
                "http.response.status_code": 500,
                "error.type": "InternalServerError",
            },
        )
        span.set_status(Status(StatusCode.ERROR, "500"))
        span.end()
    attributes = saved_spans(trace)["chat gpt-4o"]
    assert attributes["openinference.span.kind"] == "LLM"
    assert attributes["llm.model_name"] == "gpt-4o"
    assert "gen_ai.response.model" not in attributes
    assert not usage_keys(attributes)


# -- never overwrite, read once -----------------------------------------------------------


def test_keys_the_span_has_are_never_overwritten() -> None:
    with an.trace("kept") as trace, an.span("odd", type="llm") as span:
        an.record_usage(model="gpt-4o", input_tokens=50, output_tokens=5)
        # What another tool wrote, even when it disagrees with Agenta's keys.
        span.set_attribute("openinference.span.kind", "CHAIN")
        span.set_attribute("llm.token_count.prompt", 60)
        span.set_attribute("llm.model_name", "someone else's name")
    attributes = saved_spans(trace)["odd"]
    assert attributes["openinference.span.kind"] == "CHAIN"
    assert attributes["llm.token_count.prompt"] == 60
    assert attributes["llm.model_name"] == "someone else's name"
    assert attributes["gen_ai.usage.input_tokens"] == 50  # what we count, where free
    node = trace.find("odd")
    extra = receiver_attributes(node)
    assert not set(extra) & set(node.record.attributes)
    assert set(extra) <= RECEIVER_KEYS


def test_the_span_itself_is_never_changed() -> None:
    with an.trace("untouched") as trace, an.span("call", type="llm"):
        an.record_usage(model="gpt-4o", input_tokens=5, output_tokens=1)
    before = dict(trace.find("call").record.attributes)
    saved_spans(trace)
    assert dict(trace.find("call").record.attributes) == before
    assert "openinference.span.kind" not in before  # nothing on the hot path


def several_vocabularies() -> Trace:
    """A trace whose spans speak every vocabulary, with cache and reasoning tokens."""
    openinference = tracer("openinference.instrumentation.openai")
    genai = tracer("opentelemetry.instrumentation.openai_v2")
    anthropic = tracer("com.anthropic.sdk.python")
    with an.trace("vocabularies") as trace:
        with an.span("ours", type="llm"):
            an.record_usage(
                model="gpt-4o",
                provider="openai",
                input_tokens=1000,
                output_tokens=200,
                cache_read_tokens=400,
                reasoning_tokens=50,
            )
        with an.span("agent", type="agent"):
            an.record_usage(input_tokens=2000)  # a claim over the calls below
            with openinference.start_as_current_span("openinference call") as span:
                span.set_attributes(
                    {
                        "openinference.span.kind": "LLM",
                        "llm.model_name": "gpt-4o-mini",
                        "llm.provider": "openai",
                        "llm.token_count.prompt": 1500,
                        "llm.token_count.completion": 30,
                        "llm.token_count.total": 1530,
                        "llm.token_count.prompt_details.cache_read": 1024,
                        "llm.token_count.completion_details.reasoning": 10,
                    }
                )
            with genai.start_as_current_span("genai call") as span:
                span.set_attributes(
                    {
                        "gen_ai.operation.name": "chat",
                        "gen_ai.provider.name": "openai",
                        "gen_ai.request.model": "gpt-4o",
                        "gen_ai.response.model": "gpt-4o-2024-08-06",
                        "gen_ai.usage.input_tokens": 500,
                        "gen_ai.usage.output_tokens": 40,
                        "gen_ai.usage.cache_read.input_tokens": 100,
                    }
                )
        # The Anthropic SDK's own spans: GenAI keys (inclusive input: 20 uncached + 3000
        # read + 500 written) and its own cache-write key.
        with anthropic.start_as_current_span("anthropic.messages.create") as span:
            span.set_attributes(
                {
                    "gen_ai.operation.name": "chat",
                    "gen_ai.system": "anthropic",
                    "gen_ai.request.model": "claude-sonnet-4-5",
                    "gen_ai.response.model": "claude-sonnet-4-5-20250929",
                    "gen_ai.usage.input_tokens": 3520,
                    "gen_ai.usage.output_tokens": 70,
                    "gen_ai.usage.cache_read.input_tokens": 3000,
                    "gen_ai.usage.cache_write.input_tokens": 500,
                }
            )
        with an.span("legacy cached key", type="llm") as span:
            an.record_usage(model="gpt-4o", input_tokens=300, output_tokens=3)
            span.set_attribute("ag.metrics.unit.tokens.cached", 128)  # what 0.1.0 wrote
    return trace


def own_figures(trace: Trace) -> dict[int, Any]:
    return {node.span_id: (node.role, node.own, node.subtotal) for node in trace.tree.nodes}


def test_a_saved_and_loaded_trace_has_the_same_figures(tmp_path: Path) -> None:
    trace = several_vocabularies()
    path = tmp_path / "vocabularies.otlp.json"
    trace.save(path)
    loaded = load(path)
    assert loaded.totals == trace.totals
    assert own_figures(loaded) == own_figures(trace)
    assert loaded.summary().by_model == trace.summary().by_model
    # Saved again, the file is the same: no key added twice, none changed.
    again = tmp_path / "again.otlp.json"
    loaded.save(again)
    assert json.loads(again.read_text()) == json.loads(path.read_text())
    # The figures are real: every vocabulary's span counted, the claim not.
    assert trace.totals.model_calls == 5
    assert trace.find("agent").role == "claim not counted"
    assert trace.totals.cache_read_tokens == 400 + 1024 + 100 + 3000 + 128


def test_our_read_of_an_exported_span_gives_the_same_figures() -> None:
    trace = several_vocabularies()
    for node in trace.tree.nodes:
        if node.synthetic:
            continue
        exported = exported_attributes(node)
        assert read_usage(exported).reported_fields == node.usage.reported_fields, node.name
        again = read_usage(exported)
        for field in (
            "input_tokens",
            "output_tokens",
            "effective_total_tokens",
            "cache_read_tokens",
            "cache_write_tokens",
            "reasoning_tokens",
            "cost",
            "model",
            "provider",
            "is_model_call",
        ):
            assert getattr(again, field) == getattr(node.usage, field), (node.name, field)
    records = [
        SpanRecord(
            node.record.trace_id,
            node.span_id,
            node.record.parent_span_id,
            node.name,
            node.record.start_time_ns,
            node.record.end_time_ns,
            node.record.status,
            attributes=exported_attributes(node),
            scope=node.record.scope,
        )
        for node in trace.tree.nodes
    ]
    rebuilt = build_tree(records, trace.root_span_id)
    assert rebuilt.totals == trace.totals


def test_a_receiver_summing_our_keys_gets_our_totals_across_vocabularies() -> None:
    trace = several_vocabularies()
    spans = saved_spans(trace)
    totals = trace.totals
    assert receiver_sum(spans, "llm.token_count.total") == totals.total_tokens
    assert receiver_sum(spans, "llm.token_count.completion") == totals.output_tokens
    assert (
        receiver_sum(spans, "llm.token_count.prompt_details.cache_read") == totals.cache_read_tokens
    )
    assert receiver_sum(spans, "llm.token_count.prompt_details.cache_write") == 500
    assert totals.cache_write_tokens == 500
    anthropic = spans["anthropic.messages.create"]
    assert anthropic["llm.token_count.prompt"] == 3520
    assert anthropic["llm.model_name"] == "claude-sonnet-4-5-20250929"
    assert anthropic["llm.provider"] == "anthropic"
    assert anthropic["gen_ai.usage.cache_write.input_tokens"] == 500  # its own key, kept


def test_an_old_file_with_the_cached_key_loads_the_same(tmp_path: Path) -> None:
    span = {
        "traceId": "0af7651916cd43dd8448eb211c80319c",
        "spanId": "b7ad6b7169203331",
        "name": "call",
        "kind": 1,
        "startTimeUnixNano": "1",
        "endTimeUnixNano": "2",
        "attributes": [
            {"key": "ag.type.node", "value": {"stringValue": "llm"}},
            {"key": "ag.meta.response.model", "value": {"stringValue": "gpt-4o"}},
            {"key": "ag.metrics.unit.tokens.prompt", "value": {"intValue": "1000"}},
            {"key": "ag.metrics.unit.tokens.completion", "value": {"intValue": "10"}},
            {"key": "ag.metrics.unit.tokens.cached", "value": {"intValue": "512"}},
        ],
    }
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"resourceSpans": [{"scopeSpans": [{"spans": [span]}]}]}))
    loaded = load(old)
    assert loaded.totals.cache_read_tokens == 512
    assert loaded.totals.input_tokens == 1000
    resaved = tmp_path / "resaved.json"
    loaded.save(resaved)
    attributes = saved_spans(load(resaved))["call"]
    assert attributes["ag.metrics.unit.tokens.cached"] == 512  # kept as it was
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 512
    assert load(resaved).totals == loaded.totals


def test_receiver_keys_can_be_left_out() -> None:
    with an.trace("plain") as trace, an.span("call", type="llm"):
        an.record_usage(model="gpt-4o", input_tokens=5, output_tokens=1)
    document = trace_to_otlp(trace, receiver_keys=False)
    keys = {
        pair["key"]
        for resource_spans in document["resourceSpans"]
        for scope_spans in resource_spans["scopeSpans"]
        for span in scope_spans["spans"]
        for pair in span["attributes"]
    }
    assert not keys & RECEIVER_KEYS
