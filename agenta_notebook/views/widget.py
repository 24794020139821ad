"""The interactive trace tree: plain ipywidgets, lazy, paged, thread-safe.

Two layers:

- `TreeState` (`views/state.py`) is the pure model of what the tree shows: which spans
  are expanded, how many children of each are paged in, the sort, the filters, the
  selected span. It turns a `TraceTree` into the list of visible `Row`s and knows
  nothing of widgets.
- `TraceView` draws those rows with a constant number of widgets, whatever the size of
  the trace: a run of rows is one `ToggleButtons` (a button per row: indentation,
  ▸/▾, name and type) beside one `HTML` (a line of figures per row, 24 px each, so
  they line up). Clicking a row opens its details pane, inline below it, and expands
  it; clicking it again closes and collapses it. The rows after a selected row are a
  second run. The sort/filter/depth controls (behind "⚙ options") and the details
  pane are made on first use; every widget is created with its final state and a
  redraw sends only what changed, so a traced cell costs a handful of messages to the
  front end and a 100,000-span trace displays with a few models.

Figures come from the core only (`node.subtotal`, `node.own`, `node.priced`,
`trace.summary()`); every string from a span is escaped (see `html.escape`), since
ipywidgets' `HTML` inserts its value as raw markup.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, Final

import ipywidgets as widgets
from ipywidgets.widgets.widget_string import HTMLStyle

from agenta_notebook import forksafe
from agenta_notebook.core.rollup import SpanNode, TraceTree
from agenta_notebook.errors import internal_error
from agenta_notebook.live import Trace
from agenta_notebook.runtime import RUNTIME
from agenta_notebook.views.details import details_html
from agenta_notebook.views.html import (
    column_heads_html,
    escape,
    header_html,
    label,
    row_figures_html,
    safe_text,
)
from agenta_notebook.views.state import (
    AUTO_BUDGET,
    MAX_ROWS,
    PAGE_SIZE,
    Row,
    TreeState,
)

#: Indentation classes stop here; deeper rows indent like this depth.
MAX_INDENT: Final = 16
#: Width of the name column (pixels) at depth 0; indentation is taken from it.
NAME_WIDTH: Final = 340


def _shared_models() -> tuple[Any, Any, Any, Any]:
    """The layout and the styles (button, HTML, toggle buttons) every view shares.

    Made once per process (four models; again only if something closed them, e.g.
    `Widget.close_all()`), so that a displayed trace does not create and later close
    its own: each would be one more message to the front end per cell. Kept by the
    runtime (`RUNTIME.views.widget_models`).
    """
    views = RUNTIME.views
    models = views.widget_models
    if models is None or any(model.comm is None for model in models):
        models = (
            widgets.Layout(),
            widgets.ButtonStyle(),
            HTMLStyle(),
            widgets.ToggleButtonsStyle(),
        )
        views.widget_models = models
    layout, button_style, html_style, names_style = models
    return layout, button_style, html_style, names_style


def live_widget_count() -> int:
    """How many widget models exist in this process (open, not yet closed)."""
    from ipywidgets.widgets.widget import _instances

    return len(_instances)


# -- the widget ------------------------------------------------------------------------------


@functools.cache
def _css() -> str:
    return (
        "<style>"
        ".agn-root{font-size:13px;position:relative}"
        # A run of rows is one `ToggleButtons` (a button per row: indentation, ▸/▾, name
        # and type) beside one `HTML` (a line of figures per row), both 24 px a row.
        ".agn-root .agn-seg{align-items:flex-start;margin:0;gap:0}"
        f".agn-root .agn-names.widget-toggle-buttons{{width:{NAME_WIDTH + 26}px;"
        "flex:0 0 auto;margin:0;display:block}"
        ".agn-root .agn-names>div{display:flex;flex-direction:column}"
        f".agn-root .agn-names .widget-toggle-button{{width:{NAME_WIDTH + 26}px;height:24px;"
        "margin:0;padding:0 4px;text-align:left;background:transparent;box-shadow:none;"
        "border:none;border-bottom:1px solid var(--jp-border-color2,#eee);border-radius:0;"
        "box-sizing:border-box;color:var(--jp-ui-font-color1,#222);font-family:inherit;"
        "overflow:hidden;text-overflow:ellipsis;white-space:pre}"
        ".agn-root .agn-names .widget-toggle-button:hover{text-decoration:underline;"
        "background:var(--jp-layout-color2,#f3f3f3)}"
        ".agn-root .agn-names .widget-toggle-button.mod-active{background:transparent}"
        ".agn-root .agn-names.agn-sel .widget-toggle-button:last-child,"
        ".agn-root .agn-line.agn-selected{background:var(--jp-brand-color3,#dbeafe)}"
        ".agn-root .agn-figs.widget-html{margin:0;flex:1 1 auto;min-width:0;overflow:hidden}"
        ".agn-root .agn-figs .widget-html-content{height:auto;line-height:normal;"
        "display:block;align-self:stretch}"
        ".agn-root .agn-line{height:24px;line-height:23px;box-sizing:border-box;"
        "border-bottom:1px solid var(--jp-border-color2,#eee);white-space:nowrap;"
        "overflow:hidden;font-variant-numeric:tabular-nums}"
        ".agn-root .agn-c{display:inline-block;text-align:right;padding:0 6px;"
        "vertical-align:top}"
        ".agn-root .agn-dur{width:72px}.agn-root .agn-tok{width:80px}"
        ".agn-root .agn-cost{width:170px}"
        ".agn-root .agn-own{color:var(--jp-ui-font-color2,#777);font-size:11px}"
        ".agn-root .agn-colhead{font-weight:600;border-bottom:1px solid "
        "var(--jp-border-color1,#ccc)}"
        f".agn-root .agn-colhead .agn-cname{{display:inline-block;width:{NAME_WIDTH + 26}px;"
        "padding-left:4px}"
        ".agn-m{border-radius:3px;padding:0 4px;margin-left:4px;font-size:11px;"
        "white-space:nowrap}"
        ".agn-m-error{background:#fdecea;color:#b71c1c}"
        ".agn-m-error-up{color:#b71c1c}"
        ".agn-m-unpriced{background:#fff4d6;color:#7a5b00}"
        ".agn-m-mismatch{background:#f3e5f5;color:#6a1b9a}"
        ".agn-m-running{background:#e3f2fd;color:#0d47a1}"
        ".agn-m-detached{background:#eceff1;color:#37474f}"
        ".agn-m-twice{background:#e8eaf6;color:#283593}"
        ".agn-m-warning{background:#fff8e1;color:#8d6e00}"
        ".agn-root .agn-header .agn-title{font-weight:600;font-size:14px}"
        ".agn-root .agn-models{border-collapse:collapse;font-size:12px;margin:4px 0}"
        ".agn-root .agn-models td,.agn-root .agn-models th{padding:0 8px;text-align:right}"
        ".agn-root .agn-models td:first-child,.agn-root .agn-models th:first-child"
        "{text-align:left}"
        ".agn-root .agn-details-box{margin:2px 0 6px 26px}"
        ".agn-root .agn-details{border-left:3px solid var(--jp-brand-color1,#1565c0);"
        "padding:4px 10px;max-height:480px;overflow:auto;white-space:normal;line-height:1.4;"
        "background:var(--jp-layout-color1,#fff)}"
        ".agn-root .agn-details table{border-collapse:collapse;margin:4px 0}"
        ".agn-root .agn-details td,.agn-root .agn-details th{padding:1px 8px;"
        "text-align:left;vertical-align:top;"
        "border-bottom:1px solid var(--jp-border-color3,#f0f0f0)}"
        ".agn-root .agn-details .agn-d-title{font-weight:600;font-size:14px}"
        ".agn-root .agn-details pre{max-height:240px;overflow:auto;font-size:11px}"
        ".agn-root .agn-controls{flex-wrap:wrap;gap:4px;align-items:center}"
        ".agn-root .agn-options.jupyter-button{width:auto;height:22px;margin:2px 0;"
        "padding:0 6px;font-size:12px;background:transparent;box-shadow:none;"
        "color:var(--jp-brand-color1,#1565c0);position:absolute;top:0;right:0;z-index:1}"
        ".agn-root .agn-controls{padding-right:120px}"
        "</style>"
    )


INDENT_TEXT: Final = "\u2003"  # an em space per level: kept by HTML, unlike spaces


def row_label(row: Row, page_size: int = PAGE_SIZE) -> str:
    """The text of a row's button: indentation, ▸/▾ when it has children, name · type."""
    indent = INDENT_TEXT * min(row.depth, MAX_INDENT)
    if row.kind == "more":
        step = min(page_size, row.remaining)
        return f"{indent}{INDENT_TEXT} show {step:,} more ({row.remaining:,} not shown)"
    glyph = ("▾" if row.expanded else "▸") if row.expandable else INDENT_TEXT
    return f"{indent}{glyph} {label(row.node)}"


class _Segment:
    """A run of consecutive rows: one `ToggleButtons` (the row buttons) beside one `HTML`
    (the figure lines), in an `HBox`. Three models however many rows it shows."""

    __slots__ = ("box", "figures", "lines", "names", "rows")

    def __init__(self, box: Any, names: Any, figures: Any) -> None:
        self.box = box
        self.names = names
        self.figures = figures
        self.rows: list[Row] = []
        self.lines: list[str] = []


class TraceView:
    """The ipywidgets tree of one trace. `widget` is what is displayed.

    Built to be cheap to display: no widget per row (see the module's docstring), every
    widget is created with its final state (a trait set afterwards costs one more
    message to the front end), the sort/filter/depth controls and the details pane are
    only created when first used (behind "⚙ options" and a click on a row), and a
    redraw of an unchanged tree sends nothing.

    Thread-safe: `update()` may be called from any thread; user events arrive on the
    kernel's thread. `close()` closes every widget this view created.
    """

    def __init__(
        self,
        trace: Trace,
        *,
        page_size: int = PAGE_SIZE,
        auto_budget: int = AUTO_BUDGET,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self.trace = trace
        self._lock = forksafe.new_rlock()
        self._closed = False
        self._created: dict[int, Any] = {}
        self._segments: list[_Segment] = []
        self._details: Any = None
        self._details_for: tuple[int, SpanNode] | None = None
        self._controls: Any = None
        self._control: dict[str, Any] = {}
        self._options_open = False
        self._syncing_controls = False
        self._types: list[str] = []
        with self._lock:
            tree = trace.tree
            self.state = TreeState(
                tree, page_size=page_size, auto_budget=auto_budget, max_rows=max_rows
            )
            shared = _shared_models()
            self._layout, self._button_style, self._html_style, self._names_style = shared
            # Everything is made with its final state: no update message follows.
            rows = self.state.rows()
            self._header_for: TraceTree | None = tree
            self._header_part = header_html(trace.summary())
            # One HTML for the style sheet, the totals, the rows note and the column heads.
            self.header = self._html(self._header_value(rows), "agn-headbox")
            self._drawn_tree: TraceTree | None = tree
            self.options_button = self._button(
                self._toggle_options,
                "agn-options",
                description="⚙ options",
                tooltip="sort, filter, expand to depth",
            )
            self.rows_box = self._own(
                widgets.VBox(
                    self._rows_children(rows), layout=self._layout, _dom_classes=("agn-rows",)
                )
            )
            self.widget = self._own(
                widgets.VBox(
                    [self.options_button, self.header, self.rows_box],
                    layout=self._layout,
                    _dom_classes=("agn-root",),
                )
            )

    # -- widget bookkeeping -----------------------------------------------------------
    def _own(self, widget: Any) -> Any:
        self._created[id(widget)] = widget
        return widget

    def _html(self, value: str, *classes: str) -> Any:
        # State given at construction goes out with the widget's creation message;
        # setting it afterwards would cost one more message per widget.
        return self._own(
            widgets.HTML(value, layout=self._layout, style=self._html_style, _dom_classes=classes)
        )

    def _button(self, on_click: Callable[[], None], *classes: str, **state: Any) -> Any:
        button = self._own(
            widgets.Button(
                layout=self._layout, style=self._button_style, _dom_classes=classes, **state
            )
        )
        button.on_click(lambda _button: self._event(on_click))
        return button

    @property
    def widget_count(self) -> int:
        """How many widget models this view holds open."""
        return len(self._created)

    @property
    def closed(self) -> bool:
        return self._closed

    def _event(self, action: Callable[[], None]) -> None:
        with self._lock:
            if self._closed:
                return
            action()
            self._render()

    @property
    def details(self) -> Any:
        """The details pane (an `HTML`), created the first time a row is selected."""
        if self._details is None:
            self._details = self._html("", "agn-details-box")
        return self._details

    # -- controls (created on first use) ----------------------------------------------
    @property
    def controls(self) -> Any:
        """The box of sort, filter and depth controls (shown by "⚙ options")."""
        with self._lock:
            if self._controls is None:
                self._controls = self._make_controls()
            return self._controls

    def _toggle_options(self) -> None:
        controls = self.controls
        self._options_open = not self._options_open
        parts = [self.options_button]
        if self._options_open:
            parts.append(controls)
        parts += [self.header, self.rows_box]
        with self.widget.hold_sync():
            self.widget.children = tuple(parts)
        self.options_button.description = "⚙ hide options" if self._options_open else "⚙ options"

    def toggle_options(self) -> None:
        """Show or hide the controls, as clicking "⚙ options" does."""
        self._event(self._toggle_options)

    def _get_control(self, name: str) -> Any:
        _ = self.controls
        return self._control[name]

    @property
    def sort_control(self) -> Any:
        return self._get_control("sort")

    @property
    def text_control(self) -> Any:
        return self._get_control("text")

    @property
    def type_control(self) -> Any:
        return self._get_control("type")

    @property
    def model_calls_control(self) -> Any:
        return self._get_control("model_calls")

    @property
    def errors_control(self) -> Any:
        return self._get_control("errors")

    @property
    def depth_control(self) -> Any:
        return self._get_control("depth")

    def _make_controls(self) -> Any:
        state = self.state
        self._types = state.types()
        type_options = [("all types", "")] + [(safe_text(t), t) for t in self._types]
        made: dict[str, Any] = {
            "sort": widgets.Dropdown(
                options=[("start time", "start"), ("cost", "cost"), ("duration", "duration")],
                value=state.sort,
                description="sort",
                layout=widgets.Layout(width="170px"),
                style={"description_width": "32px"},
            ),
            "text": widgets.Text(
                value=state.text,
                placeholder="filter by text",
                continuous_update=False,
                layout=widgets.Layout(width="170px"),
            ),
            "type": widgets.Dropdown(
                options=type_options,
                value=state.span_type if state.span_type in self._types else "",
                layout=widgets.Layout(width="130px"),
            ),
            "model_calls": widgets.Checkbox(
                value=state.model_calls_only,
                description="model calls only",
                indent=False,
                layout=widgets.Layout(width="130px"),
            ),
            "errors": widgets.Checkbox(
                value=state.errors_only,
                description="errors only",
                indent=False,
                layout=widgets.Layout(width="100px"),
            ),
            "depth": widgets.BoundedIntText(
                value=2, min=0, max=10_000, layout=widgets.Layout(width="60px")
            ),
        }
        expand = widgets.Button(description="expand to depth", layout=widgets.Layout(width="130px"))
        collapse = widgets.Button(description="collapse all", layout=widgets.Layout(width="100px"))
        for control in (*made.values(), expand, collapse):
            self._own(control)
            self._own(control.layout)
            self._own(control.style)
        self._control = made
        for name in ("sort", "text", "type", "model_calls", "errors"):
            made[name].observe(self._on_controls, names="value")
        expand.on_click(
            lambda _b: self._event(lambda: self.state.expand_to_depth(made["depth"].value))
        )
        collapse.on_click(lambda _b: self._event(lambda: self.state.expand_to_depth(0)))
        box = widgets.HBox([*made.values(), expand, collapse], _dom_classes=("agn-controls",))
        self._own(box)
        self._own(box.layout)
        return box

    def _on_controls(self, _change: Any) -> None:
        if self._syncing_controls:
            return
        control = self._control

        def apply() -> None:
            self.state.set_sort(control["sort"].value)
            self.state.set_filter(
                text=control["text"].value,
                span_type=control["type"].value or None,
                model_calls_only=bool(control["model_calls"].value),
                errors_only=bool(control["errors"].value),
            )

        self._event(apply)

    def _sync_type_options(self) -> None:
        if self._controls is None:
            # No controls yet: they are made with the types of the tree they first see;
            # only a filter on a type that is gone has to be dropped.
            if self.state.span_type and self.state.span_type not in self.state.types():
                self.state.set_filter(span_type=None)
            return
        types = self.state.types()
        if types == self._types:
            return
        self._types = types
        type_control = self._control["type"]
        current = type_control.value
        self._syncing_controls = True
        try:
            with type_control.hold_sync():
                type_control.options = [("all types", "")] + [(safe_text(t), t) for t in types]
                type_control.value = current if current in types else ""
        finally:
            self._syncing_controls = False
        if current and current not in types:
            self.state.set_filter(span_type=None)

    # -- user actions (also used by tests) ----------------------------------------------
    def toggle(self, span_id: int) -> None:
        """Expand or collapse a span, as clicking its toggle does."""
        self._event(lambda: self.state.toggle(span_id))

    def select(self, span_id: int | None) -> None:
        """Open (or close) the details of a span, as clicking its name does."""
        self._event(lambda: self.state.select(span_id))

    def show_more(self, span_id: int) -> None:
        """Page in more children, as clicking "show 100 more" does."""
        self._event(lambda: self.state.show_more(span_id))

    def click(self, span_id: int) -> None:
        """What clicking a row does: open its details and expand it; on the selected row,
        close them and collapse it."""
        self._event(lambda: self._click(span_id))

    def _click(self, span_id: int) -> None:
        state = self.state
        node = state.node(span_id)
        if node is None:
            return
        expanded = bool(state.children(node)) and state.is_expanded(node)
        if span_id == state.selected:
            state.select(None)
            if expanded:
                state.toggle(span_id)
        else:
            state.select(span_id)
            if state.children(node) and not expanded:
                state.toggle(span_id)

    @property
    def visible(self) -> list[tuple[Row, str, str]]:
        """What the rows show, in order: (row, button text, figures HTML)."""
        out: list[tuple[Row, str, str]] = []
        with self._lock:  # not half-way through a redraw on a timer thread
            for segment in self._segments:
                if segment.box in self.rows_box.children:
                    labels = segment.names._options_labels
                    out += zip(segment.rows, labels, segment.lines, strict=True)
        return out

    def click_row(self, position: int) -> None:
        """Click the `position`-th visible row as the front end does: it sets the row
        buttons' `index` and sends a "click" message."""
        for segment in self._segments:
            if segment.box not in self.rows_box.children:
                continue
            if position < len(segment.rows):
                segment.names.index = position
                segment.names._handle_custom_msg({"event": "click"}, [])
                return
            position -= len(segment.rows)
        raise IndexError("no such row")

    # -- drawing ----------------------------------------------------------------------
    def update(self) -> None:
        """Redraw from the trace's current tree (call after spans arrived).

        Nothing is drawn (and nothing sent) when the tree has not changed since the
        last drawing.
        """
        with self._lock:
            if self._closed:
                return
            tree = self.trace.tree
            if tree is self._drawn_tree:
                return
            self.state.set_tree(tree)
            self._render()

    def _status_html(self, rows: list[Row]) -> str:
        state = self.state
        shown = sum(1 for row in rows if row.kind == "span")
        note = f"{shown:,} of {len(state.tree.nodes):,} spans shown"
        if state.filter_active:
            note += " (filtered)"
        if state.truncated:
            note += f" · stopped at {state.max_rows:,} rows: collapse or filter to see others"
        return (
            f'<div class="agn-note">{escape(note, None)}</div>'
            '<div class="agn-colhead"><span class="agn-cname">span · type</span>'
            f"{column_heads_html()}</div>"
        )

    def _header_value(self, rows: list[Row]) -> str:
        return _css() + self._header_part + self._status_html(rows)

    @property
    def status(self) -> Any:
        """The widget with the rows note ("N of M spans shown"): the header."""
        return self.header

    def _rows_children(self, rows: list[Row]) -> list[Any]:
        """The children of the rows box: one run of rows, or the rows up to the selected
        one, its details pane, and the rows after it."""
        selected = self.state.selected
        cut = None
        if selected is not None:
            for position, row in enumerate(rows):
                if row.kind == "span" and row.node.span_id == selected:
                    cut = position + 1
                    break
        if cut is None:
            return [self._segment(0, rows, False).box]
        node = rows[cut - 1].node
        self._draw_details(node)
        children = [self._segment(0, rows[:cut], True).box, self.details]
        if cut < len(rows):
            children.append(self._segment(1, rows[cut:], False).box)
        return children

    def _segment_state(self, rows: list[Row], selected: bool) -> dict[str, Any]:
        labels = [row_label(row, self.state.page_size) for row in rows]
        tooltips = []
        lines = []
        for row in rows:
            if row.kind == "more":
                tooltips.append("show more")
                lines.append('<div class="agn-line"></div>')
                continue
            node = row.node
            if row.expandable:
                hint = "details, and collapse" if row.expanded else "details and expand"
            else:
                hint = "details"
            tooltips.append(f"{safe_text(node.name, 500)}\n(click: {hint}; again: close)")
            lines.append(f'<div class="agn-line">{row_figures_html(node)}</div>')
        if selected and lines:
            lines[-1] = lines[-1].replace('"agn-line"', '"agn-line agn-selected"', 1)
        return {
            "options": [(text, index) for index, text in enumerate(labels)],
            "labels": tuple(labels),
            "tooltips": tuple(tooltips),
            "classes": ("agn-names", "agn-sel") if selected else ("agn-names",),
            "lines": lines,
            "figures": "".join(lines),
        }

    def _segment(self, number: int, rows: list[Row], selected: bool) -> _Segment:
        """Segment `number` (0 or 1) drawn with `rows`: made the first time, else updated
        (traits set to their current value send nothing)."""
        state = self._segment_state(rows, selected)
        if number < len(self._segments):
            segment = self._segments[number]
            segment.rows, segment.lines = rows, state["lines"]
            names = segment.names
            if names._options_labels != state["labels"] or names.tooltips != state["tooltips"]:
                with names.hold_sync():
                    names.options = state["options"]
                    names.tooltips = state["tooltips"]
                    names.index = None
            names._dom_classes = state["classes"]
            segment.figures.value = state["figures"]
            return segment
        names = self._own(
            widgets.ToggleButtons(
                options=state["options"],
                index=None,
                tooltips=state["tooltips"],
                layout=self._layout,
                style=self._names_style,
                _dom_classes=state["classes"],
            )
        )
        names.on_msg(lambda widget, content, _buffers: self._on_names_msg(number, content))
        figures = self._html(state["figures"], "agn-figs")
        box = self._own(
            widgets.HBox([names, figures], layout=self._layout, _dom_classes=("agn-seg",))
        )
        segment = _Segment(box, names, figures)
        segment.rows, segment.lines = rows, state["lines"]
        self._segments.append(segment)
        return segment

    def _on_names_msg(self, number: int, content: Any) -> None:
        if not isinstance(content, dict) or content.get("event") != "click":
            return
        with self._lock:
            if self._closed or number >= len(self._segments):
                return
            segment = self._segments[number]
            index = segment.names.index
            if index is None or not 0 <= index < len(segment.rows):
                return
            row = segment.rows[index]
            # The buttons are not a selection: the clicked one must not stay "pressed".
            segment.names.index = None
            if row.kind == "more":
                self.state.show_more(row.node.span_id)
            else:
                self._click(row.node.span_id)
            self._render()

    def _render(self) -> None:
        state = self.state
        tree = state.tree
        if self._header_for is not tree:
            self._header_part = header_html(self.trace.summary())
            self._sync_type_options()
            self._header_for = tree
        self._drawn_tree = tree
        rows = state.rows()
        self.rows_box.children = tuple(self._rows_children(rows))
        self.header.value = self._header_value(rows)

    def _draw_details(self, node: SpanNode) -> None:
        if self._details_for is not None and self._details_for[1] is node:
            return
        self._details_for = (node.span_id, node)
        value = details_html(node)
        if self._details is None:
            self._details = self._html(value, "agn-details-box")
        else:
            self._details.value = value

    # -- output -----------------------------------------------------------------------
    def view_bundle(self) -> dict[str, Any]:
        """The widget-view part of a display bundle."""
        return {
            "application/vnd.jupyter.widget-view+json": {
                "version_major": 2,
                "version_minor": 0,
                "model_id": self.widget.model_id,
            }
        }

    def close(self) -> None:
        """Close every widget this view created (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            created = list(self._created.values())
            self._created.clear()
            self._segments.clear()
        for widget in reversed(created):
            try:
                widget.close()
            except Exception:  # a half-torn-down kernel must not stop the others closing
                internal_error("closing a widget of a trace view")


# Made at import, so that they never count as a view's models.
_shared_models()
