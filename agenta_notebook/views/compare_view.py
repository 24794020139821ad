"""The interactive face of `an.compare(...)`: one tree of the aligned spans, in ipywidgets.

Drawn like the trace tree (`views/widget.py`), with a constant number of widgets however
many spans the traces have: the visible rows are one `ToggleButtons` (a button per row:
indentation, ▸/▾, the span's name) beside one `HTML` (a line of figures per row, 24 px
each, so they line up). Clicking a row expands or collapses it; a parent with many
children shows them a page at a time ("show 100 more"); at most `MAX_ROWS` rows are
drawn. At first, levels are opened while at most `AUTO_BUDGET` rows show.

The columns are a group per trace (cost, tokens, duration, model calls) and the deltas
for two traces; min / median / max (and how many runs have the span) for three or more.
Each column is as wide as the widest figure shown in it needs (an upper bound from its
characters, `text_width`), at least its width in `COLUMNS`; it widens as rows show and
never narrows. The widths are the view's own `<style>`, scoped by a random class.
Every value, text and highlight comes from the comparison's `ComparisonTable` (the
static HTML shows the same), so the widget, the HTML and `to_dataframe()` agree.

`CompareState` is the pure part (what is expanded, which rows show); `ComparisonView`
draws it: six widget models, with the layout and styles every view shares
(`views.widget.shared_models`). `widget_bundle(table)` is the widget part of a
comparison's output bundle; the runtime keeps the newest few views open
(`RUNTIME.views.register_comparison`) and closes the rest.
"""

from __future__ import annotations

import functools
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

from agenta_notebook.errors import internal_error
from agenta_notebook.runtime import RUNTIME
from agenta_notebook.views.html import escape, open_depth_of, safe_text
from agenta_notebook.views.state import AUTO_BUDGET, MAX_ROWS, PAGE_SIZE

if TYPE_CHECKING:
    from agenta_notebook.io.compare import ComparisonTable, Group

#: The figures shown per group, in order (the comparison's `COMPARED`), with their head
#: and column width (px).
COLUMNS: Final = (
    ("cost", "cost", 96),
    ("tokens", "tokens", 64),
    ("duration_ms", "duration", 72),
    ("calls", "calls", 42),
)
#: The CSS classes of the table's cells: a change up, down, among the biggest; a span
#: absent from a trace. The static HTML and the widget style them alike.
UP: Final = "an-cmp-up"
DOWN: Final = "an-cmp-down"
TOP: Final = "an-cmp-top"
ABSENT: Final = "an-cmp-absent"
#: The cells' colours (`.an-cmp`, or the widget's root, is the scope).
CELL_CSS: Final = (
    "{scope} .an-cmp-up{{color:#b42318}}{scope} .an-cmp-down{{color:#067647}}"
    "{scope} .an-cmp-top{{font-weight:bold;background:rgba(255,200,0,.25)}}"
    "{scope} .an-cmp-absent{{color:#999}}"
)
#: About how wide (px) the characters of a figure are at most, in bold (a highlighted
#: cell): narrow ones, wide ones, signs, the others; how much narrower they are not in bold;
#: and what a cell adds to its text (padding, and a little room for other fonts).
NARROW_CHARS: Final = frozenset(",.: ")
NARROW_WIDTH: Final = 5.0
WIDE_CHARS: Final = frozenset("mwMW—")
WIDE_WIDTH: Final = 14.0
SIGN_CHARS: Final = frozenset("+<>=±−")
SIGN_WIDTH: Final = 12.0
CHAR_WIDTH_BOLD: Final = 10.0
NOT_BOLD: Final = 0.92
CELL_PADDING: Final = 10
#: Width (px) of the name column and of the "runs" column (three or more traces).
NAME_WIDTHS: Final = (140, 160, 180, 200, 220, 260)
#: About how wide (px) a character of a span's name is, and an indentation level.
CHAR_WIDTH: Final = 7.5
INDENT_WIDTH: Final = 13


def name_width(names: Sequence[str], depths: Sequence[int]) -> int:
    """The name column's width: the narrowest of `NAME_WIDTHS` that holds the longest
    indented name (a longer one is cut, its full text in the tooltip)."""
    widest = max(
        (len(name) * CHAR_WIDTH + (min(depth, 16) + 1) * INDENT_WIDTH + 24)
        for name, depth in zip(names, depths, strict=True)
    )
    return next((width for width in NAME_WIDTHS if width >= widest), NAME_WIDTHS[-1])


RUNS_WIDTH: Final = 46


@dataclass(frozen=True, slots=True)
class CompareRow:
    """One visible line: an aligned span (`row` of the table), or the "show more" line of
    a paged parent."""

    kind: Literal["span", "more"]
    row: int
    depth: int
    expandable: bool = False
    expanded: bool = False
    #: "more" lines: how many children of `row` are not shown yet
    remaining: int = 0


class CompareState:
    """What the comparison tree shows: which rows are expanded, how many children of each
    are paged in. Pure: no widget."""

    def __init__(
        self,
        parents: Sequence[int],
        *,
        page_size: int = PAGE_SIZE,
        auto_budget: int = AUTO_BUDGET,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self.page_size = page_size
        self.max_rows = max_rows
        #: per row, its children (rows are in tree order: a parent before its children)
        self.children: list[list[int]] = [[] for _ in parents]
        self.depths: list[int] = []
        counts: list[int] = []
        for row, parent in enumerate(parents):
            depth = 0 if parent < 0 else self.depths[parent] + 1
            self.depths.append(depth)
            if parent >= 0:
                self.children[parent].append(row)
            if depth == len(counts):
                counts.append(0)
            counts[depth] += 1
        #: the deepest level opened at first: at most `auto_budget` rows show
        self.open_depth = open_depth_of(counts, auto_budget) if parents else 0
        self.expanded: set[int] = set()
        self.expand_to_depth(self.open_depth)
        #: per expanded row, how many of its children show (paged)
        self.shown: dict[int, int] = {}
        #: whether the last `rows()` stopped at `max_rows`
        self.truncated = False

    def expand_to_depth(self, depth: int) -> None:
        """Expand every row above `depth` (0: everything collapsed), collapse the rest."""
        self.expanded = {
            row
            for row, children in enumerate(self.children)
            if children and self.depths[row] < depth
        }

    def toggle(self, row: int) -> None:
        """Expand a collapsed row, collapse an expanded one."""
        if row in self.expanded:
            self.expanded.discard(row)
        elif self.children[row]:
            self.expanded.add(row)

    def show_more(self, row: int) -> None:
        """Page in the next `page_size` children of `row`."""
        self.shown[row] = self.shown.get(row, self.page_size) + self.page_size

    def rows(self) -> list[CompareRow]:
        """The visible lines, in tree order; at most `max_rows` spans."""
        out: list[CompareRow] = []
        self.truncated = False
        if not self.children:
            return out
        stack: list[CompareRow] = [self._row(0)]
        while stack:
            if len(out) >= self.max_rows:
                self.truncated = True
                break
            line = stack.pop()
            out.append(line)
            if line.kind == "more" or not line.expanded:
                continue
            children = self.children[line.row]
            limit = self.shown.get(line.row, self.page_size)
            pending = [self._row(child) for child in children[:limit]]
            if len(children) > limit:
                pending.append(
                    CompareRow("more", line.row, line.depth + 1, remaining=len(children) - limit)
                )
            stack.extend(reversed(pending))
        return out

    def _row(self, row: int) -> CompareRow:
        expandable = bool(self.children[row])
        return CompareRow(
            "span", row, self.depths[row], expandable, expandable and row in self.expanded
        )


def row_text(table: ComparisonTable, line: CompareRow, page_size: int = PAGE_SIZE) -> str:
    """The text of a row's button: indentation, ▸/▾ when it has children, the name (as
    the trace tree's rows)."""
    from agenta_notebook.views.widget import INDENT_TEXT, MAX_INDENT

    indent = INDENT_TEXT * min(line.depth, MAX_INDENT)
    if line.kind == "more":
        step = min(page_size, line.remaining)
        return f"{indent}{INDENT_TEXT} show {step:,} more ({line.remaining:,} not shown)"
    glyph = ("▾" if line.expanded else "▸") if line.expandable else INDENT_TEXT
    return f"{indent}{glyph} {safe_text(table.row_label(line.row))}"


@functools.cache
def _css() -> str:
    """What every comparison view's style shares (each view's column widths are its own:
    `_widths_css`)."""
    return (
        "<style>"
        ".agn-cmp-root{font-size:13px;overflow-x:auto;max-width:100%}"
        ".agn-cmp-root .widget-html-content{width:max-content}"
        ".agn-cmp-root .widget-html{margin:0}"
        ".agn-cmp-root .agn-cmp-title{font-weight:600;font-size:14px}"
        ".agn-cmp-root .agn-cmp-legend{color:var(--jp-ui-font-color2,#666);font-size:12px;"
        "margin:2px 0 4px 0}"
        ".agn-cmp-root .agn-cmp-seg{align-items:flex-start;margin:0;gap:0;width:max-content}"
        ".agn-cmp-root .agn-cmp-names.widget-toggle-buttons{margin:0;display:block}"
        + "".join(
            f".agn-cmp-root.agn-cmp-w{width} .agn-cmp-names.widget-toggle-buttons,"
            f".agn-cmp-root.agn-cmp-w{width} .agn-cmp-heads .agn-cmp-span"
            f"{{flex:0 0 {width}px;width:{width}px}}"
            for width in NAME_WIDTHS
        )
        + ".agn-cmp-root .agn-cmp-names>div{display:flex;flex-direction:column}"
        ".agn-cmp-root .agn-cmp-names .widget-toggle-button{width:100%;height:24px;margin:0;"
        "padding:0 4px;text-align:left;background:transparent;box-shadow:none;border:none;"
        "border-bottom:1px solid var(--jp-border-color2,#eee);border-radius:0;"
        "box-sizing:border-box;color:var(--jp-ui-font-color1,#222);font-family:inherit;"
        "overflow:hidden;text-overflow:ellipsis;white-space:pre}"
        ".agn-cmp-root .agn-cmp-names .widget-toggle-button:hover{text-decoration:underline;"
        "background:var(--jp-layout-color2,#f3f3f3)}"
        ".agn-cmp-root .agn-cmp-names .widget-toggle-button.mod-active{background:transparent}"
        ".agn-cmp-root .agn-cmp-figs{flex:0 0 auto}"
        ".agn-cmp-root .agn-line{height:24px;line-height:23px;box-sizing:border-box;"
        "border-bottom:1px solid var(--jp-border-color2,#eee);white-space:nowrap;"
        "font-variant-numeric:tabular-nums;display:flex;align-items:center}"
        ".agn-cmp-root .agn-cmp-group{display:flex;border-left:1px solid "
        "var(--jp-border-color1,#ccc);height:100%;align-items:center}"
        ".agn-cmp-root .agn-c{display:inline-block;text-align:right;padding:0 4px;"
        "box-sizing:border-box;flex:0 0 auto;overflow:hidden;text-overflow:ellipsis}"
        ".agn-cmp-root .agn-cmp-heads{display:flex;font-weight:600;align-items:flex-end}"
        ".agn-cmp-root .agn-cmp-heads .agn-cmp-span{padding-left:4px;box-sizing:border-box;"
        "overflow:hidden}"
        ".agn-cmp-root .agn-cmp-heads .agn-line{border-bottom:1px solid "
        "var(--jp-border-color1,#ccc)}"
        ".agn-cmp-root .agn-cmp-glabel{display:block;text-align:center;overflow:hidden;"
        "text-overflow:ellipsis;white-space:nowrap;border-left:1px solid "
        "var(--jp-border-color1,#ccc);padding:0 4px;box-sizing:border-box}"
        ".agn-cmp-root .agn-cmp-note{color:var(--jp-ui-font-color2,#666);font-size:12px;"
        "margin-top:2px}" + CELL_CSS.format(scope=".agn-cmp-root") + "</style>"
    )


def text_width(text: str, bold: bool = True) -> int:
    """About how wide (px) a cell must be to show `text` whole (an upper bound)."""
    width = 0.0
    for char in text:
        if char in NARROW_CHARS:
            width += NARROW_WIDTH
        elif char in WIDE_CHARS:
            width += WIDE_WIDTH
        elif char in SIGN_CHARS:
            width += SIGN_WIDTH
        else:
            width += CHAR_WIDTH_BOLD
    return round(width if bold else width * NOT_BOLD) + CELL_PADDING


def column_widths(
    cells: Mapping[str, Sequence[tuple[str, tuple[str, ...]]]],
    at_least: Mapping[str, int] | None = None,
) -> dict[str, int]:
    """The width (px) of each figure column of a group: `at_least` (by default its width
    in `COLUMNS`), or more when one of its `cells` (text, CSS classes) needs it (a
    highlighted "+0.38 ms", "+59m 59s", a token count in the millions), so that no
    figure is cut."""
    least = at_least or {name: width for name, _, width in COLUMNS}
    return {
        name: max(
            [least[name], *(text_width(text, TOP in classes) for text, classes in cells[name])]
        )
        for name, _, _ in COLUMNS
    }


def _widths_css(scope: str, widths: Sequence[Mapping[str, int]], runs: int) -> str:
    """The figure columns' widths of each group of the view whose root has the class
    `scope` (each group's cells are in a `agn-cmp-g<index>`), and of its "runs"."""
    return (
        f"<style>.agn-cmp-root.{scope} .agn-cmp-runs{{width:{runs}px}}"
        + "".join(
            f".agn-cmp-root.{scope} .agn-cmp-g{index} .agn-cmp-{name.replace('_', '-')}"
            f"{{width:{width}px}}"
            for index, group in enumerate(widths)
            for name, width in group.items()
        )
        + "</style>"
    )


class ComparisonView:
    """The ipywidgets tree of a comparison. `widget` is what is displayed; `close()`
    closes every widget it made. Keeps the table (figures only), not the traces."""

    def __init__(
        self,
        table: ComparisonTable,
        *,
        page_size: int = PAGE_SIZE,
        auto_budget: int = AUTO_BUDGET,
        max_rows: int = MAX_ROWS,
    ) -> None:
        import ipywidgets as widgets

        from agenta_notebook.views.widget import shared_models

        # The layout and styles every view shares: this view's models are its six widgets.
        layout, _button_style, html_style, names_style = shared_models()
        self.table = table
        self.state = CompareState(
            table.parents, page_size=page_size, auto_budget=auto_budget, max_rows=max_rows
        )
        self._closed = False
        self._created: list[Any] = []
        #: the output that shows this view, and what it shows once the view is closed
        self._handle: Any = None
        self._static: dict[str, Any] = {}
        self._lines: list[CompareRow] = self.state.rows()
        #: the class that scopes this view's column widths (unique in the page, whatever
        #: the kernel: its <style> applies to every open notebook), the widths of each
        #: group's columns and of "runs", and the table rows they were measured on
        self._scope = f"agn-cmp-v{secrets.token_hex(6)}"
        self._widths = [{name: width for name, _, width in COLUMNS} for _ in table.groups]
        self._runs_width = RUNS_WIDTH
        self._measured: set[int] = set()
        self._widen()
        names = [table.row_label(row) for row in range(table.rows)]
        self.header = self._own(
            widgets.HTML(
                self._header_value(),
                layout=layout,
                style=html_style,
                _dom_classes=("agn-cmp-headbox",),
            )
        )
        self.names = self._own(
            widgets.ToggleButtons(
                options=self._options(),
                index=None,
                tooltips=self._tooltips(),
                layout=layout,
                style=names_style,
                _dom_classes=("agn-cmp-names",),
            )
        )
        self.names.on_msg(lambda _widget, content, _buffers: self._on_names_msg(content))
        self.figures = self._own(
            widgets.HTML(
                self._figures_html(),
                layout=layout,
                style=html_style,
                _dom_classes=("agn-cmp-figs",),
            )
        )
        self.rows_box = self._own(
            widgets.HBox([self.names, self.figures], layout=layout, _dom_classes=("agn-cmp-seg",))
        )
        self.note = self._own(
            widgets.HTML(
                self._note_html(),
                layout=layout,
                style=html_style,
                _dom_classes=("agn-cmp-notebox",),
            )
        )
        self.widget = self._own(
            widgets.VBox(
                [self.header, self.rows_box, self.note],
                layout=layout,
                _dom_classes=(
                    "agn-cmp-root",
                    f"agn-cmp-w{name_width(names, table.depths)}",
                    self._scope,
                ),
            )
        )

    def _own(self, widget: Any) -> Any:
        self._created.append(widget)
        return widget

    # -- what it shows (also read by tests) -------------------------------------------------
    @property
    def columns(self) -> list[tuple[str, str]]:
        """The figure columns, in order: (group label, figure name); "runs" first for three
        or more traces."""
        heads = [("span", "runs")] if self.table.many else []
        return heads + [
            (group.label, name) for group in self.table.groups for name, _, _ in COLUMNS
        ]

    def cells(self, row: int) -> list[tuple[str, tuple[str, ...]]]:
        """The text and CSS classes of each column of a table row."""
        table = self.table
        out: list[tuple[str, tuple[str, ...]]] = []
        if table.many:
            out.append((f"{table.runs[row]:,}", ()))
        for group in table.groups:
            out += [table.cell(group, name, row) for name, _, _ in COLUMNS]
        return out

    @property
    def visible(self) -> list[tuple[CompareRow, str]]:
        """The lines drawn, in order: (line, button text)."""
        labels = self.names._options_labels
        return list(zip(self._lines, labels, strict=True))

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def widget_count(self) -> int:
        """How many widget models this view holds open: six, however many rows (the
        layout and styles are shared by every view, `views.widget.shared_models`)."""
        return len(self._created)

    # -- drawing ------------------------------------------------------------------------
    def _options(self) -> list[tuple[str, int]]:
        page = self.state.page_size
        return [(row_text(self.table, line, page), index) for index, line in enumerate(self._lines)]

    def _tooltips(self) -> list[str]:
        tips = []
        for line in self._lines:
            if line.kind == "more":
                tips.append("show more")
                continue
            name = safe_text(self.table.row_label(line.row), 500)
            if line.expandable:
                tips.append(f"{name}\n(click: {'collapse' if line.expanded else 'expand'})")
            else:
                tips.append(name)
        return tips

    def _group_line(self, index: int, group: Group, row: int) -> str:
        table = self.table
        parts = []
        for name, _, _ in COLUMNS:
            text, classes = table.cell(group, name, row)
            css = " ".join(("agn-c", f"agn-cmp-{name.replace('_', '-')}", *classes))
            parts.append(f'<span class="{css}">{escape(text, None)}</span>')
        return f'<span class="agn-cmp-group agn-cmp-g{index}">{"".join(parts)}</span>'

    def _widen(self) -> bool:
        """Widen the columns for the lines shown that were never measured (the widths
        only grow, so those measured before need no second look); True when one did."""
        table = self.table
        rows = [
            line.row
            for line in self._lines
            if line.kind == "span" and line.row not in self._measured
        ]
        if not rows:
            return False
        self._measured.update(rows)
        widths = [
            column_widths(
                {name: [table.cell(group, name, row) for row in rows] for name, _, _ in COLUMNS},
                at_least=old,
            )
            for group, old in zip(table.groups, self._widths, strict=True)
        ]
        runs = self._runs_width
        if table.many:
            runs = max([runs, *(text_width(f"{table.runs[row]:,}", bold=False) for row in rows)])
        changed = widths != self._widths or runs != self._runs_width
        self._widths, self._runs_width = widths, runs
        return changed

    def _header_value(self) -> str:
        return (
            _css() + _widths_css(self._scope, self._widths, self._runs_width) + self._header_html()
        )

    def _figures_html(self) -> str:
        table = self.table
        lines = []
        for line in self._lines:
            if line.kind == "more":
                lines.append('<div class="agn-line"></div>')
                continue
            parts = []
            if table.many:
                runs = f"{table.runs[line.row]:,}"
                parts.append(f'<span class="agn-c agn-cmp-runs">{runs}</span>')
            parts += [
                self._group_line(index, group, line.row) for index, group in enumerate(table.groups)
            ]
            lines.append(f'<div class="agn-line">{"".join(parts)}</div>')
        return "".join(lines)

    def _header_html(self) -> str:
        table = self.table
        if table.many:
            title = f"{table.traces:,} runs compared: min / median / max of each span"
            legend = (
                "runs: how many runs have the span · highlighted: the widest spreads "
                "(max − min) of each figure · + n unpriced: a run with unpriced calls "
                "counts its known cost, so the cost spread is one of lower bounds"
            )
        else:
            first, second = (escape(label) for label in table.labels)
            title = f"{first} → {second}: delta = second − first"
            legend = (
                "highlighted: the biggest changes of each figure · red: up, green: down · "
                "—: absent or unknown (a cost with unpriced calls has no delta)"
            )
        labels = "".join(
            # a group's label spans its columns and its left border
            f'<span class="agn-cmp-glabel" style="width:{sum(widths.values()) + 1}px" '
            f'title="{escape(group.label)}">{escape(group.label)}</span>'
            for group, widths in zip(table.groups, self._widths, strict=True)
        )
        runs_head = '<span class="agn-c agn-cmp-runs">runs</span>' if table.many else ""
        runs_pad = f'<span style="width:{self._runs_width}px"></span>' if table.many else ""
        heads = "".join(
            f'<span class="agn-cmp-group agn-cmp-g{index}">'
            + "".join(
                f'<span class="agn-c agn-cmp-{name.replace("_", "-")}">{head}</span>'
                for name, head, _ in COLUMNS
            )
            + "</span>"
            for index in range(len(table.groups))
        )
        return (
            f'<div class="agn-cmp-title">{title}</div>'
            f'<div class="agn-cmp-legend">{legend}</div>'
            f'<div class="agn-cmp-heads"><span class="agn-cmp-span"></span>'
            f'<span style="display:flex">{runs_pad}{labels}</span></div>'
            f'<div class="agn-cmp-heads"><span class="agn-cmp-span">span</span>'
            f'<span class="agn-line">{runs_head}{heads}</span></div>'
        )

    def _note_html(self) -> str:
        shown = sum(1 for line in self._lines if line.kind == "span")
        note = f"{shown:,} of {self.table.rows:,} aligned spans shown · click a row to expand it"
        if self.state.truncated:
            note += f" · stopped at {self.state.max_rows:,} rows: collapse some to see others"
        return f'<div class="agn-cmp-note">{escape(note, None)}</div>'

    def _render(self) -> None:
        self._lines = self.state.rows()
        # Columns widen for lines newly shown (the heads follow) and never narrow, so that
        # collapsing a row does not move the others' figures.
        if self._widen():
            self.header.value = self._header_value()
        names = self.names
        with names.hold_sync():
            names.options = self._options()
            names.tooltips = self._tooltips()
            names.index = None
        self.figures.value = self._figures_html()
        self.note.value = self._note_html()

    # -- user actions (also used by tests) ----------------------------------------------
    def toggle(self, row: int) -> None:
        """Expand or collapse table row `row`, as clicking it does."""
        if not self._closed:
            self.state.toggle(row)
            self._render()

    def expand_to_depth(self, depth: int) -> None:
        """Expand every row above `depth` (0: only the root shows)."""
        if not self._closed:
            self.state.expand_to_depth(depth)
            self._render()

    def click_line(self, position: int) -> None:
        """Click the `position`-th visible line as the front end does: it sets the row
        buttons' `index` and sends a "click" message."""
        if not 0 <= position < len(self._lines):
            raise IndexError("no such line")
        self.names.index = position
        self.names._handle_custom_msg({"event": "click"}, [])

    def _on_names_msg(self, content: Any) -> None:
        if self._closed or not isinstance(content, dict) or content.get("event") != "click":
            return
        index = self.names.index
        if index is None or not 0 <= index < len(self._lines):
            return
        line = self._lines[index]
        if line.kind == "more":
            self.state.show_more(line.row)
        else:
            self.state.toggle(line.row)
        self._render()

    # -- output -------------------------------------------------------------------------
    def view_bundle(self) -> dict[str, Any]:
        """The widget-view part of a display bundle."""
        from agenta_notebook.views.widget import widget_view_bundle

        return widget_view_bundle(self.widget)

    def close(self) -> None:
        """Close every widget this view made (idempotent); the shared layout and styles
        stay."""
        if self._closed:
            return
        self._closed = True
        RUNTIME.views.unregister_comparison(self)
        for widget in reversed(self._created):
            try:
                widget.close()
            except Exception:  # one failing close must not keep the others open
                internal_error("closing a widget of a comparison view")
        self._created.clear()
        handle, self._handle = self._handle, None
        if handle is not None:
            # Closed for newer views (or by a reset): the output keeps its static renderings.
            try:
                handle.update(self._static, raw=True)
            except Exception:
                internal_error("showing a closed comparison view as static HTML")

    def keep_static(self, handle: Any, static: dict[str, Any]) -> None:
        """When this view closes, show `static` (its text and HTML) in `handle`'s output."""
        self._handle, self._static = handle, static


def _in_kernel() -> bool:
    from IPython import get_ipython

    shell = get_ipython()
    return shell is not None and getattr(shell, "kernel", None) is not None


def show_comparison(table: ComparisonTable, static: dict[str, Any]) -> None:
    """Display a comparison in the current output: in a kernel, its widget with `static`
    (text and HTML) beside it; elsewhere `static`. A widget closed later for newer ones
    (or by a reset) leaves its output showing `static`, as a trace view does."""
    from IPython.display import display

    view = _new_view(table)
    if view is None:
        display(static, raw=True)  # type: ignore[no-untyped-call]
        return
    bundle = {**static, **view.view_bundle()}
    handle = display(bundle, raw=True, display_id=True)  # type: ignore[no-untyped-call]
    view.keep_static(handle, static)


def _new_view(table: ComparisonTable) -> ComparisonView | None:
    """A new registered view of `table`; None outside a kernel or when drawing failed."""
    if not _in_kernel():
        return None
    try:
        view = ComparisonView(table)
    except Exception:  # a bug of ours: the static HTML still shows
        internal_error("drawing a comparison widget")
        return None
    # Nothing else keeps the view: the runtime closes the oldest past a few, and all of
    # them on `RUNTIME.reset()` and when the extension is unloaded.
    RUNTIME.views.register_comparison(view)
    return view


def widget_bundle(table: ComparisonTable) -> dict[str, Any]:
    """The widget view of `table` for an output bundle; empty outside a kernel (a script,
    plain IPython), where the static HTML beside it is what shows."""
    view = _new_view(table)
    return {} if view is None else view.view_bundle()
