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

import heapq
import html as _html
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from types import MappingProxyType
from typing import Any, Final

from agenta_notebook.core.fields import COST_CONTEXT, FIGURE, FIGURES, Figure, Kind
from agenta_notebook.core.rollup import (
    COSTLIEST,
    END,
    START,
    STATUS_MESSAGE,
    Figures,
    ModelBreakdown,
    SpanNode,
    TraceSummary,
    TraceTree,
    costliest_of,
    is_budget_refusal,
    smallest_cost,
)
from agenta_notebook.core.usage import shorten
from agenta_notebook.live import Trace
from agenta_notebook.runtime import BUDGET_DOLLARS, BUDGET_TOKENS

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


def format_money_in(cost: Decimal | None, unpriced_calls: int, places: int | None) -> str:
    """`format_money` in a view's unit (`places` decimals; `None`: its own).

    >>> format_money_in(Decimal("0.0009"), 1, 5), format_money_in(None, 2, 5)
    ('$0.00090 + 1 unpriced', '2 unpriced')
    """
    if places is None:
        return format_money(cost, unpriced_calls)
    if cost is None and unpriced_calls:
        return f"{unpriced_calls:,} unpriced"
    shown = format_amount(cost, places)
    return f"{shown} + {unpriced_calls:,} unpriced" if unpriced_calls else shown


def format_tokens(tokens: int | None) -> str:
    """A token count with thousands separators, "—" when absent."""
    return "—" if tokens is None else f"{tokens:,}"


#: The longest token count a row shows digit by digit ("99,999,999"); larger ones are
#: shortened ("123.4M", the exact count in the tooltip) so that the column never clips.
ROW_TOKENS_EXACT: Final = 99_999_999


def format_row_tokens(tokens: int | None) -> str:
    """A token count in a row's fixed-width column.

    >>> format_row_tokens(12_345), format_row_tokens(123_456_789), format_row_tokens(4 * 10**12)
    ('12,345', '123.5M', '4,000.0B')
    """
    if tokens is None or abs(tokens) <= ROW_TOKENS_EXACT:
        return format_tokens(tokens)
    if abs(tokens) < 10**9 * 10:
        return f"{tokens / 1e6:,.1f}M"
    return f"{tokens / 1e9:,.1f}B"


def format_duration(duration_ms: float | None) -> str:
    """Milliseconds as a short human duration, "—" when unknown (running).

    >>> [format_duration(ms) for ms in (0.4, 812.3, 1234, 125_000)]
    ['0.40 ms', '812 ms', '1.23 s', '2m 05s']
    """
    if duration_ms is None:
        return "—"
    # A span that ends before it starts (clocks of two processes) lasted no time.
    duration_ms = max(duration_ms, 0.0)
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


# -- one view's scales: money and time ----------------------------------------------------

#: Fewest and most decimals a view's costs are shown with.
MIN_PLACES: Final = 2
MAX_PLACES: Final = 8
#: The longest amount a row's cost column holds whole ("$123.45678901"): a view whose
#: total has more whole digits gets fewer decimals.
MAX_AMOUNT_CHARS: Final = 13


@dataclass(frozen=True, slots=True)
class ViewScale:
    """What every row of one view shares: the decimals of its costs (all rows the same,
    so that they line up on the decimal point), the trace's cost (for each row's share)
    and the time axis of the waterfall (the root's start to its end, or to the latest
    time seen while the trace runs)."""

    places: int
    total_cost: Decimal | None
    start_ns: int
    end_ns: int
    running: bool


def view_scale(root: SpanNode, nodes: Iterable[SpanNode]) -> ViewScale:
    """The scale of a view of the tree under `root`, from its `nodes`.

    The decimals show the smallest non-zero own cost with two significant figures
    (every subtotal is a sum of own costs, so none is smaller), up to `MAX_PLACES`: a
    smaller cost reads "<$0.00000001" rather than widening every row. The time axis
    reaches the latest end of any span (some end after the root).

    >>> from agenta_notebook.core.rollup import SpanRecord, build_tree
    >>> tree = build_tree([SpanRecord(1, 1, None, "r", 0, 10)])
    >>> view_scale(tree.root, tree.nodes)
    ViewScale(places=2, total_cost=None, start_ns=0, end_ns=10, running=False)
    """
    nodes = tuple(nodes)
    start = root.row[START]
    latest = root.row[END] or start
    running = root.running
    for node in nodes:
        row = node.row
        end = row[END]
        if end is None:
            running = True
            end = row[START]
        if end > latest:
            latest = end
    return _scale(root, smallest_cost(nodes), latest, running)


def tree_scale(tree: TraceTree) -> ViewScale:
    """`view_scale(tree.root, tree.nodes)` without a walk: from the tree's stats, which the
    live roll-up keeps (a redraw of a big running trace reads no other node)."""
    stats = tree.stats
    kept = stats.costliest is not None  # the fold keeps the smallest cost with the list
    smallest = stats.smallest_cost if kept else smallest_cost(stats.costed)
    root = tree.root
    start = root.row[START]
    latest = max(root.row[END] or start, stats.latest_ns or start)
    return _scale(root, smallest, latest, root.running or stats.running > 0)


def _scale(root: SpanNode, smallest: Decimal | None, latest: int, running: bool) -> ViewScale:
    start = root.row[START]
    places = MIN_PLACES
    if smallest is not None:
        places = min(max(MIN_PLACES, -smallest.adjusted() + 1), MAX_PLACES)
        total = root.subtotal.cost
        if total is not None:  # "$" and the whole part with its commas, then "."
            whole = len(f"{int(total.copy_abs()):,}") + 2 + (1 if total < 0 else 0)
            places = max(MIN_PLACES, min(places, MAX_AMOUNT_CHARS - whole))
    # Spans may end after the root (work a cell left running, then finished): the axis
    # reaches the latest end, so that their bars keep their true length.
    root_end = root.row[END]
    if not running and root_end is not None:
        latest = max(latest, root_end)
    return ViewScale(places, root.subtotal.cost, start, max(latest, start), running)


def format_amount(cost: Decimal | None, places: int) -> str:
    """A dollar amount with exactly `places` decimals (a view's unit), "—" when absent.

    >>> [format_amount(c, 6) for c in (Decimal("0.000695"), Decimal("0.0000486"), None)]
    ['$0.000695', '$0.000049', '—']
    >>> format_amount(Decimal("1234.5"), 2), format_amount(Decimal("1e-12"), 4)
    ('$1,234.50', '<$0.0001')
    """
    if cost is None:
        return "—"
    with localcontext(COST_CONTEXT):
        sign = "-" if cost < 0 else ""
        step = Decimal(1).scaleb(-places)
        shown = abs(cost).quantize(step)
        if shown == 0 and cost != 0:
            return f"{sign}<${step:f}"
        return f"{sign}${shown:,.{places}f}"


def cost_share(node: SpanNode, scale: ViewScale) -> float | None:
    """The row's part of the trace's cost, 0..1 (`None`: no cost to share)."""
    total, cost = scale.total_cost, node.subtotal.cost
    if total is None or cost is None or total <= 0:
        return None
    # In floats: a share needs no exact decimals, nor the notebook's decimal context.
    return min(max(float(cost) / float(total), 0.0), 1.0)


def format_share(share: float | None) -> str:
    """A share as a whole percent; "<1%" for a small one that is not zero.

    >>> [format_share(s) for s in (None, 0.0, 0.0004, 0.123, 1.0)]
    ['', '0%', '<1%', '12%', '100%']
    """
    if share is None:
        return ""
    if 0 < share < 0.005:
        return "<1%"
    return f"{share:.0%}"


def model_inline(node: SpanNode) -> str:
    """On a model-call row, the model and its tokens in → out ("gpt-4o · 1,200→300");
    plain text (callers escape it), "" elsewhere."""
    usage = node.usage
    if not usage.is_model_call or node.role == "model call wrapper":
        return ""
    parts = [safe_text(usage.model, 60)] if usage.model else []
    tokens_in, tokens_out = usage.input_tokens, usage.output_tokens
    if tokens_in is not None and tokens_out is not None:
        parts.append(f"{tokens_in:,}→{tokens_out:,}")
    elif tokens_in is not None:
        parts.append(f"{tokens_in:,} in")
    elif tokens_out is not None:
        parts.append(f"{tokens_out:,} out")
    return " · ".join(parts)


def costliest(nodes: Iterable[SpanNode], count: int = COSTLIEST) -> list[SpanNode]:
    """The `count` spans with the largest own counted cost, costliest first."""
    priced = (node for node in nodes if node.own.cost is not None and node.own.cost > 0)
    return heapq.nlargest(count, priced, key=lambda node: node.own.cost or 0)


def tree_costliest(tree: TraceTree, count: int = COSTLIEST) -> list[SpanNode]:
    """`costliest(tree.nodes)` without a walk: kept by the live roll-up, or found among
    the spans with figures of their own (the tree's stats)."""
    kept = tree.stats.costliest
    if kept is not None and 0 <= count <= COSTLIEST:  # (the first are the costliest)
        return list(kept[:count])
    return costliest_of(tree.stats.costed, count)


def costliest_label(node: SpanNode, scale: ViewScale) -> str:
    """One entry of the costliest list as plain text: amount, share, name, model."""
    share = format_share(cost_share_own(node, scale))
    model = model_inline(node)
    name = safe_text(node.name, 60)
    return f"{format_amount(node.own.cost, scale.places)} ({share}) {name}" + (
        f" · {model}" if model else ""
    )


def cost_share_own(node: SpanNode, scale: ViewScale) -> float | None:
    total, cost = scale.total_cost, node.own.cost
    if total is None or cost is None or total <= 0:
        return None
    # In floats: a share needs no exact decimals, nor the notebook's decimal context.
    return min(max(float(cost) / float(total), 0.0), 1.0)


def costliest_html(top: Sequence[SpanNode], scale: ViewScale) -> str:
    """The costliest spans (`costliest`, `tree_costliest`) as a plain list (the static
    HTML; the widget's is clickable)."""
    if not top:
        return ""
    items = "".join(f"<li>{escape(costliest_label(node, scale), None)}</li>" for node in top)
    return f'<div class="agn-costliest-static"><b>costliest spans</b><ol>{items}</ol></div>'


@dataclass(frozen=True, slots=True)
class Bar:
    """A waterfall bar: offset and length in percent of its axis, and how to draw it."""

    left: float
    width: float
    running: bool
    error: bool
    title: str


def waterfall_bar(node: SpanNode, scale: ViewScale, scope: str = "trace") -> Bar:
    """Where `node`'s bar sits: against the trace's time axis, or (`scope="parent"`)
    against its parent's span; a running span reaches the trace's current end."""
    row = node.row
    trace_end = scale.end_ns
    start = row[START]
    end = trace_end if row[END] is None else row[END]
    low, high = scale.start_ns, trace_end
    parent = node.parent
    if scope == "parent" and parent is not None:
        low = parent.row[START]
        high = trace_end if parent.row[END] is None else parent.row[END]
    span = max(high - low, 1)
    left = min(max((start - low) / span, 0.0), 1.0)
    right = min(max((end - low) / span, left), 1.0)

    def signed(offset_ns: int) -> str:  # before the trace (clock skew): "-X", never "+-X"
        return ("-" if offset_ns < 0 else "+") + format_duration(abs(offset_ns) / 1e6)

    # A span ending before it starts (clock skew between processes) lasts 0, as its bar.
    lasts = "running" if node.running else f"lasts {format_duration(max(end - start, 0) / 1e6)}"
    title = f"starts at {signed(start - scale.start_ns)} · {lasts}"
    if scope == "parent" and parent is not None:
        title += f" ({signed(start - low)} into its parent)"
    return Bar(100 * left, 100 * (right - left), node.running, node.is_error, title)


def waterfall_html(node: SpanNode, scale: ViewScale, scope: str = "trace") -> str:
    """The waterfall cell of a row: pure CSS, a bar placed by percentages."""
    bar = waterfall_bar(node, scale, scope)
    css = "agn-bar"
    if bar.running:
        css += " agn-bar-run"
    if bar.error:
        css += " agn-bar-err"
    return (
        # The title is our own text (offsets and durations): nothing to escape.
        f'<span class="agn-wf" title="{bar.title}"><span class="{css}" '
        f'style="left:{bar.left:.2f}%;width:{bar.width:.2f}%"></span></span>'
    )


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
        found.append(Marker("✖ error", node.row[STATUS_MESSAGE] or "error", "agn-m-error"))
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
        return format_row_tokens(value), tokens_title(node.subtotal), None
    return format_figure(figure, value), None, None


def column_heads_html() -> str:
    """The heads of the widget's row columns, laid out like `row_figures_html`."""
    heads = "".join(
        f'<span class="agn-c {_CELL_STYLES[figure.kind][0]}">{escape(figure.column)}</span>'
        for figure in ROW_FIGURES
    )
    return (
        '<span class="agn-c agn-dur">duration</span>'
        '<span class="agn-wf agn-wf-head">timeline</span>'
        f'{heads}<span class="agn-c agn-share">share</span><span class="agn-marks"></span>'
    )


def label(node: SpanNode, limit: int = MAX_LABEL) -> str:
    """Name (at most `limit` characters) and type, and on a model-call row its model and
    tokens, as plain text (`safe_text`: HTML callers still escape it)."""
    name = safe_text(node.name, limit)
    text = f"{name} · {safe_text(node.type)}" if node.type else name
    model = model_inline(node)
    return f"{text} · {model}" if model else text


def money_html(node: SpanNode, scale: ViewScale, figure: Figure = FIGURE["cost"]) -> str:
    """A money cell: the subtotal in the view's unit (so amounts line up on the decimal
    point), "unpriced" when only unpriced calls are below, and a fixed-width "+?" after
    a known amount that leaves unpriced calls out; the span's own amount in the tooltip."""
    subtotal = node.subtotal
    value = getattr(subtotal, figure.name)
    unpriced = subtotal.unpriced_calls
    notes = []
    if value is None and unpriced:
        amount, suffix = "unpriced", ""
    else:
        amount = format_amount(value, scale.places)
        suffix = "+?" if unpriced else ""
    if unpriced:
        notes.append(f"{_plural(unpriced, 'model call')} without a price below")
    own_value = getattr(node.own, figure.name)
    if node.children and own_value is not None and own_value != value:
        notes.append(f"own {format_amount(own_value, scale.places)}")
    # Amounts and notes are our own text: nothing to escape.
    title = f' title="{"; ".join(notes)}"' if notes else ""
    return (
        f'<span class="agn-c agn-cost"{title}>{amount}<span class="agn-unp">{suffix}</span></span>'
    )


def share_html(node: SpanNode, scale: ViewScale) -> str:
    """The row's share of the trace's cost: a percent over a small bar."""
    share = cost_share(node, scale)
    if share is None:
        return '<span class="agn-c agn-share"></span>'
    return (
        f'<span class="agn-c agn-share" title="{share:.1%} of the trace\'s cost">'
        f'<span class="agn-sbar" style="width:{100 * share:.0f}%"></span>'
        f'<span class="agn-stext">{format_share(share)}</span></span>'
    )


def row_figures_html(node: SpanNode, scale: ViewScale, scope: str = "trace") -> str:
    """The figure columns of a row: duration, waterfall, `ROW_FIGURES` (money in the
    view's unit), share of the cost, markers (escaped)."""
    duration = "…" if node.running else format_duration(node.duration_ms)
    cells = [f'<span class="agn-c agn-dur">{duration}</span>', waterfall_html(node, scale, scope)]
    for figure in ROW_FIGURES:
        if figure.kind == "money":
            cells.append(money_html(node, scale, figure))
            continue
        shown, title, _own = figure_cell(node, figure)
        # Figures and their breakdown are our own text: nothing to escape.
        title_html = f' title="{title}"' if title else ""
        css = _CELL_STYLES[figure.kind][0]
        cells.append(f'<span class="agn-c {css}"{title_html}>{shown}</span>')
    cells.append(share_html(node, scale))
    found = markers(node)
    if found:
        every = escape(" · ".join(mark.label for mark in found), None)
        badges = " ".join(
            f'<span class="agn-m {m.css}" title="{escape(m.title, 600)}">{escape(m.label)}</span>'
            for m in found
        )
        cells.append(f'<span class="agn-marks" title="{every}">{badges}</span>')
    else:
        cells.append('<span class="agn-marks"></span>')
    return "".join(cells)


# -- header --------------------------------------------------------------------------------


def totals_line(summary: TraceSummary, places: int | None = None) -> str:
    """The trace totals as HTML (escaped): cost, tokens, calls, duration, errors, spans."""
    totals = summary.totals
    duration = "running" if summary.duration_ms is None else format_duration(summary.duration_ms)
    parts = [
        f'<span class="agn-h-cost"><b>cost</b> '
        f"{escape(format_money_in(totals.cost, totals.unpriced_calls, places))}</span>",
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
    # A narrow output breaks the line between two totals, never inside one.
    return " · ".join(f'<span style="white-space:nowrap">{part}</span>' for part in parts)


def by_model_html(
    rows: Iterable[ModelBreakdown], limit: int = 12, places: int | None = None
) -> str:
    """The per-model breakdown as a small table (escaped)."""
    rows = list(rows)
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{escape(row.model)}</td><td>{row.calls:,}</td>"
        f"<td>{format_tokens(row.input_tokens)}</td><td>{format_tokens(row.output_tokens)}</td>"
        f"<td>{format_tokens(row.total_tokens)}</td>"
        f"<td>{escape(format_money_in(row.cost, row.unpriced_calls, places))}</td></tr>"
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


@dataclass(frozen=True, slots=True)
class BudgetState:
    """A trace's budget as the header shows it: the limits, how much is used, the span
    whose own cost (or tokens) made the count reach it, the refusal, the unpriced calls."""

    dollars: Decimal | None
    max_tokens: int | None
    spent: Decimal | None
    tokens: int | None
    crossed_at: str | None
    refused: str | None
    unpriced_calls: int
    #: the span that reached it is the n-th of the `counted` spans with usage of their own
    #: (token counts, a cost or a model call), in the order they ended
    crossed_index: int | None = None
    counted: int = 0


def budget_state(tree: TraceTree) -> BudgetState | None:
    """The budget of `tree` (its root's attributes), or None when it has none."""
    root = tree.root
    attributes = root.record.attributes
    dollars_text = attributes.get(BUDGET_DOLLARS)
    max_tokens = attributes.get(BUDGET_TOKENS)
    if dollars_text is None and max_tokens is None:
        return None
    try:
        dollars = None if dollars_text is None else Decimal(str(dollars_text))
    except ArithmeticError:
        dollars = None
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        max_tokens = None
    totals = root.subtotal
    crossed_at = None
    # The span whose own figures made the count reach the budget, in the order spans ended.
    ended = sorted(
        (node for node in tree.stats.costed if node.row[END] is not None and node.counts_usage),
        key=lambda node: (node.row[END] or 0, node.span_id),
    )
    cost = Decimal(0)
    tokens = 0
    crossed_index = None
    for index, node in enumerate(ended, 1):
        cost = COST_CONTEXT.add(cost, node.own.cost or Decimal(0))
        tokens += node.own.total_tokens or 0
        if (dollars is not None and cost >= dollars) or (
            max_tokens is not None and tokens >= max_tokens
        ):
            crossed_at, crossed_index = node.name, index
            break
    refused = None
    for event in root.record.events:
        # the same test as the roll-up's "refused by budget" (qualified or not)
        if event.name == "exception" and is_budget_refusal(event.attributes.get("exception.type")):
            message = str(event.attributes.get("exception.message", ""))
            # "budget of $X reached: ...; refused: <the call>": the call is what is new here
            refused = message.rpartition("refused: ")[2] or None
    return BudgetState(
        dollars,
        max_tokens,
        totals.cost,
        totals.total_tokens,
        crossed_at,
        refused,
        totals.unpriced_calls,
        crossed_index,
        len(ended),
    )


def _ordinal(number: int) -> str:
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, 21st, ..."""
    suffix = (
        "th" if 10 <= number % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(number % 10, "th")
    )
    return f"{number}{suffix}"


def budget_html(state: BudgetState | None, places: int | None = None) -> str:
    """The budget line of the header (escaped), or "" for a trace with no budget."""
    if state is None:
        return ""
    parts: list[str] = []
    if state.dollars is not None:
        spent = state.spent or Decimal(0)
        used = float(spent / state.dollars) if state.dollars else 0.0
        parts.append(
            f"<b>budget</b> {escape(format_money_in(spent, 0, places))} of "
            f"{escape('$' + format(state.dollars, 'f'))} ({used:.0%})"
        )
    if state.max_tokens is not None:
        used_tokens = state.tokens or 0
        parts.append(
            f"<b>token budget</b> {format_tokens(used_tokens)} of "
            f"{format_tokens(state.max_tokens)} ({used_tokens / state.max_tokens:.0%})"
        )
    if state.crossed_at is not None:
        where = f"reached at <i>{escape(state.crossed_at)}</i>"
        if state.crossed_index is not None and state.counted > 1:
            where += f" ({_ordinal(state.crossed_index)} of {state.counted} spans with usage)"
        parts.append(where)
    if state.refused is not None:
        parts.append(f'<span class="agn-m-error">refused: {escape(state.refused)}</span>')
    if state.dollars is not None and state.unpriced_calls:
        parts.append(
            f'<span class="agn-m-unpriced">⚠ {_plural(state.unpriced_calls, "unpriced call")}'
            " not counted in the budget</span>"
        )
    return '<div class="agn-budget">' + " · ".join(parts) + "</div>"


def header_html(
    summary: TraceSummary,
    beside_models: str = "",
    places: int | None = None,
    *,
    budget: str = "",
) -> str:
    """Trace name, totals and per-model breakdown (escaped), in the view's unit (`places`
    decimals), `budget` (HTML: `budget_html`) under the totals, and `beside_models`
    (HTML: the costliest spans) next to that table."""
    models = by_model_html(summary.by_model, places=places)
    if beside_models:
        models = (
            '<div class="agn-money" style="display:flex;flex-wrap:wrap;gap:0 24px;'
            f'align-items:flex-start">{models}{beside_models}</div>'
        )
    return (
        f'<div class="agn-header"><div class="agn-title">{escape(summary.name)}</div>'
        f'<div class="agn-totals">{totals_line(summary, places)}</div>'
        f"{budget}{models}</div>"
    )


# -- the static twin -----------------------------------------------------------------------

#: The static rows' style: the widget's row layout in fixed em widths (no script).
_STATIC_STYLE: Final = (
    "<style>.agn-static summary,.agn-static .agn-leaf{font-family:monospace;"
    "white-space:nowrap}.agn-static .agn-m{margin-left:0.3em}"
    ".agn-static .agn-m-error{color:#c62828}.agn-static .agn-m-unpriced{color:#8a6d00}"
    ".agn-static .agn-models td,.agn-static .agn-models th{padding:0 0.5em}"
    ".agn-static .agn-name{display:inline-block;overflow:hidden;text-overflow:ellipsis;"
    "white-space:nowrap;vertical-align:bottom}"
    ".agn-static .agn-c{display:inline-block;text-align:right;padding:0 0.4em;"
    "vertical-align:bottom;font-variant-numeric:tabular-nums}"
    ".agn-static .agn-dur{min-width:6em}.agn-static .agn-tok{min-width:7em}"
    ".agn-static .agn-cost{min-width:9em}.agn-static .agn-share{width:3.5em;position:relative}"
    ".agn-static .agn-unp{display:inline-block;width:1.3em;text-align:left;color:#8a6d00}"
    ".agn-static .agn-wf{display:inline-block;position:relative;width:12em;height:0.9em;"
    "margin:0 0.4em;vertical-align:middle;background:rgba(128,128,128,.08)}"
    ".agn-static .agn-wf-head{background:none;height:auto;vertical-align:bottom}"
    ".agn-static .agn-costliest-static ol{margin:2px 0;padding-left:1.8em}"
    ".agn-static .agn-bar{position:absolute;top:0;bottom:0;min-width:1px;"
    "background:#5c8fd6;opacity:.85}"
    ".agn-static .agn-bar-run{background:repeating-linear-gradient(45deg,#90caf9 0 4px,"
    "#e3f2fd 4px 8px);border-right:2px dashed #1565c0}"
    ".agn-static .agn-bar-err{background:#e53935}"
    ".agn-static .agn-sbar{position:absolute;left:0;bottom:0;height:2px;background:#f9a825}"
    "</style>"
)
_INDENT: Final = "margin-left:1.5em"


def _static_row(node: SpanNode, scale: ViewScale) -> str:
    name = escape(node.name)
    kind = escape(node.type) if node.type else ""
    model = model_inline(node)
    model_html = f" · {escape(model)}" if model else ""
    title = name + (f" · {kind}" if kind else "") + model_html
    width = max(8.0, 30 - 1.5 * min(node.depth, 14))
    return (
        f'<span class="agn-name" style="width:{width:.1f}em" title="{title}">'
        f"{name}{f' <i>{kind}</i>' if kind else ''}{model_html}</span>"
        f"{row_figures_html(node, scale)}"
    )


def open_depth_of(depth_counts: Sequence[int], budget: int) -> int:
    """The deepest level to open so that at most `budget` rows show (at least the root),
    from how many nodes sit at each depth (`TreeStats.depth_counts`)."""
    shown, depth = 0, 0
    for level, count in enumerate(depth_counts):
        if not count:
            continue
        shown += count
        if shown > budget:
            break
        depth = level
    return max(depth, 1)


def _count_below(nodes: list[SpanNode]) -> int:
    """How many nodes `nodes` and their subtrees hold (one tight loop: the static view of
    a 100,000-span trace counts what it cuts when the cell ends)."""
    count = 0
    stack = nodes
    pop, extend = stack.pop, stack.extend
    while stack:
        children = pop().children
        count += 1
        if children:
            extend(children)
    return count


def static_html(
    trace: Trace, max_nodes: int = STATIC_MAX_NODES, max_bytes: int = STATIC_MAX_BYTES
) -> str:
    """The trace as nested `<details>`: header, then one line per span with the same
    columns and subtotals as the widget. At most `max_nodes` spans are written (pre-order),
    each cut subtree saying how many spans it leaves out."""
    tree = trace.tree
    summary = trace.summary(tree)
    scale = tree_scale(tree)
    open_below = open_depth_of(tree.stats.depth_counts, STATIC_OPEN_BUDGET)
    out: list[str] = [
        '<div class="agn-static">',
        _STATIC_STYLE,
        header_html(
            summary,
            costliest_html(tree_costliest(tree), scale),
            scale.places,
            budget=budget_html(budget_state(tree), scale.places),
        ),
        '<div style="font-family:monospace;font-size:12px;white-space:nowrap">'
        '<div class="agn-leaf" style="padding-left:1.1em;font-weight:600">'
        '<span class="agn-name" style="width:30.0em">span · type</span>'
        f"{column_heads_html()}</div>",
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
            cut = [item]
            while stack and not isinstance(stack[-1], str):
                following = stack.pop()
                assert not isinstance(following, str)
                cut.append(following)
            line = f'<div class="agn-more">… {_count_below(cut):,} more spans</div>'
            out.append(line)
            size += len(line)
            continue
        written += 1
        row = _static_row(item, scale)
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
