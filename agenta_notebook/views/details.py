"""The details pane of one span: what the widget shows below a clicked row.

Every string from a span goes through `escape` (see `views/html.py`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

from agenta_notebook.core.fields import FIGURES, Figure
from agenta_notebook.core.rollup import Figures, SpanEvent, SpanNode
from agenta_notebook.views.html import (
    MAX_VALUE,
    escape,
    format_cost,
    format_duration,
    format_figure,
    format_tokens,
    markers_html,
    shown_where_present,
)

MAX_ATTRIBUTES: Final = 200
MAX_EVENTS: Final = 50
MAX_STACKTRACE: Final = 20_000


def figures_table_html(own: Figures, subtotal: Figures, table: Sequence[Figure] = FIGURES) -> str:
    """The details pane's figures: one row per figure, own (counted) and subtotal."""
    rows = []
    for figure in table:
        own_value, subtotal_value = getattr(own, figure.name), getattr(subtotal, figure.name)
        if own_value is None and subtotal_value is None and shown_where_present(figure):
            continue
        rows.append(
            f"<tr><th>{escape(figure.label)}</th><td>{escape(format_figure(figure, own_value))}"
            f"</td><td>{escape(format_figure(figure, subtotal_value))}</td></tr>"
        )
    return (
        '<table class="agn-figures"><thead><tr><th></th><th>own (counted)</th>'
        f"<th>subtotal</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
    )


def _value_text(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, (tuple, list)):
        return "[" + ", ".join(repr(item) for item in value) + "]"
    return repr(value)


def _attributes_table(attributes: Mapping[str, Any], css: str = "agn-attrs") -> str:
    items = sorted(attributes.items(), key=lambda item: str(item[0]))
    rows = "".join(
        f"<tr><th>{escape(key, 200)}</th><td>{escape(_value_text(value), MAX_VALUE)}</td></tr>"
        for key, value in items[:MAX_ATTRIBUTES]
    )
    if len(items) > MAX_ATTRIBUTES:
        rows += f'<tr><td colspan="2">… {len(items) - MAX_ATTRIBUTES:,} more</td></tr>'
    return f'<table class="{css}">{rows}</table>' if rows else "<i>none</i>"


def _exception_html(event: SpanEvent) -> str:
    attributes = event.attributes
    kind = attributes.get("exception.type", "exception")
    message = attributes.get("exception.message", "")
    stacktrace = attributes.get("exception.stacktrace")
    text = f"<b>{escape(kind, 300)}</b>: {escape(message, MAX_VALUE)}"
    if stacktrace:
        text += f'<pre class="agn-trace">{escape(stacktrace, MAX_STACKTRACE)}</pre>'
    return f'<div class="agn-exception">{text}</div>'


def details_html(node: SpanNode) -> str:
    """Everything about one span: figures own vs subtotal, pricing, warnings, exception,
    events and attributes (escaped)."""
    record = node.record
    parts = [
        f'<div class="agn-d-title">{escape(node.name, 400)}'
        + (f" <i>{escape(node.type)}</i>" if node.type else "")
        + "</div>"
    ]
    status = record.status + (f": {record.status_message}" if record.status_message else "")
    duration = "running" if node.running else format_duration(node.duration_ms)
    parts.append(
        f'<div class="agn-d-meta">status {escape(status, 600)} · duration {duration} · '
        f"span {record.span_id:016x} · role {escape(node.role)}"
        + (f" · {escape(record.kind)}" if record.kind != "INTERNAL" else "")
        + "</div>"
    )
    marks = markers_html(node)
    if marks:
        parts.append(f'<div class="agn-d-marks">{marks}</div>')
    parts.append(figures_table_html(node.own, node.subtotal))
    usage = node.usage
    pricing = [
        f"model {escape(usage.model or '—', 300)}",
        f"provider {escape(usage.provider or '—', 300)}",
        f"price source {escape(node.priced.source)}",
    ]
    if node.priced.matched_model:
        pricing.append(f"matched model {escape(node.priced.matched_model, 300)}")
    if node.role == "claim not counted":
        pricing.append(
            f"claims {format_tokens(usage.effective_total_tokens)} tokens / "
            f"{format_cost(usage.cost)} (not added: the spans below report usage)"
        )
    parts.append(f'<div class="agn-d-pricing">{" · ".join(pricing)}</div>')
    if node.warnings:
        items = "".join(f"<li>{escape(w, MAX_VALUE)}</li>" for w in node.warnings)
        parts.append(f'<div class="agn-d-warnings"><b>warnings</b><ul>{items}</ul></div>')
    exceptions = [e for e in record.events if e.name == "exception"]
    for event in exceptions[:5]:
        parts.append(_exception_html(event))
    if record.events:
        items = "".join(
            f"<li><b>{escape(e.name, 300)}</b> at +"
            f"{format_duration((e.timestamp_ns - record.start_time_ns) / 1e6)}"
            + (
                _attributes_table(e.attributes, "agn-attrs agn-event-attrs")
                if e.attributes and e.name != "exception"
                else ""
            )
            + "</li>"
            for e in record.events[:MAX_EVENTS]
        )
        more = (
            f"<li>… {len(record.events) - MAX_EVENTS:,} more events</li>"
            if len(record.events) > MAX_EVENTS
            else ""
        )
        parts.append(f'<div class="agn-d-events"><b>events</b><ul>{items}{more}</ul></div>')
    parts.append(
        f'<div class="agn-d-attrs"><b>attributes</b>{_attributes_table(record.attributes)}</div>'
    )
    return f'<div class="agn-details">{"".join(parts)}</div>'
