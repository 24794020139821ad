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
  second run. The names and the figures are flex items: the figure columns have fixed
  widths, the waterfall (a CSS bar per row) narrows, the names give way first (ellipsis,
  full name in the tooltip), so no figure is clipped however narrow the output. The
  header and the "costliest spans" list (one `ToggleButtons`, beside the per-model
  table) come before the column heads (their own `HTML`, full width, laid out like the
  rows). The sort/filter/depth controls (behind "⚙ options") and the details
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
from typing import Any, Final, Literal

import ipywidgets as widgets
from ipywidgets.widgets.widget_string import HTMLStyle

from agenta_notebook import forksafe
from agenta_notebook.core.rollup import SpanNode, TraceTree
from agenta_notebook.errors import internal_error
from agenta_notebook.live import Trace
from agenta_notebook.runtime import RUNTIME
from agenta_notebook.views.details import DETAILS_CSS, details_html
from agenta_notebook.views.html import (
    ViewScale,
    budget_html,
    budget_state,
    column_heads_html,
    costliest_label,
    escape,
    header_html,
    label,
    row_figures_html,
    safe_text,
    tree_costliest,
    tree_scale,
)
from agenta_notebook.views.state import (
    AUTO_BUDGET,
    MAX_ROWS,
    PAGE_SIZE,
    Row,
    TreeState,
    parse_min_cost,
    parse_min_duration,
)

#: The tooltips of the "cost ≥" and "duration ≥" controls, and their border when the
#: text typed in is not a valid amount.
_MIN_COST_HINT: Final = "show spans costing at least this many dollars (their subtotal)"
_MIN_DURATION_HINT: Final = "show spans lasting at least this long: 200 (ms), 200ms, 1.5s"
_INVALID_BORDER: Final = "1px solid #d9534f"

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


#: The shared layout and styles for the other widget views (the comparison's).
shared_models = _shared_models


def live_widget_count() -> int:
    """How many widget models exist in this process (open, not yet closed)."""
    from ipywidgets.widgets.widget import _instances

    return len(_instances)


# -- the widget ------------------------------------------------------------------------------


#: Fixed widths (px) of the figure columns; they never shrink, so no number is clipped.
DURATION_WIDTH: Final = 74
TOKENS_WIDTH: Final = 78
COST_WIDTH: Final = 118
SHARE_WIDTH: Final = 46
#: The marks' column (error, unpriced, ...): this wide when there is room, else narrower.
MARKS_WIDTH: Final = 180
#: What the figures take at least: the fixed columns and the narrowest waterfall.
FIGURES_MIN_WIDTH: Final = DURATION_WIDTH + TOKENS_WIDTH + COST_WIDTH + SHARE_WIDTH + 36

#: The name column and the figures share a row as flex items: the names take their
#: basis when there is room and give it up first (ellipsis; the tooltip has the full
#: name), the waterfall narrows next, the figure columns keep their width and place.
_NAMES_FLEX: Final = f"flex:1 1 {NAME_WIDTH - 60}px;min-width:0;max-width:{NAME_WIDTH + 160}px"
_FIGS_FLEX: Final = (
    f"flex:1 1 {FIGURES_MIN_WIDTH + 200 + MARKS_WIDTH}px;min-width:{FIGURES_MIN_WIDTH}px"
)


@functools.cache
def _css() -> str:
    return (
        "<style>"
        ".agn-root{font-size:13px;position:relative}"
        # The root's parts wrap as rows: the header and the costliest list side by side,
        # the rows note (with the column heads) and the rows full width.
        ".agn-root.widget-vbox{flex-direction:row;flex-wrap:wrap;align-items:flex-end}"
        ".agn-root>.agn-controls,.agn-root>.agn-statusbox,.agn-root>.agn-rows"
        "{flex:0 0 100%;max-width:100%;min-width:0}"
        ".agn-root>.agn-headbox{flex:1 1 420px;min-width:0;margin:0}"
        ".agn-root .widget-html-content{width:100%}"
        ".agn-root>.agn-statusbox{margin:0}"
        ".agn-root .agn-costliest.widget-toggle-buttons{flex:0 1 auto;min-width:0;"
        "max-width:100%;flex-direction:column;align-items:flex-start;margin:0 0 4px 0;"
        "height:auto}"
        ".agn-root .agn-costliest .widget-label{width:auto;max-width:none;font-weight:600;"
        "font-size:12px;text-align:left;height:18px;line-height:18px;margin:0}"
        ".agn-root .agn-costliest>div{display:flex;flex-direction:column;min-width:0;"
        "max-width:100%}"
        ".agn-root .agn-costliest .widget-toggle-button{width:auto;max-width:420px;"
        "height:20px;line-height:20px;margin:0;padding:0 4px;font-size:12px;text-align:left;"
        "background:transparent;box-shadow:none;border:none;border-radius:0;"
        "color:var(--jp-brand-color1,#1565c0);font-variant-numeric:tabular-nums;"
        "overflow:hidden;text-overflow:ellipsis;white-space:pre}"
        ".agn-root .agn-costliest .widget-toggle-button:hover{text-decoration:underline}"
        # A run of rows is one `ToggleButtons` (a button per row: indentation, ▸/▾, name
        # and type) beside one `HTML` (a line of figures per row), both 24 px a row.
        ".agn-root .agn-seg{align-items:flex-start;margin:0;gap:0;width:100%}"
        f".agn-root .agn-names.widget-toggle-buttons{{{_NAMES_FLEX};margin:0;display:block}}"
        ".agn-root .agn-names>div{display:flex;flex-direction:column}"
        ".agn-root .agn-names .widget-toggle-button{width:100%;height:24px;"
        "margin:0;padding:0 4px;text-align:left;background:transparent;box-shadow:none;"
        "border:none;border-bottom:1px solid var(--jp-border-color2,#eee);border-radius:0;"
        "box-sizing:border-box;color:var(--jp-ui-font-color1,#222);font-family:inherit;"
        "overflow:hidden;text-overflow:ellipsis;white-space:pre}"
        ".agn-root .agn-names .widget-toggle-button:hover{text-decoration:underline;"
        "background:var(--jp-layout-color2,#f3f3f3)}"
        ".agn-root .agn-names .widget-toggle-button.mod-active{background:transparent}"
        ".agn-root .agn-names.agn-sel .widget-toggle-button:last-child,"
        ".agn-root .agn-line.agn-selected{background:var(--jp-brand-color3,#dbeafe)}"
        f".agn-root .agn-figs.widget-html{{margin:0;{_FIGS_FLEX};overflow:hidden}}"
        ".agn-root .agn-figs .widget-html-content{height:auto;line-height:normal;"
        "display:block;align-self:stretch}"
        ".agn-root .agn-line{height:24px;line-height:23px;box-sizing:border-box;"
        "border-bottom:1px solid var(--jp-border-color2,#eee);white-space:nowrap;"
        "overflow:hidden;font-variant-numeric:tabular-nums;display:flex;align-items:center}"
        ".agn-root .agn-c{display:inline-block;text-align:right;padding:0 6px;"
        "box-sizing:border-box;flex:0 0 auto;overflow:hidden}"
        f".agn-root .agn-dur{{width:{DURATION_WIDTH}px}}"
        f".agn-root .agn-tok{{width:{TOKENS_WIDTH}px}}"
        f".agn-root .agn-cost{{width:{COST_WIDTH}px;padding-right:0}}"
        ".agn-root .agn-unp{display:inline-block;width:16px;text-align:left;font-size:10px;"
        "color:#7a5b00}"
        f".agn-root .agn-share{{width:{SHARE_WIDTH}px;position:relative;font-size:11px;"
        "color:var(--jp-ui-font-color2,#666)}"
        ".agn-root .agn-sbar{position:absolute;left:6px;bottom:3px;height:3px;"
        "max-width:calc(100% - 12px);background:#f9a825;border-radius:1px}"
        ".agn-root .agn-wf{flex:1 1 160px;min-width:24px;max-width:480px;height:10px;"
        "position:relative;margin:0 6px;background:rgba(128,128,128,.09);border-radius:2px}"
        ".agn-root .agn-wf-head{height:auto;background:none;font-weight:600;"
        "text-align:left;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}"
        ".agn-root .agn-bar{position:absolute;top:0;bottom:0;min-width:2px;"
        "background:#5c8fd6;border-radius:2px;opacity:.85}"
        ".agn-root .agn-bar-run{background:repeating-linear-gradient(45deg,#90caf9 0 4px,"
        "#e3f2fd 4px 8px);border-right:2px dashed #1565c0;border-radius:2px 0 0 2px}"
        ".agn-root .agn-bar-err{background:#e53935}"
        # The marks are a column of their own (same basis on every line, so that every
        # line shrinks alike and the columns and bars stay in place): it gives way first.
        f".agn-root .agn-marks{{flex:0 1 {MARKS_WIDTH}px;min-width:0;overflow:hidden;"
        "text-overflow:ellipsis;white-space:nowrap}"
        ".agn-root .agn-own{color:var(--jp-ui-font-color2,#777);font-size:11px}"
        ".agn-root .agn-colhead{font-weight:600;border-bottom:1px solid "
        "var(--jp-border-color1,#ccc);display:flex;align-items:flex-end}"
        f".agn-root .agn-colhead .agn-cname{{{_NAMES_FLEX};padding-left:4px;"
        "box-sizing:border-box;overflow:hidden;text-overflow:ellipsis;white-space:nowrap}"
        f".agn-root .agn-colhead .agn-chead{{{_FIGS_FLEX};border-bottom:none}}"
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
        ".agn-root .agn-controls{padding-right:120px}" + DETAILS_CSS + "</style>"
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


def widget_view_bundle(widget: Any) -> dict[str, Any]:
    """The part of a display bundle that shows `widget` (the ipywidgets view mimetype)."""
    return {
        "application/vnd.jupyter.widget-view+json": {
            "version_major": 2,
            "version_minor": 0,
            "model_id": widget.model_id,
        }
    }


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
            self._scale: ViewScale = tree_scale(tree)
            self._top: list[SpanNode] = tree_costliest(tree)
            self.costliest: Any = None
            rows = self.state.rows()
            self._header_for: TraceTree | None = tree
            self._header_part = header_html(
                trace.summary(tree),
                places=self._scale.places,
                budget=budget_html(budget_state(tree), self._scale.places),
            )
            # One HTML for the style sheet and the totals, one for the rows note and the
            # column heads (full width, so that they line up with the rows).
            self.header = self._html(_css() + self._header_part, "agn-headbox")
            self.status_line = self._html(self._status_html(rows), "agn-statusbox")
            self._drawn_tree: TraceTree | None = tree
            if self._top:
                self.costliest = self._make_costliest()
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
                    [self.options_button, *self._body()],
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
        parts += self._body()
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

    @property
    def min_cost_control(self) -> Any:
        """The "cost ≥" filter: dollars, as a user types them ("0.01", "$0.01")."""
        return self._get_control("min_cost")

    @property
    def min_duration_control(self) -> Any:
        """The "duration ≥" filter: "200" (ms), "200ms", "1.5s"."""
        return self._get_control("min_duration")

    @property
    def scope_control(self) -> Any:
        """What the waterfall bars are drawn against: the whole trace or the parent."""
        return self._get_control("scope")

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
            "min_cost": widgets.Text(
                value="" if state.min_cost is None else str(state.min_cost),
                description="cost ≥",
                placeholder="$0.01",
                tooltip=_MIN_COST_HINT,
                continuous_update=False,
                layout=widgets.Layout(width="120px"),
                style={"description_width": "46px"},
            ),
            "min_duration": widgets.Text(
                value="" if state.min_duration_ms is None else f"{state.min_duration_ms:g}ms",
                description="duration ≥",
                placeholder="1.5s",
                tooltip=_MIN_DURATION_HINT,
                continuous_update=False,
                layout=widgets.Layout(width="140px"),
                style={"description_width": "70px"},
            ),
            "scope": widgets.Dropdown(
                options=[("bars: whole trace", "trace"), ("bars: parent", "parent")],
                value=state.waterfall_scope,
                tooltip="draw each waterfall bar against the whole trace or its parent span",
                layout=widgets.Layout(width="150px"),
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
        watched = ("sort", "text", "type", "model_calls", "errors", "min_cost", "min_duration")
        for name in (*watched, "scope"):
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

        def threshold(name: str, hint: str) -> str | Literal[False]:
            """The control's text, or False (filter unchanged) when it is not valid: the
            control then shows why (a red border and its tooltip)."""
            widget = control[name]
            text = str(widget.value)
            try:
                if name == "min_cost":
                    parse_min_cost(text)
                else:
                    parse_min_duration(text)
            except ValueError as error:
                widget.layout.border = _INVALID_BORDER
                widget.tooltip = str(error)
                return False
            widget.layout.border = None
            widget.tooltip = hint
            return text

        def apply() -> None:
            self.state.set_sort(control["sort"].value)
            self.state.set_waterfall_scope(control["scope"].value)
            self.state.set_filter(
                text=control["text"].value,
                span_type=control["type"].value or None,
                model_calls_only=bool(control["model_calls"].value),
                errors_only=bool(control["errors"].value),
                min_cost=threshold("min_cost", _MIN_COST_HINT),
                min_duration_ms=threshold("min_duration", _MIN_DURATION_HINT),
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
        note = f"{shown:,} of {state.tree.size:,} spans shown"
        if state.filter_active:
            note += " (filtered)"
            if state.nothing_matches:
                note += " · no span matches the filters"
        if state.truncated:
            note += f" · stopped at {state.max_rows:,} rows: collapse or filter to see others"
        return (
            f'<div class="agn-note">{escape(note, None)}</div>'
            '<div class="agn-colhead"><span class="agn-cname">span · type</span>'
            f'<span class="agn-chead agn-line">{column_heads_html()}</span></div>'
        )

    @property
    def status(self) -> Any:
        """The widget with the rows note ("N of M spans shown") and the column heads."""
        return self.status_line

    def _body(self) -> list[Any]:
        """The root's children below the options: header, costliest list, status, rows."""
        parts = [self.header]
        if self.costliest is not None:
            parts.append(self.costliest)
        return [*parts, self.status_line, self.rows_box]

    # -- the costliest spans -----------------------------------------------------------
    def _costliest_state(self) -> dict[str, Any]:
        labels = [costliest_label(node, self._scale) for node in self._top]
        return {
            "options": [(text, index) for index, text in enumerate(labels)],
            "tooltips": tuple(f"show {safe_text(node.name, 200)}" for node in self._top),
        }

    def _make_costliest(self) -> Any:
        state = self._costliest_state()
        buttons = self._own(
            widgets.ToggleButtons(
                options=state["options"],
                index=None,
                tooltips=state["tooltips"],
                description="costliest spans",
                layout=self._layout,
                style=self._names_style,
                _dom_classes=("agn-costliest",),
            )
        )
        buttons.on_msg(lambda _widget, content, _buffers: self._on_costliest_msg(content))
        return buttons

    def _sync_costliest(self) -> None:
        """Follow a new tree: the list is made when costs first appear, then updated."""
        tree = self.state.tree
        self._top = tree_costliest(tree)
        if not self._top:
            return
        if self.costliest is None:
            self.costliest = self._make_costliest()
            with self.widget.hold_sync():
                children = list(self.widget.children)
                children.insert(children.index(self.header) + 1, self.costliest)
                self.widget.children = tuple(children)
            return
        state = self._costliest_state()
        buttons = self.costliest
        if buttons._options_labels != tuple(text for text, _ in state["options"]):
            with buttons.hold_sync():
                buttons.options = state["options"]
                buttons.tooltips = state["tooltips"]
                buttons.index = None

    def _on_costliest_msg(self, content: Any) -> None:
        if not isinstance(content, dict) or content.get("event") != "click":
            return
        with self._lock:
            if self._closed or self.costliest is None:
                return
            index = self.costliest.index
            self.costliest.index = None
            if index is None or not 0 <= index < len(self._top):
                return
            self.state.reveal(self._top[index].span_id)
            self._render()

    def jump_to(self, position: int) -> None:
        """Click entry `position` of the costliest list, as the front end does."""
        if self.costliest is None:
            raise IndexError("no costliest spans")
        self.costliest.index = position
        self.costliest._handle_custom_msg({"event": "click"}, [])

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
            tooltips.append(f"{label(node, 500)}\n(click: {hint}; again: close)")
            figures = row_figures_html(node, self._scale, self.state.waterfall_scope)
            lines.append(f'<div class="agn-line">{figures}</div>')
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
            self._scale = tree_scale(tree)
            self._header_part = header_html(
                self.trace.summary(tree),  # the rows' snapshot, not a newer one
                places=self._scale.places,
                budget=budget_html(budget_state(tree), self._scale.places),
            )
            self._sync_type_options()
            self._sync_costliest()
            self._header_for = tree
        self._drawn_tree = tree
        rows = state.rows()
        self.rows_box.children = tuple(self._rows_children(rows))
        self.header.value = _css() + self._header_part
        self.status_line.value = self._status_html(rows)

    def _draw_details(self, node: SpanNode) -> None:
        if self._details_for is not None and self._details_for[1] is node:
            return
        self._details_for = None  # set once this span's pane is drawn, never before
        try:
            value = details_html(node)
        except Exception:  # a bug of ours must not leave another span's pane under this row
            internal_error("drawing a span's details")
            value = '<div class="agn-details"><i>the details of this span cannot be shown</i></div>'
        # The pane is this span's now (or says it cannot be shown): a redraw of the same
        # tree neither draws nor logs it again.
        self._details_for = (node.span_id, node)
        if self._details is None:
            self._details = self._html(value, "agn-details-box")
        else:
            self._details.value = value

    # -- output -----------------------------------------------------------------------
    def view_bundle(self) -> dict[str, Any]:
        """The widget-view part of a display bundle."""
        return widget_view_bundle(self.widget)

    def close(self) -> None:
        """Close every widget this view created (idempotent)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            created = list(self._created.values())
            self._created.clear()
            self._segments.clear()
            self._details_for = None
            self.state.clear_search_cache()
        for widget in reversed(created):
            try:
                widget.close()
            except Exception:  # a half-torn-down kernel must not stop the others closing
                internal_error("closing a widget of a trace view")


# Made at import, so that they never count as a view's models.
_shared_models()
