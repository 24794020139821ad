"""What the trace tree shows, apart from any widget: expansion, paging, sort, filters,
selection. `TreeState` turns a `TraceTree` into the list of visible `Row`s; the widget
(`views/widget.py`) draws them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal

from agenta_notebook.core.rollup import SpanNode, TraceTree
from agenta_notebook.views.html import open_depth

SortKey = Literal["start", "cost", "duration"]
#: What a row's waterfall bar is drawn against: the whole trace, or the row's parent.
WaterfallScope = Literal["trace", "parent"]
SORT_KEYS: Final[tuple[SortKey, ...]] = ("start", "cost", "duration")

#: Children of one node shown per page ("show 100 more").
PAGE_SIZE: Final = 100
#: Auto-expansion opens levels while at most this many rows show.
AUTO_BUDGET: Final = 60
#: No more rows than this are drawn at once, whatever is expanded.
MAX_ROWS: Final = 1_000


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

    >>> from agenta_notebook.core.rollup import SpanRecord, build_tree
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
        #: the waterfall bars' time axis (a user's choice in the options)
        self.waterfall_scope: WaterfallScope = "trace"
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
            self._auto_depth = open_depth(self.tree.nodes, self.auto_budget)
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

    def reveal(self, span_id: int) -> None:
        """Show `span_id` and select it: expand every ancestor (a jump from the
        "costliest spans" list)."""
        node = self.node(span_id)
        if node is None:
            return
        if self._default_depth is None:
            self._default_depth = self.default_depth
        choices = self._filter_choices if self.filter_active else self._choices
        parent = node.parent
        while parent is not None:
            choices[parent.span_id] = True
            parent = parent.parent
        self.selected = span_id

    @property
    def nothing_matches(self) -> bool:
        """True when filters are set and no span but the root is kept by them."""
        keep = self._kept()
        return keep is not None and len(keep) == 1 and not self.matches(self.tree.root)

    def set_waterfall_scope(self, scope: WaterfallScope) -> None:
        if scope not in ("trace", "parent"):
            raise ValueError(f"waterfall bars against 'trace' or 'parent', not {scope!r}")
        self.waterfall_scope = scope

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
