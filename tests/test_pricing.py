"""Pricing: genai-prices' bundled table, user overrides, reported costs, unpriced.

Expected figures are computed here with `genai_prices.calc_price` directly, or by hand
from rates stated in the test, never copied from our own output. The pricing functions
are pure: the user's prices are an argument (`UserPrices`), never state of the module.
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import genai_prices
import pytest
from conftest import RecordFactory
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pricing_shape import table_models

import agenta_notebook as an
from agenta_notebook.core import pricing
from agenta_notebook.core.pricing import (
    NO_USER_PRICES,
    UNPRICED,
    PricedCost,
    UserPrices,
    calculate_cost,
    parse_prices,
    price_usage,
)
from agenta_notebook.core.rollup import build_tree
from agenta_notebook.core.usage import Usage, read_usage
from agenta_notebook.live import Trace


def user(model: str, base: UserPrices = NO_USER_PRICES, **rates: Any) -> UserPrices:
    """`base` with the price of `model` set, as `an.set_prices(model, **rates)` does."""
    return base.with_price(model, parse_prices(**rates))


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
    prices = user("gpt-4o", input=100, output=100)
    usage = Usage(input_tokens=10, output_tokens=10, cost=Decimal("0.5"), model="gpt-4o")
    assert price_usage(usage, prices) == PricedCost(Decimal("0.5"), "reported", "gpt-4o")
    assert price_usage(Usage(cost=Decimal(0), model="my-local-llama")).cost == Decimal(0)


def test_user_prices_win_over_the_table_and_price_unknown_models() -> None:
    prices = user("my-local-llama", input="0.2", output="0.8", cache_read="0.05")
    usage = Usage(
        input_tokens=1000, output_tokens=500, cache_read_tokens=400, model="my-local-llama"
    )
    expected = (Decimal(600) * Decimal("0.2") + 400 * Decimal("0.05") + 500 * Decimal("0.8")) / (
        10**6
    )
    assert price_usage(usage, prices) == PricedCost(expected, "override", "my-local-llama")
    assert price_usage(usage) is UNPRICED  # the prices are an argument, not a state

    prices = user("gpt-4o", prices, input=1, output=2)
    priced = price_usage(Usage(input_tokens=10**6, output_tokens=10**6, model="GPT-4o"), prices)
    assert priced == PricedCost(Decimal(3), "override", "GPT-4o")
    # by `provider/model`, or without the prefix
    assert price_usage(
        Usage(input_tokens=10**6, output_tokens=0, model="gpt-4o", provider="openai"), prices
    ).cost == Decimal(1)
    prices = user("openai/my-finetune", prices, input=4, output=4)
    assert price_usage(
        Usage(input_tokens=10**6, output_tokens=0, model="my-finetune", provider="openai"),
        prices,
    ).cost == Decimal(4)
    assert price_usage(
        Usage(input_tokens=10**6, output_tokens=0, model="local/my-local-llama"), prices
    ).cost == Decimal("0.2")

    fewer = prices.without("GPT-4o ")
    assert price_usage(Usage(input_tokens=10, output_tokens=0, model="gpt-4o"), fewer).source == (
        "price table"
    )
    assert price_usage(usage, fewer).source == "override"
    none = fewer.without(None)
    assert price_usage(usage, none) is UNPRICED
    assert dict(none.by_model) == {}


def test_user_prices_are_an_immutable_versioned_value() -> None:
    first = user("My-Model", input=1, output=2)
    assert dict(first.by_model) == {"my-model": parse_prices(input=1, output=2)}
    assert first.version == NO_USER_PRICES.version + 1
    second = first.with_price("other", parse_prices(input=3, output=4))
    assert (second.version, len(second.by_model), len(first.by_model)) == (2, 2, 1)
    # Every change is a new version, even one that changes nothing (a tree is rebuilt).
    assert second.without("not-there").version == 3
    assert second.without(None).version == 3 and not second.without(None).by_model
    with pytest.raises(TypeError):
        first.by_model["x"] = parse_prices(input=0, output=0)  # type: ignore[index]
    source = {"a": parse_prices(input=1, output=1)}
    copied = UserPrices(source)
    source.clear()
    assert list(copied.by_model) == ["a"]
    assert NO_USER_PRICES.by_model == {} and NO_USER_PRICES.version == 0
    # lookup: exact (any case), `provider/model`, or without a `provider/` prefix
    prices = user("openai/tuned", first, input=5, output=5)
    assert prices.lookup(" MY-MODEL ", None) == parse_prices(input=1, output=2)
    assert prices.lookup("tuned", "OpenAI") == parse_prices(input=5, output=5)
    assert prices.lookup("tuned", None) is None
    assert prices.lookup("local/my-model", None) == parse_prices(input=1, output=2)
    assert prices.lookup("gpt-4o", "openai") is None


def test_the_requested_model_prices_a_response_model_with_no_price() -> None:
    """Providers answer with a dated or tagged name: a user price for the model asked for
    applies, and so does the table's when only the requested name is in it."""
    prices = user("my-llama", input=1, output=2)
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
    assert price_usage(tagged, prices) == PricedCost(Decimal(3), "override", "my-llama")
    prices = user("gpt-4o", prices, input=1, output=1)
    dated = Usage(
        input_tokens=10**6, output_tokens=0, model="gpt-4o-2024-08-06", request_model="gpt-4o"
    )
    assert price_usage(dated, prices) == PricedCost(Decimal(1), "override", "gpt-4o")
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
    usage = Usage(
        input_tokens=10**6, output_tokens=0, cache_write_tokens=10**6, model="house-model"
    )
    with_rate = user("house-model", input=3, output=15, cache_write="3.75")
    assert price_usage(usage, with_rate).cost == Decimal("3.75")
    without_rate = user("house-model", with_rate, input=3, output=15)
    assert price_usage(usage, without_rate).cost == Decimal(3)


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("abc", "a price must be a number, got 'abc'"),
        (True, "a price must be a number, got True"),
        (-1, "prices must be finite and non-negative, got -1"),
        (float("nan"), "prices must be finite and non-negative, got NaN"),
        (float("inf"), "prices must be finite and non-negative, got Infinity"),
    ],
)
def test_bad_user_prices_raise_value_error(bad: Any, message: str, fresh_runtime: Any) -> None:
    with pytest.raises(ValueError) as raised:
        parse_prices(input=bad, output=1)
    assert str(raised.value) == message
    with pytest.raises(ValueError):
        parse_prices(input=1, output=1, cache_read=bad)
    with pytest.raises(ValueError):
        parse_prices(input=1, output=1, cache_write=bad)
    # The package's `set_prices` checks the same way and keeps nothing it refused.
    with pytest.raises(ValueError):
        an.set_prices("x", input=bad, output=1)
    assert an.calculate_cost("x", {"input_tokens": 1, "output_tokens": 1}) is None


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
    prices = user("my-local-llama", input=1, output=1)
    assert calculate_cost("my-local-llama", usage, user_prices=prices) == Decimal("0.0023")
    assert calculate_cost("o3-mini", usage, user_prices=prices) == expected


def test_the_package_calculates_with_the_sessions_prices(fresh_runtime: Any) -> None:
    usage = {"input_tokens": 2000, "output_tokens": 300, "cached_tokens": 1024}
    expected = table("o3-mini", input_tokens=2000, output_tokens=300, cache_read_tokens=1024)
    assert an.calculate_cost("o3-mini", usage) == expected
    assert an.calculate_cost("my-local-llama", usage) is None
    an.set_prices("my-local-llama", input=1, output=1)
    assert an.calculate_cost("my-local-llama", usage) == Decimal("0.0023")
    an.clear_prices("my-local-llama")
    assert an.calculate_cost("my-local-llama", usage) is None


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
    assert priced.failure is None  # "not in the table" is never a failure
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
    compared = unknown = 0
    for entry in table_models():
        for _ in range(3):
            counts = _clamped_counts(chooser)
            try:
                expected = _direct(entry.model, entry.provider, counts)
            except LookupError:  # an id its own matching rules do not take
                assert price_usage(Usage(input_tokens=1, model=entry.model)).failure is None
                unknown += 1
                continue
            priced = _ours(entry.model, entry.provider, counts)
            assert priced.failure is None
            assert priced.cost == expected.total_price, (entry, counts)
            assert priced.matched_model == f"{expected.provider.id}/{expected.model.id}"
            compared += 1
    assert compared > 5000 and unknown < compared / 10


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


@pytest.fixture
def broken_genai_prices(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """genai-prices' `calc_price` failing as an API change would: a TypeError for one
    model, "not found" for the rest. Yields the models it was asked about."""
    real = genai_prices.calc_price
    asked: list[str] = []

    def calc_price(usage: Any, model_ref: str, **options: Any) -> Any:
        asked.append(model_ref)
        if model_ref == "broken-model":
            raise TypeError("calc_price() got an unexpected keyword argument 'provider_id'")
        if model_ref == "missing-price":
            raise IndexError("list index out of range")  # a model with an empty price list
        return real(usage, model_ref, **options)

    def clear() -> None:
        for cached in (pricing._table_match, pricing._linear_price, pricing._table_cost):
            cached.cache_clear()

    clear()
    monkeypatch.setattr(genai_prices, "calc_price", calc_price)
    yield asked
    monkeypatch.undo()
    clear()


def test_a_failure_of_genai_prices_is_carried_not_hidden(broken_genai_prices: list[str]) -> None:
    usage = Usage(input_tokens=10, output_tokens=5, model="broken-model")
    priced = price_usage(usage)
    assert priced.cost is None and priced.source == "unpriced"
    assert isinstance(priced.failure, TypeError)
    assert priced.warning is not None and "genai-prices failed" in priced.warning
    assert "broken-model" in priced.warning and "TypeError" in priced.warning
    # "No price" (a LookupError, an IndexError among them) is an expected outcome.
    missing = price_usage(Usage(input_tokens=10, model="missing-price"))
    assert missing is UNPRICED and missing.warning is None
    # Asked directly, the failure is raised, never a quiet None.
    with pytest.raises(TypeError):
        calculate_cost("broken-model", {"input_tokens": 10})
    assert calculate_cost("missing-price", {"input_tokens": 10}) is None
    assert price_usage(Usage(input_tokens=10, model="my-local-llama")) is UNPRICED
    # A user price does not ask genai-prices at all.
    asked = len(broken_genai_prices)
    prices = user("broken-model", input=1, output=1)
    assert price_usage(usage, prices).cost == Decimal("0.000015")
    assert len(broken_genai_prices) == asked


def test_a_pricing_failure_is_a_warning_on_its_span_and_an_internal_error(
    broken_genai_prices: list[str],
    records: RecordFactory,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    def call(input_tokens: int, output_tokens: int, model: str) -> dict[str, Any]:
        return {
            "gen_ai.usage.input_tokens": input_tokens,
            "gen_ai.usage.output_tokens": output_tokens,
            "gen_ai.request.model": model,
        }

    root = records.add("root")
    records.add("bad", root, type="llm", **call(100, 10, "broken-model"))
    records.add("good", root, type="llm", **call(1000, 100, "gpt-4o"))
    tree = build_tree(records.all)
    bad, good = (next(n for n in tree.nodes if n.name == name) for name in ("bad", "good"))
    assert [node.name for node in tree.pricing_failures] == ["bad"]
    assert [w.kind for w in bad.span_warnings] == ["pricing failed"]
    assert bad.own.cost is None and bad.own.unpriced_calls == 1
    assert good.own.cost == table("gpt-4o", input_tokens=1000, output_tokens=100)
    assert tree.totals.unpriced_calls == 1
    # The live trace reports it: raised under the test suite, logged once otherwise.
    with pytest.raises(TypeError):
        Trace(1, "t", records=records.all).tree  # noqa: B018
    monkeypatch.setenv("AGENTA_NOTEBOOK_STRICT", "0")
    live = Trace(1, "t", records=records.all)
    with caplog.at_level(logging.ERROR, logger="agenta_notebook"):
        assert live.tree.totals.unpriced_calls == 1
        live.add_records([])  # a new version: the tree is rebuilt, not reported again
        assert live.tree.totals.unpriced_calls == 1
    reports = [r for r in caplog.records if "pricing broken-model" in r.getMessage()]
    assert len(reports) == 1 and reports[0].exc_info is not None


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


@pytest.mark.parametrize(
    ("price", "message"),
    [
        ("1e999990", "at most $1,000,000 per million tokens"),
        ("1000000.01", "at most $1,000,000 per million tokens"),
        (1e300, "at most $1,000,000 per million tokens"),
        ("1e-999990", "at most 30 decimal places"),
        ("0.0000000000000000000000000000001", "at most 30 decimal places"),
    ],
)
def test_absurd_prices_are_refused(price: Any, message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)) as raised:
        parse_prices(input=price, output=1)
    assert len(str(raised.value)) < 200  # the message shows a bounded excerpt of the value
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_prices(input=1, output=1, cache_write=price)


def test_prices_at_the_limits_are_exact() -> None:
    top = parse_prices(input="1000000", output="0.000000000000000000000000000001")
    assert top.input == Decimal(1_000_000)
    tokens = 2**63 - 1
    cost = pricing._override_cost(top, tokens, tokens, 0, 0)
    # every digit kept: tokens + tokens * 1e-36, written out (Python's context has 28)
    assert cost == Decimal(f"{tokens}.{'0' * 17}{tokens}")
    # a zero with a huge exponent is a plain zero (it would blow up the sums' digits)
    assert parse_prices(input="0E-999990", output=0).input.as_tuple().exponent == 0


@pytest.mark.parametrize(
    "tokens", [2**63, 10**30 + 1, 10**308, 10**5000], ids=["2**63", "1e30+1", "1e308", "1e5000"]
)
def test_a_count_past_int64_is_ignored_with_a_warning(tokens: int) -> None:
    """Rule 7: above 2**63 - 1 a count is a bad value, never rounded or unpriced."""
    an.clear_prices()
    with an.trace("big") as result:
        with an.span("call", type="llm"):
            an.record_usage(model="gpt-4o", input_tokens=tokens, output_tokens=1000)
    node = result.nodes[1]
    assert node.usage.input_tokens is None
    assert [warning.kind for warning in result.tree.warnings()] == ["ignored value"]
    assert "not a token count (0 to 2**63 - 1)" in node.warnings[0]
    assert node.own.cost == calculate_cost("gpt-4o", {"output_tokens": 1000})  # still priced
    assert result.totals.unpriced_calls == 0
    for usage in ({"input_tokens": tokens}, {"prompt_tokens": 1, "completion_tokens": tokens}):
        with pytest.raises(ValueError, match=re.escape("not a token count (0 to 2**63 - 1)")):
            calculate_cost("gpt-4o", usage)
        with pytest.raises(ValueError, match="not a token count"):
            an.calculate_cost("gpt-4o", usage)
    with pytest.raises(ValueError, match="not a token count"):
        calculate_cost("gpt-4o", Usage(input_tokens=tokens))


def test_the_largest_count_is_priced_exactly() -> None:
    tokens = 2**63 - 1
    prices = user("m", input="0.123456789123", output="1")
    cost = calculate_cost("m", {"input_tokens": tokens}, user_prices=prices)
    # exact (31 digits, past the default 28): tokens * 0.123456789123 / 1e6
    digits = str(tokens * 123_456_789_123)
    assert cost == Decimal(f"{digits[:-18]}.{digits[-18:]}")
