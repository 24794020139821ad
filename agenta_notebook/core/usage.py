"""Read one `Usage` record from a span's attributes, whatever vocabulary wrote them.

Three vocabularies are understood (first present wins, per field): Agenta's wire keys
(which this package writes), the OpenTelemetry GenAI conventions, and OpenInference.
Bad values never raise: they are dropped for that field and become a warning.
"""

from __future__ import annotations

import functools
import json
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Final

from agenta_notebook.core.fields import FIGURE, STATED, stated_mask, stated_value
from agenta_notebook.core.frozen import fast_constructor

# --- Keys this package writes (Agenta's vocabulary) ------------------------------------
# The keys of the figures (tokens, cost) are declared with their figure in `fields.py`.
AG_TYPE: Final = "ag.type.node"
#: Where Agenta records a span's inputs and outputs (flattened below these keys), and
#: the prefix of a value that is JSON text.
AG_INPUTS: Final = "ag.data.inputs"
AG_OUTPUTS: Final = "ag.data.outputs"
AG_JSON_PREFIX: Final = "@ag.type=json:"
AG_INPUT_TOKENS: Final = FIGURE["input_tokens"].keys[0]
AG_OUTPUT_TOKENS: Final = FIGURE["output_tokens"].keys[0]
AG_COST: Final = FIGURE["cost"].keys[0]
AG_MODEL: Final = "ag.meta.response.model"
AG_REQUEST_MODEL: Final = "ag.meta.request.model"
AG_PROVIDER: Final = "ag.meta.system"

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
    [key for figure in STATED for key in figure.keys]
    + list(_MODEL_KEYS)
    + list(_PROVIDER_KEYS)
    + [AG_TYPE, OPENINFERENCE_KIND, GENAI_OPERATION, OPENINFERENCE_INVOCATION_PARAMETERS]
)


@dataclass(frozen=True, slots=True)
class Usage:
    """What one span reports about itself. `None` means absent, never zero.

    The figures first: one field per figure a span can state (`fields.STATED`, in its
    order; tests/test_fields.py checks that they agree).
    """

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
        return stated_mask(self) != 0

    @property
    def reported_fields(self) -> int:
        """The figures this span states itself, as a mask of the `REPORTS_*` bits of
        `fields.py` (an input or output states the total too: it is their sum)."""
        return stated_mask(self)

    @property
    def effective_total_tokens(self) -> int | None:
        """Total as reported, else input + output (rule 5), else `None`."""
        total: int | None = stated_value(self, _TOTAL)
        return total


_TOTAL: Final = FIGURE["total_tokens"]

#: `Usage(...)`, built faster: `read_usage` makes one per span that reports something.
_new_usage: Final = fast_constructor(Usage)

EMPTY_USAGE: Final = Usage()

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
        return parse_token_count(_as_float(value))
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


def _as_float(value: numbers.Real) -> float | None:
    """A real number of another type (numpy, a fraction) as a float; `None` when it has
    none (a fraction past the largest float)."""
    try:
        return float(value)
    except (OverflowError, ValueError, TypeError):
        return None


def parse_cost(value: Any) -> Decimal | None:
    """A cost in dollars as an exact Decimal; `None` for anything that is not one.

    Floats go through their shortest repr, so 0.0066 stays Decimal("0.0066"). Nothing
    here depends on the caller's decimal context: constructing a Decimal is exact, and a
    malformed string is refused whether that context traps it (InvalidOperation) or not
    (NaN, not finite).
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
        return parse_cost(_as_float(value))
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


def _span_type(declared: Any, kind: Any, operation: Any) -> tuple[str | None, bool]:
    """(the span's type, is it a model call), from the values of `AG_TYPE`,
    `OPENINFERENCE_KIND` and `GENAI_OPERATION`. The type shown is the first vocabulary
    present (Agenta's, OpenInference's kind, the GenAI operation); the span is a model
    call when ANY of them says so (rollup.md, "model-call span")."""
    span_type: str | None = None
    if isinstance(declared, str) and declared:
        span_type = declared.lower()
        if span_type in MODEL_CALL_TYPES:
            return span_type, True
    if isinstance(kind, str) and kind:
        if span_type is None:
            span_type = kind.lower()
        if kind.upper() in _OPENINFERENCE_MODEL_KINDS:
            return span_type, True
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
#: The keys of `USAGE_KEYS` that are not a type: figures, model, provider, parameters.
_VALUE_KEYS: Final = USAGE_KEYS - _TYPE_KEYS


@functools.lru_cache(maxsize=1024)
def _type_only(declared: Any, kind: Any, operation: Any) -> Usage:
    """The `Usage` of a span that carries only a type (a tool, a chain: most spans), one
    per set of type values. Bounded, so that odd values cannot grow it without end."""
    span_type, is_model_call = _span_type(declared, kind, operation)
    if span_type is None and not is_model_call:
        return EMPTY_USAGE
    return Usage(span_type=span_type, is_model_call=is_model_call)


def type_only_usage(attributes: Mapping[str, Any]) -> Usage | None:
    """`read_usage(attributes)` of a plain `dict` that carries at most a type (most spans:
    a tool, a step), faster; `None` for any other `attributes`, and for values that
    raise when read (read those with `read_usage`, in `rollup.new_node`, which turns what
    they raise into a warning on the span)."""
    if type(attributes) is not dict:
        return None
    if not attributes:
        return EMPTY_USAGE
    try:
        return _type_only_usage(attributes) if _VALUE_KEYS.isdisjoint(attributes) else None
    except Exception:  # a value that misbehaves (a str subclass): `read_usage` warns of it
        return None


def _type_only_usage(attributes: Mapping[str, Any]) -> Usage:
    declared = attributes.get(AG_TYPE)
    kind = attributes.get(OPENINFERENCE_KIND)
    operation = attributes.get(GENAI_OPERATION)
    try:
        return _type_only(declared, kind, operation)
    except TypeError:  # an unhashable value (a list) is no key: read it, do not keep it
        span_type, is_model_call = _span_type(declared, kind, operation)
        return Usage(span_type=span_type, is_model_call=is_model_call)


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
    except (ValueError, RecursionError):  # not JSON, or nested past the parser's depth
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
    if _VALUE_KEYS.isdisjoint(attributes):
        # At most a type (most spans: a tool, a step). This test makes no set, so it
        # costs half the intersection below.
        return _type_only_usage(attributes)
    # One pass over the span's keys; every later test is a lookup in this small set.
    present = USAGE_KEYS.intersection(attributes)
    warnings: list[str] = []
    figures: list[Any] = []  # in the order of `Usage`'s first fields (`fields.STATED`)
    for keys, key_set, parse, problem in _READ:
        value = None
        if not key_set.isdisjoint(present):
            for key in keys:
                if key not in present:
                    continue
                raw = attributes[key]
                value = parse(raw)
                if value is None:
                    warnings.append(f"ignored {key}={_shown(raw)}: {problem}")
                    continue
                break
        figures.append(value)
    span_type, is_model_call = _span_type(
        attributes.get(AG_TYPE), attributes.get(OPENINFERENCE_KIND), attributes.get(GENAI_OPERATION)
    )
    model = _first_text(attributes, _MODEL_KEYS, present)
    request_model = _first_text(attributes, _REQUEST_MODEL_KEYS, present)
    if OPENINFERENCE_INVOCATION_PARAMETERS in present and (model is None or request_model is None):
        # OpenInference names the requested model only inside the call's parameters; a
        # call that failed before a response has no other model name (rule 14).
        asked = _model_in_parameters(attributes[OPENINFERENCE_INVOCATION_PARAMETERS])
        model = model or asked
        request_model = request_model or asked
    # Positional: `Usage`'s first fields are the stated figures, in order (test_fields
    # checks it), which mypy cannot know of a list; a keyword dict costs 1 us a span.
    return _new_usage(
        *figures,
        model=model,
        request_model=request_model if request_model != model else None,
        provider=_first_text(attributes, _PROVIDER_KEYS, present),
        span_type=span_type,
        is_model_call=is_model_call,
        warnings=tuple(warnings),
    )


#: How each kind of figure a span states is read, and what a value that cannot be one is.
_PARSERS: Final[Mapping[str, tuple[Callable[[Any], Any], str]]] = MappingProxyType(
    {
        "tokens": (parse_token_count, "not a token count (0 to 2**63 - 1)"),
        "money": (parse_cost, "not a non-negative cost"),
    }
)
#: (its keys in order of preference and as a set, parser, why a value is refused), per
#: figure a span states, in the order of `Figures` and of `Usage`'s first fields.
_READ: Final = tuple(
    (figure.keys, frozenset(figure.keys), *_PARSERS[figure.kind]) for figure in STATED
)
#: (figure, the key this package writes it under: its first, Agenta's where it has one)
_WRITTEN: Final = tuple((figure.name, figure.keys[0]) for figure in STATED)
_STATED_NAMES: Final = frozenset(figure.name for figure in STATED)


def usage_attributes(
    *, model: str | None = None, provider: str | None = None, **figures: Any
) -> dict[str, Any]:
    """The attributes, in Agenta's keys, that record the given usage on a span.

    `figures` are figures a span states, by name (`input_tokens=...`, `cost=...`: those
    of `fields.STATED`). See `figure_attributes`.
    """
    if not _STATED_NAMES.issuperset(figures):
        unknown = sorted(set(figures) - _STATED_NAMES)
        raise TypeError(f"not a figure that a span states: {', '.join(unknown)}")
    return figure_attributes(figures, model=model, provider=provider)


def figure_attributes(
    figures: Mapping[str, Any], *, model: str | None = None, provider: str | None = None
) -> dict[str, Any]:
    """The attributes, in Agenta's keys, that record `figures` (figure name -> value,
    `None` left out; the names are those of `fields.STATED`, others are not read) and
    the model and provider on a span. `record_usage` calls it once per model call.

    Values are written as given when OpenTelemetry can carry them, so that a bad value
    shows up as a warning on the span instead of vanishing.
    """
    attributes: dict[str, Any] = {}
    if model is not None:
        attributes[AG_MODEL] = model if type(model) in _ATTRIBUTE_TYPES else _attribute_value(model)
    if provider is not None:
        attributes[AG_PROVIDER] = (
            provider if type(provider) in _ATTRIBUTE_TYPES else _attribute_value(provider)
        )
    for name, key in _WRITTEN:
        value = figures.get(name)
        if value is not None:
            attributes[key] = value if type(value) in _ATTRIBUTE_TYPES else _attribute_value(value)
    return attributes


def _attribute_value(value: Any) -> Any:
    """`value`, of a type OpenTelemetry does not carry, as one it does (str, bool, int,
    float): numpy numbers become those; a Decimal cost travels as a float (what Agenta's
    backend reads), exact to 17 significant digits; anything else as its repr, for the
    span to warn about."""
    if isinstance(value, numbers.Integral):
        return int(value)
    if isinstance(value, Decimal | numbers.Real):
        return float(value)
    if not isinstance(value, str):
        return repr(value)
    return value


_ATTRIBUTE_TYPES: Final = frozenset({str, int, float, bool})
