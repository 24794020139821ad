"""Read one `Usage` record from a span's attributes, whatever vocabulary wrote them.

Three vocabularies are understood (first present wins, per field): Agenta's wire keys
(which this package writes), the OpenTelemetry GenAI conventions, and OpenInference.
Bad values never raise: they are dropped for that field and become a warning.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

# --- Keys this package writes (Agenta's vocabulary) ------------------------------------
AG_TYPE: Final = "ag.type.node"
AG_INPUT_TOKENS: Final = "ag.metrics.unit.tokens.prompt"
AG_OUTPUT_TOKENS: Final = "ag.metrics.unit.tokens.completion"
AG_TOTAL_TOKENS: Final = "ag.metrics.unit.tokens.total"
#: The key Agenta's SDK writes for cache reads (its LiteLLM callback, say).
AG_CACHE_READ_TOKENS: Final = "ag.metrics.unit.tokens.cache_read"
#: What agenta-notebook 0.1.0 wrote for cache reads: still read, so old files load the same.
AG_LEGACY_CACHED_TOKENS: Final = "ag.metrics.unit.tokens.cached"
AG_REASONING_TOKENS: Final = "ag.metrics.unit.tokens.reasoning"
AG_COST: Final = "ag.metrics.unit.costs.total"
AG_MODEL: Final = "ag.meta.response.model"
AG_REQUEST_MODEL: Final = "ag.meta.request.model"
AG_PROVIDER: Final = "ag.meta.system"
# Agenta has no cache-write key; the GenAI one is written so other tools read it too.
GENAI_CACHE_WRITE_TOKENS: Final = "gen_ai.usage.cache_creation.input_tokens"

OPENINFERENCE_KIND: Final = "openinference.span.kind"
GENAI_OPERATION: Final = "gen_ai.operation.name"
GENAI_RESPONSE_ID: Final = "gen_ai.response.id"
OPENINFERENCE_INVOCATION_PARAMETERS: Final = "llm.invocation_parameters"

MODEL_CALL_TYPES: Final = frozenset({"llm", "chat", "completion", "embedding", "rerank"})
_OPENINFERENCE_MODEL_KINDS: Final = frozenset({"LLM", "EMBEDDING", "RERANKER"})
# GenAI operations that are not model calls: an agent span stamped with its run's
# usage is a roll-up claim (rule 3), not a call whose usage adds to its children's.
_GENAI_NON_MODEL_OPERATIONS: Final = frozenset(
    {"invoke_agent", "create_agent", "execute_tool", "invoke_workflow"}
)

# field -> keys, in order of preference. Every key here follows the inclusive convention
# (input counts the cache tokens, output the reasoning ones) except those listed in
# `_EXCLUSIVE_CACHE_KEYS` below.
_TOKEN_KEYS: Final[dict[str, tuple[str, ...]]] = {
    "input_tokens": (
        AG_INPUT_TOKENS,
        "gen_ai.usage.input_tokens",
        "gen_ai.usage.prompt_tokens",
        "llm.token_count.prompt",
    ),
    "output_tokens": (
        AG_OUTPUT_TOKENS,
        "gen_ai.usage.output_tokens",
        "gen_ai.usage.completion_tokens",
        "llm.token_count.completion",
    ),
    "total_tokens": (
        AG_TOTAL_TOKENS,
        "gen_ai.usage.total_tokens",
        "llm.token_count.total",
        "llm.usage.total_tokens",
    ),
    "cache_read_tokens": (
        AG_CACHE_READ_TOKENS,
        AG_LEGACY_CACHED_TOKENS,
        "gen_ai.usage.cache_read.input_tokens",
        "gen_ai.usage.cache_read_input_tokens",
        "gen_ai.usage.input_tokens.cached",
        "llm.token_count.prompt_details.cache_read",
    ),
    "cache_write_tokens": (
        GENAI_CACHE_WRITE_TOKENS,
        "gen_ai.usage.cache_write.input_tokens",
        "gen_ai.usage.cache_creation_input_tokens",
        "gen_ai.usage.input_tokens.cache_write",
        "llm.token_count.prompt_details.cache_write",
    ),
    "reasoning_tokens": (
        AG_REASONING_TOKENS,
        "gen_ai.usage.reasoning.output_tokens",
        "gen_ai.usage.reasoning_tokens",
        "llm.token_count.completion_details.reasoning",
    ),
}
_COST_KEYS: Final = (AG_COST, "gen_ai.usage.cost", "llm.cost.total")
_MODEL_KEYS: Final = (
    AG_MODEL,
    "gen_ai.response.model",
    AG_REQUEST_MODEL,
    "gen_ai.request.model",
    "llm.model_name",
    "embedding.model_name",
)
_REQUEST_MODEL_KEYS: Final = (AG_REQUEST_MODEL, "gen_ai.request.model")
_PROVIDER_KEYS: Final = (
    AG_PROVIDER,
    "gen_ai.provider.name",
    "gen_ai.system",
    "llm.provider",
    "llm.system",
)

#: Every key that can change what `read_usage` returns; a span carrying none of them
#: takes the fast path.
USAGE_KEYS: Final = frozenset(
    [key for keys in _TOKEN_KEYS.values() for key in keys]
    + list(_COST_KEYS)
    + list(_MODEL_KEYS)
    + list(_PROVIDER_KEYS)
    + [AG_TYPE, OPENINFERENCE_KIND, GENAI_OPERATION, OPENINFERENCE_INVOCATION_PARAMETERS]
)


@dataclass(frozen=True, slots=True)
class Usage:
    """What one span reports about itself. `None` means absent, never zero."""

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost: Decimal | None = None
    model: str | None = None
    provider: str | None = None
    span_type: str | None = None
    is_model_call: bool = False
    warnings: tuple[str, ...] = ()
    #: The model asked for, when the span names one that differs from `model` (the
    #: response's): prices set or known for it apply when `model` has none.
    request_model: str | None = None

    @property
    def reports_usage(self) -> bool:
        """True when the span states any token count or a cost of its own."""
        return (
            self.input_tokens is not None
            or self.output_tokens is not None
            or self.total_tokens is not None
            or self.cache_read_tokens is not None
            or self.cache_write_tokens is not None
            or self.reasoning_tokens is not None
            or self.cost is not None
        )

    @property
    def reported_fields(self) -> int:
        """The figures this span states itself, as a mask of the `REPORTS_*` bits."""
        mask = 0
        if self.input_tokens is not None:
            mask |= REPORTS_INPUT | REPORTS_TOTAL
        if self.output_tokens is not None:
            mask |= REPORTS_OUTPUT | REPORTS_TOTAL
        if self.total_tokens is not None:
            mask |= REPORTS_TOTAL
        if self.cache_read_tokens is not None:
            mask |= REPORTS_CACHE_READ
        if self.cache_write_tokens is not None:
            mask |= REPORTS_CACHE_WRITE
        if self.reasoning_tokens is not None:
            mask |= REPORTS_REASONING
        if self.cost is not None:
            mask |= REPORTS_COST
        return mask

    @property
    def effective_total_tokens(self) -> int | None:
        """Total as reported, else input + output (rule 5), else `None`."""
        if self.total_tokens is not None:
            return self.total_tokens
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)


EMPTY_USAGE: Final = Usage()

# One bit per figure a span can report (rule 2 counts usage field by field). The total
# counts as reported when input or output is, since it is then their sum (rule 5).
REPORTS_INPUT: Final = 1
REPORTS_OUTPUT: Final = 2
REPORTS_TOTAL: Final = 4
REPORTS_CACHE_READ: Final = 8
REPORTS_CACHE_WRITE: Final = 16
REPORTS_REASONING: Final = 32
REPORTS_COST: Final = 64
REPORTS_TOKENS: Final = REPORTS_INPUT | REPORTS_OUTPUT | REPORTS_TOTAL

# A cost of 1e40 dollars or more is not a cost; refusing it keeps exact sums bounded.
_MAX_COST_DIGITS: Final = 40


#: The largest token count read (a signed 64-bit integer, what OTLP carries); anything
#: larger is a bad value (rule 7), not a number to round.
MAX_TOKEN_COUNT: Final = 2**63 - 1


def parse_token_count(value: Any) -> int | None:
    """A token count from an attribute value; `None` when the value is not a count.

    >>> parse_token_count("12"), parse_token_count(3.0), parse_token_count(-1)
    (12, 3, None)
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= MAX_TOKEN_COUNT else None
    if isinstance(value, float):
        if math.isfinite(value) and 0 <= value <= MAX_TOKEN_COUNT and value.is_integer():
            return int(value)
        return None
    if isinstance(value, numbers.Integral):  # numpy and other integer types
        return parse_token_count(int(value))
    if isinstance(value, numbers.Real):  # numpy float32, fractions
        return parse_token_count(float(value))
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            if len(text.lstrip("0")) > 19:  # past MAX_TOKEN_COUNT (and int()'s digit limit)
                return None
            return parse_token_count(int(text))
        try:
            number = float(text)
        except ValueError:
            return None
        return parse_token_count(number)
    return None


def parse_cost(value: Any) -> Decimal | None:
    """A cost in dollars as an exact Decimal; `None` for anything that is not one.

    Floats go through their shortest repr, so 0.0066 stays Decimal("0.0066").
    """
    if isinstance(value, bool):
        return None
    if isinstance(value, Decimal):
        number = value
    elif isinstance(value, int):
        number = Decimal(value)
    elif isinstance(value, float):
        if not math.isfinite(value):
            return None
        number = Decimal(repr(value))
    elif isinstance(value, numbers.Integral):
        number = Decimal(int(value))
    elif isinstance(value, numbers.Real):
        return parse_cost(float(value))
    elif isinstance(value, str):
        try:
            number = Decimal(value.strip())
        except InvalidOperation:
            return None
    else:
        return None
    if not number.is_finite() or number < 0 or number.adjusted() > _MAX_COST_DIGITS:
        return None
    return number


def _span_type(attributes: Mapping[str, Any]) -> tuple[str | None, bool]:
    """(the span's type, is it a model call). The type shown is the first vocabulary
    present (Agenta's, OpenInference's kind, the GenAI operation); the span is a model
    call when ANY of them says so (rollup.md, "model-call span")."""
    span_type: str | None = None
    declared = attributes.get(AG_TYPE)
    if isinstance(declared, str) and declared:
        span_type = declared.lower()
        if span_type in MODEL_CALL_TYPES:
            return span_type, True
    kind = attributes.get(OPENINFERENCE_KIND)
    if isinstance(kind, str) and kind:
        if span_type is None:
            span_type = kind.lower()
        if kind.upper() in _OPENINFERENCE_MODEL_KINDS:
            return span_type, True
    operation = attributes.get(GENAI_OPERATION)
    if isinstance(operation, str) and operation:
        operation = operation.lower()
        if span_type is None:
            span_type = operation
        if operation not in _GENAI_NON_MODEL_OPERATIONS:
            return span_type, True
    return span_type, False


def _first_text(
    attributes: Mapping[str, Any], keys: tuple[str, ...], present: frozenset[str]
) -> str | None:
    for key in keys:
        if key not in present:
            continue
        value = attributes[key]
        if isinstance(value, str) and value:
            return value
    return None


_TYPE_KEYS: Final = frozenset({AG_TYPE, OPENINFERENCE_KIND, GENAI_OPERATION})
# Most spans carry only a type (a tool, a chain): their Usage is shared, keyed by the
# type values. Bounded so that odd values cannot grow it without end.
_TYPE_ONLY_CACHE: dict[tuple[Any, Any, Any], Usage] = {}
_TYPE_ONLY_CACHE_SIZE: Final = 1024


def _type_only_usage(attributes: Mapping[str, Any]) -> Usage:
    key = (
        attributes.get(AG_TYPE),
        attributes.get(OPENINFERENCE_KIND),
        attributes.get(GENAI_OPERATION),
    )
    hashable = True
    try:
        cached = _TYPE_ONLY_CACHE.get(key)
    except TypeError:  # an unhashable value (a list): read it, do not cache it
        cached, hashable = None, False
    if cached is None:
        span_type, is_model_call = _span_type(attributes)
        cached = Usage(span_type=span_type, is_model_call=is_model_call)
        if hashable and len(_TYPE_ONLY_CACHE) < _TYPE_ONLY_CACHE_SIZE:
            _TYPE_ONLY_CACHE[key] = cached
    return cached


def shorten(text: str, limit: int) -> str:
    """`text` cut to at most `limit` characters, the last one "…" when cut."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _shown(value: Any, limit: int = 60) -> str:
    """A bad value as a warning quotes it: its repr, shortened."""
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return shorten(text, limit)


def _model_in_parameters(parameters: Any) -> str | None:
    """The model named in OpenInference's `llm.invocation_parameters` (a JSON object)."""
    if not isinstance(parameters, str) or len(parameters) > 100_000:
        return None
    try:
        decoded = json.loads(parameters)
    except ValueError:
        return None
    if not isinstance(decoded, dict):
        return None
    for key in ("model", "model_name"):
        value = decoded.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def read_usage(attributes: Mapping[str, Any] | None) -> Usage:
    """Read a span's own usage from its attributes (rollup.md, "Where usage is read from").

    >>> read_usage({"gen_ai.usage.input_tokens": 10, "gen_ai.request.model": "gpt-4o"})
    ... # doctest: +ELLIPSIS
    Usage(input_tokens=10, ..., model='gpt-4o', ...)
    """
    if not attributes:
        return EMPTY_USAGE
    # One pass over the span's keys; every later test is a lookup in this small set.
    present = USAGE_KEYS.intersection(attributes)
    if not present:
        return EMPTY_USAGE
    if present <= _TYPE_KEYS:
        return _type_only_usage(attributes)
    warnings: list[str] = []
    counts: dict[str, int | None] = {}
    for field, keys in _TOKEN_KEYS.items():
        count: int | None = None
        for key in keys:
            if key not in present:
                continue
            raw = attributes[key]
            count = parse_token_count(raw)
            if count is None:
                warnings.append(f"ignored {key}={_shown(raw)}: not a token count (0 to 2**63 - 1)")
                continue
            break
        counts[field] = count
    cost: Decimal | None = None
    for key in _COST_KEYS:
        if key not in present:
            continue
        raw = attributes[key]
        cost = parse_cost(raw)
        if cost is None:
            warnings.append(f"ignored {key}={_shown(raw)}: not a non-negative cost")
            continue
        break
    span_type, is_model_call = _span_type(attributes)
    model = _first_text(attributes, _MODEL_KEYS, present)
    request_model = _first_text(attributes, _REQUEST_MODEL_KEYS, present)
    if OPENINFERENCE_INVOCATION_PARAMETERS in present and (model is None or request_model is None):
        # OpenInference names the requested model only inside the call's parameters; a
        # call that failed before a response has no other model name (rule 14).
        asked = _model_in_parameters(attributes[OPENINFERENCE_INVOCATION_PARAMETERS])
        model = model or asked
        request_model = request_model or asked
    return Usage(
        input_tokens=counts["input_tokens"],
        output_tokens=counts["output_tokens"],
        total_tokens=counts["total_tokens"],
        cache_read_tokens=counts["cache_read_tokens"],
        cache_write_tokens=counts["cache_write_tokens"],
        reasoning_tokens=counts["reasoning_tokens"],
        cost=cost,
        model=model,
        request_model=request_model if request_model != model else None,
        provider=_first_text(attributes, _PROVIDER_KEYS, present),
        span_type=span_type,
        is_model_call=is_model_call,
        warnings=tuple(warnings),
    )


def usage_attributes(
    *,
    model: str | None = None,
    provider: str | None = None,
    input_tokens: Any = None,
    output_tokens: Any = None,
    total_tokens: Any = None,
    cache_read_tokens: Any = None,
    cache_write_tokens: Any = None,
    reasoning_tokens: Any = None,
    cost: Any = None,
) -> dict[str, Any]:
    """The attributes, in Agenta's keys, that record the given usage on a span.

    Values are written as given when OpenTelemetry can carry them, so that a bad value
    shows up as a warning on the span instead of vanishing.
    """
    pairs: tuple[tuple[str, Any], ...] = (
        (AG_MODEL, model),
        (AG_PROVIDER, provider),
        (AG_INPUT_TOKENS, input_tokens),
        (AG_OUTPUT_TOKENS, output_tokens),
        (AG_TOTAL_TOKENS, total_tokens),
        (AG_CACHE_READ_TOKENS, cache_read_tokens),
        (GENAI_CACHE_WRITE_TOKENS, cache_write_tokens),
        (AG_REASONING_TOKENS, reasoning_tokens),
        (AG_COST, cost),
    )
    attributes: dict[str, Any] = {}
    for key, value in pairs:
        if value is None:
            continue
        if type(value) not in _ATTRIBUTE_TYPES:
            # OpenTelemetry carries str, bool, int and float: numpy numbers become those;
            # a Decimal cost travels as a float (what Agenta's backend reads), exact to 17
            # significant digits; anything else as its repr, for the span to warn about.
            if isinstance(value, numbers.Integral):
                value = int(value)
            elif isinstance(value, Decimal | numbers.Real):
                value = float(value)
            elif not isinstance(value, str):
                value = repr(value)
        attributes[key] = value
    return attributes


_ATTRIBUTE_TYPES: Final = frozenset({str, int, float, bool})
