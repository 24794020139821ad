"""Cost of a model call: reported, user override, genai-prices' bundled table, or unpriced.

Pure: the user's prices are a value (`UserPrices`) passed in, never state of this module;
the caches below only remember answers of the bundled table, which never changes.

genai-prices is used through its public API only: `calc_price(Usage(...), model_ref,
provider_id=...)` and, on the `PriceCalculation` it returns, `total_price`, `provider.id`
and `model.id` (tests/test_pricing_shape.py checks that shape). Its bundled snapshot
only: this module never starts its auto-update, so nothing is fetched from the network.
A `LookupError` of genai-prices means "not in the table" (unpriced); any other exception
is a bug, carried in `PricedCost.failure` rather than hidden.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation, localcontext
from functools import lru_cache
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Final, Literal

from agenta_notebook.core.fields import COST_CONTEXT, TOKEN_FIGURES
from agenta_notebook.core.frozen import fast_constructor
from agenta_notebook.core.usage import Usage, parse_token_count

if TYPE_CHECKING:
    # The declared return type of `genai_prices.calc_price`; used in annotations only.
    from genai_prices.types import PriceCalculation

CostSource = Literal["reported", "override", "price table", "unpriced"]

_MILLION: Final = Decimal(1_000_000)
#: Money arithmetic, always in our own context (fields.py), never the caller's.
_ADD: Final = COST_CONTEXT.add
_MULTIPLY: Final = COST_CONTEXT.multiply

#: The largest price `set_prices` accepts, in dollars per million tokens.
MAX_PRICE: Final = Decimal(1_000_000)
#: The most decimal places a price may have (1e-30 dollars per million tokens).
MAX_PRICE_PLACES: Final = 30


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

    @property
    def failure(self) -> Exception | None:
        """What genai-prices raised when it failed on this call (`PricingFailure`)."""
        return None

    @property
    def warning(self) -> str | None:
        """The span's warning when pricing failed, else None."""
        return None


@dataclass(frozen=True, slots=True)
class PricingFailure(PricedCost):
    """Unpriced because genai-prices failed on the call for another reason than not
    knowing the model: a bug (ours or genai-prices'), never a missing price."""

    error: Exception | None = field(default=None, compare=False, repr=False)

    @property
    def failure(self) -> Exception | None:
        return self.error

    @property
    def warning(self) -> str | None:
        error = self.error
        return (
            f"not priced: genai-prices failed on model {self.matched_model!r} "
            f"({type(error).__name__}: {error}); this is a bug, reported in the "
            "agenta_notebook log"
        )


UNPRICED: Final = PricedCost(None, "unpriced")
#: `PricedCost(...)`, built faster: `price_usage` makes one per model call.
_new_priced: Final = fast_constructor(PricedCost)


@dataclass(frozen=True, slots=True)
class UserPrices:
    """The user's prices, by lower-cased model name (or `provider/model`): a value.

    Every change makes a new `UserPrices` with `version` one higher: a tree built under
    an older version is stale (rule 15: prices apply when a tree is built, never frozen
    into a kept copy). The mapping is copied and read-only.
    """

    by_model: Mapping[str, ModelPrices]
    version: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "by_model", MappingProxyType(dict(self.by_model)))

    def with_price(self, model: str, prices: ModelPrices) -> UserPrices:
        """These prices with `model`'s set to `prices` (matched in any case).

        `TypeError` unless `model` is a str, `ValueError` when it is blank."""
        if not isinstance(model, str):
            raise TypeError(f"a model name must be a str, not {type(model).__name__}")
        if not model.strip():
            raise ValueError("a model name must not be blank")
        by_model = dict(self.by_model)
        by_model[model.strip().lower()] = prices
        return UserPrices(by_model, self.version + 1)

    def without(self, model: str | None) -> UserPrices:
        """These prices without `model`'s, or without any when `model` is None."""
        if model is None:
            return UserPrices({}, self.version + 1)
        by_model = dict(self.by_model)
        by_model.pop(model.strip().lower(), None)
        return UserPrices(by_model, self.version + 1)

    def lookup(self, model: str, provider: str | None) -> ModelPrices | None:
        """The price for `model`: by its exact name (any case), as `provider/model`, or
        without a `provider/` prefix."""
        by_model = self.by_model
        key = model.strip().lower()
        prices = by_model.get(key)
        if prices is None and provider is not None:
            prices = by_model.get(f"{provider.strip().lower()}/{key}")
        if prices is None and "/" in key:
            prices = by_model.get(key.split("/", 1)[1])
        return prices


#: No user prices: everything is priced from the table (or reported, or unpriced).
NO_USER_PRICES: Final = UserPrices(by_model={})


def _decimal(value: float | int | str | Decimal) -> Decimal:
    if isinstance(value, bool):
        raise ValueError(f"a price must be a number, got {value!r}")
    try:
        return value if isinstance(value, Decimal) else Decimal(str(value).strip())
    except InvalidOperation:
        raise ValueError(f"a price must be a number, got {value!r}") from None


def parse_prices(
    *,
    input: float | int | str | Decimal,
    output: float | int | str | Decimal,
    cache_read: float | int | str | Decimal | None = None,
    cache_write: float | int | str | Decimal | None = None,
) -> ModelPrices:
    """Prices in dollars per million tokens, checked: `ValueError` unless each is a
    finite, non-negative number of at most `MAX_PRICE` with at most `MAX_PRICE_PLACES`
    decimal places (so that any int64 count times any price is exact in `COST_CONTEXT`).
    """
    checked = [
        None if value is None else _checked_price(_decimal(value))
        for value in (input, output, cache_read, cache_write)
    ]
    input_price, output_price, read_price, write_price = checked
    assert input_price is not None and output_price is not None
    return ModelPrices(input_price, output_price, read_price, write_price)


def _checked_price(value: Decimal) -> Decimal:
    """`value` if it is an acceptable price (a zero as plain 0), else `ValueError`."""
    if not value.is_finite() or (value.is_signed() and not value.is_zero()):
        raise ValueError(f"prices must be finite and non-negative, got {_shown(value)}")
    if value.is_zero():
        return Decimal(0)
    if value > MAX_PRICE:
        raise ValueError(
            f"a price must be at most ${MAX_PRICE:,} per million tokens, got {_shown(value)}"
        )
    exponent = value.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_PRICE_PLACES:
        raise ValueError(
            f"a price may have at most {MAX_PRICE_PLACES} decimal places, got {_shown(value)}"
        )
    return value


def _shown(value: Decimal) -> str:
    """`value` for an error message, bounded in size."""
    text = str(value)
    return text if len(text) <= 40 else f"{text[:37]}..."


def _override_cost(
    prices: ModelPrices, input_tokens: int, output_tokens: int, cache_read: int, cache_write: int
) -> Decimal:
    # Input is inclusive of cache tokens (rollup.md rule 5): price the uncached rest.
    uncached = max(input_tokens - cache_read - cache_write, 0)
    read_rate = prices.input if prices.cache_read is None else prices.cache_read
    write_rate = prices.input if prices.cache_write is None else prices.cache_write
    add, multiply = COST_CONTEXT.add, COST_CONTEXT.multiply  # never the caller's context
    total = add(
        add(multiply(uncached, prices.input), multiply(cache_read, read_rate)),
        add(multiply(cache_write, write_rate), multiply(output_tokens, prices.output)),
    )
    return COST_CONTEXT.divide(total, _MILLION)


def _provider_candidates(provider: str | None) -> list[str | None]:
    """Provider ids to try: as given, then OpenTelemetry's spelling with `_` as `-`."""
    if provider is None:
        return [None]
    candidates: list[str | None] = [provider]
    if "_" in provider:  # OpenTelemetry's `x_ai` is genai-prices' `x-ai`
        candidates.append(provider.replace("_", "-"))
    return candidates


def _calc(model_ref: str, provider_id: str | None, **counts: int) -> PriceCalculation:
    """genai-prices' price of `counts` on one model: its public `calc_price`, nothing else.

    Raises `LookupError` when genai-prices knows no such model or provider, or has no
    price for it (an empty price list is an `IndexError`, a `LookupError` too): the only
    exception that means "not in the table". Anything else is a failure of genai-prices
    or of our use of it, and `price_usage` reports it as one.
    """
    from genai_prices import Usage as TableUsage
    from genai_prices import calc_price

    with localcontext(COST_CONTEXT):  # genai-prices computes in the current context
        return calc_price(TableUsage(**counts), model_ref, provider_id=provider_id)


def _matched(calculation: PriceCalculation) -> str:
    """`provider/model` as genai-prices' table names them."""
    return f"{calculation.provider.id}/{calculation.model.id}"


@lru_cache(maxsize=1024)
def _table_match(model: str, provider: str | None) -> tuple[str, str | None] | None:
    """The (model_ref, provider_id) under which genai-prices knows this model, or None.

    Tried in order: the model with the span's provider, the model alone (genai-prices
    guesses the provider from the name), and for `prefix/model` references the rest with
    the prefix as provider, with the span's provider, then alone. Cached: a lookup
    through genai-prices' tables costs tens of microseconds and the roll-up prices
    every model call again whenever the tree is rebuilt.
    """
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
            _calc(model_ref, provider_id, input_tokens=1)
        except LookupError:  # not in the table under this name: try the next one
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
) -> tuple[Decimal, str]:
    """genai-prices' price for one call, by `calc_price` on these very counts.

    genai-prices uses the inclusive convention too: `input_tokens` contains the cache
    tokens and `output_tokens` the reasoning tokens, and each sub-count is charged at
    its own rate when the model has one (the rest of the parent count at the parent
    rate), so the counts are passed as the span reports them (clamped by the caller).
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
    # `calc_price` itself rather than `_calc`: this runs for every distinct usage of a
    # tiered model, and genai-prices' own call is the whole cost.
    with localcontext(COST_CONTEXT):  # genai-prices computes in the current context
        calculation = calc_price(usage, model_ref, provider_id=provider_id)
        return calculation.total_price, _matched(calculation)


def _tidy(cost: Decimal) -> Decimal:
    """`cost` without trailing zeros (0.00350000 -> 0.0035), never in E+ notation."""
    tidy = cost.normalize(COST_CONTEXT)
    if tidy.adjusted() < 1:  # under 10 in size: no E+ (and `as_tuple` costs a microsecond)
        return tidy
    exponent = tidy.as_tuple().exponent
    if isinstance(exponent, int) and exponent > 0:
        return tidy.quantize(Decimal(1), context=COST_CONTEXT)
    return tidy


@dataclass(frozen=True, slots=True)
class _LinearPrice:
    """A model's table price as a linear function of the five counts we read.

    The rates are in dollars per token, each on top of its parent count's: a cached
    input token costs `input + cache_read`, a reasoning token `output + reasoning`.
    Measured with genai-prices itself (see `_linear_price`).
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
        add, multiply = _ADD, _MULTIPLY  # never the caller's context
        total = self.per_call
        if input_tokens:
            total = add(total, multiply(input_tokens, self.input))
        if cache_read:
            total = add(total, multiply(cache_read, self.cache_read))
        if cache_write:
            total = add(total, multiply(cache_write, self.cache_write))
        if output_tokens:
            total = add(total, multiply(output_tokens, self.output))
        if reasoning:
            total = add(total, multiply(reasoning, self.reasoning))
        return _tidy(total)

    def per_million(self) -> dict[str, Decimal]:
        """The full rate of each kind of token in dollars per million tokens."""
        million = _MILLION
        with localcontext(COST_CONTEXT):
            return {
                "input": _tidy(self.input * million),
                "cache_read": _tidy((self.input + self.cache_read) * million),
                "cache_write": _tidy((self.input + self.cache_write) * million),
                "output": _tidy(self.output * million),
                "reasoning": _tidy((self.output + self.reasoning) * million),
            }


#: The input sizes at which a model's rates are measured: one token, and more than any
#: tier of any price table starts at (genai-prices' tiers are thresholds on the input).
_SMALL: Final = 1
_LARGE: Final = 10**12


#: The `genai_prices.Usage` keywords of the five counts, in `_Probe.price`'s order.
_TABLE_KEYS: Final = (
    "input_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_tokens",
    "output_reasoning_tokens",
)


class _Probe:
    """`calc_price` of one model on a few usages, each asked once: the total price."""

    def __init__(self, model_ref: str, provider_id: str | None) -> None:
        self.model_ref = model_ref
        self.provider_id = provider_id
        self.first = _calc(model_ref, provider_id)  # no usage at all: the price per call
        self.per_call = self.first.total_price
        self._asked: dict[tuple[int, int, int, int, int], Decimal] = {
            (0, 0, 0, 0, 0): self.per_call
        }

    def price(
        self,
        input: int = 0,
        cache_read: int = 0,
        cache_write: int = 0,
        output: int = 0,
        reasoning: int = 0,
    ) -> Decimal:
        key = (input, cache_read, cache_write, output, reasoning)
        total = self._asked.get(key)
        if total is None:
            counts = {name: count for name, count in zip(_TABLE_KEYS, key, strict=True) if count}
            total = self._asked[key] = _calc(self.model_ref, self.provider_id, **counts).total_price
        return total

    def rate(self, kind: int, scale: int) -> Decimal:
        """One rate per token, on top of its parent count's, as charged around an input
        of `scale` tokens (kinds: 0 input, 1 cache read, 2 cache write, 3 output,
        4 reasoning). At `_SMALL` the output rates are measured with no input at all, so
        that a tier starting at the first input token shows up as a difference too.
        Decimal arithmetic and power-of-ten scales keep every rate exact."""
        price = self.price
        if kind == 0:
            difference = price(input=scale) - self.per_call
        elif kind == 1:
            difference = price(input=scale, cache_read=scale) - price(input=scale)
        elif kind == 2:
            difference = price(input=scale, cache_write=scale) - price(input=scale)
        else:
            below = 0 if scale == _SMALL else scale
            with_output = price(input=below, output=scale)
            if kind == 3:
                difference = with_output - price(input=below)
            else:
                difference = price(input=below, output=scale, reasoning=scale) - with_output
        return (difference / scale).normalize()


@lru_cache(maxsize=1024)
def _linear_price(model_ref: str, provider_id: str | None) -> _LinearPrice | None:
    """The linear form of a model's price, or None when its price is not flat.

    genai-prices takes tens of microseconds per call (it decomposes the usage into
    priced units every time); the roll-up prices every model call of a trace, so for
    flat prices (almost all models) the rates are measured once, by asking `calc_price`
    (genai-prices' public function) about a few usages, and then applied with five
    multiplications. A price is flat when each rate measured at one input token and at
    `_LARGE` input tokens is the same: a tiered price (rates that change past a number
    of input tokens) differs, and goes through `calc_price` on every call instead.

    The rates are those in force when first measured in this process, as every price
    of genai-prices' table is those in force when it is asked.
    """
    with localcontext(COST_CONTEXT):  # measured exactly, whatever the caller's context
        probe = _Probe(model_ref, provider_id)
        rates = []
        for kind in range(5):
            rate = probe.rate(kind, _SMALL)
            if rate != probe.rate(kind, _LARGE):
                return None
            rates.append(rate)
    input_rate, cache_read, cache_write, output, reasoning = rates
    return _LinearPrice(
        per_call=probe.per_call.normalize(COST_CONTEXT),
        input=input_rate,
        cache_read=cache_read,
        cache_write=cache_write,
        output=output,
        reasoning=reasoning,
        matched_model=_matched(probe.first),
    )


def price_usage(usage: Usage, user_prices: UserPrices = NO_USER_PRICES) -> PricedCost:
    """The cost of a span's usage, by the first rule that applies (rollup.md rule 6).

    Never raises: anything that cannot be priced is `UNPRICED` (cost `None`, not 0).
    A failure of genai-prices other than "not in the table" is a bug: the call is
    unpriced and the failure is carried in a `PricingFailure` (the roll-up puts a
    warning on the span, the live trace reports it with `internal_error`).

    >>> price_usage(Usage(input_tokens=1000, output_tokens=100, model="openai/gpt-4o"))
    PricedCost(cost=Decimal('0.0035'), source='price table', matched_model='openai/gpt-4o')
    """
    if usage.cost is not None:
        return _new_priced(usage.cost, "reported", usage.model)
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
    if user_prices.by_model:
        for name in names:
            prices = user_prices.lookup(name, usage.provider)
            if prices is not None:
                cost = _override_cost(prices, input_tokens, output_tokens, cache_read, cache_write)
                return _new_priced(cost, "override", name)
    try:
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
            return _new_priced(cost, "price table", linear.matched_model)
        cost, matched = _table_cost(
            known[0], known[1], input_tokens, output_tokens, cache_read, cache_write, reasoning
        )
    except LookupError:  # genai-prices has no price for this model
        return UNPRICED
    except Exception as error:  # a bug, not a missing price: carried, never hidden
        return PricingFailure(None, "unpriced", model, error)
    return _new_priced(cost, "price table", matched)


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
        return {figure.name: getattr(usage, figure.name) for figure in TOKEN_FIGURES}
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


def _checked_counts(counts: dict[str, Any]) -> dict[str, int | None]:
    """The counts as ints; `ValueError` for one that is not a token count (rule 7: an
    int64 at most), never a silent "unpriced"."""
    checked: dict[str, int | None] = {}
    for name, value in counts.items():
        parsed = parse_token_count(value)
        if value is not None and parsed is None:
            raise ValueError(f"{name} is not a token count (0 to 2**63 - 1): {_shown_value(value)}")
        checked[name] = parsed
    return checked


def _shown_value(value: Any) -> str:
    """`repr(value)` for an error message, bounded (an int past Python's digit limit too)."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"an integer of {value.bit_length()} bits"
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:57]}..."


def calculate_cost(
    model: str,
    usage: Usage | Mapping[str, Any] | Any,
    provider: str | None = None,
    *,
    user_prices: UserPrices = NO_USER_PRICES,
) -> Decimal | None:
    """Dollar cost of `usage` on `model`; `None` when the model has no known price.

    `user_prices` win over genai-prices' bundled table. Nothing is fetched from the
    network. When genai-prices fails for another reason than not knowing the model (a
    bug, see `PricedCost.failure`), its exception is raised: never a silent `None`. A
    count that is not a token count (negative, not a whole number, past 2**63 - 1) is a
    `ValueError`.

    >>> calculate_cost("gpt-4o", {"prompt_tokens": 1000, "completion_tokens": 100})
    Decimal('0.0035')
    >>> calculate_cost("my-local-llama", {"input_tokens": 10}) is None
    True
    """
    counts = _checked_counts(usage_from_any(usage, keep_bad=True))
    priced = price_usage(
        Usage(
            input_tokens=counts["input_tokens"],
            output_tokens=counts["output_tokens"],
            cache_read_tokens=counts["cache_read_tokens"],
            cache_write_tokens=counts["cache_write_tokens"],
            reasoning_tokens=counts["reasoning_tokens"],
            model=model,
            provider=provider,
        ),
        user_prices,
    )
    if priced.failure is not None:
        raise priced.failure
    return priced.cost
