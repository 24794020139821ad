"""The shape of genai-prices as `agenta_notebook.core.pricing` uses it, checked.

Pricing calls genai-prices' public API only: `genai_prices.calc_price(Usage(...),
model_ref, provider_id=...)`, the `Usage` keywords `input_tokens`, `output_tokens`,
`cache_read_tokens`, `cache_write_tokens` and `output_reasoning_tokens`, and, on the
`PriceCalculation` it returns, `total_price`, `provider.id` and `model.id`. "Not in the
table" is a `LookupError`; every other exception is a bug. These tests fail when any of
that changes shape, or when the bundled table stops saying what we expect of it.

The expectations are read from the table's source as genai-prices ships it (the file
`genai_prices/data.py`, parsed here with `ast`, never imported or executed), not from
genai-prices' objects nor from the code under test.
"""

from __future__ import annotations

import ast
import inspect
import threading
import tomllib
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from importlib.metadata import version
from pathlib import Path
from typing import Any

import genai_prices
import pytest
from loopback_guard import Guard
from packaging.requirements import Requirement

from agenta_notebook.core import pricing
from agenta_notebook.core.pricing import price_usage
from agenta_notebook.core.usage import Usage

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"
DATA = Path(genai_prices.__file__).resolve().parent / "data.py"
MILLION = Decimal(1_000_000)
#: The `Usage` keywords pricing passes, and the price keys (per million tokens) that
#: charge each of them in the table.
USAGE_KEYS = (
    "input_tokens",
    "output_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "output_reasoning_tokens",
)


# -- the bundled table, read from its source ----------------------------------------------


@dataclass(frozen=True)
class Tiered:
    """A price that changes past a number of input tokens, as the table writes it."""

    base: Decimal
    tiers: tuple[tuple[int, Decimal], ...]


Price = Decimal | Tiered


@dataclass(frozen=True)
class TableModel:
    provider: str
    model: str
    #: the price keys of a model with one price; None for prices with conditions
    prices: dict[str, Price] | None


def _keywords(call: ast.Call) -> dict[str, ast.expr]:
    return {keyword.arg: keyword.value for keyword in call.keywords if keyword.arg}


def _call_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
        return node.func.id
    return None


def _price(node: ast.expr) -> Price:
    name = _call_name(node)
    assert isinstance(node, ast.Call)
    if name == "Decimal":
        argument = node.args[0]
        assert isinstance(argument, ast.Constant) and isinstance(argument.value, str)
        return Decimal(argument.value)
    assert name == "TieredPrices", ast.dump(node)
    keywords = _keywords(node)
    tiers = keywords["tiers"]
    assert isinstance(tiers, ast.List)
    found = []
    for tier in tiers.elts:
        assert isinstance(tier, ast.Call)
        fields = _keywords(tier)
        start = fields["start"]
        assert isinstance(start, ast.Constant) and isinstance(start.value, int)
        found.append((start.value, _price(fields["price"])))
    base = _price(keywords["base"])
    assert isinstance(base, Decimal)
    return Tiered(base, tuple(sorted(found, key=lambda tier: tier[0])))  # type: ignore[arg-type]


def _read_table() -> dict[tuple[str, str], TableModel]:
    tree = ast.parse(DATA.read_text(encoding="utf-8"))
    providers: ast.expr | None = None
    for statement in tree.body:
        if isinstance(statement, ast.AnnAssign | ast.Assign):
            targets = [statement.target] if isinstance(statement, ast.AnnAssign) else []
            if isinstance(statement, ast.Assign):
                targets = list(statement.targets)
            if any(isinstance(t, ast.Name) and t.id == "providers" for t in targets):
                providers = statement.value
    assert isinstance(providers, ast.List), "genai_prices/data.py has no `providers` list"
    table: dict[tuple[str, str], TableModel] = {}
    for provider in providers.elts:
        assert _call_name(provider) == "Provider"
        assert isinstance(provider, ast.Call)
        fields = _keywords(provider)
        provider_id = fields["id"]
        models = fields.get("models")
        assert isinstance(provider_id, ast.Constant) and isinstance(provider_id.value, str)
        assert isinstance(models, ast.List)
        for model in models.elts:
            assert _call_name(model) == "ModelInfo"
            assert isinstance(model, ast.Call)
            model_fields = _keywords(model)
            model_id = model_fields["id"]
            assert isinstance(model_id, ast.Constant) and isinstance(model_id.value, str)
            prices_node = model_fields.get("prices")
            prices: dict[str, Price] | None = None
            if _call_name(prices_node) == "ModelPrice":
                assert isinstance(prices_node, ast.Call)
                prices = {key: _price(value) for key, value in _keywords(prices_node).items()}
            key = (provider_id.value, model_id.value)
            table[key] = TableModel(provider_id.value, model_id.value, prices)
    return table


TABLE: dict[tuple[str, str], TableModel] = _read_table()


def table_models() -> Iterator[TableModel]:
    """Every model of the bundled table, provider by provider (for tests/test_pricing.py)."""
    yield from TABLE.values()


def test_the_table_source_is_read() -> None:
    assert len(TABLE) > 1000
    assert {"openai", "anthropic", "google", "perplexity"} <= {key[0] for key in TABLE}


# -- the names and signatures we call -----------------------------------------------------


def test_the_public_names_we_call_exist_with_the_signatures_we_use() -> None:
    assert "calc_price" in genai_prices.__all__ and "Usage" in genai_prices.__all__
    parameters = inspect.signature(genai_prices.calc_price).parameters
    assert list(parameters)[:2] == ["usage", "model_ref"]
    for name in ("usage", "model_ref"):
        assert parameters[name].kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
    assert parameters["provider_id"].kind is inspect.Parameter.KEYWORD_ONLY
    assert parameters["provider_id"].default is None
    # Every other parameter is optional: we pass none of them.
    assert all(
        parameter.default is not inspect.Parameter.empty
        for name, parameter in parameters.items()
        if name not in ("usage", "model_ref")
    )


def test_usage_takes_every_count_we_pass_without_a_warning() -> None:
    """genai-prices *warns* (it does not raise) on a usage key it does not know, and
    ignores its count: a renamed key would silently price tokens at zero."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        usage = genai_prices.Usage(**{key: index + 1 for index, key in enumerate(USAGE_KEYS)})
    for index, key in enumerate(USAGE_KEYS):
        assert getattr(usage, key) == index + 1
    with pytest.warns(UserWarning):  # the check above can fail
        genai_prices.Usage(reasoning_tokens=1)


def test_calc_price_returns_what_we_read() -> None:
    result = genai_prices.calc_price(
        genai_prices.Usage(input_tokens=1000, output_tokens=100), "gpt-4o", provider_id="openai"
    )
    assert type(result.total_price) is Decimal
    assert type(result.provider.id) is str and result.provider.id == "openai"
    assert type(result.model.id) is str and result.model.id == "gpt-4o"
    # Set only when the prices come from an auto-update: ours are the bundled ones.
    assert result.auto_update_timestamp is None


def test_the_installed_version_is_within_the_bound_we_declare() -> None:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    requirement = next(
        Requirement(line)
        for line in project["dependencies"]
        if Requirement(line).name == "genai-prices"
    )
    installed = version("genai-prices")
    assert genai_prices.__version__ == installed
    assert requirement.specifier.contains(installed)
    # An upper bound: the next minor release of a 0.x package may change the API.
    assert any(spec.operator == "<" for spec in requirement.specifier)
    assert not requirement.specifier.contains("0.3.0")


# -- the exceptions -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "provider"),
    [
        ("my-local-llama", None),
        ("my-local-llama", "openai"),
        ("gpt-4o", "no-such-provider"),
        ("", None),
    ],
)
def test_not_in_the_table_is_a_lookup_error(model: str, provider: str | None) -> None:
    with pytest.raises(LookupError):
        genai_prices.calc_price(genai_prices.Usage(input_tokens=1), model, provider_id=provider)


def test_a_sub_count_larger_than_its_total_is_a_value_error() -> None:
    """Why pricing clamps the sub-counts: genai-prices refuses them with a ValueError,
    which is then never an expected outcome (our clamping failed: a bug)."""
    with pytest.raises(ValueError) as raised:
        genai_prices.calc_price(genai_prices.Usage(input_tokens=10, cache_read_tokens=20), "gpt-4o")
    assert not isinstance(raised.value, LookupError)


# -- what the table says of a few models ----------------------------------------------------

KNOWN = [
    # (model ref, provider given, provider id, model id in the table)
    ("gpt-4o", None, "openai", "gpt-4o"),
    ("gpt-4o-2024-08-06", "openai", "openai", "gpt-4o"),
    ("claude-3-5-sonnet-latest", None, "anthropic", "claude-3-5-sonnet"),
    ("claude-3-5-sonnet-latest", "anthropic", "anthropic", "claude-3-5-sonnet"),
    ("sonar-deep-research", "perplexity", "perplexity", "sonar-deep-research"),
    ("o3-mini", None, "openai", "o3-mini"),
]


def _rate(prices: dict[str, Price], key: str, fallback: Decimal) -> Decimal:
    rate = prices.get(key, fallback)
    assert isinstance(rate, Decimal), f"{key} is tiered"
    return rate


def expected_rates(provider: str, model: str) -> dict[str, Decimal]:
    """The full rate of each kind of token in dollars per million, from the table's
    source: a cache or reasoning token without its own rate costs its parent's rate."""
    entry = TABLE[(provider, model)]
    assert entry.prices is not None, f"{provider}/{model} now has conditional prices"
    input_rate = _rate(entry.prices, "input_mtok", Decimal(0))
    output_rate = _rate(entry.prices, "output_mtok", Decimal(0))
    return {
        "input": input_rate,
        "cache_read": _rate(entry.prices, "cache_read_mtok", input_rate),
        "cache_write": _rate(entry.prices, "cache_write_mtok", input_rate),
        "output": output_rate,
        "reasoning": _rate(entry.prices, "output_reasoning_mtok", output_rate),
    }


def _million(ref: str, provider: str | None, **counts: int) -> Decimal:
    usage = genai_prices.Usage(**counts)
    return genai_prices.calc_price(usage, ref, provider_id=provider).total_price


@pytest.mark.parametrize(("ref", "given", "provider", "model"), KNOWN)
def test_known_models_resolve_and_cost_what_the_table_says(
    ref: str, given: str | None, provider: str, model: str
) -> None:
    rates = expected_rates(provider, model)
    result = genai_prices.calc_price(genai_prices.Usage(input_tokens=1), ref, provider_id=given)
    assert (result.provider.id, result.model.id) == (provider, model)
    m = 10**6
    measured = {
        "input": _million(ref, given, input_tokens=m),
        "cache_read": _million(ref, given, input_tokens=m, cache_read_tokens=m),
        "cache_write": _million(ref, given, input_tokens=m, cache_write_tokens=m),
        "output": _million(ref, given, output_tokens=m),
        "reasoning": _million(ref, given, output_tokens=m, output_reasoning_tokens=m),
    }
    assert measured == rates
    # Our fast path measures the same rates, through `calc_price` alone.
    known = pricing._table_match(ref, given)
    assert known is not None
    linear = pricing._linear_price(*known)
    assert linear is not None and linear.matched_model == f"{provider}/{model}"
    assert linear.per_million() == rates
    assert linear.per_call == 0


def test_the_cache_and_reasoning_models_have_their_own_rates() -> None:
    """The models above that the tests of cache and reasoning prices rely on."""
    sonnet = expected_rates("anthropic", "claude-3-5-sonnet")
    assert sonnet["cache_read"] < sonnet["input"] < sonnet["cache_write"]
    research = expected_rates("perplexity", "sonar-deep-research")
    assert research["reasoning"] != research["output"]
    gpt = expected_rates("openai", "gpt-4o")
    assert gpt["cache_read"] < gpt["input"] and gpt["cache_write"] == gpt["input"]


def test_a_tiered_price_changes_past_its_threshold_and_is_not_linear() -> None:
    entry = TABLE[("google", "gemini-1.5-pro")]
    assert entry.prices is not None
    tiered = entry.prices["input_mtok"]
    assert isinstance(tiered, Tiered) and tiered.tiers
    start, tier_rate = tiered.tiers[0]
    assert isinstance(tier_rate, Decimal)
    below = _million("gemini-1.5-pro", "google", input_tokens=start)
    above = _million("gemini-1.5-pro", "google", input_tokens=start + 1)
    assert below == start * tiered.base / MILLION
    assert above == (start + 1) * tier_rate / MILLION
    known = pricing._table_match("gemini-1.5-pro", None)
    assert known is not None and pricing._linear_price(*known) is None
    priced = price_usage(Usage(input_tokens=start + 1, output_tokens=0, model="gemini-1.5-pro"))
    assert priced.cost == above and priced.matched_model == "google/gemini-1.5-pro"


# -- offline --------------------------------------------------------------------------------


def test_nothing_is_fetched_from_the_network() -> None:
    """Pricing never starts genai-prices' auto-update: no connection, no update thread."""
    pricing._table_match.cache_clear()
    pricing._linear_price.cache_clear()
    pricing._table_cost.cache_clear()
    guard = Guard().install()
    try:
        for ref, given, _, _ in KNOWN:
            usage = Usage(input_tokens=1000, output_tokens=10, model=ref, provider=given)
            assert price_usage(usage).source == "price table"
        assert price_usage(Usage(input_tokens=200_000, model="gemini-1.5-pro")).cost
    finally:
        guard.uninstall()
    assert guard.refused == []
    assert not any(thread.name.startswith("genai_prices") for thread in threading.enumerate())
    result: Any = genai_prices.calc_price(genai_prices.Usage(input_tokens=1), "gpt-4o")
    assert result.auto_update_timestamp is None
