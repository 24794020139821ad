"""Static renderings of a trace: the `text/html` twin of the widget and a `text/plain` summary.

Every figure comes from the core (`node.subtotal`, `node.own`, `node.priced`,
`trace.summary()`); nothing here adds numbers up. Which figures a row, a tooltip or the
details pane shows, and with which labels, comes from the table of figures
(`core/fields.py`). Everything that comes from a span (names, types, attribute values,
exception messages) goes through `escape`, because notebook front ends insert HTML
outputs, and ipywidgets' `HTML` values, as raw markup.

>>> from agenta_notebook.core.rollup import SpanRecord
>>> from agenta_notebook.live import Trace
>>> trace = Trace(1, "demo", root_span_id=1, records=[SpanRecord(1, 1, None, "<b>", 0, 10)])
>>> "&lt;b&gt;" in static_html(trace)
True
>>> text_summary(trace)
"Trace 'demo': 1 span · 0 model calls · tokens — · cost —"
"""

from __future__ import annotations

import html as _html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from types import MappingProxyType
from typing import Any, Final

from agenta_notebook.core.fields import COST_CONTEXT, FIGURE, FIGURES, Figure, Kind
from agenta_notebook.core.rollup import Figures, ModelBreakdown, SpanNode, TraceSummary
from agenta_notebook.core.usage import shorten
from agenta_notebook.live import Trace

#: Longest span-derived string put into a row (names, types, messages).
MAX_LABEL: Final = 160
#: Longest attribute value shown in a details pane.
MAX_VALUE: Final = 2_000
#: The static HTML shows at most this many spans, then says how many more there are.
STATIC_MAX_NODES: Final = 500
#: ... and stops adding spans once it is this large (bytes), well under 1 MB.
STATIC_MAX_BYTES: Final = 700_000
#: Static `<details>` open by default while the tree shown has at most this many rows.
STATIC_OPEN_BUDGET: Final = 60


#: Longest `text/plain` summary, whatever the names in it.
MAX_TEXT: Final = 4_000

#: What no output shows raw: control characters (C0 but tab and newline, DEL, C1), bidi
#: embeddings, overrides and isolates, and surrogates (a lone one cannot be encoded as
#: UTF-8, so the message carrying it would fail to send).
_UNSAFE: Final = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
#: ... and, on one line (labels, tooltips, `text/plain` names), tab and newline too.
_UNSAFE_LINE: Final = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(value: object, limit: int | None = MAX_LABEL, *, one_line: bool = True) -> str:
    """`value` as text any output can carry and show as it is: at most `limit` characters,
    and every control character, bidi override or surrogate written as its escape
    (`\\x1b`, `\\u202e`, `\\ud800`). Every string from a span goes through it, in every
    output (`text/plain`, HTML via `escape`, widget labels and tooltips).

    >>> safe_text("a\\x1b[2J\\u202eb\\ud800"), safe_text("x" * 9, 5), safe_text("a\\nb")
    ('a\\\\x1b[2J\\\\u202eb\\\\ud800', 'xxxx…', 'a\\\\x0ab')
    """
    try:
        text = value if isinstance(value, str) else str(value)
    except Exception:  # a value whose str() fails still shows as something
        text = f"<{type(value).__name__}>"
    if limit is not None:
        text = shorten(text, limit)
    text = (_UNSAFE_LINE if one_line else _UNSAFE).sub(_escaped, text)
    if limit is not None:
        text = shorten(text, limit)
    return text


def escape(value: object, limit: int | None = MAX_LABEL) -> str:
    """`value` as text that HTML shows verbatim (`safe_text`), cut to `limit` characters."""
    return _html.escape(safe_text(value, limit, one_line=False), quote=True)


# -- numbers -------------------------------------------------------------------------------


def format_cost(cost: Decimal | None) -> str:
    """A dollar amount for display; `None` (absent) is "—", never "$0".

    >>> format_cost(None), format_cost(Decimal(0)), format_cost(Decimal("0.012345"))
    ('—', '$0', '$0.0123')
    >>> format_cost(Decimal("1234.5")), format_cost(Decimal("0.0000123456"))
    ('$1,234.50', '$0.0000123')
    >>> format_cost(Decimal("0.000027"))
    '$0.000027'
    """
    if cost is None:
        return "—"
    with localcontext(COST_CONTEXT):  # never the notebook's decimal context
        return _format_cost(cost)


def _format_cost(cost: Decimal) -> str:
    if cost == 0:
        return "$0"
    sign = "-" if cost < 0 else ""
    cost = abs(cost)
    if cost >= 1:
        return f"{sign}${cost:,.2f}"
    if cost >= Decimal("0.01"):
        return f"{sign}${cost:.4f}"
    places = min(-cost.adjusted() + 2, 12)
    shown = cost.quantize(Decimal(1).scaleb(-places))
    if shown == 0:
        return f"{sign}<$0.{'0' * 11}1"
    return f"{sign}${shown.normalize():f}"


def format_money(cost: Decimal | None, unpriced_calls: int) -> str:
    """Known cost plus unpriced calls: unpriced is not $0.

    >>> format_money(Decimal("0.0123"), 2), format_money(None, 1), format_money(None, 0)
    ('$0.0123 + 2 unpriced', '1 unpriced', '—')
    """
    if not unpriced_calls:
        return format_cost(cost)
    if cost is None:
        return f"{unpriced_calls:,} unpriced"
    return f"{format_cost(cost)} + {unpriced_calls:,} unpriced"


def format_tokens(tokens: int | None) -> str:
    """A token count with thousands separators, "—" when absent."""
    return "—" if tokens is None else f"{tokens:,}"


def format_duration(duration_ms: float | None) -> str:
    """Milliseconds as a short human duration, "—" when unknown (running).

    >>> [format_duration(ms) for ms in (0.4, 812.3, 1234, 125_000)]
    ['0.40 ms', '812 ms', '1.23 s', '2m 05s']
    """
    if duration_ms is None:
        return "—"
    if duration_ms < 1:
        return f"{duration_ms:.2f} ms"
    if duration_ms < 1000:
        return f"{duration_ms:.0f} ms"
    seconds = duration_ms / 1000
    if seconds < 60:
        return f"{seconds:.2f} s"
    minutes, rest = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m {rest:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def _plural(count: int, word: str) -> str:
    return f"{count:,} {word}" if count == 1 else f"{count:,} {word}s"


def format_figure(figure: Figure, value: Any) -> str:
    """One figure's value for display: "—" when absent, never "0" or "$0"."""
    if figure.kind == "money":
        return format_cost(value)
    return "—" if value is None else f"{value:,}"


def shown_where_present(figure: Figure) -> bool:
    """A part of another figure (cache tokens of the input) is shown only where a span
    has it; the others always, "—" when absent."""
    return figure.part_of is not None


def tokens_title(figures: Figures, table: Sequence[Figure] = FIGURES) -> str:
    """The token breakdown of `figures` as one line (for tooltips and details)."""
    parts = []
    for figure in table:
        if figure.kind != "tokens":
            continue
        value = getattr(figures, figure.name)
        if value is not None or not shown_where_present(figure):
            parts.append(f"{figure.short} {format_tokens(value)}")
    return ", ".join(parts)


# -- per span ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Marker:
    """A badge on a row: short label, longer explanation, CSS class."""

    label: str
    title: str
    css: str


def markers(node: SpanNode) -> list[Marker]:
    """The badges of one row: error, unpriced, roll-up mismatch, running, detached, a call
    recorded twice (rule 13), warnings."""
    found: list[Marker] = []
    twin = node.duplicate_of
    if node.is_error_origin:
        found.append(Marker("✖ error", node.record.status_message or "error", "agn-m-error"))
    elif node.is_error and twin is not None:
        found.append(Marker("✖", "the same failed call is counted at its twin", "agn-m-error-up"))
    elif node.is_error:
        found.append(Marker("✖", "error raised below and propagated here", "agn-m-error-up"))
    elif node.subtotal.errors:
        found.append(
            Marker(f"✖ {node.subtotal.errors:,} below", "errors in spans below", "agn-m-error-up")
        )
    unpriced = node.subtotal.unpriced_calls
    if unpriced:
        found.append(
            Marker(
                f"? {unpriced:,} unpriced",
                f"{_plural(unpriced, 'model call')} without a price: the cost is a lower bound",
                "agn-m-unpriced",
            )
        )
    if node.mismatch:
        found.append(Marker("≠ roll-up", node.mismatch, "agn-m-mismatch"))
    if node.running:
        found.append(Marker("⏳ running", "this span has not ended yet", "agn-m-running"))
    if node.detached:
        found.append(Marker("⤴ detached", "its parent span is not in this trace", "agn-m-detached"))
    if twin is not None:
        twin_note = next((w.message for w in node.span_warnings if w.kind == "recorded twice"), "")
        found.append(Marker("⧉ recorded twice", twin_note, "agn-m-twice"))
    # The other kinds have a badge of their own above.
    others = [w.message for w in node.span_warnings if w.kind == "ignored value"]
    if others:
        found.append(Marker(f"⚠ {len(others)}", "; ".join(others), "agn-m-warning"))
    return found


def markers_html(node: SpanNode) -> str:
    return " ".join(
        f'<span class="agn-m {m.css}" title="{escape(m.title, 600)}">{escape(m.label)}</span>'
        for m in markers(node)
    )


def money_cell(node: SpanNode, figure: Figure = FIGURE["cost"]) -> tuple[str, str | None]:
    """A money column (the cost): the subtotal with its unpriced calls, and the span's
    own when it differs from the subtotal."""
    subtotal, own = node.subtotal, node.own
    shown = format_money(getattr(subtotal, figure.name), subtotal.unpriced_calls)
    own_value = getattr(own, figure.name)
    if node.children and own_value is not None and own_value != getattr(subtotal, figure.name):
        return shown, f"own {format_money(own_value, own.unpriced_calls)}"
    return shown, None


#: The figures that are columns of the tree rows, after the duration (the widget's and
#: the static HTML's), in order.
ROW_FIGURES: Final = tuple(figure for figure in FIGURES if figure.column is not None)

#: How a kind of figure looks as a row column: its CSS class (widget), its width and its
#: unit (static HTML, which has no column heads).
_CELL_STYLES: Final[Mapping[Kind, tuple[str, str, str]]] = MappingProxyType(
    {
        "tokens": ("agn-tok", "7em", " tok"),
        "money": ("agn-cost", "9em", ""),
        "count": ("agn-num", "6em", ""),
    }
)


def figure_cell(node: SpanNode, figure: Figure) -> tuple[str, str | None, str | None]:
    """One figure column of a row, as plain text: the subtotal, its tooltip (a token
    breakdown), and the span's own figure where it differs (money)."""
    if figure.kind == "money":
        shown, own = money_cell(node, figure)
        return shown, None, own
    value = getattr(node.subtotal, figure.name)
    if figure.kind == "tokens":
        return format_tokens(value), tokens_title(node.subtotal), None
    return format_figure(figure, value), None, None


def column_heads_html() -> str:
    """The heads of the widget's row columns: duration, then `ROW_FIGURES`."""
    heads = "".join(
        f'<span class="agn-c {_CELL_STYLES[figure.kind][0]}">{escape(figure.column)}</span>'
        for figure in ROW_FIGURES
    )
    return f'<span class="agn-c agn-dur">duration</span>{heads}'


def label(node: SpanNode) -> str:
    """Name and type as plain text (`safe_text`: HTML callers still escape it)."""
    name = safe_text(node.name)
    return f"{name} · {safe_text(node.type)}" if node.type else name


def row_figures_html(node: SpanNode) -> str:
    """The figure columns of a widget row: duration, `ROW_FIGURES`, markers (escaped)."""
    duration = "…" if node.running else format_duration(node.duration_ms)
    cells = [f'<span class="agn-c agn-dur">{duration}</span>']
    for figure in ROW_FIGURES:
        shown, title, own = figure_cell(node, figure)
        title_html = f' title="{escape(title, None)}"' if title else ""
        own_html = f' <span class="agn-own">{escape(own)}</span>' if own else ""
        css = _CELL_STYLES[figure.kind][0]
        cells.append(f'<span class="agn-c {css}"{title_html}>{escape(shown)}{own_html}</span>')
    cells.append(f'<span class="agn-marks">{markers_html(node)}</span>')
    return "".join(cells)


# -- header --------------------------------------------------------------------------------


def totals_line(summary: TraceSummary) -> str:
    """The trace totals as HTML (escaped): cost, tokens, calls, duration, errors, spans."""
    totals = summary.totals
    duration = "running" if summary.duration_ms is None else format_duration(summary.duration_ms)
    parts = [
        f'<span class="agn-h-cost"><b>cost</b> '
        f"{escape(format_money(totals.cost, totals.unpriced_calls))}</span>",
        f"<b>tokens</b> {format_tokens(totals.total_tokens)} "
        f"(in {format_tokens(totals.input_tokens)} / out {format_tokens(totals.output_tokens)})",
        f"<b>model calls</b> {totals.model_calls:,}",
        f"<b>duration</b> {duration}",
        f"<b>errors</b> {totals.errors:,}",
        f"<b>spans</b> {summary.spans:,}"
        + (f" ({summary.running:,} running)" if summary.running else ""),
    ]
    if summary.warnings:
        parts.append(f"<b>warnings</b> {len(summary.warnings):,}")
    return " · ".join(parts)


def by_model_html(rows: Iterable[ModelBreakdown], limit: int = 12) -> str:
    """The per-model breakdown as a small table (escaped)."""
    rows = list(rows)
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{escape(row.model)}</td><td>{row.calls:,}</td>"
        f"<td>{format_tokens(row.input_tokens)}</td><td>{format_tokens(row.output_tokens)}</td>"
        f"<td>{format_tokens(row.total_tokens)}</td>"
        f"<td>{escape(format_money(row.cost, row.unpriced_calls))}</td></tr>"
        for row in rows[:limit]
    )
    more = (
        f'<tr><td colspan="6">… {len(rows) - limit:,} more models</td></tr>'
        if len(rows) > limit
        else ""
    )
    return (
        '<table class="agn-models"><thead><tr><th>model</th><th>calls</th><th>input</th>'
        "<th>output</th><th>total</th><th>cost</th></tr></thead>"
        f"<tbody>{body}{more}</tbody></table>"
    )


def header_html(summary: TraceSummary) -> str:
    """Trace name, totals and per-model breakdown (escaped)."""
    return (
        f'<div class="agn-header"><div class="agn-title">{escape(summary.name)}</div>'
        f'<div class="agn-totals">{totals_line(summary)}</div>'
        f"{by_model_html(summary.by_model)}</div>"
    )


# -- the static twin -----------------------------------------------------------------------

_COLUMN: Final = "display:inline-block;text-align:right;padding:0 0.4em;"
_NAME_STYLE: Final = (
    "display:inline-block;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;"
    "vertical-align:bottom;"
)
_INDENT: Final = "margin-left:1.5em"
_STATIC_STYLE: Final = (
    "<style>.agn-static summary,.agn-static .agn-leaf{font-family:monospace;"
    "white-space:nowrap}.agn-static .agn-m{margin-left:0.3em}"
    ".agn-static .agn-m-error{color:#c62828}.agn-static .agn-m-unpriced{color:#8a6d00}"
    ".agn-static .agn-models td,.agn-static .agn-models th{padding:0 0.5em}</style>"
)


def _static_row(node: SpanNode) -> str:
    duration = "…" if node.running else format_duration(node.duration_ms)
    name = escape(node.name)
    kind = f" <i>{escape(node.type)}</i>" if node.type else ""
    marks = " ".join(
        f'<span class="agn-m {m.css}" title="{escape(m.title, 300)}">{escape(m.label)}</span>'
        for m in markers(node)
    )
    cells = [
        f'<span style="{_NAME_STYLE}width:{max(8.0, 30 - 1.5 * min(node.depth, 14)):.1f}em">'
        f"{name}{kind}</span>"
        f'<span style="{_COLUMN}min-width:6em">{duration}</span>'
    ]
    for figure in ROW_FIGURES:
        shown, title, own = figure_cell(node, figure)
        _css, width, unit = _CELL_STYLES[figure.kind]
        title_html = f' title="{escape(title, None)}"' if title else ""
        own_text = f" ({escape(own)})" if own else ""
        cells.append(
            f'<span style="{_COLUMN}min-width:{width}"{title_html}>'
            f"{escape(shown)}{unit}{own_text}</span>"
        )
    cells.append(marks)
    return "".join(cells)


def open_depth(trace_nodes: Iterable[SpanNode], budget: int) -> int:
    """The deepest level to open so that at most `budget` rows show (at least the root)."""
    per_depth: dict[int, int] = {}
    for node in trace_nodes:
        per_depth[node.depth] = per_depth.get(node.depth, 0) + 1
    shown, depth = 0, 0
    for level in sorted(per_depth):
        shown += per_depth[level]
        if shown > budget:
            break
        depth = level
    return max(depth, 1)


def static_html(
    trace: Trace, max_nodes: int = STATIC_MAX_NODES, max_bytes: int = STATIC_MAX_BYTES
) -> str:
    """The trace as nested `<details>`: header, then one line per span with the same
    columns and subtotals as the widget. At most `max_nodes` spans are written (pre-order),
    each cut subtree saying how many spans it leaves out."""
    tree = trace.tree
    summary = trace.summary()
    open_below = open_depth(tree.nodes, STATIC_OPEN_BUDGET)
    out: list[str] = [
        '<div class="agn-static">',
        _STATIC_STYLE,
        header_html(summary),
        '<div style="font-family:monospace;font-size:12px;white-space:nowrap">',
    ]
    size = sum(len(part) for part in out)
    written = 0
    # The stack holds nodes to write and closing tags (str) to emit after a subtree.
    stack: list[SpanNode | str] = [tree.root]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            out.append(item)
            size += len(item)
            continue
        if written >= max_nodes or size >= max_bytes:
            # Everything left on the stack at this level and below is cut: count it once.
            pending = [sum(1 for _ in item.walk())]
            while stack and not isinstance(stack[-1], str):
                following = stack.pop()
                assert not isinstance(following, str)
                pending.append(sum(1 for _ in following.walk()))
            line = f'<div class="agn-more">… {sum(pending):,} more spans</div>'
            out.append(line)
            size += len(line)
            continue
        written += 1
        row = _static_row(item)
        # Deep levels stop indenting so that the columns stay on screen.
        indent = _INDENT if item.parent is not None and item.depth <= 14 else ""
        if item.children:
            opened = " open" if item.depth < open_below else ""
            piece = f'<details{opened} style="{indent}"><summary>{row}</summary>'
            stack.append("</details>")
            stack.extend(reversed(item.children))
        else:
            piece = f'<div class="agn-leaf" style="{indent};padding-left:1.1em">{row}</div>'
        out.append(piece)
        size += len(piece)
    out.append("</div></div>")
    return "".join(out)


# -- text/plain ----------------------------------------------------------------------------


def _quoted(name: str) -> str:
    """The trace's name as `repr` quotes it (what the summary always showed), made safe."""
    return repr(safe_text(name))


def text_summary(trace: Trace, max_models: int = 8) -> str:
    """A short deterministic summary: no ids, no times, so notebook tests can compare it."""
    summary = trace.summary()
    totals = summary.totals
    parts = [
        f"Trace {_quoted(summary.name)}: {_plural(summary.spans, 'span')}",
        _plural(totals.model_calls, "model call"),
    ]
    if totals.total_tokens is None:
        parts.append("tokens —")
    else:
        parts.append(
            f"tokens {format_tokens(totals.total_tokens)} (in {format_tokens(totals.input_tokens)},"
            f" out {format_tokens(totals.output_tokens)})"
        )
    parts.append(f"cost {format_money(totals.cost, totals.unpriced_calls)}")
    if totals.errors:
        parts.append(_plural(totals.errors, "error"))
    if summary.running:
        parts.append(f"{summary.running:,} running")
    if summary.warnings:
        parts.append(_plural(len(summary.warnings), "warning"))
    lines = [" · ".join(parts)]
    for row in summary.by_model[:max_models]:
        lines.append(
            f"  {safe_text(row.model)}: {_plural(row.calls, 'call')}, "
            f"{format_tokens(row.total_tokens)} tokens, "
            f"{format_money(row.cost, row.unpriced_calls)}"
        )
    if len(summary.by_model) > max_models:
        lines.append(f"  … {len(summary.by_model) - max_models:,} more models")
    return shorten("\n".join(lines), MAX_TEXT)
