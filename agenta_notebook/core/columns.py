"""The spans that count, and the shape of the rest in columns (issue 14's compact store,
first layer).

Most spans of a big trace state nothing: a step, a tool call, a retriever carry at most
a type, and did not fail. Such a span has no figures of its own, and the rules
(docs/rollup.md) give it none below it either unless a span below it states something.
So the figures of a finished trace (its totals, each model's, every warning, each
counted span's own figures and subtotal) are those of a smaller tree: the spans that
*state* something (usage, a model call, an error, a bad value) or still run, the
detached ones (rule 9 warns of them), the root, and every ancestor of those. `count_spans` builds
that tree with `build_tree` itself, so the rules stay in one place, and places every
other span (its parent, depth and row in the parents-first order) with numpy over
columns, without a node for it.

Whatever this cannot place exactly (a span kept twice, a parent cycle, an id or a start
that is not an int of 64 bits) makes `count_spans` return None: the caller builds the
whole tree instead (as it does for a trace without its root span, `Trace.counted`). So
does a trace deeper than `most_levels` allows: the placing walks one level at a time.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import repeat
from operator import is_, itemgetter
from typing import Any, Final

import numpy as np

from agenta_notebook.core.pricing import UserPrices
from agenta_notebook.core.rollup import (
    END,
    PARENT_ID,
    SPAN_ID,
    START,
    STATUS,
    SpanRow,
    TraceTree,
    build_tree,
)
from agenta_notebook.core.usage import type_only_usage

#: The placing walks a level at a time, about 24 µs a level, where the whole tree costs
#: 2-5 µs a span (measured: a chain of 20,000 spans took 472 ms placed, 40 ms whole;
#: 20,000 spans 2,000 levels deep 59 against 41 ms; 500 deep 26 against 39 ms). A
#: trace with more levels than this many spans per level is left to the whole tree.
SPANS_PER_LEVEL: Final = 16
#: ... but a trace of up to this many levels is always placed
FEWEST_LEVELS_LEFT: Final = 64


def most_levels(count: int) -> int:
    """The deepest trace of `count` spans that `shape_from` places (levels below the
    root)."""
    return max(FEWEST_LEVELS_LEFT, count // SPANS_PER_LEVEL)


@dataclass(frozen=True, slots=True)
class Shape:
    """Where each span of a trace sits, by its place in the trace's rows (all arrays
    of one length, numpy int64 unless said)."""

    #: the place of each span's parent, -1 for the root's
    parent: Any
    depth: Any
    #: each span's row in the parents-first order (children in start order, then id)
    position: Any
    #: bool: a span whose parent is not in the trace, or a second top-level span (it
    #: hangs under the root)
    detached: Any
    #: uint64: each span's id
    ids: Any
    #: each span's start
    starts: Any
    #: the places of the spans depth by depth from the root's, each depth's grouped by
    #: parent in the order of the depth above (what sums bottom-up read)
    levels: list[Any]


@dataclass(frozen=True, slots=True)
class Counted:
    """A trace's roll-up over the spans that count (see the module)."""

    #: `build_tree` of the spans that count: exact totals, per-model figures, warnings,
    #: and each of its nodes as the whole tree has it
    tree: TraceTree
    shape: Shape
    #: bool, by place: the spans in `tree`
    counts: Any
    #: object: the type of each span that states nothing (None for the others, and
    #: untyped ones)
    types: Any
    #: the trace's rows, by place
    rows: Sequence[SpanRow]

    @property
    def size(self) -> int:
        """How many spans the trace has."""
        return len(self.rows)


def only_ints(values: list[Any], *others: None) -> bool:
    """Every value is an `int` (not a subclass such as `bool`), or one of `others`."""
    return set(map(type, values)) <= {int, *map(type, others)}


def where_is(values: Sequence[Any], single: object) -> Any:
    """A bool array: where `values` holds the object `single` (identity: no `__eq__` is
    called)."""
    # (`bytes` takes the bools in C, faster than `np.fromiter`; the copy is writable)
    return np.frombuffer(bytes(map(is_, values, repeat(single))), dtype=bool).copy()


def plain_types(
    rows: Sequence[SpanRow], attributes: Sequence[Mapping[str, Any]]
) -> tuple[Any, Any]:
    """For each span (two numpy arrays, bool and object): whether it states nothing
    (ended, did not fail, and its attributes carry at most a type that is not a model
    call's: what `rollup.new_node` reads without `read_usage`, a `Usage` with no figure
    and no warning), and its type then."""
    count = len(rows)
    usages = list(map(type_only_usage, attributes))
    # One verdict per distinct `Usage` (most spans share one per type), told apart by
    # identity: the list holds them, so no id is reused meanwhile
    keys = np.fromiter(map(id, usages), np.uint64, count)
    _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
    distinct = [usages[place] for place in first.tolist()]
    plain = np.fromiter(
        [u is not None and not u.is_model_call for u in distinct],
        bool,
        len(distinct),
    )[inverse]
    types = np.fromiter([None if u is None else u.span_type for u in distinct], object)
    # (a span's events are read only when it failed: rule 14's refusals)
    plain &= ~where_is(list(map(itemgetter(END), rows)), None)
    plain &= np.fromiter(map(itemgetter(STATUS), rows), object, count) != "ERROR"
    types = types[inverse]
    types[~plain] = None
    return plain, types


def shape_of(rows: Sequence[SpanRow], root: int) -> Shape | None:
    """The shape of a trace whose root span is `rows[root]`, as `build_tree` links it
    (a span whose parent is missing, or a second top-level span, hangs under the root);
    None for spans kept twice, a parent cycle, an id, parent id or start that is not
    an int of 64 bits (a hand-made record: `build_tree` compares it as it is), or a
    trace deeper than `most_levels` (the whole tree costs less)."""
    count = len(rows)
    # each field read in C (`map`), not in a Python loop; only ints are taken as they
    # are (numpy would turn a float, or a str of digits, into an int)
    ids_ = list(map(itemgetter(SPAN_ID), rows))
    parents_ = list(map(itemgetter(PARENT_ID), rows))
    starts_ = list(map(itemgetter(START), rows))
    if not (only_ints(ids_) and only_ints(starts_) and only_ints(parents_, None)):
        return None
    try:
        ids = np.fromiter(ids_, np.uint64, count)
        parent_ids = np.fromiter(parents_, object, count)
        has_parent = ~where_is(parents_, None)
        parent_ids[~has_parent] = 0
        parent_ids = parent_ids.astype(np.uint64)
        starts = np.fromiter(starts_, np.int64, count)
    except (OverflowError, TypeError, ValueError):  # past 64 bits, or a negative id
        return None
    return shape_from(ids, parent_ids, has_parent, starts, root)


def shape_from(ids: Any, parent_ids: Any, has_parent: Any, starts: Any, root: int) -> Shape | None:
    """`shape_of` from columns: the spans' ids and parent ids (uint64), whether each has
    a parent (bool), and their starts (int64); `root` is the root span's place."""
    count = len(ids)
    by_id = np.argsort(ids, kind="stable")
    sorted_ids = ids[by_id]
    if count > 1 and bool((sorted_ids[1:] == sorted_ids[:-1]).any()):
        return None  # one span twice: `build_tree` keeps the ended copy
    found = np.minimum(np.searchsorted(sorted_ids, parent_ids), count - 1)
    known = has_parent & (sorted_ids[found] == parent_ids)
    parent = np.where(known, by_id[found], -1)
    parent[root] = -1
    places = np.arange(count)
    detached = (parent < 0) & (places != root)
    parent[detached] = root
    # Every span but the root, grouped by parent, each group in start order, then id.
    # Two stable sorts: by start (then id, where starts tie), then by parent. Spans come
    # about in start order, which a stable sort takes almost as it is (1M spans: 4 ms by
    # start and 15 ms by parent, where one `lexsort` of the three keys took 233 ms).
    by_start = np.argsort(starts, kind="stable")
    if count > 1 and bool((np.diff(starts[by_start]) == 0).any()):
        by_start = np.lexsort((ids, starts))
    group = np.where(parent < 0, count, parent)
    children = by_start[np.argsort(group[by_start], kind="stable")][: count - 1]
    sizes = np.bincount(parent[children], minlength=count)
    first = np.zeros(count + 1, np.int64)
    np.cumsum(sizes, out=first[1:])
    # Level by level from the root: each level's spans grouped by parent, in order
    deepest = most_levels(count)
    levels = [np.array([root], np.int64)]
    depth = np.zeros(count, np.int64)
    reached = 1
    while True:
        frontier = levels[-1]
        below = sizes[frontier]
        total = int(below.sum())
        if total == 0:
            break
        if len(levels) > deepest:
            return None  # a deep chain: the whole tree costs less than a walk per level
        offsets = np.repeat(first[frontier] - np.cumsum(below) + below, below)
        level = children[offsets + np.arange(total)]
        depth[level] = len(levels)
        levels.append(level)
        reached += total
    if reached != count:
        return None  # spans in a parent cycle never reach the root
    # Each span's row: its parent's, plus one, plus the spans of its earlier siblings'
    # subtrees; subtree sizes summed deepest level first
    spans_below = np.ones(count, np.int64)
    for level in reversed(levels[1:]):
        owners = parent[level]
        heads = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        spans_below[owners[heads]] += np.add.reduceat(spans_below[level], heads)
    weights = spans_below[children]
    running = np.cumsum(weights) - weights
    with_children = sizes > 0
    earlier = np.empty(count, np.int64)
    group_starts = running[first[:-1][with_children]]
    earlier[children] = running - np.repeat(group_starts, sizes[with_children])
    position = np.zeros(count, np.int64)
    for level in levels[1:]:
        position[level] = position[parent[level]] + 1 + earlier[level]
    return Shape(parent, depth, position, detached, ids, starts, levels)


def count_spans(
    rows: Sequence[SpanRow],
    attributes: Sequence[Mapping[str, Any]],
    root: int,
    *,
    name: str,
    user_prices: UserPrices,
) -> Counted | None:
    """The roll-up of a trace (`rows[root]` its root span) over the spans that count,
    or None when the whole tree must be built (see the module)."""
    shape = shape_of(rows, root)
    if shape is None:
        return None
    plain, types = plain_types(rows, attributes)
    counts = ~plain | shape.detached
    counts[root] = True
    # every ancestor of a span that counts counts too, a level at a time
    parent = shape.parent
    frontier = np.flatnonzero(counts)
    while frontier.size:
        above = parent[frontier]
        above = above[above >= 0]
        above = above[~counts[above]]
        counts[above] = True
        frontier = np.unique(above)
    kept = np.flatnonzero(counts).tolist()
    tree = build_tree(
        [(rows[place], attributes[place]) for place in kept],
        rows[root][SPAN_ID],
        name=name,
        user_prices=user_prices,
    )
    return Counted(tree, shape, counts, types, rows)
