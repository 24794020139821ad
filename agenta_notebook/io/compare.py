"""`an.compare(*traces)`: several traces aligned span by span, with deltas or spreads.

Spans are aligned by their path from the root: the names from the root down, each with
its ordinal among the same-named children of its parent (in start order), so the 3rd
`grade` under a step of run A meets the 3rd `grade` under the same step of run B. The
roots always meet, whatever their names. A span present in only some traces is `<NA>` in
the others.

Per node and per trace, four figures of the subtree: `cost` (the known dollars; `<NA>`
when its calls are all unpriced or the span is absent: never 0.0 for "unknown"; 0 for a
span that made no model call, a known zero), `tokens` (total tokens), `duration_ms` and
`calls` (model calls), plus `unpriced` (the unpriced calls, so a cost next to a non-zero
count reads as a lower bound).

Two traces: each trace's figures and the delta (second minus first); the cost delta is
`<NA>` when either side has unpriced calls (a difference of two lower bounds is not a
difference). Three or more (a loop over dataset rows): min / median / max of each figure
over the traces that have the span, and `runs`, how many have it; a run with unpriced calls
there counts with its known cost (0 when none is priced), a lower bound, so the cost
spread is then one of lower bounds (`max/unpriced` says so), never over fewer runs than
`runs`; the per-trace columns
are left out by default (20 runs would be 100 columns) and kept with `per_trace=True`.

Three faces, as a trace has: `to_dataframe()`; in a notebook, the widget (an expandable
tree, `views/compare_view.py`) with the static HTML table and a short text in the same
output. Both views read one `ComparisonTable` (the values, the cells' texts, the biggest
changes), whose deltas and spreads are the DataFrame's.

>>> import agenta_notebook as an
>>> runs = []
>>> for model in ("gpt-4o", "gpt-4o-mini"):
...     with an.trace("run") as t, an.span("llm", type="llm"):
...         an.record_usage(model=model, input_tokens=100, output_tokens=20)
...     runs.append(t)
>>> frame = an.compare(*runs).to_dataframe()
>>> frame[("delta", "tokens")].tolist()
[0, 0]
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, localcontext
from typing import Any, Final

import pandas as pd

from agenta_notebook.core.fields import COST_CONTEXT
from agenta_notebook.core.rollup import SpanNode
from agenta_notebook.live import Trace
from agenta_notebook.views.compare_view import (
    ABSENT,
    CELL_CSS,
    DOWN,
    TOP,
    UP,
    show_comparison,
    widget_bundle,
)
from agenta_notebook.views.html import (
    escape,
    format_cost,
    format_duration,
    format_money,
    safe_text,
)

#: The static HTML shows at most this many rows; the DataFrame has them all.
MAX_HTML_ROWS: Final = 500
#: How many of the biggest changes of each figure are highlighted.
HIGHLIGHTED: Final = 3

#: The figures compared, in column order, with their nullable dtype.
FIGURE_DTYPES: Final = (
    ("cost", "Float64"),
    ("tokens", "Int64"),
    ("duration_ms", "Float64"),
    ("calls", "Int64"),
    ("unpriced", "Int64"),
)
#: The figures that get a delta or a spread (`unpriced` qualifies the cost).
COMPARED: Final = ("cost", "tokens", "duration_ms", "calls")
SPAN_GROUP: Final = "span"


def _check(traces: Sequence[object]) -> tuple[Trace, ...]:
    for position, value in enumerate(traces):
        if not isinstance(value, Trace):
            hint = (
                " (a list or tuple of traces: unpack it, an.compare(*traces))"
                if isinstance(value, list | tuple)
                else ""
            )
            raise TypeError(
                f"an.compare() takes traces (agenta_notebook.Trace); argument {position} "
                f"is a {type(value).__name__}{hint}"
            )
    if len(traces) < 2:
        raise ValueError(f"an.compare() needs at least 2 traces to compare, got {len(traces)}")
    return tuple(traces)  # type: ignore[arg-type]


#: What stands for the model in the aligned name of a span named after its model.
MODEL_PLACEHOLDER: Final = "{model}"


def _model_blind(name: str, node: SpanNode) -> str:
    """`name` with a trailing model name replaced by `{model}`: the GenAI conventions name
    a call `chat gpt-4o`, and the same call with another model must still align."""
    for model in (node.usage.request_model, node.usage.model):
        if model and name.endswith(model) and len(name) > len(model):
            return name[: -len(model)] + MODEL_PLACEHOLDER
    return name


def _labels(traces: Sequence[Trace]) -> tuple[str, ...]:
    """One column-group label per trace: its name, numbered when names repeat."""
    names = [trace.name for trace in traces]
    if len(set(names)) == len(names):
        return tuple(names)
    return tuple(f"{index}: {name}" for index, name in enumerate(names))


class Comparison:
    """Traces aligned span by span (see the module's docstring); `to_dataframe()` and, in a
    notebook, the widget with its static HTML table."""

    def __init__(self, traces: Sequence[Trace]) -> None:
        self.traces: tuple[Trace, ...] = tuple(traces)
        self.labels = _labels(self.traces)
        #: per row: its parent row (-1 for the root), name, ordinal and depth, in tree order
        self.parents: list[int] = []
        self.names: list[str] = []
        #: the names the rows are aligned by: a model in a span's name is `{model}`
        self.keys: list[str] = []
        self.ordinals: list[int] = []
        self.depths: list[int] = []
        #: per trace, per row: the aligned node, or None
        self.nodes: list[list[SpanNode | None]] = []
        self._table: ComparisonTable | None = None
        self._align()

    def _align(self) -> None:
        parents: list[int] = [-1]
        names: list[str] = [self.traces[0].tree.root.name]
        keys: list[str] = list(names)
        ordinals: list[int] = [0]
        depths: list[int] = [0]
        children: list[list[int]] = [[]]
        index: dict[tuple[int, str, int], int] = {}
        found: list[dict[int, SpanNode]] = []
        for trace in self.traces:
            here: dict[int, SpanNode] = {}
            found.append(here)
            stack: list[tuple[SpanNode, int]] = [(trace.tree.root, 0)]
            while stack:
                node, row = stack.pop()
                here[row] = node
                seen: dict[str, int] = {}
                for child in node.children:
                    name = child.name
                    if child.usage.model is not None:
                        name = _model_blind(name, child)
                    ordinal = seen.get(name, 0)
                    seen[name] = ordinal + 1
                    key = (row, name, ordinal)
                    child_row = index.get(key)
                    if child_row is None:
                        child_row = index[key] = len(parents)
                        parents.append(row)
                        names.append(child.name)
                        keys.append(name)
                        ordinals.append(ordinal)
                        depths.append(depths[row] + 1)
                        children.append([])
                        children[row].append(child_row)
                    stack.append((child, child_row))
        # Tree order: parents before children, a trace's new spans after the others'.
        order: list[int] = []
        pending = [0]
        while pending:
            row = pending.pop()
            order.append(row)
            pending.extend(reversed(children[row]))
        renumber = {row: position for position, row in enumerate(order)}
        self.parents = [renumber.get(parents[row], -1) for row in order]
        self.names = [names[row] for row in order]
        self.keys = [keys[row] for row in order]
        self.ordinals = [ordinals[row] for row in order]
        self.depths = [depths[row] for row in order]
        self.nodes = [[here.get(row) for row in order] for here in found]

    @property
    def paths(self) -> list[str]:
        """Each row's path, `root/step[0]/grade[2]`: the aligned key, as text."""
        paths: list[str] = []
        for row, name in enumerate(self.keys):
            parent = self.parents[row]
            paths.append(name if parent < 0 else f"{paths[parent]}/{name}[{self.ordinals[row]}]")
        return paths

    def figures(self, trace_index: int) -> dict[str, list[Any]]:
        """One trace's figures per row (None: absent or unknown), `cost` as Decimal."""
        columns: dict[str, list[Any]] = {name: [] for name, _ in FIGURE_DTYPES}
        cost, tokens, duration = columns["cost"], columns["tokens"], columns["duration_ms"]
        calls, unpriced = columns["calls"], columns["unpriced"]
        for node in self.nodes[trace_index]:
            if node is None:
                for column in (cost, tokens, duration, calls, unpriced):
                    column.append(None)
                continue
            subtotal = node.subtotal
            cost.append(subtotal.cost)
            tokens.append(subtotal.total_tokens)
            duration.append(node.duration_ms)
            calls.append(subtotal.model_calls)
            unpriced.append(subtotal.unpriced_calls)
        return columns

    def to_dataframe(self, *, per_trace: bool | None = None) -> pd.DataFrame:
        """One row per aligned span, columns grouped: `span` (path, name, depth), one group
        per trace (when two, or `per_trace=True`), then `delta` (two traces) or `min`,
        `median`, `max` (three or more, with `span/runs`)."""
        many = len(self.traces) > 2
        if per_trace is None:
            per_trace = not many
        data: dict[tuple[str, str], Any] = {
            (SPAN_GROUP, "path"): pd.array(self.paths, dtype="string"),
            (SPAN_GROUP, "name"): pd.array(self.names, dtype="string"),
            (SPAN_GROUP, "depth"): pd.array(self.depths, dtype="Int64"),
        }
        every = [self.figures(index) for index in range(len(self.traces))]
        if many:
            data[(SPAN_GROUP, "runs")] = pd.array(
                [sum(node is not None for node in row) for row in zip(*self.nodes, strict=True)],
                dtype="Int64",
            )
        if per_trace:
            for label, figures in zip(self.labels, every, strict=True):
                for name, dtype in FIGURE_DTYPES:
                    data[(label, name)] = _nullable(_known(figures, name), dtype)
        with localcontext(COST_CONTEXT):  # exact sums of costs, whatever the caller's context
            if many:
                _spreads(data, every)
            else:
                _deltas(data, every[0], every[1])
        frame = pd.DataFrame(data)
        frame.columns = pd.MultiIndex.from_tuples(list(data))
        return frame

    def table(self) -> ComparisonTable:
        """What the static HTML and the widget show (made once)."""
        if self._table is None:
            self._table = ComparisonTable(self)
        return self._table

    def _repr_html_(self) -> str:
        with localcontext(COST_CONTEXT):
            return comparison_html(self)

    def _static_bundle(self) -> dict[str, Any]:
        return {"text/plain": self.table().text(), "text/html": self._repr_html_()}

    def _ipython_display_(self) -> None:
        """`display(comparison)`, a cell ending in one, `%agenta_compare`: the widget (an
        expandable tree) with the static HTML and a short text beside it in one output
        (saved notebooks, GitHub, nbconvert show those); where there are no widgets, the
        static HTML. When newer comparisons close this widget, its output keeps the HTML."""
        show_comparison(self.table(), self._static_bundle())

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The same renderings for a frontend that asks for them directly (no output to
        update when the widget is closed later)."""
        data = self._static_bundle()
        data.update(widget_bundle(self.table()))
        return data

    def __repr__(self) -> str:
        return f"<Comparison of {len(self.traces)} traces, {len(self.names)} aligned spans>"


def _nullable(values: list[Any], dtype: str) -> Any:
    if dtype == "Float64":
        floats = [None if value is None else float(value) for value in values]
        return pd.array(floats, dtype=pd.Float64Dtype())
    return pd.array(values, dtype=pd.Int64Dtype())


def _known(figures: dict[str, list[Any]], name: str, *, lower_bounds: bool = False) -> list[Any]:
    """`figures[name]`, with 0 where the span is there and made no model call at all (no
    cost, no tokens: known to be zero, not unknown). With `lower_bounds`, a cost is also
    the known part where some calls are unpriced (0 when none is priced): a lower bound,
    as a spread over runs counts it (an absent span stays None)."""
    values = figures[name]
    if name not in ("cost", "tokens"):
        return values
    zero: Any = Decimal(0) if name == "cost" else 0
    bounded = lower_bounds and name == "cost"
    return [
        zero
        if value is None and calls is not None and (bounded or (calls == 0 and not unpriced))
        else value
        for value, calls, unpriced in zip(
            values, figures["calls"], figures["unpriced"], strict=True
        )
    ]


def _deltas(
    data: dict[tuple[str, str], Any], first: dict[str, list[Any]], second: dict[str, list[Any]]
) -> None:
    """The `delta` group: second minus first, `<NA>` where either is unknown (a span
    with no model call has a known cost and tokens: 0)."""
    for name, dtype in FIGURE_DTYPES:
        if name not in COMPARED:
            continue
        deltas: list[Any] = []
        for a, b in zip(_known(first, name), _known(second, name), strict=True):
            deltas.append(None if a is None or b is None else b - a)
        if name == "cost":  # a difference of lower bounds is not a difference
            for row, (a, b) in enumerate(zip(first["unpriced"], second["unpriced"], strict=True)):
                if a or b:
                    deltas[row] = None
        data[("delta", name)] = _nullable(deltas, dtype)


def _spreads(data: dict[tuple[str, str], Any], every: list[dict[str, list[Any]]]) -> None:
    """The `min`, `median`, `max` groups, over the traces that have each span."""
    for name, dtype in FIGURE_DTYPES:
        if name not in COMPARED:
            continue
        lows: list[Any] = []
        middles: list[float | None] = []
        highs: list[Any] = []
        values = (_known(figures, name, lower_bounds=True) for figures in every)
        for row in zip(*values, strict=True):
            known = [value for value in row if value is not None]
            if not known:
                lows.append(None)
                middles.append(None)
                highs.append(None)
                continue
            lows.append(min(known))
            highs.append(max(known))
            if isinstance(known[0], Decimal):
                middles.append(statistics.median(float(value) for value in known))
            else:
                middles.append(float(statistics.median(known)))
        data[("min", name)] = _nullable(lows, dtype)
        data[("median", name)] = _nullable(list(middles), "Float64")
        data[("max", name)] = _nullable(highs, dtype)
    # A cost spread over runs with unpriced calls is one of lower bounds: say how many.
    unpriced = [
        max((value for value in row if value is not None), default=None)
        for row in zip(*(figures["unpriced"] for figures in every), strict=True)
    ]
    data[("max", "unpriced")] = _nullable(unpriced, "Int64")


def _signed(name: str, value: Any) -> str:
    """A delta for display: its sign always shown, "—" when unknown."""
    if value is None:
        return "—"
    if name == "cost":
        text = format_cost(value)
        return text if text.startswith("-") or value == 0 else f"+{text}"
    sign = "-" if value < 0 else "+" if value > 0 else ""
    if name == "duration_ms":
        return f"{sign}{format_duration(abs(value))}"
    return f"{sign}{_count(abs(value))}"


def _count(value: Any) -> str:
    """A count (tokens, calls) or a median of counts: whole as a whole number, a median
    halfway between two counts with its one decimal."""
    if isinstance(value, float):
        return f"{value:,.0f}" if value.is_integer() else f"{value:,.1f}"
    return f"{value:,}"


def _plain(name: str, value: Any, unpriced: Any = 0) -> str:
    if name == "cost":
        return format_money(value, unpriced or 0)
    if value is None:
        return "—"
    if name == "duration_ms":
        return format_duration(value)
    return _count(value)


def biggest(changes: Sequence[Any]) -> set[int]:
    """The rows (the root aside) of the `HIGHLIGHTED` largest non-zero changes."""
    ranked = sorted(
        (abs(value), row)
        for row, value in enumerate(changes)
        if row > 0 and value is not None and value != 0
    )
    return {row for _, row in ranked[-HIGHLIGHTED:]}


_STYLE: Final = (
    "<style>.an-cmp td,.an-cmp th{padding:2px 8px;text-align:right;white-space:nowrap}"
    ".an-cmp td.an-cmp-name{text-align:left}" + CELL_CSS.format(scope=".an-cmp") + "</style>"
)
#: The column heads of the figures.
HEADS: Final = {"cost": "cost", "tokens": "tokens", "duration_ms": "duration", "calls": "calls"}


@dataclass(frozen=True, slots=True)
class Group:
    """One column group of the table: a trace's figures, the deltas, or a spread."""

    label: str
    #: "trace" (one trace's figures), "delta" (second minus first), "spread" (min,
    #: median or max over the runs that have the span)
    kind: str
    #: per figure of `COMPARED`, per row: the value (None: absent or unknown)
    values: dict[str, list[Any]]
    #: per row, the unpriced calls under the span (a cost next to them is a lower bound)
    unpriced: list[Any]


class ComparisonTable:
    """What the static HTML and the widget show of a comparison: the aligned rows, the
    column groups with their values, the biggest changes, each cell's text and classes.

    Holds figures only (no span, no trace), so a view that keeps it keeps no trace alive.
    The deltas and spreads are those of `Comparison.to_dataframe()` (a span that made no
    model call has a known cost and tokens: 0); cost stays exact (Decimal).
    """

    def __init__(self, comparison: Comparison) -> None:
        self.labels = comparison.labels
        self.names = list(comparison.names)
        self.ordinals = list(comparison.ordinals)
        self.depths = list(comparison.depths)
        self.parents = list(comparison.parents)
        self.traces = len(comparison.traces)
        #: three or more traces: min / median / max instead of the traces and deltas
        self.many = self.traces > 2
        every = [comparison.figures(index) for index in range(self.traces)]
        #: per row, how many traces have the span
        self.runs = [
            sum(node is not None for node in row) for row in zip(*comparison.nodes, strict=True)
        ]
        with localcontext(COST_CONTEXT):
            self.groups, self.changes = (
                self._spreads(every) if self.many else self._deltas(every[0], every[1])
            )
        self.top = {name: biggest(self.changes[name]) for name in COMPARED}

    def _deltas(
        self, first: dict[str, list[Any]], second: dict[str, list[Any]]
    ) -> tuple[tuple[Group, ...], dict[str, list[Any]]]:
        changes: dict[str, list[Any]] = {}
        for name in COMPARED:
            changes[name] = [
                None if a is None or b is None else b - a
                for a, b in zip(_known(first, name), _known(second, name), strict=True)
            ]
        unpriced = [
            (a or 0) + (b or 0) for a, b in zip(first["unpriced"], second["unpriced"], strict=True)
        ]
        for row, count in enumerate(unpriced):
            if count:  # a difference of lower bounds is not a difference
                changes["cost"][row] = None
        # A span with no model call shows its known 0 in its trace's columns too: "—" is
        # absent (or unknown), never zero.
        groups = (
            Group(
                self.labels[0], "trace", {n: _known(first, n) for n in COMPARED}, first["unpriced"]
            ),
            Group(
                self.labels[1],
                "trace",
                {n: _known(second, n) for n in COMPARED},
                second["unpriced"],
            ),
            Group("delta", "delta", changes, unpriced),
        )
        return groups, changes

    def _spreads(
        self, every: list[dict[str, list[Any]]]
    ) -> tuple[tuple[Group, ...], dict[str, list[Any]]]:
        spread: dict[str, dict[str, list[Any]]] = {"min": {}, "median": {}, "max": {}}
        changes: dict[str, list[Any]] = {}
        for name in COMPARED:
            lows: list[Any] = []
            middles: list[Any] = []
            highs: list[Any] = []
            spread["min"][name], spread["median"][name], spread["max"][name] = lows, middles, highs
            values = (_known(figures, name, lower_bounds=True) for figures in every)
            for row in zip(*values, strict=True):
                known = [value for value in row if value is not None]
                lows.append(min(known) if known else None)
                middles.append(statistics.median(known) if known else None)
                highs.append(max(known) if known else None)
            changes[name] = [
                None if low is None or high is None else high - low
                for low, high in zip(lows, highs, strict=True)
            ]
        unpriced = [
            max((value for value in row if value is not None), default=0)
            for row in zip(*(figures["unpriced"] for figures in every), strict=True)
        ]
        groups = tuple(Group(group, "spread", spread[group], unpriced) for group in spread)
        return groups, changes

    @property
    def rows(self) -> int:
        return len(self.names)

    def row_label(self, row: int) -> str:
        """A row's span name (not escaped), numbered when it repeats among its siblings."""
        name = self.names[row]
        ordinal = self.ordinals[row]
        return name if row == 0 or ordinal == 0 else f"{name} #{ordinal + 1}"

    def cell(self, group: Group, name: str, row: int) -> tuple[str, tuple[str, ...]]:
        """The text (not escaped) and the CSS classes of one cell."""
        value = group.values[name][row]
        if group.kind == "delta":
            classes: list[str] = []
            if value is not None and value > 0:
                classes.append(UP)
            elif value is not None and value < 0:
                classes.append(DOWN)
            if row in self.top[name]:
                classes.append(TOP)
            return _signed(name, value), tuple(classes)
        if group.kind == "trace" and value is None and group.values["calls"][row] is None:
            return "—", (ABSENT,)
        top = (TOP,) if group.kind == "spread" and row in self.top[name] else ()
        return _plain(name, value, group.unpriced[row]), top

    def text(self) -> str:
        """A short, deterministic plain-text summary (no durations): the root's figures
        per trace and the deltas, or the root's spread."""
        lines = [f"Comparison of {self.traces} traces, {self.rows:,} aligned spans"]
        with localcontext(COST_CONTEXT):
            for group in self.groups:
                figures = ", ".join(
                    f"{HEADS[name]} {self.cell(group, name, 0)[0]}"
                    for name in COMPARED
                    if name != "duration_ms"
                )
                lines.append(f"  {safe_text(group.label, 60)}: {figures}")
        return "\n".join(lines)


def comparison_html(comparison: Comparison) -> str:
    """The static HTML table: one row per aligned span (names indented by depth), a column
    group per trace (two traces) with the deltas, or min / median / max (three or more);
    the biggest changes of each figure highlighted. Every span string is escaped."""
    table = comparison.table()
    width = len(COMPARED)
    head = "".join(f'<th colspan="{width}">{escape(group.label)}</th>' for group in table.groups)
    subhead = "".join(f"<th>{HEADS[name]}</th>" for _ in table.groups for name in COMPARED)
    parts = [
        _STYLE,
        '<table class="an-cmp"><thead>',
        f"<tr><th></th>{head}</tr><tr><th>span</th>{subhead}</tr></thead><tbody>",
    ]
    rows = table.rows
    for row in range(min(rows, MAX_HTML_ROWS)):
        indent = table.depths[row] * 1.2
        label = escape(table.row_label(row))
        if table.many and table.runs[row] < table.traces:
            label += (
                f' <span class="{ABSENT}">(in {table.runs[row]:,} of {table.traces:,} runs)</span>'
            )
        cells = [f'<td class="an-cmp-name" style="padding-left:{indent:.1f}em">{label}</td>']
        for group in table.groups:
            for name in COMPARED:
                text, classes = table.cell(group, name, row)
                attribute = f' class="{" ".join(classes)}"' if classes else ""
                cells.append(f"<td{attribute}>{escape(text, None)}</td>")
        parts.append(f"<tr>{''.join(cells)}</tr>")
    parts.append("</tbody></table>")
    if rows > MAX_HTML_ROWS:
        parts.append(
            f"<p>{rows - MAX_HTML_ROWS:,} more spans: "
            "<code>.to_dataframe()</code> has every row.</p>"
        )
    return "".join(parts)


def compare(*traces: Trace) -> Comparison:
    """Align `traces` span by span (see `agenta_notebook.io.compare`).

    Raises TypeError for anything that is not a Trace, ValueError for fewer than two.
    """
    return Comparison(_check(traces))
