"""Reading one span's own usage from any of the three vocabularies (rollup.md)."""

from __future__ import annotations

import types
from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest

from agenta_notebook.core.usage import (
    AG_COST,
    AG_INPUT_TOKENS,
    AG_MODEL,
    AG_OUTPUT_TOKENS,
    AG_TYPE,
    EMPTY_USAGE,
    Usage,
    parse_cost,
    parse_token_count,
    read_usage,
    type_only_usage,
    usage_attributes,
)


def test_agenta_keys() -> None:
    usage = read_usage(
        {
            AG_TYPE: "llm",
            AG_INPUT_TOKENS: 10,
            AG_OUTPUT_TOKENS: 4,
            "ag.metrics.unit.tokens.total": 15,
            "ag.metrics.unit.tokens.cached": 3,
            "ag.metrics.unit.tokens.reasoning": 2,
            AG_COST: 0.0066,
            AG_MODEL: "gpt-4o",
            "ag.meta.system": "openai",
        }
    )
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (10, 4, 15)
    assert (usage.cache_read_tokens, usage.reasoning_tokens) == (3, 2)
    assert usage.cost == Decimal("0.0066")  # through the float's shortest repr
    assert (usage.model, usage.provider, usage.span_type) == ("gpt-4o", "openai", "llm")
    assert usage.is_model_call and usage.reports_usage and not usage.warnings


def test_genai_keys_and_model_preference() -> None:
    usage = read_usage(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.usage.input_tokens": 8,
            "gen_ai.usage.output_tokens": 2,
            "gen_ai.usage.cache_read.input_tokens": 5,
            "gen_ai.usage.cache_creation.input_tokens": 1,
            "gen_ai.usage.reasoning.output_tokens": 1,
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.response.model": "gpt-4o-2024-08-06",
            "gen_ai.system": "openai",
            "gen_ai.provider.name": "azure.ai.openai",
        }
    )
    assert usage.model == "gpt-4o-2024-08-06"  # response model before request model
    assert usage.provider == "azure.ai.openai"  # provider.name before the deprecated system
    assert (usage.cache_read_tokens, usage.cache_write_tokens) == (5, 1)
    assert usage.effective_total_tokens == 10
    assert usage.is_model_call and usage.span_type == "chat"


def test_deprecated_genai_keys() -> None:
    usage = read_usage({"gen_ai.usage.prompt_tokens": 3, "gen_ai.usage.completion_tokens": 4})
    assert (usage.input_tokens, usage.output_tokens, usage.effective_total_tokens) == (3, 4, 7)
    assert not usage.is_model_call


def test_openinference_keys() -> None:
    usage = read_usage(
        {
            "openinference.span.kind": "LLM",
            "llm.token_count.prompt": 20,
            "llm.token_count.completion": 5,
            "llm.token_count.total": 25,
            "llm.token_count.prompt_details.cache_read": 10,
            "llm.token_count.prompt_details.cache_write": 2,
            "llm.token_count.completion_details.reasoning": 3,
            "llm.model_name": "gpt-4o-mini",
            "llm.provider": "openai",
            "llm.cost.total": "0.001",
        }
    )
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (20, 5, 25)
    assert (usage.cache_read_tokens, usage.cache_write_tokens, usage.reasoning_tokens) == (
        10,
        2,
        3,
    )
    assert usage.cost == Decimal("0.001")
    assert (usage.model, usage.provider, usage.span_type) == ("gpt-4o-mini", "openai", "llm")
    assert usage.is_model_call


@pytest.mark.parametrize("kind", ["EMBEDDING", "RERANKER", "LLM"])
def test_openinference_model_kinds(kind: str) -> None:
    assert read_usage({"openinference.span.kind": kind}).is_model_call


@pytest.mark.parametrize("kind", ["CHAIN", "TOOL", "AGENT", "RETRIEVER"])
def test_openinference_other_kinds_are_not_model_calls(kind: str) -> None:
    usage = read_usage({"openinference.span.kind": kind})
    assert not usage.is_model_call and usage.span_type == kind.lower()


def test_first_present_wins_per_field() -> None:
    usage = read_usage(
        {
            AG_INPUT_TOKENS: 1,
            "gen_ai.usage.input_tokens": 2,
            "llm.token_count.prompt": 3,
            "llm.token_count.completion": 9,
        }
    )
    assert (usage.input_tokens, usage.output_tokens) == (1, 9)


def test_no_attributes_and_unrelated_attributes_are_empty() -> None:
    assert read_usage(None) is EMPTY_USAGE
    assert read_usage({}) is EMPTY_USAGE
    assert read_usage({"http.method": "GET"}) is EMPTY_USAGE
    assert not EMPTY_USAGE.reports_usage
    assert EMPTY_USAGE.effective_total_tokens is None


def test_type_only_spans_share_a_correct_usage() -> None:
    tool = read_usage({AG_TYPE: "tool", "x": 1})
    llm = read_usage({AG_TYPE: "llm"})
    assert (tool.span_type, tool.is_model_call) == ("tool", False)
    assert (llm.span_type, llm.is_model_call) == ("llm", True)
    assert read_usage({AG_TYPE: "tool"}) is tool  # shared, not rebuilt per span
    assert not tool.reports_usage and not llm.reports_usage
    # an unhashable value is read, not cached, and does not raise
    odd = read_usage({"openinference.span.kind": ["LLM"]})
    assert odd.span_type is None and not odd.is_model_call


@pytest.mark.parametrize(
    "attributes",
    [
        {},
        {AG_TYPE: "tool"},
        {AG_TYPE: "llm"},
        {AG_TYPE: "TASK", "http.method": "GET"},
        {"openinference.span.kind": "LLM"},
        {"gen_ai.operation.name": "chat"},
        {"openinference.span.kind": ["LLM"]},
        {AG_TYPE: "tool", AG_INPUT_TOKENS: 3},
        {AG_TYPE: "tool", AG_MODEL: "gpt-4o"},
        {AG_INPUT_TOKENS: "x"},
    ],
)
def test_the_type_only_fast_path_reads_what_read_usage_reads(attributes: dict[str, Any]) -> None:
    fast = type_only_usage(attributes)
    if AG_INPUT_TOKENS in attributes or AG_MODEL in attributes:
        assert fast is None  # a span stating values takes the full reader
    else:
        assert fast == read_usage(attributes)
    # a mapping that is not a plain dict always takes the full reader
    assert type_only_usage(types.MappingProxyType(attributes)) is None


def test_type_is_case_insensitive_and_agenta_type_wins() -> None:
    usage = read_usage({AG_TYPE: "LLM", "openinference.span.kind": "CHAIN"})
    assert usage.span_type == "llm" and usage.is_model_call


@pytest.mark.parametrize(
    ("attributes", "span_type"),
    [
        # our span()'s default type with GenAI's chat operation (what an instrumentation
        # adds to a span a user opened)
        ({AG_TYPE: "task", "gen_ai.operation.name": "chat"}, "task"),
        ({AG_TYPE: "agent", "openinference.span.kind": "LLM"}, "agent"),
        ({"openinference.span.kind": "CHAIN", "gen_ai.operation.name": "embeddings"}, "chain"),
    ],
)
def test_any_vocabulary_can_make_a_model_call(attributes: dict[str, Any], span_type: str) -> None:
    """rollup.md: a model-call span is one whose type OR OpenInference kind OR GenAI
    operation says so; the type shown is the first vocabulary present."""
    usage = read_usage({**attributes, "gen_ai.usage.input_tokens": 5})
    assert usage.is_model_call and usage.span_type == span_type
    assert read_usage(attributes).is_model_call


def test_agent_operations_and_kinds_do_not_make_a_model_call() -> None:
    for attributes in (
        {AG_TYPE: "agent", "gen_ai.operation.name": "invoke_agent"},
        {"openinference.span.kind": "AGENT", "gen_ai.operation.name": "execute_tool"},
        {AG_TYPE: "tool", "openinference.span.kind": "TOOL"},
    ):
        assert not read_usage({**attributes, "gen_ai.usage.input_tokens": 5}).is_model_call


def test_zero_is_not_absent() -> None:
    usage = read_usage({AG_INPUT_TOKENS: 0, AG_COST: 0})
    assert usage.input_tokens == 0 and usage.cost == Decimal(0)
    assert usage.reports_usage
    assert usage.effective_total_tokens == 0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12, 12),
        (0, 0),
        ("12", 12),
        (" 7 ", 7),
        (3.0, 3),
        ("4.0", 4),
        ("1e3", 1000),
        (-1, None),
        (-0.5, None),
        (2.5, None),
        ("abc", None),
        ("", None),
        (float("nan"), None),
        (float("inf"), None),
        ("inf", None),
        (True, None),
        (False, None),
        (None, None),
        ([1], None),
        ((1,), None),
        ("\u00b2", None),  # superscript two: str.isdigit() says yes, int() says no
        ("9" * 5000, None),  # more digits than int() converts
        ("\u0661\u0662", 12),  # Arabic-Indic digits are numbers to Python
    ],
)
def test_parse_token_count(value: Any, expected: int | None) -> None:
    assert parse_token_count(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0.0066, Decimal("0.0066")),
        (0.1, Decimal("0.1")),
        (0, Decimal(0)),
        (3, Decimal(3)),
        ("0.25", Decimal("0.25")),
        (Decimal("1.5"), Decimal("1.5")),
        ("1e-3", Decimal("0.001")),
        (-0.01, None),
        ("-1", None),
        ("abc", None),
        (float("nan"), None),
        (float("inf"), None),
        ("NaN", None),
        ("Infinity", None),
        (Decimal("NaN"), None),
        (True, None),
        (None, None),
        ([0.1], None),
        ("1e41", None),  # not a cost: keeps exact sums bounded
    ],
)
def test_parse_cost(value: Any, expected: Decimal | None) -> None:
    assert parse_cost(value) == expected


def test_bad_values_become_warnings_and_never_raise() -> None:
    usage = read_usage(
        {
            AG_TYPE: "llm",
            "gen_ai.usage.input_tokens": "abc",
            "gen_ai.usage.output_tokens": -5,
            "llm.cost.total": "free",
            "gen_ai.usage.total_tokens": float("nan"),
        }
    )
    assert usage.input_tokens is None and usage.output_tokens is None
    assert usage.total_tokens is None and usage.cost is None
    assert len(usage.warnings) == 4
    assert any("'abc'" in warning for warning in usage.warnings)
    assert not usage.reports_usage


def test_numbers_past_a_float_and_json_past_the_parsers_depth_are_bad_values() -> None:
    usage = read_usage(
        {
            "openinference.span.kind": "LLM",
            "llm.token_count.prompt": Fraction(10**400),
            "llm.cost.total": Fraction(10**400, 3),
            "llm.invocation_parameters": "[" * 50_000,
        }
    )
    assert usage.is_model_call and usage.model is None
    assert usage.input_tokens is None and usage.cost is None
    assert len(usage.warnings) == 2
    assert parse_token_count(Fraction(7, 1)) == 7 and parse_cost(Fraction(1, 4)) == Decimal("0.25")


def test_type_only_spans_with_unhashable_values_are_read_too() -> None:
    usage = read_usage({AG_TYPE: ["llm"], "openinference.span.kind": "LLM"})
    assert usage.is_model_call and usage.span_type == "llm"
    assert read_usage({AG_TYPE: ["x"]}) == EMPTY_USAGE


def test_one_bad_field_leaves_the_others() -> None:
    usage = read_usage(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "gpt-4o",
            "gen_ai.usage.input_tokens": "\u00b2",
            "gen_ai.usage.output_tokens": 50,
            "gen_ai.usage.reasoning.output_tokens": "9" * 5000,
        }
    )
    assert usage.is_model_call and usage.model == "gpt-4o"
    assert usage.input_tokens is None and usage.output_tokens == 50
    assert usage.reasoning_tokens is None
    assert len(usage.warnings) == 2
    assert all(len(warning) < 150 for warning in usage.warnings), "long values are shortened"


def test_usage_attributes_writes_agenta_keys_and_skips_none() -> None:
    attributes = usage_attributes(
        model="gpt-4o",
        provider="openai",
        input_tokens=10,
        output_tokens=2,
        cache_read_tokens=4,
        cache_write_tokens=1,
        reasoning_tokens=1,
        cost=Decimal("0.5"),
    )
    assert attributes == {
        AG_MODEL: "gpt-4o",
        "ag.meta.system": "openai",
        AG_INPUT_TOKENS: 10,
        AG_OUTPUT_TOKENS: 2,
        "ag.metrics.unit.tokens.cache_read": 4,
        "gen_ai.usage.cache_creation.input_tokens": 1,
        "ag.metrics.unit.tokens.reasoning": 1,
        AG_COST: 0.5,
    }
    round_trip = read_usage(attributes)
    assert round_trip == Usage(
        input_tokens=10,
        output_tokens=2,
        cache_read_tokens=4,
        cache_write_tokens=1,
        reasoning_tokens=1,
        cost=Decimal("0.5"),
        model="gpt-4o",
        provider="openai",
    )


def test_usage_attributes_keeps_bad_values_visible() -> None:
    attributes = usage_attributes(input_tokens=object(), output_tokens="abc")
    assert isinstance(attributes[AG_INPUT_TOKENS], str)
    assert attributes[AG_OUTPUT_TOKENS] == "abc"
    assert len(read_usage(attributes).warnings) == 2
