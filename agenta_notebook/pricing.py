"""Cost of a model call: reported, user override, genai-prices' bundled table, or unpriced.

genai-prices is used with its bundled snapshot only; this module never starts its
auto-update, so nothing is fetched from the network.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from typing import Any, Final, Literal

from .usage import Usage, parse_token_count

CostSource = Literal["reported", "override", "price table", "unpriced"]

_MILLION: Final = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class ModelPrices:
    """User prices for one model, in dollars per million tokens."""

    input: Decimal
    output: Decimal
    cache_read: Decimal | None = None
    cache_write: Decimal | None = None


@dataclass(frozen=True, slots=True)
class PricedCost:
    """The cost of one span and where it came from. `cost is None` means unpriced."""

    cost: Decimal | None
    source: CostSource
    matched_model: str | None = None


UNPRICED: Final = PricedCost(None, "unpriced")

_overrides: dict[str, ModelPrices] = {}
_overrides_lock = threading.Lock()


def _decimal(value: float | int | str | Decimal) -> Decimal:
    return value if isinstance(value, Decimal) else Decimal(str(value))


def set_prices(
    model: str,
    *,
    input: float | int | str | Decimal,
    output: float | int | str | Decimal,
    cache_read: float | int | str | Decimal | None = None,
    cache_write: float | int | str | Decimal | None = None,
) -> None:
    """Set the price of `model` in dollars per million tokens; it wins over the table.

    >>> set_prices("my-local-llama", input=0.1, output=0.2)
    >>> calculate_cost("my-local-llama", {"input_tokens": 1_000_000})
    Decimal('0.1')
    >>> clear_prices()
    """
    prices = ModelPrices(
        input=_decimal(input),
        output=_decimal(output),
        cache_read=None if cache_read is None else _decimal(cache_read),
        cache_write=None if cache_write is None else _decimal(cache_write),
    )
    for value in (prices.input, prices.output, prices.cache_read, prices.cache_write):
        if value is not None and (not value.is_finite() or value < 0):
            raise ValueError(f"prices must be finite and non-negative, got {value}")
    with _overrides_lock:
        _overrides[model] = prices


def clear_prices(model: str | None = None) -> None:
    """Forget the user price of `model`, or of every model."""
    with _overrides_lock:
        if model is None:
            _overrides.clear()
        else:
            _overrides.pop(model, None)


def _override_for(model: str) -> ModelPrices | None:
    prices = _overrides.get(model)
    if prices is None and "/" in model:
        prices = _overrides.get(model.split("/", 1)[1])
    return prices


def _override_cost(
    prices: ModelPrices, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int
) -> Decimal:
    # Input is inclusive of cache tokens (rollup.md rule 5): price the uncached rest.
    uncached = max(input_tokens - cache_read - cache_write, 0)
    read_rate = prices.input if prices.cache_read is None else prices.cache_read
    write_rate = prices.input if prices.cache_write is None else prices.cache_write
    total = (
        uncached * prices.input
        + cache_read * read_rate
        + cache_write * write_rate
        + output_tokens * prices.output
    )
    return total / _MILLION


@lru_cache(maxsize=512)
def _table_lookup_ok(model: str, provider: str | None) -> tuple[str, str | None] | None:
    """The (model_ref, provider_id) genai-prices knows this model by, or None."""
    from genai_prices import Usage as TableUsage
    from genai_prices import calc_price

    candidates: list[tuple[str, str | None]] = [(model, provider)]
    if provider is not None:
        candidates.append((model, None))
    if "/" in model:
        prefix, rest = model.split("/", 1)
        candidates += [(rest, prefix), (rest, provider), (rest, None)]
    for model_ref, provider_id in candidates:
        try:
            calc_price(TableUsage(input_tokens=1), model_ref=model_ref, provider_id=provider_id)
        except Exception:
            continue
        return model_ref, provider_id
    return None


@lru_cache(maxsize=65536)
def _table_cost(
    model_ref: str,
    provider_id: str | None,
    input_tokens: int,
    output_tokens: int,
    cache_read: int,
    cache_write: int,
) -> tuple[Decimal, str] | None:
    from genai_prices import Usage as TableUsage
    from genai_prices import calc_price

    usage = TableUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read,
        cache_write_tokens=cache_write,
    )
    try:
        result = calc_price(usage, model_ref=model_ref, provider_id=provider_id)
    except Exception:
        return None
    return Decimal(result.total_price), f"{result.provider.id}/{result.model.id}"


def price_usage(usage: Usage) -> PricedCost:
    """The cost of a span's usage, by the first rule that applies (rollup.md rule 6)."""
    if usage.cost is not None:
        return PricedCost(usage.cost, "reported", usage.model)
    model = usage.model
    if model is None or (usage.input_tokens is None and usage.output_tokens is None):
        return UNPRICED
    input_tokens = usage.input_tokens or 0
    output_tokens = usage.output_tokens or 0
    cache_read = usage.cache_read_tokens or 0
    cache_write = usage.cache_write_tokens or 0
    if _overrides:
        prices = _override_for(model)
        if prices is not None:
            cost = _override_cost(prices, input_tokens, output_tokens, cache_read, cache_write)
            return PricedCost(cost, "override", model)
    known = _table_lookup_ok(model, usage.provider)
    if known is None:
        return UNPRICED
    # genai-prices rejects cache counts larger than the input they are part of.
    cache_read = min(cache_read, input_tokens)
    cache_write = min(cache_write, input_tokens - cache_read)
    priced = _table_cost(known[0], known[1], input_tokens, output_tokens, cache_read, cache_write)
    if priced is None:
        return UNPRICED
    return PricedCost(priced[0], "price table", priced[1])


def _usage_from_mapping(usage: Mapping[str, Any]) -> dict[str, int | None]:
    def first(*keys: str) -> int | None:
        for key in keys:
            if key in usage and usage[key] is not None:
                return parse_token_count(usage[key])
        return None

    cache_read = first("cache_read_tokens", "cached_tokens")
    reasoning = first("reasoning_tokens")
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    if cache_read is None and isinstance(details, Mapping):
        cache_read = parse_token_count(details.get("cached_tokens"))
    details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    if reasoning is None and isinstance(details, Mapping):
        reasoning = parse_token_count(details.get("reasoning_tokens"))
    return {
        "input_tokens": first("input_tokens", "prompt_tokens"),
        "output_tokens": first("output_tokens", "completion_tokens"),
        "total_tokens": first("total_tokens"),
        "cache_read_tokens": cache_read,
        "cache_write_tokens": first("cache_write_tokens", "cache_creation_input_tokens"),
        "reasoning_tokens": reasoning,
    }


def usage_from_any(usage: Usage | Mapping[str, Any] | Any) -> dict[str, int | None]:
    """Token counts from our `Usage`, a dict (OpenAI or GenAI names), or an object
    with such attributes (an OpenAI `CompletionUsage`, say)."""
    if isinstance(usage, Usage):
        return {
            "input_tokens": usage.input_tokens,
            "output_tokens": usage.output_tokens,
            "total_tokens": usage.total_tokens,
            "cache_read_tokens": usage.cache_read_tokens,
            "cache_write_tokens": usage.cache_write_tokens,
            "reasoning_tokens": usage.reasoning_tokens,
        }
    if isinstance(usage, Mapping):
        return _usage_from_mapping(usage)
    dump = getattr(usage, "model_dump", None)
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return _usage_from_mapping(dumped)
    return _usage_from_mapping(
        {
            key: getattr(usage, key)
            for key in ("input_tokens", "output_tokens", "prompt_tokens", "completion_tokens")
            if hasattr(usage, key)
        }
    )


def calculate_cost(
    model: str, usage: Usage | Mapping[str, Any] | Any, provider: str | None = None
) -> Decimal | None:
    """Dollar cost of `usage` on `model`; `None` when the model has no known price.

    User prices (`set_prices`) win over genai-prices' bundled table. Nothing is
    fetched from the network.

    >>> calculate_cost("gpt-4o", {"prompt_tokens": 1000, "completion_tokens": 100})
    Decimal('0.0035')
    >>> calculate_cost("my-local-llama", {"input_tokens": 10}) is None
    True
    """
    counts = usage_from_any(usage)
    return price_usage(
        Usage(
            input_tokens=counts["input_tokens"],
            output_tokens=counts["output_tokens"],
            cache_read_tokens=counts["cache_read_tokens"],
            cache_write_tokens=counts["cache_write_tokens"],
            model=model,
            provider=provider,
        )
    ).cost
