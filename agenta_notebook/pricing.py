"""Cost of a model call: reported, user override, genai-prices' bundled table, or unpriced.

genai-prices is used with its bundled snapshot only; this module never starts its
auto-update, so nothing is fetched from the network.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, Final, Literal

from .usage import Usage, parse_token_count

CostSource = Literal["reported", "override", "price table", "unpriced"]

_MILLION: Final = Decimal(1_000_000)
# Token count used to measure a model's rates: large enough that every rate in the
# table (dollars per million tokens) comes out exact.
_PROBE: Final = 1_000_000


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
#: Grows with every change of the user's prices: a tree built under an older version is
#: stale (rule 15: prices apply when a tree is built, never frozen into a kept copy).
_prices_version = 0
_price_listeners: list[Callable[[], None]] = []


def prices_version() -> int:
    """A number that changes whenever `set_prices` or `clear_prices` changes a price."""
    return _prices_version


def add_price_listener(listener: Callable[[], None]) -> None:
    """Call `listener()` after every change of the user's prices (open views redraw)."""
    if listener not in _price_listeners:
        _price_listeners.append(listener)


def _prices_changed() -> None:
    global _prices_version
    _prices_version += 1
    for listener in tuple(_price_listeners):
        listener()


def _decimal(value: float | int | str | Decimal) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"a price must be a number, got {value!r}")
    try:
        return value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"a price must be a number, got {value!r}") from None


def set_prices(
    model: str,
    *,
    input: float | int | str | Decimal,
    output: float | int | str | Decimal,
    cache_read: float | int | str | Decimal | None = None,
    cache_write: float | int | str | Decimal | None = None,
) -> None:
    """Set the price of `model` in dollars per million tokens; it wins over the table.

    `model` matches the span's model name in any case, or `provider/model`. Cache
    tokens are part of the input (the inclusive convention) and are charged at
    `cache_read` / `cache_write` when given, else at `input`; reasoning tokens are
    part of the output and charged at `output`.

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
        _overrides[model.strip().lower()] = prices
    _prices_changed()


def clear_prices(model: str | None = None) -> None:
    """Forget the user price of `model`, or of every model."""
    with _overrides_lock:
        if model is None:
            _overrides.clear()
        else:
            _overrides.pop(model.strip().lower(), None)
    _prices_changed()


def _override_for(model: str, provider: str | None) -> ModelPrices | None:
    """The user's price for `model`: by its exact name (any case), as `provider/model`,
    or without a `provider/` prefix."""
    key = model.strip().lower()
    prices = _overrides.get(key)
    if prices is None and provider is not None:
        prices = _overrides.get(f"{provider.strip().lower()}/{key}")
    if prices is None and "/" in key:
        prices = _overrides.get(key.split("/", 1)[1])
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


def _provider_candidates(provider: str | None) -> list[str | None]:
    """Provider ids to try: as given, then OpenTelemetry's spelling with `_` as `-`."""
    if provider is None:
        return [None]
    candidates: list[str | None] = [provider]
    if "_" in provider:  # OpenTelemetry's `x_ai` is genai-prices' `x-ai`
        candidates.append(provider.replace("_", "-"))
    return candidates


@lru_cache(maxsize=1024)
def _table_match(model: str, provider: str | None) -> tuple[str, str | None] | None:
    """The (model_ref, provider_id) under which genai-prices knows this model, or None.

    Tried in order: the model with the span's provider, the model alone (genai-prices
    guesses the provider from the name), and for `prefix/model` references the rest with
    the prefix as provider, with the span's provider, then alone. Cached: a lookup
    through genai-prices' tables costs tens of microseconds and the roll-up prices
    every model call again whenever the tree is rebuilt.
    """
    from genai_prices import Usage as TableUsage
    from genai_prices import calc_price

    candidates: list[tuple[str, str | None]] = [
        (model, provider_id) for provider_id in _provider_candidates(provider)
    ]
    if provider is not None:
        candidates.append((model, None))
    if "/" in model:
        prefix, rest = model.split("/", 1)
        candidates += [(rest, prefix)]
        candidates += [(rest, provider_id) for provider_id in _provider_candidates(provider)]
        if provider is not None:
            candidates.append((rest, None))
    for model_ref, provider_id in dict.fromkeys(candidates):
        try:
            # LookupError when the model or provider is unknown; anything else means
            # genai-prices cannot price this model either.
            calc_price(TableUsage(input_tokens=1), model_ref, provider_id=provider_id)
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
    reasoning: int,
) -> tuple[Decimal, str] | None:
    """genai-prices' price for one call; `None` if it refuses these counts.

    genai-prices uses the inclusive convention too: `input_tokens` contains the cache
    tokens and `output_tokens` the reasoning tokens, and each sub-count is charged at
    its own rate when the model has one (the rest of the parent count at the parent
    rate), so the counts are passed exactly as the span reports them.
    """
    from genai_prices import Usage as TableUsage
    from genai_prices import calc_price

    usage = TableUsage(
        input_tokens=input_tokens,
        output_tokens=output_tokens,
        cache_read_tokens=cache_read or None,
        cache_write_tokens=cache_write or None,
        output_reasoning_tokens=reasoning or None,
    )
    try:
        result = calc_price(usage, model_ref, provider_id=provider_id)
    except Exception:
        return None
    return result.total_price, f"{result.provider.id}/{result.model.id}"


def _tidy(cost: Decimal) -> Decimal:
    """`cost` without trailing zeros (0.00350000 -> 0.0035), never in E+ notation."""
    tidy = cost.normalize()
    exponent = tidy.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        return tidy.quantize(Decimal(1))
    return tidy


@dataclass(frozen=True, slots=True)
class _LinearPrice:
    """A model's table price as a linear function of the five counts we read.

    Exact for flat prices: genai-prices splits each count into leaves by subtraction
    (input minus its cache parts, output minus reasoning) and charges each leaf at a
    flat rate, plus a fixed price per request; all of that is linear in the counts.
    The rates are measured by asking genai-prices itself (see `_linear_price`).
    """

    per_call: Decimal
    input: Decimal
    cache_read: Decimal  # on top of `input`: cache tokens are part of the input
    cache_write: Decimal
    output: Decimal
    reasoning: Decimal  # on top of `output`
    matched_model: str

    def cost(
        self,
        input_tokens: int,
        output_tokens: int,
        cache_read: int,
        cache_write: int,
        reasoning: int,
    ) -> Decimal:
        return _tidy(
            self.per_call
            + input_tokens * self.input
            + cache_read * self.cache_read
            + cache_write * self.cache_write
            + output_tokens * self.output
            + reasoning * self.reasoning
        )


@lru_cache(maxsize=1024)
def _linear_price(model_ref: str, provider_id: str | None) -> _LinearPrice | None:
    """The linear form of a model's price, or None when its price is not flat.

    genai-prices takes ~35 us per call (it decomposes the usage into priced units every
    time); the roll-up prices every model call of a trace, so for flat prices (almost
    all models) the rates are measured once, with genai-prices, and applied with five
    multiplications. Prices that change with time or volume (conditional or tiered)
    go through `calc_price` on every call instead.
    """
    from genai_prices import Usage as TableUsage
    from genai_prices import calc_price
    from genai_prices.types import ModelPrice, TieredPrices

    def price(**counts: int) -> Any:
        return calc_price(TableUsage(**counts), model_ref, provider_id=provider_id)

    try:
        probe = price(input_tokens=_PROBE)
        if not isinstance(probe.model.prices, ModelPrice) or any(
            isinstance(value, TieredPrices) for value in vars(probe.model_price).values()
        ):
            return None
        per_call = price().total_price
        with_input = probe.total_price
        with_output = price(output_tokens=_PROBE).total_price
        cache_read = price(input_tokens=_PROBE, cache_read_tokens=_PROBE).total_price
        cache_write = price(input_tokens=_PROBE, cache_write_tokens=_PROBE).total_price
        reasoning = price(output_tokens=_PROBE, output_reasoning_tokens=_PROBE).total_price
    except Exception:
        return None
    return _LinearPrice(
        per_call=per_call.normalize(),
        input=((with_input - per_call) / _PROBE).normalize(),
        cache_read=((cache_read - with_input) / _PROBE).normalize(),
        cache_write=((cache_write - with_input) / _PROBE).normalize(),
        output=((with_output - per_call) / _PROBE).normalize(),
        reasoning=((reasoning - with_output) / _PROBE).normalize(),
        matched_model=f"{probe.provider.id}/{probe.model.id}",
    )


def price_usage(usage: Usage) -> PricedCost:
    """The cost of a span's usage, by the first rule that applies (rollup.md rule 6).

    Never raises: anything that cannot be priced is `UNPRICED` (cost `None`, not 0).

    >>> price_usage(Usage(input_tokens=1000, output_tokens=100, model="openai/gpt-4o"))
    PricedCost(cost=Decimal('0.0035'), source='price table', matched_model='openai/gpt-4o')
    """
    if usage.cost is not None:
        return PricedCost(usage.cost, "reported", usage.model)
    model = usage.model
    if model is None or (usage.input_tokens is None and usage.output_tokens is None):
        return UNPRICED
    input_tokens = usage.input_tokens or 0
    output_tokens = usage.output_tokens or 0
    # A sub-count larger than the count it is part of is a reporting error; clamp it so
    # that neither the override nor genai-prices (which would refuse) prices it twice.
    cache_read = min(usage.cache_read_tokens or 0, input_tokens)
    cache_write = min(usage.cache_write_tokens or 0, input_tokens - cache_read)
    reasoning = min(usage.reasoning_tokens or 0, output_tokens)
    # The response's model first; then the one asked for (a provider answering
    # "gpt-4o-2024-08-06" or "my-llama:latest" to a request for "gpt-4o" / "my-llama").
    names = (model,) if usage.request_model is None else (model, usage.request_model)
    try:
        if _overrides:
            for name in names:
                prices = _override_for(name, usage.provider)
                if prices is not None:
                    cost = _override_cost(
                        prices, input_tokens, output_tokens, cache_read, cache_write
                    )
                    return PricedCost(cost, "override", name)
        known = None
        for name in names:
            known = _table_match(name, usage.provider)
            if known is not None:
                break
        if known is None:
            return UNPRICED
        linear = _linear_price(*known)
        if linear is not None:
            cost = linear.cost(input_tokens, output_tokens, cache_read, cache_write, reasoning)
            return PricedCost(cost, "price table", linear.matched_model)
        priced = _table_cost(
            known[0], known[1], input_tokens, output_tokens, cache_read, cache_write, reasoning
        )
    except Exception:  # a price must never break the view of a trace
        return UNPRICED
    if priced is None:
        return UNPRICED
    return PricedCost(priced[0], "price table", priced[1])


def _usage_from_mapping(usage: Mapping[str, Any], keep_bad: bool = False) -> dict[str, Any]:
    """Token counts from a usage dict in OpenAI's, GenAI's or Anthropic's names.

    Anthropic's `input_tokens` leaves out the cache tokens (`cache_read_input_tokens`,
    `cache_creation_input_tokens`); they are added back, so the input is inclusive as
    everywhere else (rollup.md rule 5).
    """

    def count(value: Any) -> Any:
        parsed = parse_token_count(value)
        # `keep_bad`: a value that is not a count is passed on as it is, for the span to
        # carry it and show the warning (rollup.md rule 7), instead of vanishing here.
        return value if parsed is None and keep_bad and value is not None else parsed

    def first(*keys: str) -> Any:
        for key in keys:
            if key in usage and usage[key] is not None:
                return count(usage[key])
        return None

    input_tokens = first("input_tokens", "prompt_tokens")
    cache_read = first("cache_read_tokens", "cached_tokens")
    cache_write = first("cache_write_tokens")
    reasoning = first("reasoning_tokens")
    details = usage.get("prompt_tokens_details") or usage.get("input_tokens_details")
    if isinstance(details, Mapping):
        if cache_read is None:
            cache_read = count(details.get("cached_tokens"))
        if cache_write is None:
            cache_write = count(details.get("cache_write_tokens"))
    details = usage.get("completion_tokens_details") or usage.get("output_tokens_details")
    if reasoning is None and isinstance(details, Mapping):
        reasoning = count(details.get("reasoning_tokens"))
    anthropic_read = first("cache_read_input_tokens")
    anthropic_write = first("cache_creation_input_tokens")
    if anthropic_read is not None or anthropic_write is not None:
        if type(input_tokens) is int:
            for extra in (anthropic_read, anthropic_write):
                if type(extra) is int:
                    input_tokens += extra
        cache_read = anthropic_read if cache_read is None else cache_read
        cache_write = anthropic_write if cache_write is None else cache_write
    return {
        "input_tokens": input_tokens,
        "output_tokens": first("output_tokens", "completion_tokens"),
        "total_tokens": first("total_tokens"),
        "cache_read_tokens": cache_read,
        "cache_write_tokens": cache_write,
        "reasoning_tokens": reasoning,
    }


def usage_from_any(
    usage: Usage | Mapping[str, Any] | Any, keep_bad: bool = False
) -> dict[str, Any]:
    """Token counts from our `Usage`, a dict (OpenAI or GenAI names), or an object
    with such attributes (an OpenAI `CompletionUsage`, say).

    A value that is not a token count is `None`, or with `keep_bad` the value itself
    (what `record_usage` writes on the span, so that the span warns about it)."""
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
        return _usage_from_mapping(usage, keep_bad)
    dump = getattr(usage, "model_dump", None)
    if callable(dump):
        dumped = dump()
        if isinstance(dumped, Mapping):
            return _usage_from_mapping(dumped, keep_bad)
    return _usage_from_mapping(
        {
            key: getattr(usage, key)
            for key in ("input_tokens", "output_tokens", "prompt_tokens", "completion_tokens")
            if hasattr(usage, key)
        },
        keep_bad,
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
            reasoning_tokens=counts["reasoning_tokens"],
            model=model,
            provider=provider,
        )
    ).cost
