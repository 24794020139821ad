"""Folding new and changed spans into a tree that is already rolled up (pure code).

`build_tree` reads every span each time. A live trace keeps one `IncrementalTree`
instead: after a full build, the spans that started, changed or ended since the last
fold are folded in by settling again only the nodes whose inputs changed (those spans
and the ancestors their figures reach, each once per fold: O(depth) per span). New
spans come as whole new subtrees, rolled up by the full build's own pass
(`rollup.roll_up`); each then moves the sums of the node it hangs under. Each
node's children sums are kept, so a node with 50,000 children is not summed again when
one more arrives. The result equals `build_tree` over the same records, node for node
(`tests/test_incremental.py` checks it after every batch, for any order of arrival).

What the fold cannot do exactly it refuses (`NeedsFullBuild`), and the caller builds in
full from every record:

- a late parent: a span arrives while spans that name it as their parent are in the tree
  already (detached, or top-level under a synthetic root);
- the root changes: the root span arrives, or a second top-level span when the root was
  the only one;
- a span's parent changes, or new spans form a parent cycle;
- rule 13 may pair calls differently: a call that may pair (a lowest model-call span
  that ended) shares a response id or a call key with one of another scope, or a
  paired span changes or stops being such a call (a call that leaves unpaired, or
  arrives with nothing to pair with, changes no pair: those fold);
- a figure is taken back: a subtree stops reporting a figure or stops holding a model
  call, a subtotal loses a value it had, or a counted cost changes (a sum that gave it
  back would equal the full build's in value but not always to the digit:
  `Decimal("0.80")` against `Decimal("0.8")`), or a cost sum nears the precision of
  `COST_CONTEXT`.

The fold updates the nodes in place: a `TraceTree` taken before it sees the new figures
(its `nodes` and `by_id` stay those of its time). The caller serialises folds and
snapshots (`agenta_notebook.live.Trace` holds a lock around both).
"""

from __future__ import annotations

import sys
from bisect import insort
from collections.abc import Iterable
from dataclasses import replace
from decimal import Decimal
from typing import Final

from agenta_notebook.core.fields import COST_CONTEXT, FIGURES, NO_FIGURES, Figures, sum_figures
from agenta_notebook.core.pricing import UNPRICED, UserPrices
from agenta_notebook.core.rollup import (
    COSTLIEST,
    END,
    PARENT_ID,
    SCOPE,
    SPAN_ID,
    START,
    STATUS,
    TRACE_ID,
    HeldIndex,
    ModelBreakdown,
    RowSpan,
    SpanNode,
    SpanRecord,
    SpanRow,
    TraceTree,
    TreeStats,
    call_key,
    child_list,
    children_sums,
    costlier,
    costliest_of,
    model_of,
    new_node,
    preorder,
    preorder_key,
    response_ids,
    roll_up,
    settle_node,
    smallest_cost,
    sort_breakdown,
    split_records,
    start_order,
    sum_parts,
    synthetic_row,
)


class NeedsFullBuild(Exception):
    """The fold cannot give exactly what a full build gives: build the tree in full."""


#: (name, is money) of the figures that may be absent (`None`): token counts and cost
_VALUES: Final = tuple((f.name, f.kind == "money") for f in FIGURES if f.kind != "count")
#: the figures that are counts (never absent)
_COUNTS: Final = tuple(f.name for f in FIGURES if f.kind == "count")
#: A cost sum with this many digits may have been rounded in `COST_CONTEXT`: refuse it.
_DIGITS_LIMIT: Final = COST_CONTEXT.prec - 2
#: A node keeps its children's sums between folds from this many children up; a node
#: with fewer has them summed again when one of its children changes.
KEEP_SUMS_FROM: Final = 8


class _Below:
    """What a node's children hold, as `settle_node` reads it: their subtotals' sum, the
    figures their subtrees report, whether a model call is below, how many failed."""

    __slots__ = ("_total", "added", "call", "errors", "reports")

    def __init__(self) -> None:
        self._total: Figures = NO_FIGURES
        #: subtotals of new children, summed in one pass when the total is read
        self.added: list[Figures] = []
        self.reports = 0
        self.call = False
        self.errors = 0

    @property
    def total(self) -> Figures:
        added = self.added
        if added:
            if self._total is not NO_FIGURES:
                added.append(self._total)
            self._total = added[0] if len(added) == 1 else _checked_sum(added)
            self.added = []
        return self._total

    @total.setter
    def total(self, value: Figures) -> None:
        self._total = value

    @classmethod
    def of(cls, node: SpanNode) -> _Below:
        below = cls()
        below.reports, below.call, below.errors, parts = children_sums(node)
        below.total = sum_parts(parts)
        return below


#: Counted costs have at most 30 decimal places (`rollup._exact_cost`); a per-model cost
#: sum under 1e60 then has at most 90 digits, exact in `COST_CONTEXT` (100).
_FINEST_EXPONENT: Final = -30
_LARGEST_MAGNITUDE: Final = 59
#: What a new node held before the fold that placed it: nothing (see `_push_up`)
_HELD_NOTHING: Final[tuple[Figures, int, bool, bool, Decimal | None]] = (
    NO_FIGURES,
    0,
    False,
    False,
    None,
)
#: The token counts `ModelBreakdown` carries (absent: None), in its order.
_MODEL_TOKENS: Final = ("input_tokens", "output_tokens", "total_tokens")


class _ModelSums:
    """The counted usage of one model, kept as spans are folded in and out, so that
    `TraceTree.by_model()` costs O(models) on a redraw, not O(model calls).

    Equal to the digit to `sum_figures` of the members: a token count is absent when no
    member has one (how many do is kept), and a cost sum keeps the finest exponent of
    the members' costs (how many have each is kept), as an exact sum in `COST_CONTEXT`
    has. `exact` turns False when a cost sum may have been rounded: `by_model()` then
    sums the members again.
    """

    __slots__ = ("calls", "cost", "exact", "exponents", "known", "members", "tokens", "unpriced")

    def __init__(self) -> None:
        self.members = 0
        self.calls = 0
        self.unpriced = 0
        self.tokens = [0, 0, 0]
        self.known = [0, 0, 0]
        self.cost = Decimal(0)
        #: exponent -> how many members' costs have it
        self.exponents: dict[int, int] = {}
        self.exact = True

    def add(self, own: Figures, sign: int) -> None:
        """Count `own` in (`sign` 1) or out (-1)."""
        self.members += sign
        if own.model_calls:
            self.calls += sign
        self.unpriced += sign * own.unpriced_calls
        tokens, known = self.tokens, self.known
        for index, name in enumerate(_MODEL_TOKENS):
            value = getattr(own, name)
            if value is not None:
                tokens[index] += sign * value
                known[index] += sign
        cost = own.cost
        if cost is not None:
            exponent = cost.as_tuple().exponent
            if not isinstance(exponent, int) or exponent < _FINEST_EXPONENT or cost.is_signed():
                # NaN, infinity, finer than a counted cost can be, or -0 (a sum of -0s is
                # -0, which these sums, started at 0, cannot tell)
                self.exact = False
                return
            context = COST_CONTEXT
            total = context.add(self.cost, cost) if sign > 0 else context.subtract(self.cost, cost)
            if total.adjusted() > _LARGEST_MAGNITUDE:
                self.exact = False  # nearing the digits an exact sum may have
            self.cost = total
            left = self.exponents.get(exponent, 0) + sign
            if left:
                self.exponents[exponent] = left
            else:
                del self.exponents[exponent]

    def row(self, model: str) -> ModelBreakdown:
        tokens, known = self.tokens, self.known
        exponents = self.exponents
        cost = None
        if exponents:
            finest = Decimal(1).scaleb(min(exponents), COST_CONTEXT)
            cost = self.cost.quantize(finest, context=COST_CONTEXT)
        return ModelBreakdown(
            model=model,
            calls=self.calls,
            input_tokens=tokens[0] if known[0] else None,
            output_tokens=tokens[1] if known[1] else None,
            total_tokens=tokens[2] if known[2] else None,
            cost=cost,
            unpriced_calls=self.unpriced,
        )


def _checked_sum(parts: list[Figures]) -> Figures:
    total = sum_figures(parts)
    if total.cost is not None:
        _checked(total.cost)
    return total


def _same_money(a: Decimal, b: Decimal) -> bool:
    """Equal to the digit, not only in value."""
    return a == b and a.as_tuple() == b.as_tuple()


def _checked(value: Decimal) -> Decimal:
    if not value.is_finite() or len(value.as_tuple().digits) >= _DIGITS_LIMIT:
        raise NeedsFullBuild("a cost sum near the limits of exact sums")
    return value


def shifted(total: Figures, old: Figures, new: Figures) -> Figures:
    """`total` with one of its parts, `old`, replaced by `new`, exactly as `sum_figures`
    of the parts would give it.

    Raises `NeedsFullBuild` when a value of `old` is absent from `new` (whether the
    total keeps a value then depends on the other parts, which it does not know).
    """
    if old is new:
        return total
    changes: dict[str, object] = {}
    for name, money in _VALUES:
        before = getattr(old, name)
        after = getattr(new, name)
        if before is None:
            if after is None:
                continue
            current = getattr(total, name)
            if current is None:
                changes[name] = after
            elif money:
                changes[name] = _checked(COST_CONTEXT.add(current, after))
            else:
                changes[name] = current + after
        elif after is None:
            raise NeedsFullBuild(f"{name} taken back")
        elif money:
            if not _same_money(before, after):
                current = getattr(total, name)  # not None: `old` is one of its parts
                moved = COST_CONTEXT.add(COST_CONTEXT.subtract(current, before), after)
                changes[name] = _checked(moved)
        elif before != after:
            changes[name] = getattr(total, name) - before + after
    for name in _COUNTS:
        difference = getattr(new, name) - getattr(old, name)
        if difference:
            changes[name] = getattr(total, name) + difference
    return replace(total, **changes) if changes else total  # type: ignore[arg-type]


def _same_figures(a: Figures, b: Figures) -> bool:
    if a is b:
        return True
    if a != b:
        return False
    return a.cost is None or b.cost is None or _same_money(a.cost, b.cost)


class IncrementalTree:
    """A rolled-up tree that takes new and changed records (`update`) and gives
    `TraceTree` snapshots equal to `build_tree` over every record it has seen.

    Made from a full build (`build_tree` with the same `root_span_id`, `name` and
    `user_prices`); a change of prices needs a new full build (rule 15).
    """

    def __init__(
        self,
        tree: TraceTree,
        *,
        root_span_id: int | None,
        name: str,
        user_prices: UserPrices,
    ) -> None:
        self.root_span_id = root_span_id
        self.name = name
        self.user_prices = user_prices
        self.root = tree.root
        self._trace_id = tree.trace_id
        # the build's own mapping, copied at the first fold that changes something (a
        # tree that is only read costs no copy)
        self._by_id: dict[int, SpanNode] = tree.by_id  # type: ignore[assignment]
        self._by_id_shared = True
        self._failures: set[SpanNode] = set(tree.pricing_failures)
        self._snapshot: TraceTree | None = tree
        #: children's sums of the nodes that keep them between folds
        self._below: dict[SpanNode, _Below] = {}
        # The index, made at the first fold (a tree that is only read never needs it).
        self._indexed = False
        #: missing parent span id -> the nodes that wait for it (detached)
        self._waiting: dict[int, list[SpanNode]] = {}
        #: the nodes with no parent span, by span id
        self._tops: dict[int, SpanNode] = {}
        # Rule 13: the calls that may pair (lowest model-call spans that ended), by what
        # pairs them (a response id, a call key) and scope; their keys; the paired spans.
        self._pair_keys: dict[tuple[str, object], dict[str | None, int]] = {}
        self._members: dict[SpanNode, tuple[str | None, frozenset[tuple[str, object]]]] = {}
        self._paired: set[SpanNode] = set()
        #: scope -> how many model-call spans it made; the index above is kept only
        #: from two scopes up (one scope pairs nothing)
        self._call_scopes: dict[str | None, int] = {}
        self._pairing_indexed = False
        self._running = 0
        self._first_start: int | None = None
        self._last_end: int | None = None
        self._bounds_stale = False
        #: during a fold, the place in the index of its first new node: the nodes from
        #: there on are new (their children's sums start empty); none outside a fold
        self._fresh_from = sys.maxsize
        # What the views read of the whole tree (`TreeStats`), taken from one walk at
        # the first snapshot after a fold, then kept by each fold.
        self._stats_ready = False
        #: the latest end of any record, or start of a running one (`TreeStats.latest_ns`)
        self._latest: int | None = None
        #: the nodes with figures of their own -> those figures, as last noted
        self._costed: dict[SpanNode, Figures] = {}
        #: `costliest_of(costed)`, and the smallest own cost not zero (`smallest_cost`),
        #: kept as nodes are noted (a live view reads them on every redraw); None: to be
        #: found again, from all the costed nodes, at the next snapshot
        self._costliest: list[SpanNode] | None = []
        self._smallest: Decimal | None = None
        #: per model, its counted usage; per node counted there, its model and own figures
        self._models: dict[str, _ModelSums] = {}
        self._modelled: dict[SpanNode, tuple[str, Figures]] = {}
        self._warned: dict[SpanNode, None] = {}
        self._types: dict[str, int] = {}
        self._depths: list[int] = []

    # -- reading ------------------------------------------------------------------------
    @property
    def totals(self) -> Figures:
        """The root's subtotal: the whole trace, as counted (no walk, no build)."""
        return self.root.subtotal

    def snapshot(self) -> TraceTree:
        """The tree as it is now: the same one until the next fold that changes it.

        No walk: its `nodes` are walked when first read, and its stats are the ones the
        fold keeps (`TreeStats`)."""
        tree = self._snapshot
        if tree is None:
            self._ensure_stats()
            failures = self._failures
            failed = tuple(sorted(failures, key=preorder_key, reverse=True)) if failures else ()
            root = self.root
            latest = self._latest
            if root.synthetic and latest is not None:
                latest = max(latest, root.row[START])
            costliest = self._costliest
            if costliest is None:
                costliest = self._costliest = costliest_of(self._costed)
                self._smallest = smallest_cost(self._costed)
            stats = TreeStats(
                count=len(self._by_id) + (1 if root.synthetic else 0),
                running=self._running,
                latest_ns=latest if latest is not None else root.row[START],
                costed=tuple(self._costed),
                warned=tuple(self._warned),
                types=tuple(sorted(kind for kind, count in self._types.items() if count)),
                depth_counts=tuple(self._depths),
                by_model=self._by_model(),
                costliest=tuple(costliest),
                smallest_cost=self._smallest,
            )
            # the index as it is now, shared (not copied: 49 ms a redraw at 1M spans)
            held = HeldIndex(self._by_id, len(self._by_id))
            tree = TraceTree(self._trace_id, root, None, held, failed, stats=stats)
            self._snapshot = tree
        return tree

    def _ensure_stats(self) -> None:
        """Take the stats from a walk, once; the folds keep them from then on."""
        if self._stats_ready:
            return
        if not self._indexed:
            self._index()
        nodes = list(self.root.walk())
        for node in nodes:
            self._note(node)
            kind = node.usage.span_type
            if kind:
                self._types[kind] = self._types.get(kind, 0) + 1
        self._count_depths(nodes)
        self._stats_ready = True

    def _by_model(self) -> tuple[ModelBreakdown, ...] | None:
        models = self._models
        if not all(sums.exact for sums in models.values()):
            return None  # a cost sum may have been rounded: by_model() sums them again
        return sort_breakdown(sums.row(model) for model, sums in models.items())

    def _note(self, node: SpanNode) -> None:
        """Keep `node` among the costed and warned nodes, or not, as it is now, its
        counted usage in its model's sums, and its cost among the costliest and as the
        smallest, or not."""
        own = node.own
        costed = self._costed
        if own is not NO_FIGURES:
            before = costed.get(node)
            costed[node] = own
            # (a span is settled again with new figures whenever something below it or
            # its own row changes: the kept spans are found again only when a cost did)
            if before is None or not before.cost:
                self._note_cost(node)  # it had no cost: it may have one now
            elif before.cost != own.cost:
                self._costliest = None
        else:
            before = costed.pop(node, None)
            if before is not None and before.cost:
                self._costliest = None
        noted = self._modelled.pop(node, None)
        if noted is not None:
            model, counted = noted
            sums = self._models[model]
            sums.add(counted, -1)
            if not sums.members:
                del self._models[model]
        if own is not NO_FIGURES and node.counts_usage:
            model = model_of(node)
            found = self._models.get(model)
            if found is None:
                found = self._models[model] = _ModelSums()
            found.add(own, 1)
            self._modelled[node] = (model, own)
        if node.span_warnings:
            self._warned[node] = None
        else:
            self._warned.pop(node, None)

    def _note_cost(self, node: SpanNode) -> None:
        """A node newly costed: among the costliest, and the smallest cost, or not."""
        top = self._costliest
        cost = node.own.cost
        if top is None or not cost:  # (None, or zero)
            return
        size = cost.copy_abs()  # no context: never the notebook's
        if self._smallest is None or size < self._smallest:
            self._smallest = size
        if cost > 0 and (len(top) < COSTLIEST or costlier(node, top[-1])):
            place = len(top)
            while place and costlier(node, top[place - 1]):
                place -= 1
            top.insert(place, node)
            del top[COSTLIEST:]

    def _count_depths(self, nodes: Iterable[SpanNode]) -> None:
        """Count `nodes` in the stats' number of nodes per depth."""
        depths = self._depths
        for node in nodes:
            depth = node.depth
            while len(depths) <= depth:
                depths.append(0)
            depths[depth] += 1

    # -- folding ------------------------------------------------------------------------
    def _index(self) -> None:
        for node in self._by_id.values():
            row = node.row
            self._count_in(row, 1)
            self._move_latest(None, _latest_of(row))
            parent_id = row[PARENT_ID]
            if parent_id is None:
                self._tops[node.span_id] = node
            elif parent_id not in self._by_id:
                self._waiting.setdefault(parent_id, []).append(node)
            twin = node.duplicate_of
            if twin is not None:
                self._paired.update((node, twin))
            if node.usage.is_model_call:
                self._count_scope(row[SCOPE], 1)
        if len(self._call_scopes) > 1:
            self._index_pairing(check=False)  # as the full build left them
        self._indexed = True

    def _count_scope(self, scope: str | None, sign: int) -> None:
        left = self._call_scopes.get(scope, 0) + sign
        if left:
            self._call_scopes[scope] = left
        else:
            del self._call_scopes[scope]

    def _index_pairing(self, *, check: bool) -> None:
        for node in self._by_id.values():
            if _may_pair(node):
                self._add_pair_keys(node, check=check)
        self._pairing_indexed = True

    def _add_pair_keys(self, node: SpanNode, *, check: bool) -> None:
        keys = _pair_keys(node)
        scope = node.row[SCOPE]
        for key in keys:
            scopes = self._pair_keys.setdefault(key, {})
            if check and any(other != scope for other in scopes):
                raise NeedsFullBuild("rule 13 may pair this call with another")
            scopes[scope] = scopes.get(scope, 0) + 1
        self._members[node] = (scope, keys)

    def _remove_pair_keys(self, node: SpanNode) -> None:
        scope, keys = self._members.pop(node)
        for key in keys:
            scopes = self._pair_keys[key]
            left = scopes[scope] - 1
            if left:
                scopes[scope] = left
            else:
                del scopes[scope]
                if not scopes:
                    del self._pair_keys[key]

    def _check_pairs(
        self,
        settled: list[SpanNode],
        fresh: list[SpanNode],
        changed: list[tuple[SpanNode, SpanRow, SpanNode]],
    ) -> None:
        """Rule 13 after a fold: refuse unless the pairing a full build makes is
        unchanged. It is when no paired span changed or stopped being a call that may
        pair, and each call that may now pair shares no response id nor call key with
        another of another scope (a call that leaves unpaired changes no other pair).
        `fresh` and `changed` are the nodes the fold made and those it gave a new row."""
        if not self._pairing_indexed:
            if len(self._call_scopes) > 1:  # a second scope: index every call, checked
                self._index_pairing(check=True)
            return
        direct = {*fresh, *(node for node, _row, _new in changed)}
        moves: list[tuple[SpanNode, bool]] = []
        for node in settled:
            if node in self._paired and node in direct:
                raise NeedsFullBuild("a paired call changed (rule 13)")
            held = self._members.get(node)
            now = _may_pair(node)
            if held is None and not now:
                continue
            if held is not None and now and held == (node.row[SCOPE], _pair_keys(node)):
                continue
            if node in self._paired:
                raise NeedsFullBuild("a paired call changed (rule 13)")
            moves.append((node, now))
        for node, _now in moves:  # out first: a wrapper's keys may equal its call's
            if node in self._members:
                self._remove_pair_keys(node)
        for node, now in moves:
            if now:
                self._add_pair_keys(node, check=True)

    def _count_in(self, row: SpanRow, sign: int) -> None:
        """Count a span in (sign 1) or out (-1) of the time bounds."""
        start, end = row[START], row[END]
        if end is None:
            self._running += sign
        if sign > 0:
            if self._first_start is None or start < self._first_start:
                self._first_start = start
            if end is not None and (self._last_end is None or end > self._last_end):
                self._last_end = end
        elif start == self._first_start or (end is not None and end == self._last_end):
            self._bounds_stale = True  # rescanned once the records are replaced

    def _move_latest(self, old: int | None, new: int) -> None:
        latest = self._latest
        if latest is None or new > latest:
            self._latest = new
        elif old is not None and old == latest and new < old:
            self._bounds_stale = True  # rescanned once the records are replaced

    def _rescan_bounds(self) -> None:
        self._bounds_stale = False
        rows = [node.row for node in self._by_id.values()]
        self._first_start = min((row[START] for row in rows), default=None)
        ends = [row[END] for row in rows if row[END] is not None]
        self._last_end = max(ends, default=None)
        self._latest = max((_latest_of(row) for row in rows), default=None)

    def _expected_root(self) -> SpanNode | None:
        """The root a full build would choose now (None: a synthetic one)."""
        if self.root_span_id is not None:
            named = self._by_id.get(self.root_span_id)
            if named is not None:
                return named
        if len(self._tops) == 1:
            return next(iter(self._tops.values()))
        return None

    def _sums(self, node: SpanNode) -> _Below:
        below = self._below.get(node)
        if below is None:
            # A node made in this fold has only new children, which add themselves.
            fresh = node.seq >= self._fresh_from and node is not self.root
            below = _Below() if fresh else _Below.of(node)
            self._below[node] = below
        return below

    def update(self, records: Iterable[SpanRecord | RowSpan]) -> bool:
        """Fold in new spans and new versions of spans (a running span that ended or
        changed), as `SpanRecord`s or `RowSpan` pairs. Spans equal to the ones held change
        nothing.

        True when the tree changed. Raises `NeedsFullBuild` when the change needs a full
        build; this object is then unusable (some nodes may be settled, others not).
        """
        if not self._indexed:
            self._index()
        if self._by_id_shared:
            self._by_id = dict(self._by_id)
            self._by_id_shared = False
        by_id = self._by_id
        # (a span given twice: the last time counts)
        latest: dict[int, RowSpan] = {pair[0][SPAN_ID]: pair for pair in split_records(records)}
        # The new spans are made, indexed and counted in one loop (a live cell adds
        # thousands a fold). Whatever is refused after this leaves the object unusable, as
        # said above; a snapshot taken before keeps to its own spans (`HeldIndex`).
        fresh_from = len(by_id)
        fresh: list[SpanNode] = []
        changed: list[tuple[SpanNode, SpanRow, SpanNode]] = []  # node, row, new node
        trace_id = self._trace_id
        waiting = self._waiting
        tops_by_id = self._tops
        stats = self._stats_ready
        types = self._types
        running, first, last, latest_ns = (
            self._running,
            self._first_start,
            self._last_end,
            self._latest,
        )
        for span_id, (row, attributes) in latest.items():
            node = by_id.get(span_id)
            if node is None:
                if span_id in waiting:
                    raise NeedsFullBuild("a late parent")
                node = new_node(row, attributes)
                node.seq = len(by_id)
                by_id[span_id] = node
                fresh.append(node)
                trace_id = row[TRACE_ID]
                if row[PARENT_ID] is None:
                    tops_by_id[span_id] = node
                # `_count_in(row, 1)` and `_move_latest(None, ...)`, inline
                start, end = row[START], row[END]
                if end is None:
                    running += 1
                    mark = start
                else:
                    mark = end
                    if last is None or end > last:
                        last = end
                if first is None or start < first:
                    first = start
                if latest_ns is None or mark > latest_ns:
                    latest_ns = mark
                usage = node.usage
                if stats and usage.span_type:
                    types[usage.span_type] = types.get(usage.span_type, 0) + 1
                if usage.is_model_call:
                    self._count_scope(row[SCOPE], 1)
            elif (node.row is not row and node.row != row) or (
                node.attributes is not attributes and node.attributes != attributes
            ):
                if row[PARENT_ID] != node.row[PARENT_ID]:
                    raise NeedsFullBuild("a span moved")
                new = new_node(row, attributes)
                changed.append((node, row, new))
                trace_id = row[TRACE_ID]
        if not fresh and not changed:
            return False
        self._running, self._first_start, self._last_end, self._latest = (
            running,
            first,
            last,
            latest_ns,
        )

        expected = self._expected_root()
        if expected is not self.root and not (expected is None and self.root.synthetic):
            raise NeedsFullBuild("the root changed")
        for node, row, new in changed:
            self._count_in(node.row, -1)
            self._count_in(row, 1)
            self._move_latest(_latest_of(node.row), _latest_of(row))
            if stats and node.usage.span_type != new.usage.span_type:
                if node.usage.span_type:
                    types[node.usage.span_type] -= 1
                if new.usage.span_type:
                    types[new.usage.span_type] = types.get(new.usage.span_type, 0) + 1
            if node.usage.is_model_call:
                self._count_scope(node.row[SCOPE], -1)
            if new.usage.is_model_call:
                self._count_scope(row[SCOPE], 1)
        tops, placing = self._link(fresh, fresh_from)

        self._fresh_from = fresh_from
        try:
            settled = self._fold(placing, tops, changed)
        finally:
            self._fresh_from = sys.maxsize
        self._check_pairs(settled, fresh, changed)
        if stats:
            for node in settled:
                self._note(node)
        if self._bounds_stale:
            self._rescan_bounds()
        self._trace_id = trace_id
        if self.root.synthetic:
            start = self._first_start if self._first_start is not None else 0
            end = None if self._running else start if self._last_end is None else self._last_end
            held = self.root.row
            if (held[TRACE_ID], held[START], held[END]) != (trace_id, start, end):
                self.root.row = synthetic_row(trace_id, self.name, start, end)
        self._snapshot = None
        return True

    def _link(
        self, fresh: list[SpanNode], fresh_from: int
    ) -> tuple[list[SpanNode], list[SpanNode]]:
        """Hang each new node under its new parent, as a full build does; returns the new
        nodes whose parent was held before (or the root), to be placed under it by the
        fold, and every new node in the order its subtree is rolled up in (each after its
        parent, children in start order: their depths set, counted in the stats). Refuses
        a parent cycle, before any node held before is changed."""
        by_id = self._by_id
        root = self.root
        tops: list[SpanNode] = []
        for node in fresh:
            parent_id = node.row[PARENT_ID]
            parent = by_id.get(parent_id) if parent_id is not None else None
            if parent is None:
                parent = root
                node.detached = not (root.synthetic and parent_id is None)
                if parent_id is not None:
                    self._waiting.setdefault(parent_id, []).append(node)
            node.parent = parent
            if parent.seq < fresh_from or parent is root:
                tops.append(node)
                continue
            children = parent.children  # a new node's: new nodes only
            if children.__class__ is list:
                children.append(node)
            else:
                parent.children = [*children, node]
        # The new subtrees, walked as the full build walks a tree. A node in a parent
        # cycle hangs under a new node of the cycle and is never reached from a top.
        for top in tops:
            parent = top.parent
            assert parent is not None  # set above
            top.depth = parent.depth + 1
        order = preorder(tops)
        if len(order) < len(fresh):
            raise NeedsFullBuild("a parent cycle")
        if self._stats_ready:
            self._count_depths(order)
        return tops, order

    def _fold(
        self,
        placing: list[SpanNode],
        tops: list[SpanNode],
        changed: list[tuple[SpanNode, SpanRow, SpanNode]],
    ) -> list[SpanNode]:
        """Place the new subtrees (`tops`, linked by `_link`) under the nodes held before
        and roll them up (`placing`: every new node, in `_link`'s order), replace the
        changed rows,
        and settle every node held before whose inputs changed, deepest first; returns
        the nodes settled, but for new ones with nothing of their own (nothing about
        them to note or pair)."""
        settled: list[SpanNode] = []
        # What each changed node held before this fold, for the deltas to its parent:
        # subtotal, reported figures, model call below, failed, counted cost (an
        # ancestor's is read when it is settled; new nodes held nothing).
        before: dict[SpanNode, tuple[Figures, int, bool, bool, Decimal | None]] = {}
        # The parents' sums are taken before any child changes.
        for node, _row, _new in changed:
            if node.parent is not None:
                self._sums(node.parent)
            self._sums(node)
        # (the parents of new nodes: below, before each one's first new child goes in)

        queue: dict[int, list[SpanNode]] = {}
        queued: set[SpanNode] = set()
        for node, row, new in changed:
            before[node] = (
                node.subtotal,
                node.reports_in_subtree,
                node.call_in_subtree,
                node.row[STATUS] == "ERROR",
                node.own.cost,
            )
            moved = row[START] != node.row[START]
            node.row = row
            node.attributes = new.attributes
            node.usage = new.usage
            parent = node.parent
            if moved and parent is not None:
                child_list(parent).remove(node)
                _insert(parent, node)
                self._costliest = None  # its spans' places in tree order changed
            queue.setdefault(node.depth, []).append(node)
            queued.add(node)
        kept = self._below
        for node in tops:
            parent = node.parent
            assert parent is not None  # placed by `_link`: under its parent or the root
            if parent not in kept:
                # its sums before it gets a new child (those of a parent with a changed
                # child were taken above, before any record changed)
                self._sums(parent)
            _insert(parent, node)

        user_prices = self.user_prices
        failures = self._failures
        # The new subtrees, rolled up as a full build does: a new node's children are
        # all new (a node held before that waited for it is a late parent, refused), and
        # `placing` has each after its parent. Then each new subtree moves its parent.
        if placing:
            failures.update(roll_up(placing, user_prices, settled))
            for node in tops:
                if (
                    node.subtotal is NO_FIGURES
                    and not node.reports_in_subtree
                    and not node.call_in_subtree
                    and node.row[STATUS] != "ERROR"
                ):
                    continue  # moves nothing (most new subtrees: steps, tools)
                parent = node.parent
                assert parent is not None  # placed: under its parent or the root
                self._push_up(node, _HELD_NOTHING, self._sums(parent), queue, queued)
        while queue:
            depth = max(queue)
            for node in queue.pop(depth):
                settled.append(node)
                old = before.pop(node, None)
                if old is None:
                    old = (
                        node.subtotal,
                        node.reports_in_subtree,
                        node.call_in_subtree,
                        node.row[STATUS] == "ERROR",
                        node.own.cost,
                    )
                parent = node.parent
                # the parent's sums are taken before this node changes
                sums = self._sums(parent) if parent is not None else None
                below = self._sums(node)
                node.role = "none"
                node.own = NO_FIGURES
                node.priced = UNPRICED
                node.mismatch = None
                node.span_warnings = ()
                parts = [below.total] if below.total is not NO_FIGURES else []
                if settle_node(
                    node, below.reports, below.call, below.errors > 0, parts, user_prices
                ):
                    failures.add(node)
                else:
                    failures.discard(node)
                if len(node.children) < KEEP_SUMS_FROM:
                    self._below.pop(node, None)
                self._push_up(node, old, sums, queue, queued)
        return settled

    def _push_up(
        self,
        node: SpanNode,
        old: tuple[Figures, int, bool, bool, Decimal | None],
        sums: _Below | None,
        queue: dict[int, list[SpanNode]],
        queued: set[SpanNode],
    ) -> None:
        """Refuse what the fold cannot give back, then move the parent's sums (`sums`,
        taken before `node` changed) from what `node` held before the fold (`old`) to
        what it holds now, and queue the parent when they moved."""
        old_subtotal, old_reports, old_call, old_error, old_cost = old
        cost = node.own.cost
        if old_cost is not None and (cost is None or not _same_money(old_cost, cost)):
            raise NeedsFullBuild("a counted cost changed")
        if old_reports & ~node.reports_in_subtree or (old_call and not node.call_in_subtree):
            raise NeedsFullBuild("a subtree reports less")
        parent = node.parent
        if parent is None or sums is None:
            return
        moved = False
        if old_subtotal is NO_FIGURES:
            if node.subtotal is not NO_FIGURES:
                sums.added.append(node.subtotal)
                moved = True
        elif not _same_figures(old_subtotal, node.subtotal):
            sums.total = shifted(sums.total, old_subtotal, node.subtotal)
            moved = True
        if node.reports_in_subtree & ~sums.reports:
            sums.reports |= node.reports_in_subtree
            moved = True
        if node.call_in_subtree and not sums.call:
            sums.call = True
            moved = True
        error = node.row[STATUS] == "ERROR"
        if error != old_error:
            sums.errors += 1 if error else -1
            moved = moved or sums.errors == (1 if error else 0)
        if moved and parent not in queued:
            queued.add(parent)
            queue.setdefault(parent.depth, []).append(parent)


def _latest_of(row: SpanRow) -> int:
    end = row[END]
    return row[START] if end is None else end


def _may_pair(node: SpanNode) -> bool:
    """A call rule 13 may pair: a model-call span that ended, with none below it."""
    if not node.usage.is_model_call or node.synthetic or node.row[END] is None:
        return False
    return not any(child.call_in_subtree for child in node.children)


def _pair_keys(node: SpanNode) -> frozenset[tuple[str, object]]:
    """What rule 13 pairs a call by: its response ids and its call key."""
    keys: set[tuple[str, object]] = {("id", value) for value in response_ids(node)}
    key = call_key(node)
    if key is not None:
        keys.add(("key", key))
    return frozenset(keys)


def _insert(parent: SpanNode, node: SpanNode) -> None:
    """Put `node` among `parent`'s children in start order (usually last: spans start in
    order), making the parent's list when it has none (a leaf shares an empty tuple). The
    fold calls it once per new subtree's top and per moved span."""
    children = parent.children
    if children.__class__ is not list:
        children = child_list(parent)
    if children:
        # (the two keys compared without `start_order`'s calls: this runs once a new span)
        last, row = children[-1].row, node.row
        if (last[START], last[SPAN_ID]) >= (row[START], row[SPAN_ID]):
            insort(children, node, key=start_order)
            return
    children.append(node)
