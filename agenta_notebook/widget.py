"""The interactive trace tree: plain ipywidgets, lazy, paged, thread-safe.

Two layers:

- `TreeState` is the pure model of what the tree shows: which spans are expanded, how
  many children of each are paged in, the sort, the filters, the selected span. It turns
  a `TraceTree` into the list of visible `Row`s and knows nothing of widgets.
- `TraceView` draws those rows with a handful of ipywidgets per visible row (a toggle
  button, a name button, an `HTML` for the figure columns, in an `HBox`, all sharing one
  layout and one style model). Row widgets are made the first time a row becomes
  visible, so a 100,000-span trace shows its first screen with a few hundred models.

Figures come from the core only (`node.subtotal`, `node.own`, `node.priced`,
`trace.summary()`); every string from a span is escaped (see `html.escape`), since
ipywidgets' `HTML` inserts its value as raw markup.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, Literal

import ipywidgets as widgets
from ipywidgets.widgets.widget_string import HTMLStyle

from .html import (
    _open_depth,
    details_html,
    escape,
    header_html,
    label,
    row_figures_html,
)
from .tree import SpanNode, Trace, TraceTree

SortKey = Literal["start", "cost", "duration"]
SORT_KEYS: Final[tuple[SortKey, ...]] = ("start", "cost", "duration")

#: Children of one node shown per page ("show 100 more").
PAGE_SIZE: Final = 100
#: Auto-expansion opens levels while at most this many rows show.
AUTO_BUDGET: Final = 60
#: No more rows than this are drawn at once, whatever is expanded.
MAX_ROWS: Final = 1_000
#: Row widgets of rows no longer visible are closed beyond this many.
ROW_CACHE: Final = 1_500
#: Indentation classes stop here; deeper rows indent like this depth.
MAX_INDENT: Final = 16
#: Width of the name column (pixels) at depth 0; indentation is taken from it.
NAME_WIDTH: Final = 340
INDENT: Final = 16


def live_widget_count() -> int:
    """How many widget models exist in this process (open, not yet closed)."""
    from ipywidgets.widgets.widget import _instances

    return len(_instances)


@dataclass(frozen=True, slots=True)
class Row:
    """One visible line: a span, or the "show more" line of a paged parent."""

    kind: Literal["span", "more"]
    node: SpanNode
    depth: int
    expandable: bool = False
    expanded: bool = False
    #: "more" rows: how many children of `node` are not shown yet
    remaining: int = 0


def _cost_key(node: SpanNode) -> tuple[int, float, int]:
    cost = node.subtotal.cost
    # Most expensive first; absent cost after any known cost, unpriced calls break ties.
    return (0 if cost is not None else 1, -float(cost or 0), -node.subtotal.unpriced_calls)


def _duration_key(node: SpanNode) -> float:
    duration = node.duration_ms
    return float("-inf") if duration is None else -duration  # running spans first


class TreeState:
    """What the tree shows, independent of widgets: expansion, paging, sort, filter, selection.

    Expansion is kept by span id, so it survives a rebuilt tree (live refresh).

    >>> from agenta_notebook.tree import SpanRecord, build_tree
    >>> tree = build_tree([SpanRecord(1, 1, None, "root", 0, 9), SpanRecord(1, 2, 1, "a", 1, 2)])
    >>> [row.node.name for row in TreeState(tree).rows()]
    ['root', 'a']
    """

    def __init__(
        self,
        tree: TraceTree,
        *,
        page_size: int = PAGE_SIZE,
        auto_budget: int = AUTO_BUDGET,
        max_rows: int = MAX_ROWS,
    ) -> None:
        self.tree = tree
        self.page_size = page_size
        self.auto_budget = auto_budget
        self.max_rows = max_rows
        self.sort: SortKey = "start"
        self.text = ""
        self.span_type: str | None = None
        self.model_calls_only = False
        self.errors_only = False
        self.selected: int | None = None
        #: set when `rows()` stopped at `max_rows`
        self.truncated = False
        self._choices: dict[int, bool] = {}
        self._filter_choices: dict[int, bool] = {}
        self._default_depth: int | None = None
        self._shown: dict[int, int] = {}
        self._children: dict[int, list[SpanNode]] = {}
        self._keep: set[int] | None = None
        self._auto_depth: int | None = None

    # -- the tree ---------------------------------------------------------------------
    def set_tree(self, tree: TraceTree) -> None:
        """Show a newer snapshot of the same trace, keeping expansion and selection."""
        if tree is self.tree:
            return
        self.tree = tree
        self._children.clear()
        self._keep = None
        self._auto_depth = None

    def node(self, span_id: int) -> SpanNode | None:
        root = self.tree.root
        if span_id == root.span_id:
            return root
        return self.tree.by_id.get(span_id)

    def types(self) -> list[str]:
        """The span types present in the tree, sorted."""
        return sorted({node.type for node in self.tree.nodes if node.type})

    # -- filters ----------------------------------------------------------------------
    @property
    def filter_active(self) -> bool:
        return bool(self.text or self.span_type or self.model_calls_only or self.errors_only)

    def set_filter(
        self,
        *,
        text: str | None = None,
        span_type: str | Literal[False] | None = False,
        model_calls_only: bool | None = None,
        errors_only: bool | None = None,
    ) -> None:
        """Change some filters (others keep their value); `span_type=None` is any type."""
        if text is not None:
            self.text = text.strip()
        if span_type is not False:
            self.span_type = span_type or None
        if model_calls_only is not None:
            self.model_calls_only = model_calls_only
        if errors_only is not None:
            self.errors_only = errors_only
        self._keep = None
        self._children.clear()
        self._filter_choices.clear()

    def matches(self, node: SpanNode) -> bool:
        """True when `node` passes every active filter."""
        if self.span_type and node.type != self.span_type:
            return False
        if self.model_calls_only and not node.usage.is_model_call:
            return False
        if self.errors_only and not node.is_error:
            return False
        if self.text:
            needle = self.text.lower()
            haystack = (node.name, node.type or "", node.usage.model or "")
            if not any(needle in text.lower() for text in haystack):
                return False
        return True

    def _kept(self) -> set[int] | None:
        """Ids of spans that match or have a match below them (`None`: no filter)."""
        if not self.filter_active:
            return None
        if self._keep is None:
            keep: set[int] = {id(self.tree.root)}
            for node in self.tree.nodes:
                if id(node) in keep or not self.matches(node):
                    continue
                current: SpanNode | None = node
                while current is not None and id(current) not in keep:
                    keep.add(id(current))
                    current = current.parent
            self._keep = keep
        return self._keep

    # -- sorting and children ---------------------------------------------------------
    def set_sort(self, key: SortKey) -> None:
        if key not in SORT_KEYS:
            raise ValueError(f"sort by one of {SORT_KEYS}, not {key!r}")
        self.sort = key
        self._children.clear()

    def children(self, node: SpanNode) -> list[SpanNode]:
        """The children of `node` that the filters keep, in the current sort order."""
        cached = self._children.get(id(node))
        if cached is not None:
            return cached
        keep = self._kept()
        kids = node.children if keep is None else [c for c in node.children if id(c) in keep]
        if self.sort == "cost":
            kids = sorted(kids, key=_cost_key)
        elif self.sort == "duration":
            kids = sorted(kids, key=_duration_key)
        self._children[id(node)] = kids
        return kids

    # -- expansion --------------------------------------------------------------------
    @property
    def default_depth(self) -> int:
        """Nodes shallower than this are expanded unless the user said otherwise."""
        if self._default_depth is not None:
            return self._default_depth
        if self._auto_depth is None:
            self._auto_depth = _open_depth(self.tree.nodes, self.auto_budget)
        return self._auto_depth

    def is_expanded(self, node: SpanNode) -> bool:
        if self.filter_active:
            choice = self._filter_choices.get(node.span_id)
            return True if choice is None else choice
        choice = self._choices.get(node.span_id)
        return node.depth < self.default_depth if choice is None else choice

    def toggle(self, span_id: int) -> None:
        """Expand a collapsed span or collapse an expanded one."""
        node = self.node(span_id)
        if node is None:
            return
        if self._default_depth is None:
            # Freeze the automatic depth so that growth of a live trace does not fold
            # what the user is looking at.
            self._default_depth = self.default_depth
        choices = self._filter_choices if self.filter_active else self._choices
        choices[span_id] = not self.is_expanded(node)

    def expand_to_depth(self, depth: int) -> None:
        """Show every span down to `depth` levels below the root, forgetting choices."""
        self._default_depth = max(0, depth)
        self._choices.clear()
        self._filter_choices.clear()

    def show_more(self, span_id: int) -> None:
        """Page in the next `page_size` children of `span_id`."""
        self._shown[span_id] = self._shown.get(span_id, self.page_size) + self.page_size

    def select(self, span_id: int | None) -> None:
        """Select a span (its details show), or unselect it when it is already selected."""
        self.selected = None if span_id is None or span_id == self.selected else span_id

    # -- the rows ---------------------------------------------------------------------
    def rows(self) -> list[Row]:
        """The visible rows, parents before children, at most `max_rows` of them."""
        out: list[Row] = []
        stack: list[SpanNode | Row] = [self.tree.root]
        self.truncated = False
        while stack:
            if len(out) >= self.max_rows:
                self.truncated = True
                break
            item = stack.pop()
            if isinstance(item, Row):
                out.append(item)
                continue
            kids = self.children(item)
            expanded = bool(kids) and self.is_expanded(item)
            out.append(Row("span", item, item.depth, bool(kids), expanded))
            if expanded:
                shown = self._shown.get(item.span_id, self.page_size)
                if len(kids) > shown:
                    stack.append(Row("more", item, item.depth + 1, remaining=len(kids) - shown))
                stack.extend(reversed(kids[:shown]))
        return out


# -- the widget ------------------------------------------------------------------------------


def _css() -> str:
    indent = "".join(
        f".agn-root .agn-row.agn-lv{n}{{padding-left:{n * INDENT}px}}"
        f".agn-root .agn-lv{n} .agn-name.jupyter-button"
        f"{{width:{NAME_WIDTH - n * INDENT}px !important}}"
        f".agn-root .agn-more.agn-lv{n}{{margin-left:{26 + n * INDENT}px !important}}"
        for n in range(MAX_INDENT + 1)
    )
    return (
        "<style>"
        ".agn-root{font-size:13px}"
        ".agn-root .agn-rows{gap:0;margin:0}"
        ".agn-root .agn-row{align-items:center;margin:0;gap:0;"
        "border-bottom:1px solid var(--jp-border-color2,#eee)}"
        ".agn-root .agn-row:hover{background:var(--jp-layout-color2,#f3f3f3)}"
        ".agn-root .agn-row.agn-selected{background:var(--jp-brand-color3,#dbeafe)}"
        ".agn-root .agn-row .jupyter-button{height:24px;margin:0;background:transparent;"
        "box-shadow:none;color:var(--jp-ui-font-color1,#222)}"
        ".agn-root .agn-toggle.jupyter-button{width:26px !important;min-width:26px;padding:0}"
        ".agn-root .agn-name.jupyter-button{text-align:left;font-family:inherit;padding:0 4px}"
        ".agn-root .agn-name.jupyter-button:hover{text-decoration:underline}"
        ".agn-root .agn-more.jupyter-button{width:auto !important;height:24px;margin:0;"
        "text-align:left;background:transparent;color:var(--jp-brand-color1,#1565c0)}"
        ".agn-root .agn-row .agn-toggle,.agn-root .agn-row .agn-name{flex:0 0 auto}"
        ".agn-root .agn-figs.widget-html{margin:0;height:24px;line-height:24px;"
        "flex:1 1 auto;min-width:0;overflow:hidden}"
        ".agn-root .agn-figs .widget-html-content{height:24px;line-height:24px;"
        "white-space:nowrap;font-variant-numeric:tabular-nums}"
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
        f"{indent}</style>"
    )


class _RowWidgets:
    """The widgets of one span row: toggle, name button, figures, in one box."""

    __slots__ = ("box", "figures", "name", "toggle")

    def __init__(self, box: Any, toggle: Any, name: Any, figures: Any) -> None:
        self.box = box
        self.toggle = toggle
        self.name = name
        self.figures = figures

    @property
    def parts(self) -> tuple[Any, ...]:
        return (self.box, self.toggle, self.name, self.figures)


class TraceView:
    """The ipywidgets tree of one trace. `widget` is what is displayed.

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
        self._lock = threading.RLock()
        self._closed = False
        self._created: dict[int, Any] = {}
        self._rows: dict[int, _RowWidgets] = {}
        self._more: dict[int, Any] = {}
        self._details_for: tuple[int, SpanNode] | None = None
        self._syncing_controls = False
        self._types: list[str] = []
        self.state = TreeState(
            trace.tree, page_size=page_size, auto_budget=auto_budget, max_rows=max_rows
        )

        self._layout = self._own(widgets.Layout())
        self._button_style = self._own(widgets.ButtonStyle())
        self._html_style = self._own(HTMLStyle())
        self.header = self._html("", "agn-headbox")
        self.status = self._html("", "agn-status")
        self.details = self._html("", "agn-details-box")
        self.rows_box = self._own(widgets.VBox(layout=self._layout, _dom_classes=("agn-rows",)))
        self.controls = self._make_controls()
        self.widget = self._own(
            widgets.VBox(
                [self.header, self.controls, self.status, self.rows_box],
                layout=self._layout,
                _dom_classes=("agn-root",),
            )
        )
        self._header_for: TraceTree | None = None
        self.update()

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

    # -- controls ---------------------------------------------------------------------
    def _make_controls(self) -> Any:
        self.sort_control = self._own(
            widgets.Dropdown(
                options=[("start time", "start"), ("cost", "cost"), ("duration", "duration")],
                value="start",
                description="sort",
                layout=widgets.Layout(width="170px"),
                style={"description_width": "32px"},
            )
        )
        self.text_control = self._own(
            widgets.Text(
                placeholder="filter by text",
                continuous_update=False,
                layout=widgets.Layout(width="170px"),
            )
        )
        self.type_control = self._own(
            widgets.Dropdown(
                options=[("all types", "")], value="", layout=widgets.Layout(width="130px")
            )
        )
        self.model_calls_control = self._own(
            widgets.Checkbox(
                description="model calls only", indent=False, layout=widgets.Layout(width="130px")
            )
        )
        self.errors_control = self._own(
            widgets.Checkbox(
                description="errors only", indent=False, layout=widgets.Layout(width="100px")
            )
        )
        self.depth_control = self._own(
            widgets.BoundedIntText(value=2, min=0, max=10_000, layout=widgets.Layout(width="60px"))
        )
        expand = self._own(
            widgets.Button(description="expand to depth", layout=widgets.Layout(width="130px"))
        )
        collapse = self._own(
            widgets.Button(description="collapse all", layout=widgets.Layout(width="100px"))
        )
        self._own(expand.layout)
        self._own(expand.style)
        self._own(collapse.layout)
        self._own(collapse.style)
        for control in (
            self.sort_control,
            self.text_control,
            self.type_control,
            self.model_calls_control,
            self.errors_control,
            self.depth_control,
        ):
            self._own(control.layout)
            self._own(control.style)
        self.sort_control.observe(self._on_controls, names="value")
        self.text_control.observe(self._on_controls, names="value")
        self.type_control.observe(self._on_controls, names="value")
        self.model_calls_control.observe(self._on_controls, names="value")
        self.errors_control.observe(self._on_controls, names="value")
        expand.on_click(
            lambda _b: self._event(lambda: self.state.expand_to_depth(self.depth_control.value))
        )
        collapse.on_click(lambda _b: self._event(lambda: self.state.expand_to_depth(0)))
        box = self._own(
            widgets.HBox(
                [
                    self.sort_control,
                    self.text_control,
                    self.type_control,
                    self.model_calls_control,
                    self.errors_control,
                    self.depth_control,
                    expand,
                    collapse,
                ]
            )
        )
        self._own(box.layout)
        box.add_class("agn-controls")
        return box

    def _on_controls(self, _change: Any) -> None:
        if self._syncing_controls:
            return

        def apply() -> None:
            self.state.set_sort(self.sort_control.value)
            self.state.set_filter(
                text=self.text_control.value,
                span_type=self.type_control.value or None,
                model_calls_only=bool(self.model_calls_control.value),
                errors_only=bool(self.errors_control.value),
            )

        self._event(apply)

    def _sync_type_options(self) -> None:
        types = self.state.types()
        if types == self._types:
            return
        self._types = types
        current = self.type_control.value
        self._syncing_controls = True
        try:
            self.type_control.options = [("all types", "")] + [(t, t) for t in types]
            self.type_control.value = current if current in types else ""
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

    def row_widgets(self, span_id: int) -> _RowWidgets | None:
        """The widgets of a span's row, if it was ever shown and is still open."""
        return self._rows.get(span_id)

    def more_button(self, span_id: int) -> Any | None:
        return self._more.get(span_id)

    # -- drawing ----------------------------------------------------------------------
    def update(self) -> None:
        """Redraw from the trace's current tree (call after spans arrived)."""
        with self._lock:
            if self._closed:
                return
            self.state.set_tree(self.trace.tree)
            self._render()

    def _render(self) -> None:
        state = self.state
        tree = state.tree
        if self._header_for is not tree:
            self.header.value = _css() + header_html(self.trace.summary())
            self._sync_type_options()
            self._header_for = tree
        rows = state.rows()
        children: list[Any] = []
        visible: set[int] = set()
        selected = state.selected
        for row in rows:
            if row.kind == "more":
                button = self._more_button_for(row)
                children.append(button)
                continue
            span_id = row.node.span_id
            visible.add(span_id)
            row_widgets = self._rows.get(span_id)
            if row_widgets is None:
                row_widgets = self._new_row(row, span_id == selected)
            else:
                self._draw_row(row_widgets, row, span_id == selected)
            children.append(row_widgets.box)
            if span_id == selected:
                self._draw_details(row.node)
                children.append(self.details)
        self.rows_box.children = tuple(children)
        shown = sum(1 for row in rows if row.kind == "span")
        total = len(tree.nodes)
        note = f"{shown:,} of {total:,} spans shown"
        if state.filter_active:
            note += " (filtered)"
        if state.truncated:
            note += f" · stopped at {state.max_rows:,} rows: collapse or filter to see others"
        self.status.value = (
            f'<div class="agn-note">{escape(note, None)}</div>'
            '<div class="agn-colhead"><span class="agn-cname">span · type</span>'
            '<span class="agn-c agn-dur">duration</span><span class="agn-c agn-tok">tokens</span>'
            '<span class="agn-c agn-cost">cost</span></div>'
        )
        if len(self._rows) > ROW_CACHE:
            self._evict(visible)

    def _row_state(self, row: Row, selected: bool) -> dict[str, Any]:
        node = row.node
        classes = ["agn-row", f"agn-lv{min(row.depth, MAX_INDENT)}"]
        if selected:
            classes.append("agn-selected")
        if node.is_error_origin:
            classes.append("agn-error")
        if node.running:
            classes.append("agn-running")
        return {
            "toggle": {
                "description": ("▾" if row.expanded else "▸") if row.expandable else "",
                "disabled": not row.expandable,
                "tooltip": ("collapse" if row.expanded else "expand") if row.expandable else "",
            },
            "name": {
                "description": label(node),
                "tooltip": node.name[:500],
            },
            "figures": row_figures_html(node),
            "box": tuple(classes),
        }

    def _new_row(self, row: Row, selected: bool) -> _RowWidgets:
        span_id = row.node.span_id
        state = self._row_state(row, selected)
        toggle = self._button(lambda: self.state.toggle(span_id), "agn-toggle", **state["toggle"])
        name = self._button(lambda: self.state.select(span_id), "agn-name", **state["name"])
        figures = self._html(state["figures"], "agn-figs")
        box = self._own(
            widgets.HBox([toggle, name, figures], layout=self._layout, _dom_classes=state["box"])
        )
        row_widgets = _RowWidgets(box, toggle, name, figures)
        self._rows[span_id] = row_widgets
        return row_widgets

    def _draw_row(self, row_widgets: _RowWidgets, row: Row, selected: bool) -> None:
        state = self._row_state(row, selected)
        # Traits set to their current value send nothing, so an unchanged row is free.
        with row_widgets.toggle.hold_sync():
            for key, value in state["toggle"].items():
                setattr(row_widgets.toggle, key, value)
        with row_widgets.name.hold_sync():
            for key, value in state["name"].items():
                setattr(row_widgets.name, key, value)
        row_widgets.figures.value = state["figures"]
        row_widgets.box._dom_classes = state["box"]

    def _more_button_for(self, row: Row) -> Any:
        parent_id = row.node.span_id
        step = min(self.state.page_size, row.remaining)
        description = f"show {step:,} more ({row.remaining:,} not shown)"
        classes = ("agn-more", f"agn-lv{min(row.depth, MAX_INDENT)}")
        button = self._more.get(parent_id)
        if button is None:
            button = self._button(
                lambda: self.state.show_more(parent_id), *classes, description=description
            )
            self._more[parent_id] = button
        else:
            with button.hold_sync():
                button.description = description
                button._dom_classes = classes
        return button

    def _draw_details(self, node: SpanNode) -> None:
        if self._details_for is not None and self._details_for[1] is node:
            return
        self._details_for = (node.span_id, node)
        self.details.value = details_html(node)

    def _evict(self, visible: set[int]) -> None:
        for span_id in [s for s in self._rows if s not in visible]:
            for part in self._rows.pop(span_id).parts:
                self._created.pop(id(part), None)
                part.close()

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
            self._rows.clear()
            self._more.clear()
        for widget in reversed(created):
            try:
                widget.close()
            except Exception:  # a half-torn-down kernel must not stop the others closing
                pass
