"""What the trace tree shows, apart from any widget: expansion, paging, sort, filters,
selection. `TreeState` turns a `TraceTree` into the list of visible `Row`s; the widget
(`views/widget.py`) draws them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from itertools import islice
from typing import Any, Final, Literal

from agenta_notebook.core.rollup import (
    EVENTS,
    NAME,
    SPAN_ID,
    SpanNode,
    SpanRow,
    TraceTree,
)
from agenta_notebook.core.usage import AG_JSON_PREFIX
from agenta_notebook.views.html import open_depth_of

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

#: The text search reads at most this many characters of one attribute value (of a span
#: with more than `SEARCH_SPAN_CHARS` characters in all)...
SEARCH_CHARS: Final = 2_000
#: ...of at most this many attribute values (and event attributes) of one span...
SEARCH_VALUES: Final = 200
#: ...and at most this many characters of one span in all.
SEARCH_SPAN_CHARS: Final = 20_000
#: A view keeps what the search read of its spans, up to this many characters in all
#: (many views may be open, one per remembered cell: each holds at most this much, and
#: none once closed); spans beyond it are read again at each search.
SEARCH_CACHE_CHARS: Final = 8_000_000
_PLAIN: Final = frozenset({str, int, float})
#: Agenta's marker of a value that is JSON text (the search reads the text after it).
_JSON_MARK: Final = AG_JSON_PREFIX.lower()
_FIELD = re.compile(r"(model|type|name):(\S.*)", re.IGNORECASE | re.DOTALL)
_DURATION = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*(ms|s|m|min)?\s*", re.IGNORECASE)
_UNIT_MS: Final = {"": 1.0, "ms": 1.0, "s": 1_000.0, "m": 60_000.0, "min": 60_000.0}


def parse_min_cost(text: str) -> Decimal | None:
    """A "cost ≥" filter typed by a user, in dollars ("0.01", "$0.01"); empty is no filter.

    >>> parse_min_cost(" $0.05 ")
    Decimal('0.05')
    >>> parse_min_cost("") is None
    True
    """
    cleaned = text.strip().removeprefix("$").strip()
    if not cleaned:
        return None
    try:
        value = Decimal(cleaned)
    except InvalidOperation:
        message = f"cost ≥: a number of dollars such as 0.01, not {text.strip()!r}"
        raise ValueError(message) from None
    if not value.is_finite() or value < 0:
        raise ValueError(f"cost ≥: a number of dollars of 0 or more, not {text.strip()!r}")
    return value


def parse_min_duration(text: str) -> float | None:
    """A "duration ≥" filter typed by a user, in milliseconds: "200", "200ms", "1.5s",
    "2m"; empty is no filter.

    >>> parse_min_duration("1.5s"), parse_min_duration("200"), parse_min_duration("")
    (1500.0, 200.0, None)
    """
    if not text.strip():
        return None
    found = _DURATION.fullmatch(text)
    if found is None:
        raise ValueError(f"duration ≥: a duration such as 200ms or 1.5s, not {text.strip()!r}")
    return float(found.group(1)) * _UNIT_MS[(found.group(2) or "").lower()]


def _haystack(attributes: Mapping[str, Any], *head: str) -> str:
    """`head` and the searchable text of some attribute values, in lower case, bounded
    (see `span_text`); Agenta's JSON marker is left in (see `_found`)."""
    values: Any = attributes.values()
    if len(values) <= SEARCH_VALUES:
        # The common case, in C: every value by its text (str() of an attribute value:
        # a string, a number, a bool or a list of them), when that is small enough.
        text = "\n".join((*head, *map(str, values)))
        if len(text) <= SEARCH_SPAN_CHARS:
            return text.lower()
    if len(values) > SEARCH_VALUES:
        values = list(islice(values, SEARCH_VALUES))
    # One comprehension for the common kinds (a C loop), then the rare ones one by one.
    parts = list(head)
    parts += [
        value[:SEARCH_CHARS] if value.__class__ is str else str(value)
        for value in values
        if value.__class__ in _PLAIN
    ]
    if len(parts) < len(values) + len(head):
        for value in values:
            if value.__class__ in _PLAIN or isinstance(value, bool):
                continue
            if isinstance(value, str):
                parts.append(value[:SEARCH_CHARS])
            elif isinstance(value, (int, float, Decimal)):
                parts.append(str(value))
            elif isinstance(value, (tuple, list)):
                parts += [
                    str(item)[:SEARCH_CHARS]
                    for item in value[:SEARCH_VALUES]
                    if isinstance(item, (str, int, float)) and not isinstance(item, bool)
                ]
    text = "\n".join(parts)
    return (text[:SEARCH_SPAN_CHARS] if len(text) > SEARCH_SPAN_CHARS else text).lower()


def _found(needle: str, haystack: str) -> bool:
    if needle not in haystack:
        return False
    # Agenta's marker of JSON text is not part of the value: look again without it.
    return _JSON_MARK not in haystack or needle in haystack.replace(_JSON_MARK, "\n")


def span_text(node: SpanNode) -> str:
    """What the text search reads of a span, in lower case: its name, type, model and
    attribute values (events' included), each by its text. Bounded: the first
    `SEARCH_VALUES` values, `SEARCH_SPAN_CHARS` characters in all (for the span and for
    each of its first 100 events); when they hold more, `SEARCH_CHARS` of each value."""
    row = node.row
    usage = node.usage
    text = _haystack(node.attributes, row[NAME], usage.span_type or "", usage.model or "")
    events = row[EVENTS]
    if not events:
        return text
    return "\n".join([text, *(_haystack(event.attributes) for event in events[:100])])


def span_matches_text(node: SpanNode, needle: str) -> bool:
    """True when `needle` is in the span's name, type, model or one of its attribute
    values, ignoring case (see `span_text`). JSON text after Agenta's `@ag.type=json:`
    marker is searched as text; numbers by their text."""
    return _found(needle.lower(), span_text(node))


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
        #: "cost ≥" in dollars (the span's subtotal); `None`: no such filter
        self.min_cost: Decimal | None = None
        #: "duration ≥" in milliseconds; `None`: no such filter
        self.min_duration_ms: float | None = None
        self.selected: int | None = None
        #: the waterfall bars' time axis (a user's choice in the options)
        self.waterfall_scope: WaterfallScope = "trace"
        #: set when `rows()` stopped at `max_rows`
        self.truncated = False
        self._choices: dict[int, bool] = {}
        self._filter_choices: dict[int, bool] = {}
        self._default_depth: int | None = None
        self._shown: dict[int, int] = {}
        self._children: dict[int, Sequence[SpanNode]] = {}
        self._keep: set[int] | None = None
        #: spans shown whatever the filters (revealed ones), until the filters change
        self._pinned: set[int] = set()
        #: span id -> (the row read, `span_text` of it); see `SEARCH_CACHE_CHARS`
        self._texts: dict[int, tuple[SpanRow, str]] = {}
        self._texts_chars = 0
        self._query_for: tuple[str, str | None, str] | None = None
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
        return list(self.tree.stats.types)

    # -- filters ----------------------------------------------------------------------
    @property
    def filter_active(self) -> bool:
        return bool(
            self.text
            or self.span_type
            or self.model_calls_only
            or self.errors_only
            or self.min_cost is not None
            or self.min_duration_ms is not None
        )

    def set_filter(
        self,
        *,
        text: str | None = None,
        span_type: str | Literal[False] | None = False,
        model_calls_only: bool | None = None,
        errors_only: bool | None = None,
        min_cost: Decimal | float | str | Literal[False] | None = False,
        min_duration_ms: float | str | Literal[False] | None = False,
    ) -> None:
        """Change some filters (others keep their value); `span_type=None` is any type,
        `min_cost=None` / `min_duration_ms=None` no such filter. `min_cost` is in dollars,
        `min_duration_ms` in milliseconds; a string is read as a user types it ("0.01",
        "1.5s", "200ms"). A bad value raises `ValueError` and changes nothing."""
        cost = self.min_cost
        if min_cost is not False:
            cost = None if min_cost is None else parse_min_cost(str(min_cost))
            if cost is not None and cost <= 0:
                cost = None  # "cost ≥ 0" keeps every span, unpriced ones too
        duration = self.min_duration_ms
        if min_duration_ms is not False:
            if isinstance(min_duration_ms, str):
                duration = parse_min_duration(min_duration_ms)
            elif min_duration_ms is None:
                duration = None
            else:
                duration = float(min_duration_ms)
                if not duration >= 0:  # negative or NaN
                    raise ValueError(f"duration ≥: 0 ms or more, not {min_duration_ms!r}")
            if duration is not None and duration <= 0:
                duration = None
        self.min_cost = cost
        self.min_duration_ms = duration
        if text is not None:
            self.text = text.strip()
        if span_type is not False:
            self.span_type = span_type or None
        if model_calls_only is not None:
            self.model_calls_only = model_calls_only
        if errors_only is not None:
            self.errors_only = errors_only
        self._keep = None
        self._pinned.clear()
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
        if self.min_cost is not None:
            cost = node.subtotal.cost
            if cost is None or cost < self.min_cost:
                return False
        if self.min_duration_ms is not None:
            duration = node.duration_ms
            if duration is None or duration < self.min_duration_ms:
                return False
        if not self.text:
            return True
        key, needle = self._query()
        if key is None:
            return _found(needle, self._span_text(node))
        value = node.name if key == "name" else node.type if key == "type" else node.usage.model
        return needle in (value or "").lower()

    def _query(self) -> tuple[str | None, str]:
        """The text filter read: ("model"/"type"/"name" or None for anywhere, needle)."""
        cached = self._query_for
        if cached is None or cached[0] != self.text:
            # "model:gpt-4o", "type:tool", "name:plan": that field only
            field = _FIELD.fullmatch(self.text)
            if field is None:
                cached = (self.text, None, self.text.lower())
            else:
                cached = (self.text, field.group(1).lower(), field.group(2).lower())
            self._query_for = cached
        return cached[1], cached[2]

    def _span_text(self, node: SpanNode) -> str:
        """`span_text(node)`, kept while the span's row is the same one."""
        row = node.row
        cached = self._texts.get(row[SPAN_ID])
        if cached is not None and cached[0] is row:
            return cached[1]
        text = span_text(node)
        if self._texts_chars + len(text) <= SEARCH_CACHE_CHARS:
            if cached is not None:
                self._texts_chars -= len(cached[1])
            self._texts[row[SPAN_ID]] = (row, text)
            self._texts_chars += len(text)
        return text

    @property
    def search_cache_chars(self) -> int:
        """How many characters of span text the search keeps now (`SEARCH_CACHE_CHARS` at
        most)."""
        return self._texts_chars

    def clear_search_cache(self) -> None:
        """Let go of the text the search kept (the view is closing); a later search reads
        the spans again."""
        self._texts.clear()
        self._texts_chars = 0

    def _kept(self) -> set[int] | None:
        """Ids of spans that match or have a match below them (`None`: no filter)."""
        if not self.filter_active:
            return None
        if self._keep is None:
            keep: set[int] = {id(self.tree.root)}
            for node in self.tree.nodes:
                if id(node) in keep or not (node.span_id in self._pinned or self.matches(node)):
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

    def children(self, node: SpanNode) -> Sequence[SpanNode]:
        """The children of `node` that the filters keep, in the current sort order."""
        keep = self._kept()
        if keep is None and self.sort == "start":
            # the node's own: a fold may give a leaf its first child (a new list) between
            # two redraws, which a cached reference would miss
            return node.children
        cached = self._children.get(id(node))
        if cached is not None:
            return cached
        kids: Sequence[SpanNode] = node.children
        if keep is not None:
            kids = [c for c in kids if id(c) in keep]
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
            self._auto_depth = open_depth_of(self.tree.stats.depth_counts, self.auto_budget)
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
        """Show `span_id` and select it (a jump from the "costliest spans" list): expand
        every ancestor and page in the children down to it. A span the filters leave out
        is shown anyway, with its ancestors, until the filters change."""
        node = self.node(span_id)
        if node is None:
            return
        if self._default_depth is None:
            self._default_depth = self.default_depth
        keep = self._kept()
        if keep is not None and id(node) not in keep:
            self._pinned.add(span_id)
            self._keep = None
            self._children.clear()
        choices = self._filter_choices if self.filter_active else self._choices
        child = node
        parent = node.parent
        while parent is not None:
            choices[parent.span_id] = True
            kids = self.children(parent)
            position = next((i for i, kid in enumerate(kids) if kid is child), -1)
            shown = self._shown.get(parent.span_id, self.page_size)
            if position >= shown:
                pages = position // self.page_size + 1
                self._shown[parent.span_id] = pages * self.page_size
            child = parent
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
