"""The trace tree and its subtotals: pure code, the rules of `docs/rollup.md`.

`build_tree` turns plain `SpanRecord`s (in any order) into a `TraceTree` whose every
node carries its counted own figures and the subtotal of its subtree. It is a function
of the records alone, so the order in which spans arrive never changes a number
(rule 11). The live handle a traced block yields is `agenta_notebook.live.Trace`.
"""

from __future__ import annotations

import heapq
import re
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence, ValuesView
from dataclasses import dataclass, field, replace
from decimal import Decimal
from operator import itemgetter
from typing import Any, Final, Literal

from agenta_notebook.core.fields import (
    COST_CONTEXT,
    REPORTS_COST,
    REPORTS_TOKENS,
    STATED,
    counted_figures,
    stated_mask,
    stated_value,
    sum_figures,
)

# Declared with the other figures in `fields`, and part of the tree's interface.
from agenta_notebook.core.fields import NO_FIGURES as NO_FIGURES
from agenta_notebook.core.fields import Figures as Figures
from agenta_notebook.core.frozen import fast_constructor
from agenta_notebook.core.pricing import (
    NO_USER_PRICES,
    UNPRICED,
    PricedCost,
    UserPrices,
    price_usage,
)
from agenta_notebook.core.usage import (
    EMPTY_USAGE,
    GENAI_RESPONSE_ID,
    Usage,
    read_usage,
    type_only_usage,
)

StatusCode = Literal["UNSET", "OK", "ERROR"]


@dataclass(frozen=True, slots=True)
class SpanEvent:
    """An event recorded on a span (an exception, a log line)."""

    name: str
    timestamp_ns: int
    attributes: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SpanRecord:
    """One span as the core sees it: plain data, independent of the OpenTelemetry SDK.

    `end_time_ns is None` means the span is still running.
    """

    trace_id: int
    span_id: int
    parent_span_id: int | None
    name: str
    start_time_ns: int
    end_time_ns: int | None = None
    status: StatusCode = "UNSET"
    status_message: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)
    events: tuple[SpanEvent, ...] = ()
    kind: str = "INTERNAL"
    scope: str | None = None
    resource: Mapping[str, Any] = field(default_factory=dict)


#: `SpanRecord(...)`, built faster (`core.frozen`).
new_record: Final = fast_constructor(SpanRecord)

#: A span as the tree keeps it, but for its attributes: `SpanRecord`'s other fields in
#: its order, in a plain tuple, the resource's attributes as a tuple of (key, value)
#: pairs. The garbage collector stops tracking a tuple of plain values (numbers, text,
#: tuples of them) at its first pass, where a `SpanRecord` is tracked, and walked by
#: every full collection, for as long as it lives: a trace of 100k spans kept 100k more
#: objects for the collector to walk while its cell ran (issue 14). A tuple holding a
#: dict is never let go (the dict might hold anything), so the attributes, a dict, are
#: kept beside the row: the live trace keeps both, each node holds both (`SpanNode.row`,
#: `SpanNode.attributes`), and `SpanNode.record` makes the `SpanRecord` when asked.
SpanRow = tuple[
    int,  # trace id
    int,  # span id
    int | None,  # parent span id
    str,  # name
    int,  # start, ns
    int | None,  # end, ns (None: running)
    str,  # status: StatusCode
    str | None,  # status message
    tuple[SpanEvent, ...],  # events
    str,  # kind
    str | None,  # instrumentation scope
    "ResourceItems",  # the resource's attributes
]
#: A resource's attributes as a row holds them: (key, value) pairs.
ResourceItems = tuple[tuple[str, Any], ...]
#: A span as the roll-up takes it: its row and its attributes.
RowSpan = tuple[SpanRow, Mapping[str, Any]]
#: The positions of a row's fields.
TRACE_ID: Final = 0
SPAN_ID: Final = 1
PARENT_ID: Final = 2
NAME: Final = 3
START: Final = 4
END: Final = 5
STATUS: Final = 6
STATUS_MESSAGE: Final = 7
EVENTS: Final = 8
KIND: Final = 9
SCOPE: Final = 10
RESOURCE: Final = 11


def split_record(
    record: SpanRecord | RowSpan, resources: dict[int, ResourceItems] | None = None
) -> RowSpan:
    """`record` as its row and its attributes (a pair is returned as it is).

    `resources` keeps the resources met, by the id of their mapping: records that share
    one resource (a file's spans do, by its resource blocks) give rows that share one
    tuple of it. The caller keeps the records alive while the memo is in use."""
    if record.__class__ is tuple:
        return record
    r: SpanRecord = record  # type: ignore[assignment]
    resource = r.resource
    items = None if resources is None else resources.get(id(resource))
    if items is None:
        items = tuple(resource.items()) if resource else ()
        if resources is not None:
            resources[id(resource)] = items
    row: SpanRow = (
        r.trace_id,
        r.span_id,
        r.parent_span_id,
        r.name,
        r.start_time_ns,
        r.end_time_ns,
        r.status,
        r.status_message,
        r.events,
        r.kind,
        r.scope,
        items,
    )
    return row, r.attributes


def split_records(records: Iterable[SpanRecord | RowSpan]) -> Iterator[RowSpan]:
    """`split_record` of each item, the records of one resource sharing its tuple."""
    resources: dict[int, ResourceItems] = {}
    held: list[SpanRecord | RowSpan] = []  # alive while `resources` holds their ids
    for item in records:
        if item.__class__ is tuple:
            yield item
        else:
            held.append(item)
            yield split_record(item, resources)


def join_record(row: SpanRow, attributes: Mapping[str, Any]) -> SpanRecord:
    """The `SpanRecord` of a row and its attributes (a new object each call)."""
    trace_id, span_id, parent, name, start, end, status, message, events, kind, scope, res = row
    return new_record(
        trace_id,
        span_id,
        parent,
        name,
        start,
        end,
        status,
        message,
        attributes,
        events,
        kind,
        scope,
        dict(res),
    )


#: Costs are summed in `COST_CONTEXT` (fields.py), exact at this resolution or coarser.
_FINEST_COST: Final = Decimal("1e-30")


def _exact_cost(cost: Decimal | None) -> Decimal | None:
    """`cost` with a resolution of at most 1e-30 dollars, so that sums stay exact."""
    if cost is None:
        return None
    exponent = cost.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -30:
        exact = cost.quantize(_FINEST_COST, context=COST_CONTEXT)
        # NaN: over 100 digits at that resolution (COST_CONTEXT traps nothing): keep it
        return cost if exact.is_nan() else exact
    return cost


#: What a warning on a span is about.
WarningKind = Literal[
    "ignored value",  # an attribute that is not a count or a cost, or unreadable (rule 7)
    "roll-up mismatch",  # a claim that differs from the sum below it (rule 2)
    "recorded twice",  # the same call recorded by another span, counted there (rule 13)
    "detached",  # its parent span is not in the trace (rule 9)
    "pricing failed",  # genai-prices failed on the call (a bug, not a missing price): unpriced
]


@dataclass(frozen=True, slots=True)
class SpanWarning:
    """A warning on one span: what it is about (`kind`) and what it says."""

    span_id: int
    span_name: str
    message: str
    kind: WarningKind


#: How a span's own usage entered the roll-up.
Role = Literal[
    "model call",  # a lowest model-call span that reports usage (rules 2, 3)
    "unreported model call",  # a lowest model call reporting nothing: counted, unpriced
    "failed model call",  # refused with an HTTP error, no usage: 1 call, not unpriced (14)
    "refused by budget",  # a request our budget refused before it was sent: 0 calls (14)
    "model call wrapper",  # a model-call span over model-call spans: 0 calls (rule 3)
    "recorded twice",  # the same call as another span of another scope (rule 13)
    "claim counted",  # not a model call; reports a figure nothing below reports (rule 2)
    "claim not counted",  # not a model call; spans below report what it reports (rule 2)
    "none",  # reports nothing
]


@dataclass(eq=False, slots=True)
class SpanNode:
    """A span in the tree with its counted own figures and subtotal."""

    #: the span's fields but its attributes (`SpanRow`); `record` gives them all as a
    #: `SpanRecord`
    row: SpanRow
    attributes: Mapping[str, Any]
    usage: Usage
    priced: PricedCost
    role: Role = "none"
    own: Figures = NO_FIGURES
    subtotal: Figures = NO_FIGURES
    #: in start order; a leaf shares one empty tuple (no list per leaf: fewer objects
    #: for the garbage collector to walk), a node with children has a list
    children: Sequence[SpanNode] = ()
    parent: SpanNode | None = None
    depth: int = 0
    detached: bool = False
    is_error_origin: bool = False
    synthetic: bool = False
    mismatch: str | None = None
    #: every warning on this span, with its kind
    span_warnings: tuple[SpanWarning, ...] = ()
    #: the span counted for the same model call, when this one recorded it too (rule 13)
    duplicate_of: SpanNode | None = None
    #: `REPORTS_*` bits of every figure reported in this subtree, this span included
    reports_in_subtree: int = 0
    #: a model-call span is in this subtree, this span included
    call_in_subtree: bool = False
    #: its place in the live roll-up's index (`HeldIndex`); 0 for a full build's nodes
    seq: int = 0

    @property
    def record(self) -> SpanRecord:
        """The span as a `SpanRecord`: made from `row` on each read (not kept, so that a
        tree holds no second object per span)."""
        return join_record(self.row, self.attributes)

    @property
    def span_id(self) -> int:
        return self.row[SPAN_ID]

    @property
    def name(self) -> str:
        return self.row[NAME]

    @property
    def type(self) -> str | None:
        return self.usage.span_type

    @property
    def running(self) -> bool:
        return self.row[END] is None

    @property
    def is_error(self) -> bool:
        return self.row[STATUS] == "ERROR"

    @property
    def warnings(self) -> tuple[str, ...]:
        """The messages of this span's warnings."""
        found = self.span_warnings
        return tuple(warning.message for warning in found) if found else ()

    @property
    def counts_usage(self) -> bool:
        """True when some token count, cost or model call of this span's own is counted."""
        own = self.own
        if own is NO_FIGURES or own is _ONE_ERROR:
            return False
        if own.model_calls > 0:
            return True
        for name in _VALUES:  # a loop, not any(): `own` in a closure costs every call
            if getattr(own, name) is not None:
                return True
        return False

    @property
    def duration_ms(self) -> float | None:
        row = self.row
        end = row[END]
        return None if end is None else (end - row[START]) / 1e6

    def walk(self) -> Iterator[SpanNode]:
        """This node and every node below it, depth first, parents before children."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def __repr__(self) -> str:
        return f"<SpanNode {self.name!r} type={self.type} children={len(self.children)}>"


def child_list(node: SpanNode) -> list[SpanNode]:
    """`node.children` as a list to change in place: a leaf's shared empty tuple is
    replaced by a list of its own first."""
    children = node.children
    if not isinstance(children, list):
        children = node.children = list(children)
    return children


@dataclass(frozen=True, slots=True)
class ModelBreakdown:
    """Counted usage of one model across a trace."""

    model: str
    calls: int
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    cost: Decimal | None
    unpriced_calls: int


@dataclass(frozen=True, slots=True)
class TreeStats:
    """What the views read of a whole tree on every redraw, without a walk over its
    nodes: the live roll-up keeps these up to date as spans are folded in."""

    #: nodes in the tree, the root (synthetic or not) included
    count: int
    #: spans still running (a synthetic root is not one)
    running: int
    #: the latest end of any span, or start of a running one (None: no span)
    latest_ns: int | None
    #: the nodes with counted figures of their own (`own` is not `NO_FIGURES`), any order
    costed: tuple[SpanNode, ...]
    #: the nodes with warnings, any order
    warned: tuple[SpanNode, ...]
    #: the span types present, sorted
    types: tuple[str, ...]
    #: how many nodes sit at each depth (index 0: the root)
    depth_counts: tuple[int, ...]
    #: `TraceTree.by_model()` when the fold keeps it (None: summed from `costed`)
    by_model: tuple[ModelBreakdown, ...] | None = None
    #: `costliest_of(costed)` when the fold keeps it (None: found from `costed`), and
    #: with it `smallest_cost(costed)` (None: no cost that is not zero; when `costliest`
    #: is None, not kept: found from `costed` too)
    costliest: tuple[SpanNode, ...] | None = None
    smallest_cost: Decimal | None = None


#: How many spans a view lists as the costliest.
COSTLIEST: Final = 5


def costlier(node: SpanNode, other: SpanNode) -> bool:
    """`node` comes before `other` in the costliest list: its own cost is larger, or
    the same and it comes first in the tree (both must have an own cost)."""
    cost, other_cost = node.own.cost, other.own.cost
    assert cost is not None and other_cost is not None
    if cost != other_cost:
        return cost > other_cost
    return preorder_key(node) < preorder_key(other)


def costliest_of(nodes: Iterable[SpanNode], count: int = COSTLIEST) -> list[SpanNode]:
    """The `count` spans of `nodes` (any order) with the largest own counted cost,
    costliest first; those that cost the same in tree order (only those tied at the
    cut are put in tree order)."""
    if count <= 0:
        return []
    priced = [node for node in nodes if node.own.cost is not None and node.own.cost > 0]
    if len(priced) > count:
        cut = heapq.nlargest(count, (node.own.cost or 0 for node in priced))[-1]
        priced = [node for node in priced if (node.own.cost or 0) >= cut]
    priced.sort(key=preorder_key)  # ties in tree order
    return heapq.nlargest(count, priced, key=lambda node: node.own.cost or 0)


def smallest_cost(nodes: Iterable[SpanNode]) -> Decimal | None:
    """The smallest own cost of `nodes` that is not zero, without its sign."""
    sizes = [cost.copy_abs() for cost in (node.own.cost for node in nodes) if cost]
    return min(sizes) if sizes else None  # (`copy_abs`: no context, never the notebook's)


def tree_stats(nodes: Iterable[SpanNode]) -> TreeStats:
    """The stats of a tree from its nodes (one pass)."""
    count = running = 0
    latest: int | None = None
    costed: list[SpanNode] = []
    warned: list[SpanNode] = []
    types: set[str] = set()
    depths: list[int] = []
    for node in nodes:
        count += 1
        row = node.row
        end = row[END]
        if end is None:
            if not node.synthetic:
                running += 1
            end = row[START]
        if latest is None or end > latest:
            latest = end
        if node.own is not NO_FIGURES:
            costed.append(node)
        if node.span_warnings:
            warned.append(node)
        kind = node.usage.span_type
        if kind:
            types.add(kind)
        while len(depths) <= node.depth:
            depths.append(0)
        depths[node.depth] += 1
    return TreeStats(
        count, running, latest, tuple(costed), tuple(warned), tuple(sorted(types)), tuple(depths)
    )


class HeldIndex(Mapping[int, SpanNode]):
    """The spans of a live roll-up's snapshot by span id, without a copy of its index.

    The live roll-up's index (span id -> node) only grows between two full builds, and
    each node it adds is numbered with its place (`SpanNode.seq`); a snapshot holds the
    first `size` entries, so the spans folded in after it stay out of it. (The nodes of
    the full build the index started from are numbered 0, all below any `size`.) Reading
    all of it copies the index in one call (`list(index)`: the interpreter does not
    switch threads inside it), then keeps the first `size`: an iterator made first and
    read after would meet a fold on another thread that grew the index in between.
    """

    __slots__ = ("_index", "_size")

    def __init__(self, index: dict[int, SpanNode], size: int) -> None:
        self._index = index
        self._size = size

    def __getitem__(self, span_id: int) -> SpanNode:
        node = self._index[span_id]
        if node.seq >= self._size:
            raise KeyError(span_id)
        return node

    def get(self, span_id: int, default: Any = None) -> Any:
        node = self._index.get(span_id)
        return node if node is not None and node.seq < self._size else default

    def __contains__(self, span_id: object) -> bool:
        node = self._index.get(span_id)  # type: ignore[call-overload]
        return node is not None and node.seq < self._size

    def __len__(self) -> int:
        return self._size

    def __iter__(self) -> Iterator[int]:
        return iter(list(self._index)[: self._size])

    def values(self) -> ValuesView[SpanNode]:
        return _HeldValues(self)

    def nodes(self) -> list[SpanNode]:
        """Its nodes, in the order they came in."""
        return list(self._index.values())[: self._size]


class _HeldValues(ValuesView[SpanNode]):
    _mapping: HeldIndex

    def __iter__(self) -> Iterator[SpanNode]:
        return iter(self._mapping.nodes())


def _walk_held(root: SpanNode, size: int) -> Iterator[SpanNode]:
    """The nodes below `root` (and the root) that a snapshot of `size` spans of the live
    index holds (`HeldIndex`: every node of the tree is in that index), parents first."""
    stack = [root]
    while stack:
        node = stack.pop()
        yield node
        children = node.children
        if children:
            stack.extend([child for child in reversed(children) if child.seq < size])


def preorder_key(node: SpanNode) -> tuple[tuple[int, int], ...]:
    """Sort key giving nodes in the tree's pre-order (children in start order)."""
    path: list[tuple[int, int]] = []
    current: SpanNode | None = node
    while current is not None and current.parent is not None:
        path.append(start_order(current))
        current = current.parent
    path.reverse()
    return tuple(path)


class TraceTree:
    """A snapshot of a trace: the root, every node in pre-order, and lookups.

    `nodes` is walked from the root when first read, when the snapshot was made without
    it (the live roll-up's: a redraw that shows 100 rows of 100,000 spans walks none of
    the others); the walk keeps to the spans of `by_id`, the snapshot's spans, so `nodes`,
    `size` and `stats` agree. The live roll-up updates nodes in place: a snapshot's nodes
    carry the figures of the latest fold, and their `children` the spans folded in since.
    """

    __slots__ = ("_nodes", "_stats", "by_id", "pricing_failures", "root", "trace_id")

    def __init__(
        self,
        trace_id: int,
        root: SpanNode,
        nodes: tuple[SpanNode, ...] | None,
        by_id: Mapping[int, SpanNode],
        pricing_failures: tuple[SpanNode, ...] = (),
        *,
        stats: TreeStats | None = None,
    ) -> None:
        self.trace_id = trace_id
        self.root = root
        self.by_id = by_id
        #: the spans genai-prices failed to price (`node.priced.failure`): bugs to report
        self.pricing_failures = pricing_failures
        self._nodes = nodes
        self._stats = stats

    @property
    def nodes(self) -> tuple[SpanNode, ...]:
        """Every node, parents before children, children in start order."""
        nodes = self._nodes
        if nodes is None:
            by_id = self.by_id
            # (a tree given no nodes and a plain mapping: every span below its root)
            size = len(by_id) if isinstance(by_id, HeldIndex) else sys.maxsize
            nodes = self._nodes = tuple(_walk_held(self.root, size))
        return nodes

    @property
    def stats(self) -> TreeStats:
        stats = self._stats
        if stats is None:
            stats = self._stats = tree_stats(self.nodes)
        return stats

    @property
    def size(self) -> int:
        """How many nodes the tree has (`len(nodes)`, without a walk)."""
        return self.stats.count

    @property
    def totals(self) -> Figures:
        return self.root.subtotal

    @property
    def running_count(self) -> int:
        return self.stats.running

    def by_model(self) -> tuple[ModelBreakdown, ...]:
        """Counted usage per model, most expensive first."""
        stats = self.stats
        if stats.by_model is not None:  # kept by the live roll-up as spans are folded in
            return stats.by_model
        groups: dict[str, list[Figures]] = {}
        for node in stats.costed:
            if node.counts_usage:
                groups.setdefault(model_of(node), []).append(node.own)
        rows = []
        for model, members in groups.items():
            total = sum_figures(members)  # one pass, not one Figures per addition
            rows.append(
                ModelBreakdown(
                    model=model,
                    calls=sum(1 for own in members if own.model_calls),
                    input_tokens=total.input_tokens,
                    output_tokens=total.output_tokens,
                    total_tokens=total.total_tokens,
                    cost=total.cost,
                    unpriced_calls=total.unpriced_calls,
                )
            )
        return sort_breakdown(rows)

    def warnings(self) -> tuple[SpanWarning, ...]:
        """Every warning of the trace, span by span in pre-order."""
        warned = self.stats.warned
        if len(warned) > 1:
            warned = tuple(sorted(warned, key=preorder_key))
        return tuple(warning for node in warned for warning in node.span_warnings)

    def __repr__(self) -> str:
        return f"<TraceTree {self.root.name!r} nodes={self.size}>"


def model_of(node: SpanNode) -> str:
    """The model a span's counted usage is grouped under in `TraceTree.by_model()`."""
    return node.priced.matched_model or node.usage.model or "(unknown model)"


def sort_breakdown(rows: Iterable[ModelBreakdown]) -> tuple[ModelBreakdown, ...]:
    """Rows of `TraceTree.by_model()` in its order: most expensive first, then by name."""
    minus = COST_CONTEXT.minus
    return tuple(sorted(rows, key=lambda row: (minus(row.cost or 0), row.model)))


def _claim_mismatch(usage: Usage, claimed: int, below: Figures) -> str | None:
    """The visible warning of a claim that differs from what its subtree counts (rule 2)."""
    differences = []
    for figure in STATED:
        stated = stated_value(usage, figure)
        if not claimed & figure.bit or stated is None:
            continue
        summed = getattr(below, figure.name)
        if figure.kind == "money":
            # Only with a fully priced subtree: another price table may round differently,
            # so costs agree within a relative 1e-6.
            if below.unpriced_calls:
                continue
            summed = summed or Decimal(0)
            context = COST_CONTEXT
            difference = context.abs(context.subtract(stated, summed))
            if difference > context.multiply(_COST_TOLERANCE, max(stated, summed)):
                differences.append(f"{figure.label} {stated} vs {summed}")
        elif stated != (summed or 0):
            differences.append(f"{figure.label} {stated} vs {summed if summed is not None else 0}")
    if not differences:
        return None
    return "roll-up mismatch: this span claims " + ", ".join(differences) + " summed below"


_COST_TOLERANCE: Final = Decimal("1e-6")

# Exception types and messages of a request that got an HTTP error response (billed by no
# provider), told apart from a timeout or a dropped connection (which may have been).
_HTTP_REFUSAL: Final = re.compile(
    r"StatusError|BadRequest|Authentication|PermissionDenied|NotFound|Conflict"
    r"|UnprocessableEntity|RateLimit|InternalServer|ServiceUnavailable|Overloaded"
    r"|Error code: [45]\d\d|HTTP [45]\d\d|\b[45]\d\d\b"
)
_NOT_A_RESPONSE: Final = re.compile(r"Timeout|TimedOut|Connection|Network|Disconnect", re.I)


# `error.type` / `exception.type` of a request a budget refused: our `BudgetExceeded`, bare
# or as `agenta_notebook.budget.BudgetExceeded`, each also as `str()` of the class
# (`<class '...'>`); never another package's class of that name.
_BUDGET_REFUSAL: Final = re.compile(
    r"(?:agenta_notebook\.budget\.)?BudgetExceeded"
    r"|<class '(?:agenta_notebook\.budget\.)?BudgetExceeded'>"
)


def is_budget_refusal(exception_type: object) -> bool:
    """True when `exception_type` (an `exception.type` or `error.type` value) names our
    `BudgetExceeded`."""
    return isinstance(exception_type, str) and _BUDGET_REFUSAL.fullmatch(exception_type) is not None


def refused_by_budget(record: SpanRecord) -> bool:
    """True when the span failed with `BudgetExceeded`: a request refused before it was
    sent (rule 14), told by the exception type it records, never by a message."""
    if record.status != "ERROR":
        return False
    if is_budget_refusal(record.attributes.get("error.type")):
        return True
    return any(
        event.name == "exception" and is_budget_refusal(event.attributes.get("exception.type"))
        for event in record.events
    )


def failed_with_http_response(record: SpanRecord) -> bool:
    """True when the span failed with an HTTP error response from the provider (rule 14).

    Read from the HTTP status attributes when present, else from `error.type`, the status
    message and the exception events' type and message.
    """
    if record.status != "ERROR":
        return False
    attributes = record.attributes
    for key in ("http.response.status_code", "http.status_code"):
        code = attributes.get(key)
        if isinstance(code, int | str) and str(code).isdigit():
            return 400 <= int(code) < 600
    texts: list[str] = []
    for value in (attributes.get("error.type"), record.status_message):
        if isinstance(value, str):
            texts.append(value)
    for event in record.events:
        if event.name == "exception":
            for key in ("exception.type", "exception.message"):
                value = event.attributes.get(key)
                if isinstance(value, str):
                    texts.append(value[:2000])
    if not texts or any(_NOT_A_RESPONSE.search(text) for text in texts):
        return False
    return any(_HTTP_REFUSAL.search(text) for text in texts)


def new_node(row: SpanRow, attributes: Mapping[str, Any]) -> SpanNode:
    """A node for the span of `row` and `attributes`, its usage read (a warning on it
    when its attributes cannot be read), not yet placed in a tree nor rolled up."""
    usage = type_only_usage(attributes)  # most spans: one call, no set made
    if usage is not None:
        return SpanNode(row, attributes, usage, UNPRICED)
    try:
        usage = read_usage(attributes)
    except Exception as error:  # a user's mapping may raise anything
        # A mapping that misbehaves must not hide the other spans: a warning on this one.
        usage = Usage(warnings=(f"could not read attributes: {error!r}",))
    return SpanNode(row, attributes, usage, UNPRICED)  # positional: faster than by name


def build_tree(
    records: Iterable[SpanRecord | RowSpan],
    root_span_id: int | None = None,
    *,
    name: str = "trace",
    user_prices: UserPrices = NO_USER_PRICES,
) -> TraceTree:
    """Build the tree of one trace and roll up every subtotal.

    `records` (`SpanRecord`s, or `RowSpan` pairs) may come in any order and may include
    running spans (no end time). A
    record whose parent is missing hangs under the root, marked detached (rule 9). With
    no single root, a synthetic one named `name` holds the top-level spans. Model calls
    are priced with `user_prices` first, then genai-prices' table (rule 6).

    >>> tree = build_tree([SpanRecord(1, 1, None, "root", 0, 10)])
    >>> tree.root.name, tree.totals.model_calls
    ('root', 0)
    """
    return _build_tree(split_records(records), root_span_id, name, user_prices)


def synthetic_row(trace_id: int, name: str, start: int, end: int | None) -> SpanRow:
    """The row of a synthetic root (span id 0) named `name`."""
    return (trace_id, 0, None, name, start, end, "UNSET", None, (), "INTERNAL", None, ())


def _build_tree(
    spans: Iterable[RowSpan],
    root_span_id: int | None,
    name: str,
    user_prices: UserPrices,
) -> TraceTree:
    by_id: dict[int, SpanNode] = {}
    trace_id = 0
    for row, attributes in spans:
        span_id = row[SPAN_ID]
        existing = by_id.get(span_id)
        # The same span seen running then ended: the ended copy wins.
        if existing is None or existing.row[END] is None:
            by_id[span_id] = new_node(row, attributes)
            trace_id = row[TRACE_ID]

    root: SpanNode | None = by_id.get(root_span_id) if root_span_id is not None else None
    if root is None:
        tops = [node for node in by_id.values() if node.row[PARENT_ID] is None]
        if len(tops) == 1:
            root = tops[0]
    if root is None:
        start = min((node.row[START] for node in by_id.values()), default=0)
        ends = [node.row[END] for node in by_id.values()]
        end = None if None in ends else max((e for e in ends if e is not None), default=start)
        root = SpanNode(
            row=synthetic_row(trace_id, name, start, end),
            attributes={},
            usage=EMPTY_USAGE,
            priced=UNPRICED,
            synthetic=True,
        )

    get_node = by_id.get
    for node in by_id.values():
        if node is root:
            continue
        parent_id = node.row[PARENT_ID]
        parent = get_node(parent_id) if parent_id is not None else None
        if parent is None:
            parent = root
            # A top-level span under a synthetic root is where it belongs, not detached.
            node.detached = not (root.synthetic and parent_id is None)
        node.parent = parent
        children = parent.children
        if children.__class__ is list:  # `child_list`, inline: one call less a span
            children.append(node)
        else:
            parent.children = [*children, node]

    order = preorder((root,))
    if len(order) < len(by_id) + (1 if root.synthetic else 0):
        _cut_cycles(by_id, root, order)
        order = preorder((root,))

    _pair_recorded_twice(order)
    failures = roll_up(order, user_prices)
    return TraceTree(trace_id, root, tuple(order), by_id, tuple(failures))


def _cut_cycles(by_id: dict[int, SpanNode], root: SpanNode, reached: list[SpanNode]) -> None:
    """Spans in a parent cycle never reach the root: in each cycle, the span that starts
    first (then the smallest id) is cut loose and hangs under the root, detached; the
    spans under a cycle stay where they are. Whatever the order of the records, the
    same span of a cycle is cut."""
    seen = {id(node) for node in reached}
    for node in by_id.values():
        if id(node) in seen:
            continue
        # Up from a span the walk missed: it is in a cycle or under one.
        path: set[int] = set()
        current: SpanNode | None = node
        while current is not None and id(current) not in path and id(current) not in seen:
            path.add(id(current))
            current = current.parent
        if current is None or id(current) in seen:
            continue  # under a cycle cut already
        members = [current]
        member = current.parent
        while member is not None and member is not current:
            members.append(member)
            member = member.parent
        cut = min(members, key=start_order)
        parent = cut.parent
        assert parent is not None  # in a cycle
        child_list(parent).remove(cut)
        cut.parent = root
        cut.detached = True
        child_list(root).append(cut)
        seen.update(id(n) for n in preorder((cut,), set()))


# Scopes of frameworks and wrappers: when they record a call that a client library's
# instrumentation records too, the client's span (closest to the HTTP request) counts.
_FRAMEWORK_SCOPE: Final = re.compile(
    r"langchain|langgraph|litellm|llama[_-]?index|agenta|crewai|dspy|haystack|agents"
    r"|autogen|instructor|guardrails|pydantic[_-]ai|mcp|beeai|smolagents",
    re.IGNORECASE,
)
# A provider's response id inside an OpenInference `output.value` (a JSON document).
_RESPONSE_ID_IN_OUTPUT: Final = re.compile(
    r'"id"\s*:\s*"((?:chatcmpl|cmpl|resp|msg|gen|req|compl)[-_][A-Za-z0-9_-]{4,200})"'
)
_DATE_SUFFIX: Final = re.compile(r"-(?:\d{4}-\d{2}-\d{2}|\d{8})$")


def _closeness_to_request(node: SpanNode) -> tuple[int, int, int, int]:
    """Sort key: client-library spans first, then the innermost (shortest) span."""
    row = node.row
    scope, start = row[SCOPE], row[START]
    framework = 1 if scope and _FRAMEWORK_SCOPE.search(scope) else 0
    end = row[END] or start
    return framework, end - start, start, row[SPAN_ID]


def response_ids(node: SpanNode) -> frozenset[str]:
    """The provider response ids a span carries (rule 13)."""
    attributes = node.attributes
    ids: set[str] = set()
    stated = attributes.get(GENAI_RESPONSE_ID)
    if isinstance(stated, str) and stated:
        ids.add(stated)
    output = attributes.get("output.value")
    if isinstance(output, str) and '"id"' in output:
        ids.update(_RESPONSE_ID_IN_OUTPUT.findall(output[:200_000]))
    return frozenset(ids)


def call_key(node: SpanNode) -> tuple[str, int | None, int | None, bool] | None:
    """What two records of one call share when no response id tells them apart: the
    model (without provider prefix or date suffix) and the token counts (both inclusive
    of cache tokens, rule 5). A failed call without usage is keyed by its model alone."""
    usage = node.usage
    model = usage.model
    if model is None:
        return None
    name = _DATE_SUFFIX.sub("", model.strip().lower().rsplit("/", 1)[-1])
    failed = node.row[STATUS] == "ERROR"
    if usage.input_tokens is None and usage.output_tokens is None and not failed:
        return None
    return name, usage.input_tokens, usage.output_tokens, failed


def _contains(outer: SpanNode, inner: SpanNode) -> bool:
    """One span's time interval contains the other's (either way round)."""
    a_start, a_end = outer.row[START], outer.row[END]
    b_start, b_end = inner.row[START], inner.row[END]
    if a_end is None or b_end is None:
        return False
    return (a_start <= b_start and b_end <= a_end) or (b_start <= a_start and a_end <= b_end)


def _pair_recorded_twice(order: list[SpanNode]) -> None:
    """Rule 13: one call recorded by two instrumentations side by side counts once.

    Only lowest model-call spans (no model call below them) of different scopes are
    paired, so a pair is never nested (nesting is rule 2's case). A span is the same call
    as an earlier one when both carry a response id and share it, or else when model and
    token counts are equal and one time interval contains the other. Spans are taken
    client-library first, innermost first, so the one closest to the HTTP request is the
    one counted, whatever the order of arrival; each counted span takes at most one twin
    per scope, and spans of the same scope are never twins.
    """
    calls = [
        node
        for node in order
        if node.usage.is_model_call and not node.synthetic and node.row[END] is not None
    ]
    if len(calls) < 2 or len({node.row[SCOPE] for node in calls}) < 2:
        return
    call_above: set[int] = set()  # ids of nodes that have a model-call span below them
    for node in reversed(order):
        parent = node.parent
        if parent is not None and (node.usage.is_model_call or id(node) in call_above):
            call_above.add(id(parent))
    lowest = sorted(
        (node for node in calls if id(node) not in call_above), key=_closeness_to_request
    )
    by_response_id: dict[str, list[SpanNode]] = {}
    by_key: dict[tuple[str, int | None, int | None, bool], list[SpanNode]] = {}
    identified: dict[int, frozenset[str]] = {}
    scopes: dict[int, set[str | None]] = {}
    for node in lowest:
        ids = response_ids(node)
        key = call_key(node)
        twin: SpanNode | None = None
        for response_id in ids:
            for counted in by_response_id.get(response_id, ()):
                if node.row[SCOPE] not in scopes[id(counted)]:
                    twin = counted
                    break
            if twin is not None:
                break
        if twin is None and key is not None:
            for counted in by_key.get(key, ()):
                if (
                    node.row[SCOPE] not in scopes[id(counted)]
                    and not (ids and identified[id(counted)])
                    and _contains(counted, node)
                ):
                    twin = counted
                    break
        if twin is not None:
            node.duplicate_of = twin
            scopes[id(twin)].add(node.row[SCOPE])
            continue
        scopes[id(node)] = {node.row[SCOPE]}
        identified[id(node)] = ids
        for response_id in ids:
            by_response_id.setdefault(response_id, []).append(node)
        if key is not None:
            by_key.setdefault(key, []).append(node)


def roll_up(
    order: list[SpanNode], user_prices: UserPrices, settled: list[SpanNode] | None = None
) -> list[SpanNode]:
    """Count each new node's own figures and its subtotal, children before parents:
    `order` has every node after its parent, and the children of its nodes are nodes
    of `order` (a whole tree, or the new subtrees a fold adds).

    Returns the nodes whose pricing failed (a bug, carried in `node.priced.failure`);
    `settled` gets the nodes the rules settled (all but those with nothing of their
    own)."""
    failures: list[SpanNode] = []
    # Whether a node has nothing of its own: it states no figure, is no model call,
    # carries no warning (`_states_nothing`, kept per usage object: most spans share a
    # few, one per type, alive as long as their nodes), did not fail, is not detached
    # nor recorded twice. Its roll-up is then what its children hold, and a new leaf's
    # defaults are already its settled state.
    plain: dict[int, bool] = {}
    for node in reversed(order):
        usage = node.usage
        states_nothing = plain.get(id(usage))
        if states_nothing is None:
            states_nothing = plain[id(usage)] = _states_nothing(usage)
        if (
            states_nothing
            and node.row[STATUS] != "ERROR"
            and node.duplicate_of is None
            and not node.detached
        ):
            # Most spans (a tool, a step): a new node's defaults are already what
            # `settle_node` would set, but for what its children hold.
            if node.children:
                below, call_below, _errors, parts = children_sums(node)
                node.reports_in_subtree = below
                node.call_in_subtree = call_below
                node.subtotal = sum_parts(parts)
            continue
        if settled is not None:
            settled.append(node)
        below, call_below, errors, parts = children_sums(node)
        if settle_node(node, below, call_below, errors > 0, parts, user_prices):
            failures.append(node)
    return failures


def children_sums(node: SpanNode) -> tuple[int, bool, int, list[Figures]]:
    """What `settle_node` reads of a node's children: the `REPORTS_*` bits reported in
    their subtrees, whether a model-call span is below, how many children failed, and
    their subtotals that are not empty (only those cost an addition)."""
    below = 0
    call_below = False
    errors = 0
    parts: list[Figures] = []
    for child in node.children:
        part = child.subtotal
        if part is not NO_FIGURES:
            parts.append(part)
        below |= child.reports_in_subtree
        if child.call_in_subtree:
            call_below = True
        if child.row[STATUS] == "ERROR":
            errors += 1
    return below, call_below, errors, parts


def sum_parts(parts: list[Figures]) -> Figures:
    """The sum of a node's parts (its children's subtotals, maybe its own figures): the
    one part itself when there is one, `NO_FIGURES` when there is none."""
    if not parts:
        return NO_FIGURES
    return parts[0] if len(parts) == 1 else sum_figures(parts)


def _states_nothing(usage: Usage) -> bool:
    """No figure, no model call, no warning: with a span that did not fail, is not
    detached nor recorded twice, it has nothing of its own (see `roll_up`)."""
    return not usage.is_model_call and not usage.warnings and not stated_mask(usage)


def settle_node(
    node: SpanNode,
    below: int,
    call_below: bool,
    child_error: bool,
    parts: list[Figures],
    user_prices: UserPrices,
) -> bool:
    """The roll-up of one node from what its children hold (rules 1-8, 13, 14).

    `below` is the `REPORTS_*` bits of its children's subtrees, `call_below` whether a
    model-call span is below it, `child_error` whether a child failed, `parts` its
    children's subtotals that are not empty (or their sum); `parts` is used up. Sets
    `is_error_origin`, `reports_in_subtree`, `call_in_subtree`, `role`, `own`, `priced`,
    `mismatch`, `subtotal` and `span_warnings` of a node whose `role`, `own`, `priced`,
    `mismatch` and `span_warnings` are the defaults of a new `SpanNode`. True when
    genai-prices failed on it (a bug, carried in `node.priced.failure`).
    """
    usage = node.usage
    node.is_error_origin = node.row[STATUS] == "ERROR" and not child_error
    own_reports = stated_mask(usage)
    node.reports_in_subtree = below | own_reports
    node.call_in_subtree = call_below or usage.is_model_call
    covers_unpriced = False
    if node.duplicate_of is not None:
        node.role = "recorded twice"
        node.is_error_origin = False  # the counted twin carries the error (rule 13)
    elif own_reports or usage.is_model_call:
        covers_unpriced = _count_own(node, own_reports, below, call_below, parts, user_prices)
    elif node.is_error_origin:
        node.own = _ONE_ERROR
    if node.own is not NO_FIGURES:
        parts.append(node.own)
    node.subtotal = sum_parts(parts)
    if covers_unpriced and node.subtotal.unpriced_calls:
        # This span's own cost prices the calls below that had none (rule 2).
        node.subtotal = replace(node.subtotal, unpriced_calls=0)
    failed = node.priced.failure is not None
    if usage.warnings or node.mismatch or node.detached or node.duplicate_of is not None or failed:
        node.span_warnings = _warnings(node)
    return failed


def _count_own(
    node: SpanNode,
    reported: int,
    below: int,
    call_below: bool,
    parts: Sequence[Figures],
    user_prices: UserPrices,
) -> bool:
    """Set `role`, `own`, `priced` and `mismatch` of a span that reports usage or is a
    model call (rules 2, 3, 4, 5, 6, 14). True when its own cost prices the calls below.

    Each figure counts at the lowest span that reports it: the figures this span reports
    and nothing below it does are counted here; the others are a claim, checked against
    the sum below. `reported` is `stated_mask(node.usage)`.
    """
    usage = node.usage
    counted = reported & ~below
    errors = 1 if node.is_error_origin else 0
    lowest_call = usage.is_model_call and not call_below
    cost_known_below = any(part.cost is not None for part in parts)
    # A cost is known below when a span there states one or is priced from its tokens.
    claimed = reported & (below | REPORTS_COST) if cost_known_below else reported & below
    summed = sum_figures(parts) if claimed and parts else NO_FIGURES
    if claimed:
        node.mismatch = _claim_mismatch(usage, claimed, summed)
    cost: Decimal | None = None
    if not cost_known_below and reported:
        node.priced = price_usage(usage, user_prices)
        cost = _exact_cost(node.priced.cost)
    if usage.is_model_call:
        if call_below:
            node.role = "model call wrapper"
        elif reported:
            node.role = "model call"
        elif node.row[STATUS] == "ERROR" and refused_by_budget(node.record):
            node.role = "refused by budget"
            lowest_call = False  # never sent: no call, nothing to price, its error only
        elif node.row[STATUS] == "ERROR" and failed_with_http_response(node.record):
            node.role = "failed model call"
        else:
            node.role = "unreported model call"
    else:
        node.role = "claim counted" if counted or cost is not None else "claim not counted"
    unpriced = 0
    if cost is None:
        if lowest_call:
            unpriced = 0 if node.role == "failed model call" else 1
        elif counted & REPORTS_TOKENS and not cost_known_below:
            # Tokens counted here with no price: unpriced once, unless the calls below
            # that these tokens belong to are unpriced already.
            unpriced = 0 if any(part.unpriced_calls for part in parts) else 1
    if not counted and cost is None and not lowest_call:
        node.own = _ONE_ERROR if errors else NO_FIGURES
        return False
    node.own = counted_figures(
        usage,
        counted,
        cost=cost,
        model_calls=1 if lowest_call else 0,
        unpriced_calls=unpriced,
        errors=errors,
    )
    return cost is not None and not lowest_call


_ONE_ERROR: Final = Figures(errors=1)
#: The figures that are values (token counts, money): `None` where nothing is counted.
_VALUES: Final = tuple(figure.name for figure in STATED if figure.kind in ("tokens", "money"))


def _warnings(node: SpanNode) -> tuple[SpanWarning, ...]:
    """The warnings of a node: its ignored values, then what the roll-up found."""
    found: list[tuple[WarningKind, str]] = [("ignored value", text) for text in node.usage.warnings]
    if node.mismatch:
        found.append(("roll-up mismatch", node.mismatch))
    twin = node.duplicate_of
    if twin is not None:
        found.append(
            (
                "recorded twice",
                f"recorded twice by {twin.row[SCOPE] or 'an unnamed scope'} and "
                f"{node.row[SCOPE] or 'an unnamed scope'}: counted at span "
                f"{twin.span_id:016x} ({twin.name})",
            )
        )
    if node.detached:
        found.append(
            (
                "detached",
                f"detached: parent span {node.row[PARENT_ID] or 0:016x} is not in this trace",
            )
        )
    failed = node.priced.warning
    if failed is not None:
        found.append(("pricing failed", failed))
    return tuple(SpanWarning(node.span_id, node.name, text, kind) for kind, text in found)


_start_of_row: Final = itemgetter(START, SPAN_ID)


def start_order(node: SpanNode) -> tuple[int, int]:
    """Sort key of siblings: start time, then span id (both read by one C call)."""
    return _start_of_row(node.row)  # type: ignore[no-any-return]


def preorder(starts: Sequence[SpanNode], guard: set[int] | None = None) -> list[SpanNode]:
    """The nodes below each of `starts` in turn (each start first, then its subtree),
    parents first, children in start order; sets the `depth` of every node but the
    starts (a start's is its own). The full build walks from the root; the fold, from
    each new subtree's top.

    Every node has one parent and the root none, so the walk from the root cannot
    revisit a node; `guard` is for walks from a node that may sit in a parent cycle.
    """
    order: list[SpanNode] = []
    stack = list(reversed(starts))
    while stack:
        node = stack.pop()
        if guard is not None:
            if id(node) in guard:
                continue
            guard.add(id(node))
        order.append(node)
        children = node.children
        if children:
            if len(children) > 1:
                children = child_list(node)
                children.sort(key=start_order)
            depth = node.depth + 1
            for child in children:
                child.depth = depth
            stack.extend(reversed(children))
    return order


@dataclass(frozen=True, slots=True)
class TraceSummary:
    """What a header shows: totals, per-model figures, and every warning."""

    name: str
    trace_id: str
    spans: int
    running: int
    duration_ms: float | None
    totals: Figures
    by_model: tuple[ModelBreakdown, ...]
    warnings: tuple[SpanWarning, ...]
