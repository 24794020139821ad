"""Pricing: genai-prices' bundled table, user overrides, reported costs, unpriced.

Expected figures are computed here with `genai_prices.calc_price` directly, or by hand
from rates stated in the test, never copied from our own output.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from genai_prices import data_snapshot
from hypothesis import given, settings
from hypothesis import strategies as st

import agenta_notebook as an
from agenta_notebook import pricing
from agenta_notebook.pricing import (
    UNPRICED,
    PricedCost,
    calculate_cost,
    clear_prices,
    price_usage,
    set_prices,
)
from agenta_notebook.usage import Usage, read_usage


@pytest.fixture(autouse=True)
def no_overrides() -> Iterator[None]:
    clear_prices()
    yield
    clear_prices()


def table(model: str, provider: str | None = None, **counts: int) -> Decimal:
    usage = genai_prices.Usage(**{key: value for key, value in counts.items() if value})
    return genai_prices.calc_price(usage, model, provider_id=provider).total_price


def test_a_known_model_is_priced_from_the_table() -> None:
    priced = price_usage(Usage(input_tokens=1000, output_tokens=200, model="gpt-4o"))
    assert priced == PricedCost(
        table("gpt-4o", input_tokens=1000, output_tokens=200), "price table", "openai/gpt-4o"
    )
    assert priced.cost is not None and priced.cost > 0


def test_cache_read_tokens_are_part_of_the_input_at_their_own_rate() -> None:
    plain = price_usage(Usage(input_tokens=2000, output_tokens=100, model="gpt-4o")).cost
    cached = price_usage(
        Usage(input_tokens=2000, output_tokens=100, cache_read_tokens=1500, model="gpt-4o")
    ).cost
    assert cached == table("gpt-4o", input_tokens=2000, output_tokens=100, cache_read_tokens=1500)
    assert plain is not None and cached is not None and cached < plain
    # The inclusive convention: 500 uncached + 1500 cached, not 2000 + 1500.
    model_price = genai_prices.calc_price(genai_prices.Usage(input_tokens=1), "gpt-4o").model_price
    rates = (model_price.input_mtok, model_price.cache_read_mtok, model_price.output_mtok)
    assert all(isinstance(rate, Decimal) for rate in rates)  # flat rates, no tiers
    rate_in, rate_cached, rate_out = (Decimal(str(rate)) for rate in rates)
    by_hand = (500 * rate_in + 1500 * rate_cached + 100 * rate_out) / 1_000_000
    assert cached == by_hand


def test_cache_write_tokens_are_priced_at_their_own_rate() -> None:
    model = "claude-3-5-sonnet-latest"
    usage = Usage(input_tokens=3000, output_tokens=50, cache_write_tokens=2000, model=model)
    priced = price_usage(usage)
    assert priced.cost == table(model, input_tokens=3000, output_tokens=50, cache_write_tokens=2000)
    assert priced.matched_model is not None and priced.matched_model.startswith("anthropic/")
    assert priced.cost != price_usage(Usage(input_tokens=3000, output_tokens=50, model=model)).cost


def test_reasoning_tokens_are_part_of_the_output_at_their_own_rate() -> None:
    # sonar-deep-research is a model the table gives a separate reasoning rate.
    model, provider = "sonar-deep-research", "perplexity"
    usage = Usage(
        input_tokens=100, output_tokens=1000, reasoning_tokens=800, model=model, provider=provider
    )
    priced = price_usage(usage)
    expected = table(
        model, provider, input_tokens=100, output_tokens=1000, output_reasoning_tokens=800
    )
    assert priced.cost == expected
    without = price_usage(
        Usage(input_tokens=100, output_tokens=1000, model=model, provider=provider)
    ).cost
    assert without is not None and priced.cost != without
    # For a model without a reasoning rate, reasoning is output at the output rate.
    o3 = Usage(input_tokens=100, output_tokens=1000, reasoning_tokens=800, model="o3-mini")
    assert price_usage(o3).cost == table("o3-mini", input_tokens=100, output_tokens=1000)


@pytest.mark.parametrize(
    ("model", "provider", "matched"),
    [
        ("openai/gpt-4o", None, "openai/gpt-4o"),
        ("gpt-4o", "openai", "openai/gpt-4o"),
        ("GPT-4o", "OpenAI", "openai/gpt-4o"),
        ("gpt-4o-2024-08-06", None, "openai/gpt-4o"),
        ("anthropic/claude-3-5-sonnet-latest", None, "anthropic/claude-3-5-sonnet"),
        ("openai/gpt-4o-mini", "openai", "openai/gpt-4o-mini"),
        ("text-embedding-3-small", "openai", "openai/text-embedding-3-small"),
        # OpenTelemetry's provider names
        ("gpt-4o", "azure.ai.openai", "openai/gpt-4o"),
        ("gemini-1.5-flash", "gcp.vertex_ai", None),
        # a provider genai-prices does not know: the model alone decides
        ("gpt-4o-mini", "my-proxy", "openai/gpt-4o-mini"),
    ],
)
def test_model_and_provider_resolution(
    model: str, provider: str | None, matched: str | None
) -> None:
    priced = price_usage(Usage(input_tokens=10, output_tokens=10, model=model, provider=provider))
    assert priced.source == "price table"
    assert priced.cost is not None and priced.cost > 0
    if matched is not None:
        assert priced.matched_model == matched
    else:
        assert priced.matched_model is not None and priced.matched_model.startswith("google/")


def test_the_provider_prefix_gives_the_same_price() -> None:
    bare = price_usage(Usage(input_tokens=1234, output_tokens=567, model="gpt-4o-mini"))
    prefixed = price_usage(Usage(input_tokens=1234, output_tokens=567, model="openai/gpt-4o-mini"))
    assert bare == prefixed


@pytest.mark.parametrize(
    "usage",
    [
        Usage(input_tokens=1000, output_tokens=10, model="my-local-llama"),
        Usage(input_tokens=1000, output_tokens=10, model="my-local-llama", provider="openai"),
        Usage(input_tokens=1000, output_tokens=10, model="ollama/my-local-llama"),
        Usage(input_tokens=1000, output_tokens=10),  # no model
        Usage(model="gpt-4o"),  # no tokens
        Usage(total_tokens=50, model="gpt-4o"),  # no split: cannot be priced
    ],
)
def test_unknown_is_unpriced_not_zero(usage: Usage) -> None:
    assert price_usage(usage) is UNPRICED
    assert UNPRICED.cost is None


def test_zero_tokens_cost_zero_not_unpriced() -> None:
    priced = price_usage(Usage(input_tokens=0, output_tokens=0, model="gpt-4o"))
    assert priced.cost == Decimal(0) and priced.source == "price table"


def test_a_reported_cost_wins_over_everything() -> None:
    set_prices("gpt-4o", input=100, output=100)
    usage = Usage(input_tokens=10, output_tokens=10, cost=Decimal("0.5"), model="gpt-4o")
    assert price_usage(usage) == PricedCost(Decimal("0.5"), "reported", "gpt-4o")
    assert price_usage(Usage(cost=Decimal(0), model="my-local-llama")).cost == Decimal(0)


def test_user_prices_win_over_the_table_and_price_unknown_models() -> None:
    set_prices("my-local-llama", input="0.2", output="0.8", cache_read="0.05")
    usage = Usage(
        input_tokens=1000, output_tokens=500, cache_read_tokens=400, model="my-local-llama"
    )
    expected = (Decimal(600) * Decimal("0.2") + 400 * Decimal("0.05") + 500 * Decimal("0.8")) / (
        10**6
    )
    assert price_usage(usage) == PricedCost(expected, "override", "my-local-llama")

    set_prices("gpt-4o", input=1, output=2)
    priced = price_usage(Usage(input_tokens=10**6, output_tokens=10**6, model="GPT-4o"))
    assert priced == PricedCost(Decimal(3), "override", "GPT-4o")
    # by `provider/model`, or without the prefix
    assert price_usage(
        Usage(input_tokens=10**6, output_tokens=0, model="gpt-4o", provider="openai")
    ).cost == Decimal(1)
    set_prices("openai/my-finetune", input=4, output=4)
    assert price_usage(
        Usage(input_tokens=10**6, output_tokens=0, model="my-finetune", provider="openai")
    ).cost == Decimal(4)
    assert price_usage(
        Usage(input_tokens=10**6, output_tokens=0, model="local/my-local-llama")
    ).cost == Decimal("0.2")

    clear_prices("gpt-4o")
    assert price_usage(Usage(input_tokens=10, output_tokens=0, model="gpt-4o")).source == (
        "price table"
    )
    clear_prices()
    assert price_usage(usage) is UNPRICED


def test_the_requested_model_prices_a_response_model_with_no_price() -> None:
    """Providers answer with a dated or tagged name: a user price for the model asked for
    applies, and so does the table's when only the requested name is in it."""
    set_prices("my-llama", input=1, output=2)
    tagged = read_usage(
        {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": "my-llama",
            "gen_ai.response.model": "my-llama:latest",
            "gen_ai.usage.input_tokens": 10**6,
            "gen_ai.usage.output_tokens": 10**6,
        }
    )
    assert tagged.model == "my-llama:latest" and tagged.request_model == "my-llama"
    assert price_usage(tagged) == PricedCost(Decimal(3), "override", "my-llama")
    set_prices("gpt-4o", input=1, output=1)
    dated = Usage(
        input_tokens=10**6, output_tokens=0, model="gpt-4o-2024-08-06", request_model="gpt-4o"
    )
    assert price_usage(dated) == PricedCost(Decimal(1), "override", "gpt-4o")
    clear_prices()
    # no user price: the response's own model is in the table, and wins
    assert price_usage(dated).cost == table("gpt-4o-2024-08-06", "openai", input_tokens=10**6)
    # an unknown response name falls back to the table price of the requested model
    odd = Usage(input_tokens=1000, output_tokens=0, model="gpt-4o-xyz-9", request_model="gpt-4o")
    assert price_usage(odd).cost == table("gpt-4o", "openai", input_tokens=1000)
    assert price_usage(Usage(input_tokens=1000, output_tokens=0, model="gpt-4o-xyz-9")) is (
        UNPRICED
    )
    same = read_usage({"gen_ai.request.model": "gpt-4o", "gen_ai.response.model": "gpt-4o"})
    assert same.request_model is None


def test_user_cache_write_rate_defaults_to_the_input_rate() -> None:
    set_prices("house-model", input=3, output=15, cache_write="3.75")
    usage = Usage(
        input_tokens=10**6, output_tokens=0, cache_write_tokens=10**6, model="house-model"
    )
    assert price_usage(usage).cost == Decimal("3.75")
    set_prices("house-model", input=3, output=15)
    assert price_usage(usage).cost == Decimal(3)


@pytest.mark.parametrize("bad", ["abc", -1, float("nan"), float("inf"), True])
def test_bad_user_prices_raise_value_error(bad: Any) -> None:
    with pytest.raises(ValueError):
        set_prices("x", input=bad, output=1)
    with pytest.raises(ValueError):
        set_prices("x", input=1, output=1, cache_read=bad)
    assert price_usage(Usage(input_tokens=1, output_tokens=1, model="x")) is UNPRICED


def test_sub_counts_larger_than_their_total_are_clamped_not_raised() -> None:
    # 5000 cached tokens of a 1000-token input: at most the whole input is cached.
    usage = Usage(
        input_tokens=1000,
        output_tokens=10,
        cache_read_tokens=5000,
        cache_write_tokens=300,
        reasoning_tokens=50,
        model="gpt-4o",
    )
    priced = price_usage(usage)
    assert priced.cost == table(
        "gpt-4o", input_tokens=1000, output_tokens=10, cache_read_tokens=1000
    )


def test_calculate_cost_takes_openai_usage_objects_and_dicts() -> None:
    from openai.types import CompletionUsage
    from openai.types.completion_usage import CompletionTokensDetails, PromptTokensDetails

    usage = CompletionUsage(
        prompt_tokens=2000,
        completion_tokens=300,
        total_tokens=2300,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=1024),
        completion_tokens_details=CompletionTokensDetails(reasoning_tokens=200),
    )
    expected = table("o3-mini", input_tokens=2000, output_tokens=300, cache_read_tokens=1024)
    assert calculate_cost("o3-mini", usage) == expected
    assert calculate_cost("o3-mini", usage.model_dump()) == expected
    assert (
        calculate_cost(
            "o3-mini", {"input_tokens": 2000, "output_tokens": 300, "cached_tokens": 1024}
        )
        == expected
    )
    assert calculate_cost("my-local-llama", usage) is None
    assert an.calculate_cost is calculate_cost


def test_prices_come_from_the_bundled_snapshot_only() -> None:
    price_usage(Usage(input_tokens=1, output_tokens=1, model="gpt-4o"))
    snapshot = data_snapshot.get_snapshot()
    assert snapshot.from_auto_update is False
    assert data_snapshot._custom_snapshot is None


def test_lookups_are_cached() -> None:
    pricing._table_match.cache_clear()
    for tokens in range(50):
        price_usage(Usage(input_tokens=tokens, output_tokens=1, model="gpt-4o-mini"))
    info = pricing._table_match.cache_info()
    assert info.misses == 1 and info.hits == 49


def test_read_and_price_openinference_embedding_span() -> None:
    usage = read_usage(
        {
            "openinference.span.kind": "EMBEDDING",
            "embedding.model_name": "text-embedding-3-small",
            "llm.system": "openai",
            "llm.token_count.prompt": 1000,
            "llm.token_count.total": 1000,
        }
    )
    assert usage.is_model_call and usage.model == "text-embedding-3-small"
    assert price_usage(usage).cost == table("text-embedding-3-small", "openai", input_tokens=1000)


counts = st.one_of(st.none(), st.integers(min_value=0, max_value=10**9))
models = st.one_of(
    st.none(),
    st.sampled_from(["gpt-4o", "openai/gpt-4o-mini", "o3-mini", "claude-3-5-haiku-latest"]),
    st.text(max_size=30),
)


@settings(max_examples=300, deadline=None)
@given(
    input_tokens=counts,
    output_tokens=counts,
    cache_read=counts,
    cache_write=counts,
    reasoning=counts,
    model=models,
    provider=st.one_of(
        st.none(), st.sampled_from(["openai", "anthropic", "x_ai", ""]), st.text(max_size=10)
    ),
)
def test_pricing_never_raises_and_never_invents_zero(
    input_tokens: int | None,
    output_tokens: int | None,
    cache_read: int | None,
    cache_write: int | None,
    reasoning: int | None,
    model: str | None,
    provider: str | None,
) -> None:
    usage = Usage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
        reasoning_tokens=reasoning,
        model=model,
        provider=provider,
    )
    priced = price_usage(usage)
    if priced.cost is None:
        assert priced.source == "unpriced"
    else:
        assert priced.source == "price table"
        assert priced.cost.is_finite() and priced.cost >= 0
        assert model is not None and (input_tokens is not None or output_tokens is not None)


def _direct(model: str, provider: str | None, counts: dict[str, int]) -> Any:
    usage = genai_prices.Usage(**{key: value for key, value in counts.items() if value})
    return genai_prices.calc_price(usage, model, provider_id=provider)


def _clamped_counts(chooser: random.Random) -> dict[str, int]:
    input_tokens = chooser.choice([0, 1, 7, 999, 123_457, 2_500_000])
    output_tokens = chooser.choice([0, 1, 13, 4_321, 250_001])
    cache_read = chooser.randint(0, input_tokens)
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_read_tokens": cache_read,
        "cache_write_tokens": chooser.randint(0, input_tokens - cache_read),
        "output_reasoning_tokens": chooser.randint(0, output_tokens),
    }


def _ours(model: str, provider: str | None, counts: dict[str, int]) -> PricedCost:
    return price_usage(
        Usage(
            input_tokens=counts["input_tokens"],
            output_tokens=counts["output_tokens"],
            cache_read_tokens=counts["cache_read_tokens"],
            cache_write_tokens=counts["cache_write_tokens"],
            reasoning_tokens=counts["output_reasoning_tokens"],
            model=model,
            provider=provider,
        )
    )


def test_every_model_in_the_table_is_priced_exactly_as_genai_prices_does() -> None:
    """Our fast path (rates measured once per model) against `calc_price` on every
    model of the bundled table, with counts of every size."""
    chooser = random.Random(2024)
    compared = 0
    for provider in data_snapshot.get_snapshot().providers:
        for model in provider.models:
            for _ in range(3):
                counts = _clamped_counts(chooser)
                try:
                    expected = _direct(model.id, provider.id, counts)
                except Exception:
                    continue
                priced = _ours(model.id, provider.id, counts)
                assert priced.cost == expected.total_price, (provider.id, model.id, counts)
                assert priced.matched_model == f"{expected.provider.id}/{expected.model.id}"
                compared += 1
    assert compared > 500


@settings(max_examples=200, deadline=None)
@given(
    model=st.sampled_from(
        ["gpt-4o", "gpt-4o-mini", "o3-mini", "claude-3-5-sonnet-latest", "gemini-1.5-pro"]
    ),
    seed=st.integers(min_value=0, max_value=2**32),
)
def test_fast_path_matches_genai_prices(model: str, seed: int) -> None:
    counts = _clamped_counts(random.Random(seed))
    assert _ours(model, None, counts).cost == _direct(model, None, counts).total_price


def test_flat_prices_take_the_fast_path_and_tiered_ones_do_not() -> None:
    flat = pricing._table_match("gpt-4o", None)
    tiered = pricing._table_match("gemini-1.5-pro", None)
    assert flat is not None and tiered is not None
    assert pricing._linear_price(*flat) is not None
    assert pricing._linear_price(*tiered) is None
    # Tiered: past 128k input tokens the rate changes, and the price follows it.
    small = price_usage(Usage(input_tokens=100_000, output_tokens=0, model="gemini-1.5-pro"))
    large = price_usage(Usage(input_tokens=200_000, output_tokens=0, model="gemini-1.5-pro"))
    assert small.cost is not None and large.cost is not None
    assert large.cost != 2 * small.cost
    assert large.cost == table("gemini-1.5-pro", input_tokens=200_000)


def test_anthropic_usage_is_made_inclusive() -> None:
    # Anthropic reports input without its cache tokens.
    anthropic = {
        "input_tokens": 100,
        "output_tokens": 50,
        "cache_read_input_tokens": 2000,
        "cache_creation_input_tokens": 300,
    }
    counts = pricing.usage_from_any(anthropic)
    assert counts["input_tokens"] == 2400
    assert (counts["cache_read_tokens"], counts["cache_write_tokens"]) == (2000, 300)
    model = "claude-3-5-sonnet-latest"
    assert calculate_cost(model, anthropic) == table(
        model, input_tokens=2400, output_tokens=50, cache_read_tokens=2000, cache_write_tokens=300
    )


def test_openai_cache_write_details_are_read() -> None:
    counts = pricing.usage_from_any(
        {
            "prompt_tokens": 500,
            "completion_tokens": 5,
            "prompt_tokens_details": {"cached_tokens": 100, "cache_write_tokens": 200},
        }
    )
    assert counts["input_tokens"] == 500
    assert (counts["cache_read_tokens"], counts["cache_write_tokens"]) == (100, 200)


def test_record_usage_takes_an_anthropic_usage_dict() -> None:
    with an.trace("anthropic") as trace, an.span("call", type="llm"):
        an.record_usage(
            model="claude-3-5-haiku-latest",
            usage={"input_tokens": 10, "output_tokens": 5, "cache_read_input_tokens": 90},
        )
    assert trace.totals.input_tokens == 100
    assert trace.totals.cache_read_tokens == 90
    assert trace.totals.cost == table(
        "claude-3-5-haiku-latest", input_tokens=100, output_tokens=5, cache_read_tokens=90
    )
