"""The trace tree and its subtotals: pure code, the rules of `rollup.md`.

`build_tree` turns plain `SpanRecord`s (in any order) into a `TraceTree` whose every
node carries its counted own figures and the subtotal of its subtree. `Trace` is the
live handle a traced block yields: spans are added as they end, and the tree is rebuilt
on demand, so the order of arrival never changes a number (rule 11).
"""

from __future__ import annotations

import gc
import os
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from decimal import MAX_EMAX, MIN_EMIN, ROUND_HALF_EVEN, Context, Decimal
from typing import TYPE_CHECKING, Any, Final, Literal, TypeVar

from .pricing import UNPRICED, PricedCost, price_usage
from .usage import EMPTY_USAGE, Usage, read_usage

if TYPE_CHECKING:
    import pandas as pd

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


@dataclass(frozen=True, slots=True)
class Figures:
    """The figures rolled up at each node. `None` is absent (unknown), never zero.

    `cost` is the known part; `unpriced_calls` says how many counted spans have no
    price, so a cost next to a non-zero `unpriced_calls` is a lower bound.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cache_read_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    cost: Decimal | None = None
    model_calls: int = 0
    unpriced_calls: int = 0
    errors: int = 0

    def __add__(self, other: Figures) -> Figures:
        return Figures(
            _add(self.input_tokens, other.input_tokens),
            _add(self.output_tokens, other.output_tokens),
            _add(self.total_tokens, other.total_tokens),
            _add(self.cache_read_tokens, other.cache_read_tokens),
            _add(self.cache_write_tokens, other.cache_write_tokens),
            _add(self.reasoning_tokens, other.reasoning_tokens),
            _add_cost(self.cost, other.cost),
            self.model_calls + other.model_calls,
            self.unpriced_calls + other.unpriced_calls,
            self.errors + other.errors,
        )


NO_FIGURES: Final = Figures()

FIGURE_FIELDS: Final = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost",
    "model_calls",
    "unpriced_calls",
    "errors",
)


#: Costs are summed in this context: wide enough that a sum of costs (each at most
#: 1e40 dollars with a resolution of at most 1e-30, see `_exact_cost`) is never rounded,
#: so the root equals the sum of its parts exactly and the order of addition is moot
#: (rules 11 and 12). The default context rounds to 28 digits.
_COST_CONTEXT: Final = Context(prec=100, rounding=ROUND_HALF_EVEN, Emin=MIN_EMIN, Emax=MAX_EMAX)
_FINEST_COST: Final = Decimal("1e-30")


def _exact_cost(cost: Decimal | None) -> Decimal | None:
    """`cost` with a resolution of at most 1e-30 dollars, so that sums stay exact."""
    if cost is None:
        return None
    exponent = cost.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -30:
        try:
            return cost.quantize(_FINEST_COST, context=_COST_CONTEXT)
        except ArithmeticError:  # over 100 digits at that resolution: keep it as it is
            return cost
    return cost


_Number = TypeVar("_Number", int, Decimal)


def _add(left: _Number | None, right: _Number | None) -> _Number | None:
    if left is None:
        return right
    if right is None:
        return left
    return left + right


def _add_cost(left: Decimal | None, right: Decimal | None) -> Decimal | None:
    if left is None:
        return right
    if right is None:
        return left
    return _COST_CONTEXT.add(left, right)


#: How a span's own usage entered the roll-up.
Role = Literal[
    "model call",  # a model-call span: its own usage counts (rule 2)
    "unreported model call",  # a model call with no usage anywhere below: counted, unpriced
    "model call wrapper",  # a model-call span with no usage of its own over calls that report
    "claim counted",  # not a model call, reports usage, nothing below does (rule 3)
    "claim not counted",  # not a model call, reports usage, spans below do (rule 3)
    "none",  # reports nothing
]


@dataclass(eq=False, slots=True)
class SpanNode:
    """A span in the tree with its counted own figures and subtotal."""

    record: SpanRecord
    usage: Usage
    priced: PricedCost
    role: Role = "none"
    own: Figures = NO_FIGURES
    subtotal: Figures = NO_FIGURES
    children: list[SpanNode] = field(default_factory=list)
    parent: SpanNode | None = None
    depth: int = 0
    detached: bool = False
    is_error_origin: bool = False
    synthetic: bool = False
    mismatch: str | None = None
    warnings: tuple[str, ...] = ()

    @property
    def span_id(self) -> int:
        return self.record.span_id

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def type(self) -> str | None:
        return self.usage.span_type

    @property
    def running(self) -> bool:
        return self.record.end_time_ns is None

    @property
    def is_error(self) -> bool:
        return self.record.status == "ERROR"

    @property
    def duration_ms(self) -> float | None:
        end = self.record.end_time_ns
        return None if end is None else (end - self.record.start_time_ns) / 1e6

    def walk(self) -> Iterator[SpanNode]:
        """This node and every node below it, depth first, parents before children."""
        stack = [self]
        while stack:
            node = stack.pop()
            yield node
            stack.extend(reversed(node.children))

    def __repr__(self) -> str:
        return f"<SpanNode {self.name!r} type={self.type} children={len(self.children)}>"


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
class SpanWarning:
    span_id: int
    span_name: str
    message: str


@dataclass(frozen=True, slots=True)
class TraceTree:
    """An immutable snapshot of a trace: the root, every node in pre-order, and lookups."""

    trace_id: int
    root: SpanNode
    nodes: tuple[SpanNode, ...]
    by_id: Mapping[int, SpanNode]

    @property
    def totals(self) -> Figures:
        return self.root.subtotal

    @property
    def running_count(self) -> int:
        return sum(1 for node in self.nodes if node.running and not node.synthetic)

    def by_model(self) -> tuple[ModelBreakdown, ...]:
        """Counted usage per model, most expensive first."""
        groups: dict[str, list[Figures]] = {}
        for node in self.nodes:
            if node.role in _COUNTED_ROLES:
                model = node.priced.matched_model or node.usage.model or "(unknown model)"
                groups.setdefault(model, []).append(node.own)
        rows = []
        for model, members in groups.items():
            total = _sum_figures(members)  # one pass, not one Figures per addition
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
        rows.sort(key=lambda row: (-(row.cost or 0), row.model))
        return tuple(rows)

    def warnings(self) -> tuple[SpanWarning, ...]:
        return tuple(
            SpanWarning(node.span_id, node.name, message)
            for node in self.nodes
            for message in node.warnings
        )


#: Roles whose own usage is counted in the trace (rules 2 and 3).
_COUNTED_ROLES: Final = frozenset({"model call", "unreported model call", "claim counted"})


def _count_own(node: SpanNode, below_reports: bool, below: Sequence[Figures]) -> None:
    """Set `role`, `own` and `mismatch` of one node (rules 2, 3, 4, 5, 6, 8)."""
    usage = node.usage
    errors = 1 if node.is_error_origin else 0
    if usage.is_model_call:
        if usage.reports_usage:
            node.role = "model call"
        elif below_reports:
            node.role = "model call wrapper"
            node.own = _ONE_ERROR if errors else NO_FIGURES
            return
        else:
            node.role = "unreported model call"
            node.own = Figures(model_calls=1, unpriced_calls=1, errors=errors)
            return
    elif usage.reports_usage:
        if below_reports:
            node.role = "claim not counted"
            summed = _sum_figures(below) if below else NO_FIGURES
            node.mismatch = _claim_mismatch(usage, summed)
            node.own = _ONE_ERROR if errors else NO_FIGURES
            return
        node.role = "claim counted"
    else:
        node.own = _ONE_ERROR if errors else NO_FIGURES
        return
    priced = price_usage(usage)
    node.priced = priced
    node.own = Figures(
        usage.input_tokens,
        usage.output_tokens,
        usage.effective_total_tokens,
        usage.cache_read_tokens,
        usage.cache_write_tokens,
        usage.reasoning_tokens,
        _exact_cost(priced.cost),
        1 if node.role == "model call" else 0,
        1 if priced.cost is None else 0,
        errors,
    )


def _claim_mismatch(usage: Usage, below: Figures) -> str | None:
    differences = []
    for label, claimed, summed in (
        ("input tokens", usage.input_tokens, below.input_tokens),
        ("output tokens", usage.output_tokens, below.output_tokens),
        ("total tokens", usage.effective_total_tokens, below.total_tokens),
        ("cost", usage.cost, below.cost),
    ):
        if claimed is not None and claimed != (summed or 0):
            differences.append(f"{label} {claimed} vs {summed if summed is not None else 0}")
    if not differences:
        return None
    return "roll-up mismatch: this span claims " + ", ".join(differences) + " summed below"


def _new_node(record: SpanRecord) -> SpanNode:
    try:
        usage = read_usage(record.attributes)
    except Exception as error:  # a mapping that misbehaves must not hide other spans
        usage = Usage(warnings=(f"could not read attributes: {error!r}",))
    return SpanNode(record=record, usage=usage, priced=UNPRICED)


def build_tree(
    records: Iterable[SpanRecord], root_span_id: int | None = None, *, name: str = "trace"
) -> TraceTree:
    """Build the tree of one trace and roll up every subtotal.

    `records` may come in any order and may include running spans (no end time). A
    record whose parent is missing hangs under the root, marked detached (rule 9). With
    no single root, a synthetic one named `name` holds the top-level spans.

    >>> tree = build_tree([SpanRecord(1, 1, None, "root", 0, 10)])
    >>> tree.root.name, tree.totals.model_calls
    ('root', 0)
    """
    with _collector_paused():
        return _build_tree(records, root_span_id, name)


@contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a tree is built.

    A build allocates a few objects per span and frees none of them; with the collector
    on, each of its passes walks the whole growing heap, which more than doubles the
    time of a 100k-span build. Only a collector this call turned off is turned back on.
    """
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def _build_tree(records: Iterable[SpanRecord], root_span_id: int | None, name: str) -> TraceTree:
    by_id: dict[int, SpanNode] = {}
    trace_id = 0
    for record in records:
        existing = by_id.get(record.span_id)
        # The same span seen running then ended: the ended copy wins.
        if existing is None or existing.record.end_time_ns is None:
            by_id[record.span_id] = _new_node(record)
            trace_id = record.trace_id

    root: SpanNode | None = by_id.get(root_span_id) if root_span_id is not None else None
    if root is None:
        tops = [node for node in by_id.values() if node.record.parent_span_id is None]
        if len(tops) == 1:
            root = tops[0]
    if root is None:
        start = min((node.record.start_time_ns for node in by_id.values()), default=0)
        ends = [node.record.end_time_ns for node in by_id.values()]
        end = None if None in ends else max((e for e in ends if e is not None), default=start)
        root = SpanNode(
            record=SpanRecord(trace_id, 0, None, name, start, end),
            usage=EMPTY_USAGE,
            priced=UNPRICED,
            synthetic=True,
        )

    get_node = by_id.get
    for node in by_id.values():
        if node is root:
            continue
        parent_id = node.record.parent_span_id
        parent = get_node(parent_id) if parent_id is not None else None
        if parent is None:
            parent = root
            # A top-level span under a synthetic root is where it belongs, not detached.
            node.detached = not (root.synthetic and parent_id is None)
        node.parent = parent
        parent.children.append(node)

    order = _preorder(root)
    if len(order) < len(by_id) + (1 if root.synthetic else 0):
        # Nodes in a parent cycle never reach the root: cut them loose, once each.
        seen = {id(node) for node in order}
        for node in by_id.values():
            if id(node) not in seen and node.parent is not None:
                node.parent.children.remove(node)
                node.parent = root
                node.detached = True
                root.children.append(node)
                seen.update(id(n) for n in _preorder(node, set()))
        order = _preorder(root)

    _roll_up(order)
    return TraceTree(trace_id, root, tuple(order), by_id)


def _roll_up(order: list[SpanNode]) -> None:
    """Count each node's own figures and its subtotal, children before parents."""
    # ids of the nodes whose subtree, the node included, reports usage (rule 3)
    reporting: set[int] = set()
    for node in reversed(order):
        children = node.children
        usage = node.usage
        reports = False
        # the subtotals that are not empty: only those cost an addition
        parts: list[Figures] = []
        if children:
            child_error = False
            for child in children:
                part = child.subtotal
                if part is not NO_FIGURES:
                    parts.append(part)
                if child.record.status == "ERROR":
                    child_error = True
                if not reports and id(child) in reporting:
                    reports = True
            node.is_error_origin = node.record.status == "ERROR" and not child_error
        else:
            node.is_error_origin = node.record.status == "ERROR"
        own_reports = usage.reports_usage
        if own_reports or reports:
            reporting.add(id(node))
        if own_reports or usage.is_model_call:
            _count_own(node, reports, parts)
        elif node.is_error_origin:
            node.own = _ONE_ERROR
        if node.own is not NO_FIGURES:
            parts.append(node.own)
        if not parts:
            node.subtotal = NO_FIGURES
        elif len(parts) == 1:
            node.subtotal = parts[0]
        else:
            node.subtotal = _sum_figures(parts)
        if usage.warnings or node.mismatch or node.detached:
            warnings = list(usage.warnings)
            if node.mismatch:
                warnings.append(node.mismatch)
            if node.detached:
                warnings.append(
                    f"detached: parent span {node.record.parent_span_id or 0:016x} "
                    "is not in this trace"
                )
            node.warnings = tuple(warnings)


def _sum_figures(parts: Sequence[Figures]) -> Figures:
    """The sum of several figures in one pass (one allocation, not one per addition)."""
    input_tokens = output_tokens = total_tokens = None
    cache_read = cache_write = reasoning = None
    cost: Decimal | None = None
    model_calls = unpriced_calls = errors = 0
    add_cost = _COST_CONTEXT.add
    for part in parts:
        value = part.input_tokens
        if value is not None:
            input_tokens = value if input_tokens is None else input_tokens + value
        value = part.output_tokens
        if value is not None:
            output_tokens = value if output_tokens is None else output_tokens + value
        value = part.total_tokens
        if value is not None:
            total_tokens = value if total_tokens is None else total_tokens + value
        value = part.cache_read_tokens
        if value is not None:
            cache_read = value if cache_read is None else cache_read + value
        value = part.cache_write_tokens
        if value is not None:
            cache_write = value if cache_write is None else cache_write + value
        value = part.reasoning_tokens
        if value is not None:
            reasoning = value if reasoning is None else reasoning + value
        part_cost = part.cost
        if part_cost is not None:
            cost = part_cost if cost is None else add_cost(cost, part_cost)
        model_calls += part.model_calls
        unpriced_calls += part.unpriced_calls
        errors += part.errors
    return Figures(
        input_tokens,
        output_tokens,
        total_tokens,
        cache_read,
        cache_write,
        reasoning,
        cost,
        model_calls,
        unpriced_calls,
        errors,
    )


_ONE_ERROR: Final = Figures(errors=1)


def _start_order(node: SpanNode) -> tuple[int, int]:
    return node.record.start_time_ns, node.record.span_id


def _preorder(root: SpanNode, guard: set[int] | None = None) -> list[SpanNode]:
    """Nodes below `root` parents first, children in start order; sets `depth`.

    Every node has one parent and the root none, so the walk from the root cannot
    revisit a node; `guard` is for walks from a node that may sit in a parent cycle.
    """
    order: list[SpanNode] = []
    stack = [root]
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
                children.sort(key=_start_order)
            depth = node.depth + 1
            for child in children:
                child.depth = depth
            stack.extend(reversed(children))
    return order


Listener = Callable[["Trace"], None]


class Trace:
    """A live trace: spans are added as they end; every view reads a consistent snapshot.

    The tree is rebuilt only when a span was added since the last build, so repeated
    reads are cheap. A `Trace` of records only (from a file, say) is complete at once.
    """

    def __init__(
        self,
        trace_id: int,
        name: str,
        *,
        root_span_id: int | None = None,
        records: Iterable[SpanRecord] = (),
        converter: Callable[[Any], SpanRecord] | None = None,
    ) -> None:
        self.trace_id = trace_id
        self.name = name
        self.root_span_id = root_span_id
        self._converter = converter
        self._records: dict[int, SpanRecord] = {r.span_id: r for r in records}
        self._finished_raw: list[Any] = []
        self._open_raw: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._version = 0
        self._built_version = -1
        self._tree: TraceTree | None = None
        self._summary: tuple[TraceTree, TraceSummary] | None = None
        self._listeners: list[Listener] = []
        #: set when the traced block has exited; spans may still arrive (rule 10)
        self.closed = root_span_id is None
        self.dropped = False
        #: the root span has ended (or there is none): retention may drop this trace
        self._root_ended = root_span_id is None or root_span_id in self._records

    # -- called by the collector (hot path: keep them small) -------------------------
    def _span_started(self, span_id: int, raw: Any) -> None:
        with self._lock:
            self._open_raw[span_id] = raw
            self._version += 1

    def _span_ended(self, span_id: int, raw: Any) -> None:
        with self._lock:
            self._open_raw.pop(span_id, None)
            self._finished_raw.append(raw)
            self._version += 1
            if span_id == self.root_span_id:
                self._root_ended = True
        if self._listeners:
            self._notify()

    # -- building ---------------------------------------------------------------------
    @property
    def span_count(self) -> int:
        """How many spans the trace holds, running ones included (no tree build)."""
        return len(self._records) + len(self._finished_raw) + len(self._open_raw)

    @property
    def version(self) -> int:
        """Grows every time a span starts or ends in this trace."""
        return self._version

    def add_records(self, records: Iterable[SpanRecord]) -> None:
        """Add finished or running spans given as plain records."""
        with self._lock:
            for record in records:
                self._records[record.span_id] = record
            self._version += 1

    def records(self) -> list[SpanRecord]:
        """Every span of the trace as plain records, running ones with no end time."""
        with self._lock:
            if self._finished_raw:
                assert self._converter is not None
                for raw in self._finished_raw:
                    record = self._converter(raw)
                    self._records[record.span_id] = record
                self._finished_raw.clear()
            records = list(self._records.values())
            running = list(self._open_raw.values())
        if running and self._converter is not None:
            records.extend(self._converter(raw) for raw in running)
        return records

    @property
    def tree(self) -> TraceTree:
        """The tree with every subtotal, built from the spans seen so far."""
        version = self._version
        tree = self._tree
        if tree is None or self._built_version != version:
            with _collector_paused():
                tree = build_tree(self.records(), self.root_span_id, name=self.name)
            self._tree, self._built_version = tree, version
        return tree

    @property
    def root(self) -> SpanNode:
        return self.tree.root

    @property
    def nodes(self) -> Sequence[SpanNode]:
        return self.tree.nodes

    @property
    def totals(self) -> Figures:
        """The root's subtotal: the whole trace."""
        return self.tree.totals

    @property
    def running(self) -> bool:
        """True while any span of the trace, the root included, is still open."""
        with self._lock:
            return bool(self._open_raw)

    def find(self, name: str) -> SpanNode:
        """The first span called `name`, depth first (KeyError if there is none)."""
        for node in self.tree.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def summary(self) -> TraceSummary:
        """Totals, per-model breakdown, unpriced calls and warnings, in one record.

        Kept until the tree changes: a display asks for it several times (the static
        HTML, the text summary, the widget's header) and it walks every node.
        """
        tree = self.tree
        cached = self._summary
        if cached is not None and cached[0] is tree and cached[1].name == self.name:
            return cached[1]
        summary = TraceSummary(
            name=self.name,
            trace_id=f"{self.trace_id:032x}",
            spans=len(tree.nodes) - (1 if tree.root.synthetic else 0),
            running=tree.running_count,
            duration_ms=tree.root.duration_ms,
            totals=tree.totals,
            by_model=tree.by_model(),
            warnings=tree.warnings(),
        )
        self._summary = (tree, summary)
        return summary

    def to_dataframe(self) -> pd.DataFrame:
        """One row per span with own figures, subtotals and cost source (nullable dtypes)."""
        from .frame import trace_dataframe

        return trace_dataframe(self)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the trace to `path` as OTLP JSON (see `agenta_notebook.load`)."""
        from .persist import save_trace

        save_trace(self, path)

    # -- listeners (live views) -------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        """Call `listener(trace)` after each span that ends in this trace."""
        self._listeners.append(listener)

    def remove_listener(self, listener: Listener) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    def _notify(self) -> None:
        for listener in tuple(self._listeners):
            try:
                listener(self)
            except Exception:  # a broken view must not break the traced code
                pass

    def __repr__(self) -> str:
        totals = self.totals
        return (
            f"<Trace {self.name!r} spans={len(self.nodes)} tokens={totals.total_tokens} "
            f"cost={totals.cost} unpriced={totals.unpriced_calls} errors={totals.errors}>"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The notebook display: the interactive tree, its static HTML twin, a summary."""
        from .display import trace_mimebundle  # lazy: the core imports no IPython

        return trace_mimebundle(self)


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
