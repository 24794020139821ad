"""The keys other backends read, added to the spans we export (OTLP export, saved files).

Our own spans carry Agenta's keys only (`ag.type.node`, `ag.metrics.unit.tokens.*`, ...):
Phoenix, Langfuse or any backend that reads the OpenTelemetry GenAI conventions or
OpenInference would show them as spans of unknown kind with no tokens. So, when a span
leaves the notebook, it gets, next to the keys it has, the GenAI conventions' and
OpenInference's keys for:

- kind: `openinference.span.kind` (LLM, EMBEDDING, RERANKER, AGENT, TOOL, RETRIEVER,
  CHAIN, ...) and, on model calls, `gen_ai.operation.name` (chat, embeddings, ...);
- model and provider: `gen_ai.request.model`, `gen_ai.response.model`, `llm.model_name`,
  `gen_ai.provider.name`, `llm.provider`;
- usage: `gen_ai.usage.*` and `llm.token_count.*` (and `llm.cost.total` for a cost the
  span reported), only for the fields the roll-up counts at that span. A claim (a span
  whose descendants report the same field) or a call recorded twice gets none, so a
  receiver that sums its spans, or sums a span's descendants, gets our totals.

The keys are computed from the built tree, never on the span's hot path, and a key the
span already has is never overwritten. The added keys never change what this package
reads back from the span: each group of usage keys is kept only if `read_usage` reads
the same figures with it as without it (see `receiver_attributes`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, Final

from agenta_notebook.core.fields import STATED
from agenta_notebook.core.rollup import SpanNode
from agenta_notebook.core.usage import GENAI_OPERATION, OPENINFERENCE_KIND, Usage, read_usage

# --- The receivers' keys ---------------------------------------------------------------
GENAI_REQUEST_MODEL: Final = "gen_ai.request.model"
GENAI_RESPONSE_MODEL: Final = "gen_ai.response.model"
GENAI_PROVIDER: Final = "gen_ai.provider.name"
OPENINFERENCE_MODEL: Final = "llm.model_name"
OPENINFERENCE_PROVIDER: Final = "llm.provider"

#: Keys that name the model a call answered with (not only the one it asked for).
_RESPONSE_MODEL_KEYS: Final = (
    "ag.meta.response.model",
    GENAI_RESPONSE_MODEL,
    OPENINFERENCE_MODEL,
)

#: Figure -> (GenAI conventions key, OpenInference key), for the figures a span states
#: (declared with each figure in `fields.py`); None where a vocabulary has no key for it
#: (the GenAI conventions have no total, nor a cost).
USAGE_KEYS: Final[Mapping[str, tuple[str | None, str | None]]] = MappingProxyType(
    {figure.name: figure.export for figure in STATED if figure.export != (None, None)}
)
#: The token counts among them, added wherever this span counts them; money only where
#: the span stated it (a price computed here is not the span's to tell).
_TOKEN_KEYS: Final = tuple(
    (figure.name, *figure.export) for figure in STATED if figure.kind == "tokens"
)
_MONEY_KEYS: Final = tuple(
    (figure.name, *figure.export) for figure in STATED if figure.kind == "money"
)

#: Every key `receiver_attributes` may add.
RECEIVER_KEYS: Final = frozenset(
    {
        OPENINFERENCE_KIND,
        GENAI_OPERATION,
        GENAI_REQUEST_MODEL,
        GENAI_RESPONSE_MODEL,
        GENAI_PROVIDER,
        OPENINFERENCE_MODEL,
        OPENINFERENCE_PROVIDER,
    }
    | {key for keys in USAGE_KEYS.values() for key in keys if key is not None}
)

#: A span's type (ours and Agenta's `ag.type.node`, OpenInference's kind in lower case,
#: a GenAI operation) -> OpenInference span kind. A declared type not listed is a CHAIN,
#: OpenInference's kind for a general step; a model call not listed is an LLM.
_OPENINFERENCE_KINDS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "llm": "LLM",
        "chat": "LLM",
        "completion": "LLM",
        "text_completion": "LLM",
        "generate_content": "LLM",
        "embedding": "EMBEDDING",
        "embeddings": "EMBEDDING",
        "rerank": "RERANKER",
        "reranker": "RERANKER",
        "agent": "AGENT",
        "invoke_agent": "AGENT",
        "create_agent": "AGENT",
        "tool": "TOOL",
        "execute_tool": "TOOL",
        "retriever": "RETRIEVER",
        "query": "RETRIEVER",
        "guardrail": "GUARDRAIL",
        "evaluator": "EVALUATOR",
        "prompt": "PROMPT",
        "chain": "CHAIN",
        "workflow": "CHAIN",
        "task": "CHAIN",
    }
)

#: A model call's type -> GenAI operation name. Types not listed (rerank: the GenAI
#: conventions have no operation for it) get none.
_GENAI_OPERATIONS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "llm": "chat",
        "chat": "chat",
        "completion": "text_completion",
        "embedding": "embeddings",
    }
)


def openinference_kind(span_type: str | None, is_model_call: bool) -> str | None:
    """The OpenInference span kind for a span of this type (None: no type, no kind).

    >>> openinference_kind("llm", True), openinference_kind("agent", False)
    ('LLM', 'AGENT')
    >>> openinference_kind("my step", False), openinference_kind(None, False)
    ('CHAIN', None)
    """
    if span_type is None:
        return "LLM" if is_model_call else None
    kind = _OPENINFERENCE_KINDS.get(span_type.lower())
    if kind is not None:
        # A type that any vocabulary calls a model call stays one (rollup.md).
        if is_model_call and kind not in ("LLM", "EMBEDDING", "RERANKER"):
            return "LLM"
        return kind
    return "LLM" if is_model_call else "CHAIN"


def genai_operation(span_type: str | None) -> str:
    """The GenAI operation name of a model call of this type ("chat" by default)."""
    if span_type is None:
        return "chat"
    lowered = span_type.lower()
    if lowered in ("rerank", "reranker"):
        return ""
    return _GENAI_OPERATIONS.get(lowered, "chat")


def _text(attributes: Mapping[str, Any], keys: tuple[str, ...]) -> str | None:
    for key in keys:
        value = attributes.get(key)
        if isinstance(value, str) and value:
            return value
    return None


def _cost_value(cost: Decimal) -> float | str:
    """A cost as an attribute: a float when it reads back as the same Decimal."""
    as_float = float(cost)
    return as_float if Decimal(repr(as_float)) == cost else str(cost)


#: The fields of `Usage` that must read the same once keys are added. Not the shown
#: type (a GenAI-only span that gets an OpenInference kind is then shown by that kind),
#: and the total as counted: a total written out equals input + output (rule 5).
_COMPARED_FIELDS: Final = tuple(
    field.name
    for field in dataclasses.fields(Usage)
    if field.name not in ("span_type", "total_tokens")
)


def _readable(usage: Usage) -> tuple[Any, ...]:
    return (usage.effective_total_tokens, *[getattr(usage, name) for name in _COMPARED_FIELDS])


def receiver_attributes(node: SpanNode) -> dict[str, Any]:
    """The keys to add to `node`'s span when it is exported; `{}` when there are none.

    Never a key the span already has. Usage keys only for the fields counted at this
    node (`node.own`), and not on a call recorded twice. Each group of keys (kind and
    model, OpenInference usage, GenAI usage) is kept only if this package still reads
    the same usage from the span with it, so a source's own keys, read first, keep
    their meaning whatever their token convention.
    """
    if node.synthetic:
        return {}
    attributes = node.attributes
    usage = node.usage
    is_model_call = usage.is_model_call
    span_type = usage.span_type
    own = node.own
    # `own` holds exactly the figures counted at this span: none on a claim, a wrapper or
    # a call recorded twice (the roll-up leaves those empty), so it alone decides.
    counted = [
        (value, genai_key, openinference_key)
        for name, genai_key, openinference_key in _TOKEN_KEYS
        if (value := getattr(own, name)) is not None
    ]
    for name, genai_key, openinference_key in _MONEY_KEYS:
        value = getattr(own, name)
        if value is not None and getattr(usage, name) is not None:
            counted.append((_cost_value(value), genai_key, openinference_key))

    described: dict[str, Any] = {}
    _add(described, attributes, OPENINFERENCE_KIND, openinference_kind(span_type, is_model_call))
    if is_model_call:
        _add(described, attributes, GENAI_OPERATION, genai_operation(span_type))
    if is_model_call or counted:
        model = usage.model
        if model:
            _add(described, attributes, GENAI_REQUEST_MODEL, usage.request_model or model)
            if _text(attributes, _RESPONSE_MODEL_KEYS) is not None:
                _add(described, attributes, GENAI_RESPONSE_MODEL, model)
            _add(described, attributes, OPENINFERENCE_MODEL, model)
        if usage.provider:
            _add(described, attributes, GENAI_PROVIDER, usage.provider)
            _add(described, attributes, OPENINFERENCE_PROVIDER, usage.provider)

    genai: dict[str, Any] = {}
    openinference: dict[str, Any] = {}
    for value, genai_key, openinference_key in counted:
        _add(genai, attributes, genai_key, value)
        _add(openinference, attributes, openinference_key, value)

    if not (described or genai or openinference):
        return {}
    before = _readable(usage)  # the tree read it from these very attributes
    extra = {**described, **genai, **openinference}
    if _readable(read_usage({**attributes, **extra})) == before:
        return extra  # the usual case: one read with every key added
    extra = {}
    for group in (described, openinference, genai):
        if not group:
            continue
        candidate = {**extra, **group}
        if _readable(read_usage({**attributes, **candidate})) == before:
            extra = candidate
    return extra


def _add(into: dict[str, Any], attributes: Mapping[str, Any], key: str | None, value: Any) -> None:
    if key is not None and value is not None and value != "" and key not in attributes:
        into[key] = value


def exported_attributes(node: SpanNode) -> Mapping[str, Any]:
    """The span's attributes as exported: its own, then the receivers' keys."""
    extra = receiver_attributes(node)
    if not extra:
        return node.attributes
    return {**node.attributes, **extra}
