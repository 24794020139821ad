"""The live trace: the handle a traced block yields, fed by the collector as spans end.

The core (`agenta_notebook.core`) turns records into a tree; this module keeps the
records of one trace as they arrive, rebuilds the tree when something changed, and tells
open views. It knows nothing of the views: `to_dataframe`, `save` and the notebook display
call the functions the package put in `SHELLS` at import. Nor does it hold the user's
prices: each trace reads them from the source it was made with (the runtime's snapshot).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import TYPE_CHECKING, Any, Final, TypeVar

from agenta_notebook import forksafe
from agenta_notebook.core.columns import Counted, count_spans
from agenta_notebook.core.incremental import IncrementalTree, NeedsFullBuild
from agenta_notebook.core.pricing import NO_USER_PRICES, UserPrices
from agenta_notebook.core.rollup import (
    END,
    SPAN_ID,
    Figures,
    RowSpan,
    SpanNode,
    SpanRecord,
    SpanRow,
    TraceSummary,
    TraceTree,
    build_tree,
    join_record,
    split_records,
)
from agenta_notebook.errors import internal_error
from agenta_notebook.memory import gc_paused

if TYPE_CHECKING:
    import pandas as pd


Listener = Callable[["Trace"], None]
#: Ended spans are converted to rows (and the SDK's span objects released) in batches of
#: this many, as they end, rather than all at the first read. Small, so that the SDK's
#: spans waiting in a batch (about ten tracked objects each) stay well under the 700
#: allocations that start a young collection: with 64 a 100k-span cell ran 1,431 young
#: and 1 full collection (0.29-0.53 s), with 16 337 and none (0.03-0.05 s); with 1 the
#: conversion's own cost per call shows (benchmarks/README.md, issue 14's eighth round).
CONVERT_EVERY: Final = 16
#: A trace of fewer spans than this is read from its whole tree, not from its spans that
#: count (`Trace.counted`): numpy's cost per call outweighs the nodes saved. Measured
#: (a first `to_dataframe()`, a model call every 20 steps): 100 spans 2.9 ms counted
#: against 1.7 ms whole; 500, 4.2 against 3.5; 2,000, 8.2 against 9.5; 20,000, 64.6
#: against 91.3 (benchmarks/README.md, issue 14's thirteenth round).
COUNTED_FROM: Final = 2_000
#: Where a trace reads the user's prices when it builds its tree: a snapshot, cheap to call.
UserPricesSource = Callable[[], UserPrices]


def no_user_prices() -> UserPrices:
    """The prices source of a trace made without one: no user prices."""
    return NO_USER_PRICES


@dataclass(slots=True)
class Shells:
    """The views a `Trace` hands itself to; filled once by `agenta_notebook/__init__.py`.

    The live trace sits below its views in the import graph (they read it), so it cannot
    import them; the package, which imports everything, plugs them in at import instead.
    """

    dataframe: Callable[[Trace], pd.DataFrame] | None = None
    by_model: Callable[[Trace], pd.DataFrame] | None = None
    save: Callable[[Trace, str | os.PathLike[str]], None] | None = None
    mimebundle: Callable[[Trace], dict[str, Any]] | None = None
    #: the prices source of a trace made without one (by hand, from records): the
    #: default runtime's, so that `set_prices` reprices it like any other
    user_prices: UserPricesSource = no_user_prices


#: What `Trace.to_dataframe`, `Trace.save` and the notebook display call.
SHELLS: Final = Shells()

_Shell = TypeVar("_Shell")


def _shell(function: _Shell | None, method: str) -> _Shell:
    if function is None:  # only if a caller bypassed the package's __init__
        raise RuntimeError(f"Trace.{method} needs `import agenta_notebook` first")
    return function


def _each_of(
    convert: Callable[[Any], SpanRecord | RowSpan], spans: list[Any]
) -> list[SpanRecord | RowSpan]:
    return [convert(raw) for raw in spans]


class Trace:
    """A live trace: spans are added as they end; every view reads a consistent snapshot.

    The first read builds the tree in full; later reads fold in only the spans that
    started, changed or ended since (`core/incremental.py`), and build in full again only
    when the roll-up's rules need it or the user's prices changed. Repeated reads with
    nothing new are free. A `Trace` of records only (from a file, say) is complete at once.
    """

    def __init__(
        self,
        trace_id: int,
        name: str,
        *,
        root_span_id: int | None = None,
        records: Iterable[SpanRecord | RowSpan] = (),
        converter: Callable[[Any], SpanRecord | RowSpan] | None = None,
        convert_many: Callable[[list[Any]], Sequence[SpanRecord | RowSpan]] | None = None,
        user_prices: UserPricesSource | None = None,
    ) -> None:
        self.trace_id = trace_id
        self.name = name
        self.root_span_id = root_span_id
        if convert_many is None and converter is not None:
            convert_many = functools.partial(_each_of, converter)
        #: a list of SDK spans to their rows and attributes (`RowSpan`) or records, in
        #: one call (`converter` on each, by default)
        self._convert_many = convert_many
        #: where the user's prices are read at each build (`SHELLS.user_prices` if None)
        self._user_prices = SHELLS.user_prices if user_prices is None else user_prices
        # The spans as rows (`rollup.SpanRow`) and their attributes, in two lists, and
        # where each span is in them by its id (`_keep`). A row of plain values, and a
        # dict of them, are objects the garbage collector stops tracking, where a
        # record is tracked. Lists, not dicts by id: the collector stops tracking a dict
        # whose values it does not track, and tracks it again, among the youngest
        # objects, when a new row goes in; each young collection then walked every row
        # (measured: 600k spans spent twice as long in collections). A dict of ints it
        # never tracks.
        self._rows: list[SpanRow] = []
        self._span_attributes: list[Mapping[str, Any]] = []
        self._index: dict[int, int] = {}
        #: the rows from this position on are not folded yet, nor those at `_refold`
        #: (kept again since the last fold)
        self._folded_upto = 0
        self._refold: list[int] = []
        self._keep(split_records(records))
        self._folded_upto = len(self._rows)  # complete at once: the first read builds
        self._refold = []
        self._finished_raw: list[Any] = []
        #: ended spans are converted in batches of this many as they end (None: only
        #: when read; the benchmarks time the conversion with the roll-up that way)
        self.convert_every: int | None = CONVERT_EVERY
        #: `counted()` reads traces of at least this many spans (`COUNTED_FROM`)
        self.counted_from = COUNTED_FROM
        self._open_raw: dict[int, Any] = {}
        self._lock = forksafe.new_lock()  # released in a forked child
        self._version = 0
        # The roll-up: one fold or build at a time, never under `_lock` (a span that
        # ends does not wait for a build).
        self._build_lock = forksafe.new_rlock()
        self._built_version: tuple[int, int] = (-1, -1)
        self._rollup: IncrementalTree | None = None
        #: the spans that were running at the last fold (their rows may change)
        self._folded_running: set[int] = set()
        self._tree: TraceTree | None = None
        #: `counted()`'s result and the version it is of
        self._counted: tuple[tuple[int, int], Counted | None] | None = None
        self._summary: tuple[TraceTree, TraceSummary] | None = None
        self._reported_pricing_failures: set[int] = set()  # span ids, reported once each
        #: replaced, never changed in place: `_notify` reads it without a copy or a lock
        self._listeners: tuple[Listener, ...] = ()
        #: set when the traced block has exited; spans may still arrive (rule 10)
        self.closed = root_span_id is None
        self.dropped = False
        #: the root span has ended (or there is none): retention may drop this trace
        self.root_ended = root_span_id is None or root_span_id in self._index

    # -- called by the collector (hot path: keep them small) -------------------------
    def span_started(self, span_id: int, raw: Any) -> None:
        """A span of this trace started; `raw` is converted to a row when read."""
        with self._lock:
            self._open_raw[span_id] = raw
            self._version += 1

    def span_ended(self, span_id: int, raw: Any) -> None:
        """A span of this trace ended; open views are told."""
        with self._lock:
            self._open_raw.pop(span_id, None)
            finished = self._finished_raw
            finished.append(raw)
            self._version += 1
            if span_id == self.root_span_id:
                self.root_ended = True
            every = self.convert_every
            if every is not None and len(finished) >= every and self._convert_many is not None:
                # Let go of the SDK's span objects: a row and its attributes are two
                # objects the garbage collector stops tracking, where a finished SDK
                # span is about ten it walks again and again while the cell runs.
                self._convert_finished()
        if self._listeners:
            self._notify()

    def open_spans(self) -> list[Any]:
        """The spans of this trace that have started and not ended (as given)."""
        with self._lock:
            return list(self._open_raw.values())

    # -- building ---------------------------------------------------------------------
    @property
    def span_count(self) -> int:
        """How many spans the trace holds, running ones included (no tree build)."""
        return len(self._rows) + len(self._finished_raw) + len(self._open_raw)

    @property
    def version(self) -> int:
        """Grows every time a span starts or ends in this trace."""
        return self._version

    def add_records(self, records: Iterable[SpanRecord | RowSpan]) -> None:
        """Add finished or running spans given as plain records (or `RowSpan` pairs)."""
        with self._lock:
            try:
                self._keep(split_records(records))
            finally:
                self._version += 1

    def _keep(self, spans: Iterable[RowSpan]) -> None:
        """Keep each span's row and attributes, to fold next (under `_lock`)."""
        rows = self._rows
        attributes = self._span_attributes
        index = self._index
        for row, span_attributes in spans:
            span_id = row[SPAN_ID]
            position = index.get(span_id)
            # (in an order that an interruption between two lines leaves usable)
            if position is None:
                rows.append(row)
                attributes.append(span_attributes)
                index[span_id] = len(rows) - 1
            else:  # kept again (`add_records`): in its place, folded again
                self._refold.append(position)
                attributes[position] = span_attributes
                rows[position] = row

    def _kept(self) -> Iterator[RowSpan]:
        """Every kept span, row and attributes, as they are now (call under `_lock`;
        the pairs may be read after it is released)."""
        # (the build takes each pair apart at once: zip makes one tuple for them all)
        return zip(self._rows[:], self._span_attributes[:], strict=True)

    def _convert_finished(self) -> None:
        """The spans that ended since, as rows (under `_lock`)."""
        finished = self._finished_raw
        if finished:
            convert_many = self._convert_many
            assert convert_many is not None  # spans come only to a trace that converts them
            self._keep(split_records(convert_many(finished)))
            finished.clear()

    def records(self) -> list[SpanRecord]:
        """Every span of the trace as plain records, running ones with no end time."""
        with self._lock:
            self._convert_finished()
            spans = list(self._kept())
            running = list(self._open_raw.values())
        if running and self._convert_many is not None:
            spans.extend(split_records(self._convert_many(running)))
        return [join_record(row, attributes) for row, attributes in spans]

    def _running_rows(self, items: list[tuple[int, Any]]) -> dict[int, RowSpan]:
        if not items or self._convert_many is None:
            return {}
        # By the rows' own ids: a span that cannot be read is left out (and reported)
        converted = split_records(self._convert_many([raw for _, raw in items]))
        return {span[0][SPAN_ID]: span for span in converted}

    def _build_in_full(self, user_prices: UserPrices) -> IncrementalTree:
        """Every span, built by `build_tree` (under `_build_lock`)."""
        with self._lock:
            self._convert_finished()
            self._folded_upto, self._refold = len(self._rows), []
            kept = self._kept()
            open_items = list(self._open_raw.items())
        running = self._running_rows(open_items)
        self._folded_running = set(running)
        tree = build_tree(
            chain(kept, running.values()),
            self.root_span_id,
            name=self.name,
            user_prices=user_prices,
        )
        return IncrementalTree(
            tree, root_span_id=self.root_span_id, name=self.name, user_prices=user_prices
        )

    def _changes(self) -> list[RowSpan] | None:
        """The rows that are new or may have changed since the last fold, as a full
        build would take them (an ended span wins over a running one); None when a
        span the last fold held is gone (only a full build can say what remains).

        A span may come more than once: the last time is the one that counts (as
        `IncrementalTree.update` takes them)."""
        with self._lock:
            self._convert_finished()
            open_items = list(self._open_raw.items())
            rows = self._rows
            attributes = self._span_attributes
            start = self._folded_upto
            # The rows kept since the last fold, as they are (most spans; no lookup):
            # each span is kept once, in its place (`_keep`).
            changes: list[RowSpan] = list(zip(rows[start:], attributes[start:], strict=True))
            refold = self._refold
            self._folded_upto, self._refold = len(rows), []
            changes.extend((rows[position], attributes[position]) for position in refold)
            # The spans that were running at the last fold or are now: a kept row of
            # theirs (it ended since, or was added) or their running row, read below.
            index = self._index
            ids = dict.fromkeys(self._folded_running)
            ids.update(dict.fromkeys(span_id for span_id, _raw in open_items))
            stored: dict[int, RowSpan | None] = {}
            for span_id in ids:
                position = index.get(span_id)
                stored[span_id] = (
                    None if position is None else (rows[position], attributes[position])
                )
        running = self._running_rows(open_items)
        self._folded_running = set(running)
        for span_id, span in stored.items():
            live_span = running.get(span_id)
            if span is not None and (live_span is None or span[0][END] is not None):
                changes.append(span)
            elif live_span is not None:
                changes.append(live_span)
            else:
                return None
        return changes

    def _rolled_up(self) -> IncrementalTree:
        """The roll-up of every span seen so far: folded in, or built in full."""
        with self._build_lock:
            # Prices apply when a tree is built: a change of the user's prices makes it
            # stale (rule 15), like a new span does.
            user_prices = self._user_prices()
            version = (self._version, user_prices.version)  # read before the records
            rollup = self._rollup
            if rollup is not None and self._built_version == version:
                return rollup
            # Until this read is done: should it fail half-way (a bug), the next read
            # builds in full rather than fold into a tree that missed some records.
            self._rollup = None
            with gc_paused():
                if rollup is not None and self._built_version[1] != user_prices.version:
                    rollup = None
                if rollup is not None:
                    changes = self._changes()
                    try:
                        if changes is None:
                            raise NeedsFullBuild("a span is gone")
                        rollup.update(changes)
                    except NeedsFullBuild:
                        rollup = None
                if rollup is None:
                    rollup = self._build_in_full(user_prices)
            self._rollup, self._built_version = rollup, version
            self._counted = None  # the whole tree is there: no smaller one is needed
            return rollup

    def counted(self) -> Counted | None:
        """The roll-up over the spans that count (`core/columns.py`: nodes only for the
        spans that state something and their ancestors, the others placed in columns);
        None when the trace has fewer than `counted_from` spans, when the whole tree is
        kept (a view or a budget read it: folding in the spans since costs less), when a
        span is running in the SDK (a running record counts), or when the trace is one
        that module leaves to the whole tree (read `tree` then). Kept until the trace or
        the user's prices change."""
        with self._build_lock:
            if self._rollup is not None or self.span_count < self.counted_from:
                return None  # a tree is kept (folding it costs less), or a small trace
            user_prices = self._user_prices()
            version = (self._version, user_prices.version)  # read before the records
            cached = self._counted
            if cached is not None and cached[0] == version:
                return cached[1]
            counted = None
            with gc_paused():  # as for a build: many new objects, none of them garbage
                with self._lock:
                    self._convert_finished()
                    root = (
                        None
                        if self._open_raw or self.root_span_id is None
                        else self._index.get(self.root_span_id)
                    )
                    rows, attributes = self._rows[:], self._span_attributes[:]
                if root is not None:
                    counted = count_spans(
                        rows, attributes, root, name=self.name, user_prices=user_prices
                    )
            if counted is not None and counted.tree.pricing_failures:
                self._report_pricing_failures(counted.tree)
            self._counted = (version, counted)
            return counted

    def counted_tree(self) -> TraceTree:
        """A tree with this trace's exact totals, per-model figures, warnings and
        budget: the tree of the spans that count (`counted()`) when there is one, else
        the whole tree. Its nodes are not every span: read `tree` for those."""
        counted = self.counted()
        return self.tree if counted is None else counted.tree

    @property
    def tree(self) -> TraceTree:
        """The tree with every subtotal, built from the spans seen so far.

        The nodes of a tree read earlier are updated in place as spans are folded in
        (their figures, and the children folded in since); its `nodes`, `by_id` and
        `stats` stay the spans of its time."""
        with self._build_lock:
            tree = self._rolled_up().snapshot()
            if tree is not self._tree:
                self._tree = tree
                if tree.pricing_failures:
                    self._report_pricing_failures(tree)
        return tree

    def _report_pricing_failures(self, tree: TraceTree) -> None:
        """genai-prices failed on some calls (a bug, not a missing price: those calls are
        unpriced with a warning on their span): report each once to the log."""
        for node in tree.pricing_failures:
            failure = node.priced.failure
            if failure is None or node.span_id in self._reported_pricing_failures:
                continue
            self._reported_pricing_failures.add(node.span_id)
            try:
                raise failure
            except Exception:  # reported, with its traceback; raised under the tests
                internal_error(f"pricing {node.usage.model}")

    @property
    def root(self) -> SpanNode:
        return self.tree.root

    @property
    def nodes(self) -> Sequence[SpanNode]:
        return self.tree.nodes

    @property
    def totals(self) -> Figures:
        """The root's subtotal: the whole trace as counted so far, running spans included.

        Cheap at any moment, from any thread: the spans that ended since the last read
        are folded in (no walk over the tree, no full build unless the roll-up's rules
        need one). What a budget reads before each model request."""
        return self._rolled_up().totals

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

    def summary(self, tree: TraceTree | None = None) -> TraceSummary:
        """Totals, per-model breakdown, unpriced calls and warnings, in one record.

        Of `tree`, a tree read from this trace (a view draws its header and its rows
        from one snapshot), by default the current one. Kept until the tree changes: a
        display asks for it several times (the static HTML, the text summary, the
        widget's header).
        """
        if tree is None:
            tree = self.tree
        cached = self._summary
        if cached is not None and cached[0] is tree and cached[1].name == self.name:
            return cached[1]
        summary = TraceSummary(
            name=self.name,
            trace_id=f"{self.trace_id:032x}",
            spans=tree.size - (1 if tree.root.synthetic else 0),
            running=tree.running_count,
            duration_ms=tree.root.duration_ms,
            totals=tree.totals,
            by_model=tree.by_model(),
            warnings=tree.warnings(),
        )
        if tree is self._tree:  # an older snapshot's summary does not evict the current one
            self._summary = (tree, summary)
        return summary

    def to_dataframe(self) -> pd.DataFrame:
        """One row per span with own figures, subtotals and cost source (nullable dtypes)."""
        return _shell(SHELLS.dataframe, "to_dataframe")(self)

    def by_model(self) -> pd.DataFrame:
        """One row per model: calls, every token figure, cost (`<NA>` when unpriced)."""
        return _shell(SHELLS.by_model, "by_model")(self)

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the trace to `path` as OTLP JSON (see `agenta_notebook.load`)."""
        _shell(SHELLS.save, "save")(self, path)

    # -- listeners (live views) -------------------------------------------------------
    def add_listener(self, listener: Listener) -> None:
        """Call `listener(trace)` after each span that ends in this trace."""
        with self._lock:
            self._listeners = (*self._listeners, listener)

    def remove_listener(self, listener: Listener) -> None:
        with self._lock:
            listeners = list(self._listeners)
            if listener in listeners:
                listeners.remove(listener)
                self._listeners = tuple(listeners)

    def _notify(self) -> None:
        for listener in self._listeners:
            try:
                listener(self)
            except Exception:  # a broken view must not break the traced code
                internal_error("a trace listener")

    def __repr__(self) -> str:
        totals = self.totals
        return (
            f"<Trace {self.name!r} spans={self.tree.size} tokens={totals.total_tokens} "
            f"cost={totals.cost} unpriced={totals.unpriced_calls} errors={totals.errors}>"
        )

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> dict[str, Any]:
        """The notebook display: the interactive tree, its static HTML twin, a summary."""
        return _shell(SHELLS.mimebundle, "_repr_mimebundle_")(self)
