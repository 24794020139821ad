"""pandas export: one row per span, own figures and subtotals, nulls kept apart from 0.

The figure columns come from the table of figures (`core/fields.py`): each figure has a
subtotal column, `subtotal_<figure>`, and most have an own column, the span's own counted
figure (a count is a flag there: the span is one model call, one unpriced call).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from itertools import compress
from operator import attrgetter, is_, itemgetter
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import pandas as pd

from agenta_notebook.budget import trace_budget
from agenta_notebook.core.columns import Counted, only_ints, where_is
from agenta_notebook.core.fields import FIGURES, NO_FIGURES, Figure, Kind, sum_figures
from agenta_notebook.core.rollup import (
    END,
    NAME,
    SPAN_ID,
    START,
    STATUS,
    Figures,
    SpanNode,
    SpanWarning,
    TraceTree,
)
from agenta_notebook.live import Trace
from agenta_notebook.memory import gc_paused
from agenta_notebook.runtime import get_collector

#: The dtype of a figure's own column and of its subtotal column, by kind.
_OWN_DTYPES: Final[Mapping[Kind, str]] = MappingProxyType(
    {"tokens": "Int64", "money": "Float64", "count": "boolean"}
)
_SUBTOTAL_DTYPES: Final[Mapping[Kind, str]] = MappingProxyType(
    {"tokens": "Int64", "money": "Float64", "count": "Int64"}
)
#: The columns of how a span was priced, after its own money column.
_PRICING_COLUMNS: Final = (("cost_source", "string"), ("priced_model", "string"))


def figure_columns(table: Iterable[Figure]) -> dict[str, str]:
    """The frame's figure columns -> dtype, in order: the own figures (with the pricing
    columns after the money), then the subtotals."""
    table = tuple(table)
    columns: dict[str, str] = {}
    for figure in table:
        if figure.own_column is not None:
            columns[figure.own_column] = _OWN_DTYPES[figure.kind]
        if figure.kind == "money":
            columns.update(_PRICING_COLUMNS)
    for figure in table:
        columns[figure.subtotal_column] = _SUBTOTAL_DTYPES[figure.kind]
    return columns


#: Column -> nullable pandas dtype, in the order of the frame.
COLUMNS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "trace_id": "string",
        "trace_name": "string",
        "span_id": "string",
        "parent_span_id": "string",
        "name": "string",
        "type": "string",
        "depth": "Int64",
        "start_time": "datetime64[ns, UTC]",
        "end_time": "datetime64[ns, UTC]",
        "duration_ms": "Float64",
        "status": "string",
        "error": "boolean",
        "running": "boolean",
        "detached": "boolean",
        "role": "string",
        "model": "string",
        "provider": "string",
        **figure_columns(FIGURES),
        "warnings": "string",
    }
)


_FIGURE_NAMES: Final = tuple(figure.name for figure in FIGURES)
#: Past this a difference of two int64 times could overflow: durations are then summed in
#: Python.
_SAFE_TIME: Final = 2**62


def _columns(traces: Iterable[tuple[Trace, TraceTree]]) -> dict[str, Any]:
    """Every column, each read from the nodes by one list comprehension and made into its
    array at once (numpy and pandas' arrays built from a numpy array and a mask)."""
    nodes: list[SpanNode] = []
    trace_ids: list[str] = []
    trace_names: list[str] = []
    sizes: list[int] = []
    for trace, tree in traces:
        trace_nodes = tree.nodes
        nodes.extend(trace_nodes)
        trace_ids.append(f"{trace.trace_id:032x}")
        trace_names.append(trace.name)
        sizes.append(len(trace_nodes))
    if not nodes:
        return {column: _column([], dtype) for column, dtype in COLUMNS.items()}
    rows = [node.row for node in nodes]
    usages = [node.usage for node in nodes]
    owns: list[Figures] = [node.own for node in nodes]
    subtotals: list[Figures] = [node.subtotal for node in nodes]
    parents = [node.parent for node in nodes]
    of_trace = np.repeat(np.arange(len(sizes)), sizes)
    own_rows = _FigureRows(owns)
    subtotal_rows = _FigureRows(subtotals, like=own_rows)
    # How the spans with figures of their own were priced (`counts_usage` is False for a
    # span without): the others have no pricing columns.
    priced = [node.priced if node.counts_usage else None for node in compress(nodes, own_rows.held)]
    span_ids = [row[SPAN_ID] for row in rows]
    synthetic = np.fromiter([node.synthetic for node in nodes], dtype=bool, count=len(nodes))
    columns: dict[str, Any] = {
        # each trace's id and name made text once, then repeated for its rows
        "trace_id": _strings(trace_ids).take(of_trace),
        "trace_name": _strings(trace_names).take(of_trace),
        "span_id": _hex_ids(span_ids, synthetic),
        "parent_span_id": _hex_ids(
            [0 if parent is None else parent.row[SPAN_ID] for parent in parents],
            where_is(parents, None),
        ),
        "name": _strings([row[NAME] for row in rows]),
        "type": _strings([usage.span_type for usage in usages]),
        "depth": _ints([node.depth for node in nodes]),  # never null
        **_times(
            [row[START] for row in rows],
            [row[END] for row in rows],
            nodes,
        ),
        "status": _strings([row[STATUS] for row in rows]),
        "error": _flags([node.is_error_origin for node in nodes]),
        "detached": _flags([node.detached for node in nodes]),
        "role": _strings([node.role for node in nodes]),
        "model": _strings([usage.model for usage in usages]),
        "provider": _strings([usage.provider for usage in usages]),
    }
    for figure in FIGURES:
        if figure.own_column is not None:
            columns[figure.own_column] = own_rows.column(figure, own=True)
        if figure.kind == "money":
            where, size = own_rows.where, len(nodes)
            sources = [None if p is None else p.source for p in priced]
            columns["cost_source"] = _spread_strings(sources, where, size)
            matched = [None if p is None else p.matched_model for p in priced]
            columns["priced_model"] = _spread_strings(matched, where, size)
        columns[figure.subtotal_column] = subtotal_rows.column(figure, own=False)
    columns["warnings"] = _warnings([node.span_warnings for node in nodes])
    return columns


def _warnings(found: list[tuple[SpanWarning, ...]]) -> Any:
    """The messages of each span's warnings, one a line; null for a span without."""
    if found.count(()) == len(found):  # no span warned (`count` is C: most spans have none)
        return _spread_strings([], [], len(found))
    return _strings(
        [
            "\n".join(warning.message for warning in warnings) if warnings else None
            for warnings in found
        ]
    )


def _spread_strings(values: Sequence[Any], where: Any, size: int) -> Any:
    """A `string` array of `size` nulls with `values` at the positions `where` (only
    `values` are checked and made text: the nulls are filled in)."""
    at = np.full(size, -1, dtype=np.intp)
    at[where] = np.arange(len(values))
    return _strings(values).take(at, allow_fill=True)


def _objects(values: Sequence[Any]) -> Any:
    """A 1-d object array of `values` (`np.array` would look into each for a sequence)."""
    return np.fromiter(values, dtype=object, count=len(values))


def _strings(values: Sequence[Any]) -> Any:
    """A `string` array from str and None values (pandas' own path checks and copies each
    value again); anything else takes that path, which turns it into text."""
    try:
        return pd.arrays.StringArray(_objects(values))
    except (TypeError, ValueError):
        return pd.array(list(values), dtype="string")


def _hex_ids(ids: Sequence[int], null: Any) -> Any:
    """`f"{id:016x}"` of each id at once, from the ids' bytes; None where `null`."""
    try:
        raw = np.fromiter(ids, dtype=np.uint64, count=len(ids))
    except (OverflowError, TypeError, ValueError):  # a hand-made id past 64 bits
        text = [None if hidden else f"{i:016x}" for i, hidden in zip(ids, null, strict=True)]
        return _strings(text)
    return _hex_of(raw, null)


def _hex_of(raw: Any, null: Any) -> Any:
    """`f"{id:016x}"` of each id of a uint64 array; None where `null`."""
    # the big-endian bytes in hex, read back as fixed-width text (UTF-32 is numpy's `U`)
    digits = raw.astype(">u8").tobytes().hex().encode("utf-32-le")
    hexed = np.frombuffer(digits, dtype="<U16").astype(object)
    hexed[null] = None
    return pd.arrays.StringArray(hexed)


def _ints(values: Sequence[Any]) -> Any:
    """A nullable Int64 array; the general path (`_column`) for anything unusual."""
    try:
        try:
            data = np.fromiter(values, dtype=np.int64, count=len(values))
            mask = np.zeros(len(values), dtype=bool)
        except TypeError:  # a None among them
            boxed = _objects(values)
            mask = where_is(values, None)
            boxed[mask] = 0
            data = boxed.astype(np.int64)
        return pd.arrays.IntegerArray(data, mask)
    except (OverflowError, TypeError, ValueError):
        return _column(list(values), "Int64")


def _flags(values: Sequence[Any]) -> Any:
    data = np.fromiter(values, dtype=bool, count=len(values))
    return pd.arrays.BooleanArray(data, np.zeros(len(values), dtype=bool))


def _make_reader(names: Iterable[str]) -> Callable[[list[Figures]], tuple[list[Any], ...]]:
    """A function that reads each figure of every row, one list comprehension per figure
    written out (a comprehension with the attribute's name in it reads twice as fast as
    `map(attrgetter(name), rows)`)."""
    lists = "".join(f"[row.{name} for row in rows], " for name in names)
    source = f"def read_figures(rows):\n    return ({lists})\n"
    namespace: dict[str, Any] = {}
    exec(compile(source, "<agenta_notebook.io.frame: read_figures>", "exec"), namespace)
    reader: Callable[[list[Figures]], tuple[list[Any], ...]] = namespace["read_figures"]
    return reader


_read_figures: Final = _make_reader(_FIGURE_NAMES)


class _FigureRows:
    """The figures of every row, read only where they are not `NO_FIGURES` (most spans
    count nothing of their own, and a tool with nothing below has no subtotal): the
    others hold every figure's default, `None` or 0.

    With `like`, the rows holding the very `Figures` of `like`'s row (a span with nothing
    below: its subtotal is its own figures) take their values from `like`, unread."""

    def __init__(self, figures: list[Figures], like: _FigureRows | None = None) -> None:
        self.figures = figures
        #: the rows with figures, as a mask
        self.held = ~where_is(figures, NO_FIGURES)
        self.like = like
        #: the rows whose values are `like`'s, as a mask (None: no such row)
        self.shared: Any = None
        read = self.held
        if like is not None:
            # (only where `like` has figures: elsewhere both are NO_FIGURES, not held)
            at = np.flatnonzero(like.held)
            shared = np.zeros(len(figures), dtype=bool)
            shared[at] = np.fromiter(
                map(is_, compress(figures, like.held), compress(like.figures, like.held)),
                dtype=bool,
                count=len(at),
            )
            shared &= self.held
            if shared.any():
                self.shared = shared
                read = self.held & ~shared
        #: the rows read here, as positions
        self.where = np.flatnonzero(read)
        kept = list(compress(figures, read))
        #: figure -> its value in each row read here
        self.values: dict[str, list[Any]] = dict(
            zip(_FIGURE_NAMES, _read_figures(kept), strict=True)
        )
        self._arrays: dict[str, tuple[Any, Any]] = {}

    def arrays(self, figure: Figure) -> tuple[Any, Any]:
        """One figure of every row as numpy arrays, (data, null mask): money as float64,
        NaN for null (no mask); a count as int64, never null (no mask); tokens as int64
        and a mask. Raises where a value does not fit."""
        found = self._arrays.get(figure.name)
        if found is None:
            found = self._arrays[figure.name] = self._read(figure)
        return found

    def _read(self, figure: Figure) -> tuple[Any, Any]:
        kind, size, where = figure.kind, len(self.figures), self.where
        values = self.values[figure.name]
        shared, like = self.shared, self.like
        if kind == "money":
            # Decimal -> float as float() does it; None -> NaN -> null (no cost is NaN)
            floats = np.full(size, np.nan)
            if shared is not None and like is not None:
                np.copyto(floats, like.arrays(figure)[0], where=shared)
            floats[where] = _objects(values).astype(np.float64)
            return floats, None
        if kind == "count":
            counts = np.zeros(size, dtype=np.int64)
            if shared is not None and like is not None:
                np.copyto(counts, like.arrays(figure)[0], where=shared)
            counts[where] = np.fromiter(values, dtype=np.int64, count=len(values))
            return counts, None
        data = np.zeros(size, dtype=np.int64)
        mask = np.ones(size, dtype=bool)
        if shared is not None and like is not None:
            like_data, like_mask = like.arrays(figure)
            np.copyto(data, like_data, where=shared)
            np.copyto(mask, like_mask, where=shared)
        try:
            data[where] = np.fromiter(values, dtype=np.int64, count=len(values))
            mask[where] = False
        except TypeError:  # a None among them
            # (ints are never equal to None: `count` finds exactly the Nones)
            if values.count(None) < len(values):  # all None: all null, as it is
                boxed = _objects(values)
                missing = where_is(values, None)
                boxed[missing] = 0
                data[where] = boxed.astype(np.int64)
                mask[where] = missing
        return data, mask

    def column(self, figure: Figure, own: bool) -> Any:
        """One figure of every row: money as a float, a span's own count as a flag."""
        kind = figure.kind
        try:
            data, mask = self.arrays(figure)
        except (OverflowError, TypeError, ValueError):  # past 64 bits: exact Python ints
            dtype = (_OWN_DTYPES if own else _SUBTOTAL_DTYPES)[kind]
            return _column(_values(kind, figure.name, self.figures, own), dtype)
        if kind == "money":
            return pd.arrays.FloatingArray(data, np.isnan(data))
        if kind == "count":
            unmasked = np.zeros(len(data), dtype=bool)
            if own:
                return pd.arrays.BooleanArray(data > 0, unmasked)
            return pd.arrays.IntegerArray(data, unmasked)
        return pd.arrays.IntegerArray(data, mask)


def _times(starts: Sequence[Any], ends: Sequence[Any], nodes: Sequence[SpanNode]) -> dict[str, Any]:
    """The start and end times (UTC, null when unknown or not an int64), the duration and
    whether each span is running (no end time)."""
    size = len(ends)
    try:  # no span running: the ends as they are
        end = np.fromiter(ends, dtype=np.int64, count=size)
        running = np.zeros(size, dtype=bool)
        has_running = False
    except (OverflowError, TypeError, ValueError):
        end = None
        running = where_is(ends, None)
        has_running = True
    flags = {"running": pd.arrays.BooleanArray(running, np.zeros(size, dtype=bool))}
    try:
        start = np.fromiter(starts, dtype=np.int64, count=len(starts))
        if end is None:
            boxed = _objects(ends)
            boxed[running] = 0
            end = boxed.astype(np.int64)
    except (OverflowError, TypeError, ValueError):  # hand-made records
        return {
            "start_time": _column(list(starts), COLUMNS["start_time"]),
            "end_time": _column(list(ends), COLUMNS["end_time"]),
            "duration_ms": _column([node.duration_ms for node in nodes], "Float64"),
            **flags,
        }
    known = end[~running] if has_running else end
    # (no np.abs: the smallest int64 is its own absolute value)
    if all(
        times.size == 0 or (times.min() > -_SAFE_TIME and times.max() < _SAFE_TIME)
        for times in (start, known)
    ):
        durations = (end - start) / 1e6  # int64 -> float64 rounds as Python's int / float
        durations[running] = np.nan
        duration = pd.arrays.FloatingArray(durations, running.copy())
    else:
        duration = _column([node.duration_ms for node in nodes], "Float64")
    # the smallest int64 is NaT: null, as `_in_int64` has it
    end[running] = np.iinfo(np.int64).min
    return {
        "start_time": _utc(start),
        "end_time": _utc(end),
        "duration_ms": duration,
        **flags,
    }


def _utc(nanoseconds: Any) -> Any:
    return pd.DatetimeIndex(nanoseconds.view("M8[ns]")).tz_localize("UTC")


def _values(kind: Kind, name: str, figures: list[Figures], own: bool) -> list[Any]:
    """One figure of every row: money as a float, a span's own count as a flag."""
    values = map(attrgetter(name), figures)
    if kind == "money":
        return [None if value is None else float(value) for value in values]
    if kind == "count" and own:
        return [value > 0 for value in values]
    return list(values)


def _integers(values: list[Any]) -> Any:
    """A nullable Int64 array, built from a numpy array and a mask (pandas' own path
    for a list with nulls goes through an object array and is several times slower)."""
    mask = np.fromiter((value is None for value in values), dtype=bool, count=len(values))
    if mask.any():
        values = [0 if value is None else value for value in values]
    data = np.array(values, dtype=np.int64) if values else np.zeros(0, dtype=np.int64)
    return pd.arrays.IntegerArray(data, mask)


def _column(values: list[Any], dtype: str) -> Any:
    if dtype == "Int64":
        try:
            return _integers(values)
        except (OverflowError, TypeError, ValueError):
            # A count past 64 bits (a hand-made record, a sum of absurd counts):
            # keep the exact Python ints rather than fail or wrap around.
            return pd.array(values, dtype=object)
    if dtype == "boolean":
        data = np.fromiter(values, dtype=bool, count=len(values))
        return pd.arrays.BooleanArray(data, np.zeros(len(values), dtype=bool))
    if dtype == "Float64":
        # numpy reads None as NaN, and pandas reads NaN as null (no figure here is NaN)
        floats = np.array(values, dtype=np.float64) if values else np.zeros(0)
        return pd.array(floats, dtype="Float64")
    if dtype.startswith("datetime64"):
        return pd.to_datetime(_in_int64(values), unit="ns", utc=True)
    return pd.array(values, dtype=dtype)  # type: ignore[call-overload]


def _frame(columns: dict[str, Any]) -> pd.DataFrame:
    # the arrays are new: no copy
    return pd.DataFrame({column: columns[column] for column in COLUMNS}, copy=False)


_INT64_MIN: Final = -(2**63) + 1  # the smallest int64 is pandas' NaT
_INT64_MAX: Final = 2**63 - 1


def _in_int64(values: list[Any]) -> Any:
    """Nanosecond times as Int64; a time that does not fit (a hand-made record) is null."""
    try:
        return _integers(values)
    except (OverflowError, TypeError, ValueError):
        kept = [v if v is None or _INT64_MIN <= v <= _INT64_MAX else None for v in values]
        return _integers(kept)


def trace_dataframe(trace: Trace) -> pd.DataFrame:
    """One row per span of `trace`, parents before children (depth-first)."""
    return spans_of_traces([trace])


def spans_of_traces(traces: Iterable[Trace]) -> pd.DataFrame:
    """The rows of several traces in one frame.

    A trace whose whole tree is not kept is read from its spans that count
    (`Trace.counted`: a node for each span that states something and its ancestors) and
    the rows of the others made from their columns, then put in the tree's order."""
    built: list[tuple[Trace, TraceTree]] = []
    places: list[Any] = []  # per tree: where its rows go in the frame
    plain: list[tuple[Any, dict[str, Any]]] = []  # per counted trace: the same, and columns
    size = 0
    for trace in traces:
        counted = trace.counted()
        if counted is not None and counted.tree.size == counted.size:
            tree = counted.tree  # every span counts: its tree is the whole tree
        elif counted is not None and (columns := _plain_columns(trace, counted)) is not None:
            position = counted.shape.position + size
            built.append((trace, counted.tree))
            places.append(np.sort(position[counted.counts]))
            plain.append((position[~counted.counts], columns))
            size += counted.size
            continue
        else:
            tree = trace.tree  # built (and walked) outside the pause below
            tree.nodes  # noqa: B018 - the walk of a live snapshot
        built.append((trace, tree))
        places.append(np.arange(size, size + tree.size))
        size += tree.size
    with gc_paused():  # many lists, none of them garbage
        columns = _columns(built)
        if plain:
            order = np.argsort(np.concatenate([*places, *(at for at, _ in plain)]))
            columns = {
                name: _joined([values, *(more[name] for _, more in plain)], order)
                for name, values in columns.items()
            }
        return _frame(columns)


def _joined(parts: list[Any], order: Any) -> Any:
    """One column made of `parts` (arrays of one column), its rows then taken in `order`:
    a column at a time, so that no second frame is held."""
    first = parts[0]
    if isinstance(first, pd.Index):  # the times
        return first.append(parts[1:]).take(order)
    if all(type(part) is type(first) for part in parts):
        return type(first)._concat_same_type(parts).take(order)
    if all(part.dtype == first.dtype for part in parts) and first.dtype != object:
        return pd.concat([pd.Series(part) for part in parts], ignore_index=True).array.take(order)
    # a column the nodes' rows made another way (a sum past 64 bits: exact Python ints,
    # None for null, as `_column` has them)
    values = np.concatenate([part.to_numpy(dtype=object, na_value=None) for part in parts])
    return pd.array(values[order], dtype=object)


def _plain_columns(trace: Trace, counted: Counted) -> dict[str, Any] | None:
    """The columns of the spans of `trace` that state nothing (not in `counted.tree`),
    in the order of their places: no figure, role "none", no warning; None when an end
    is not an int or a time does not fit int64 arithmetic (the whole tree's rows are
    made then)."""
    at = np.flatnonzero(~counted.counts)
    size = len(at)
    shape = counted.shape
    picked = list(map(counted.rows.__getitem__, at.tolist()))
    starts = shape.starts[at]
    ends_ = list(map(itemgetter(END), picked))
    if not only_ints(ends_):  # a hand-made end: numpy would take a float as an int
        return None
    try:
        ends = np.fromiter(ends_, np.int64, size)
    except OverflowError:
        return None
    if not all(times.min() > -_SAFE_TIME and times.max() < _SAFE_TIME for times in (starts, ends)):
        return None
    ids = shape.ids
    no = np.zeros(size, dtype=bool)
    every = np.zeros(size, dtype=np.intp)
    nothing = _spread_strings([], [], size)
    columns: dict[str, Any] = {
        "trace_id": _strings([f"{trace.trace_id:032x}"]).take(every),
        "trace_name": _strings([trace.name]).take(every),
        "span_id": _hex_of(ids[at], no),
        # (under their parents: none is detached, none is the root)
        "parent_span_id": _hex_of(ids[shape.parent[at]], no),
        "name": _strings(list(map(itemgetter(NAME), picked))),
        "type": _strings(counted.types[at]),
        "depth": pd.arrays.IntegerArray(shape.depth[at], no.copy()),
        "start_time": _utc(starts),
        "end_time": _utc(ends),
        "duration_ms": pd.arrays.FloatingArray((ends - starts) / 1e6, no.copy()),
        "running": pd.arrays.BooleanArray(no.copy(), no.copy()),
        "status": _strings(list(map(itemgetter(STATUS), picked))),
        "error": pd.arrays.BooleanArray(no.copy(), no.copy()),
        "detached": pd.arrays.BooleanArray(no.copy(), no.copy()),
        "role": _strings(["none"]).take(every),
        "model": nothing,
        "provider": nothing,
        "cost_source": nothing,
        "priced_model": nothing,
        "warnings": nothing,
    }
    for figure in FIGURES:
        for column, own in ((figure.own_column, True), (figure.subtotal_column, False)):
            if column is None:
                continue
            if figure.kind == "count":  # a flag (own) or a count, never null
                columns[column] = (
                    pd.arrays.BooleanArray(no.copy(), no.copy())
                    if own
                    else pd.arrays.IntegerArray(np.zeros(size, np.int64), no.copy())
                )
            elif figure.kind == "money":
                columns[column] = pd.arrays.FloatingArray(np.full(size, np.nan), ~no)
            else:
                columns[column] = pd.arrays.IntegerArray(np.zeros(size, np.int64), ~no)
    return columns


def spans_dataframe() -> pd.DataFrame:
    """Every span of every trace the session still retains, oldest trace first.

    >>> from agenta_notebook import spans_dataframe
    >>> list(spans_dataframe().columns)[:3]
    ['trace_id', 'trace_name', 'span_id']
    """
    return spans_of_traces(get_collector().traces())


# -- per model and per trace ---------------------------------------------------------------

#: The name `TraceTree.by_model` gives the counted calls of no known model.
UNKNOWN_MODEL: Final = "(unknown model)"

#: The figures of a model's row: every token count and the money (a count is a column of
#: its own there: `calls`, `unpriced_calls`).
_MODEL_FIGURES: Final = tuple(figure for figure in FIGURES if figure.kind != "count")

#: Column -> nullable dtype of `by_model_dataframe`, in order.
MODEL_COLUMNS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "model": "string",
        "calls": "Int64",
        **{figure.name: _SUBTOTAL_DTYPES[figure.kind] for figure in _MODEL_FIGURES},
        "unpriced_calls": "Int64",
    }
)

#: The root span attribute holding the notebook cell id (`ipython/magic.py` writes it).
CELL_ID_KEY: Final = "agenta_notebook.cell_id"

#: Column -> nullable dtype of `trace_totals_dataframe`, in order: one column per figure,
#: the whole trace's (the root's subtotal), named like the figure.
TRACE_COLUMNS: Final[Mapping[str, str]] = MappingProxyType(
    {
        "trace_id": "string",
        "name": "string",
        "cell": "string",
        "start_time": "datetime64[ns, UTC]",
        "duration_ms": "Float64",
        "spans": "Int64",
        "running": "boolean",
        **{figure.name: _SUBTOTAL_DTYPES[figure.kind] for figure in FIGURES},
        # its budget (`trace(budget=, max_tokens=)`); all four `<NA>` for a trace without one
        "budget": "Float64",
        "max_tokens": "Int64",
        "budget_reached": "boolean",
        "budget_refused": "boolean",
    }
)


def _typed_frame(columns: dict[str, list[Any]], dtypes: Mapping[str, str]) -> pd.DataFrame:
    return pd.DataFrame(
        {
            column: _nullable_flags(columns[column])
            if dtype == "boolean"
            else _column(columns[column], dtype)
            for column, dtype in dtypes.items()
        }
    )


def _nullable_flags(values: list[Any]) -> Any:
    """A nullable boolean array: None is `<NA>`."""
    mask = np.fromiter((value is None for value in values), dtype=bool, count=len(values))
    data = np.fromiter((bool(value) for value in values), dtype=bool, count=len(values))
    return pd.arrays.BooleanArray(data, mask)


def by_model_dataframe(trace: Trace) -> pd.DataFrame:
    """One row per model of `trace`: its counted calls, every token figure, the cost and the
    unpriced calls, most expensive first (as `TraceTree.by_model`). A model none of whose
    calls has a price has cost `<NA>`, not 0.0; a cost next to unpriced calls is the known
    part.

    >>> import agenta_notebook as an
    >>> with an.trace("models") as t:
    ...     with an.span("a", type="llm"):
    ...         an.record_usage(model="gpt-4o", input_tokens=10, output_tokens=5)
    ...     with an.span("b", type="llm"):
    ...         an.record_usage(model="my-own-llm", input_tokens=7, output_tokens=1)
    >>> frame = t.by_model()
    >>> frame["model"].tolist(), frame["total_tokens"].tolist(), frame["unpriced_calls"].tolist()
    (['openai/gpt-4o', 'my-own-llm'], [15, 8], [0, 1])
    >>> frame["cost"].isna().tolist()
    [False, True]
    """
    groups: dict[str, list[Figures]] = {}
    for node in trace.tree.stats.costed:
        if node.counts_usage:
            model = node.priced.matched_model or node.usage.model or UNKNOWN_MODEL
            groups.setdefault(model, []).append(node.own)
    totals = [(model, sum_figures(owns), owns) for model, owns in sorted(groups.items())]
    # Most expensive first, then by name (a stable sort keeps the names' order); no
    # arithmetic on the costs, so the caller's decimal context plays no part.
    totals.sort(key=lambda row: row[1].cost or 0, reverse=True)
    columns: dict[str, list[Any]] = {
        "model": [model for model, _, _ in totals],
        "calls": [sum(1 for own in owns if own.model_calls) for _, _, owns in totals],
        "unpriced_calls": [total.unpriced_calls for _, total, _ in totals],
    }
    for figure in _MODEL_FIGURES:
        columns[figure.name] = _values(figure.kind, figure.name, [t for _, t, _ in totals], False)
    return _typed_frame(columns, MODEL_COLUMNS)


def trace_totals_dataframe(*traces: Trace, kept: bool | None = None) -> pd.DataFrame:
    """One row per trace: its name, notebook cell, start, duration, span count and the
    totals of every figure (the root's subtotals, named like the figures), nullable.

    With no trace given, the traces the session keeps (oldest first); else the ones given
    (loaded from files, say), after the kept ones if `kept=True`. A trace given twice
    has one row. `cell` is the notebook cell id of a `%%agenta_trace` cell when the
    frontend sent one, else `<NA>`.
    """
    for given in traces:
        if not isinstance(given, Trace):
            raise TypeError(
                "traces_dataframe takes traces as separate arguments, not "
                f"{type(given).__name__} (unpack a list: traces_dataframe(*traces))"
            )
    chosen: list[Trace] = []
    if kept or (kept is None and not traces):
        chosen.extend(get_collector().traces())
    seen: set[int] = set()
    unique = []
    for trace in (*chosen, *traces):
        if id(trace) not in seen:
            seen.add(id(trace))
            unique.append(trace)
    # totals, root, running spans and budget: the spans that count hold them all (a
    # trace nothing has shown makes no node for the others); the count is of every span
    counted = [trace.counted() for trace in unique]
    trees = [
        trace.tree if found is None else found.tree
        for trace, found in zip(unique, counted, strict=True)
    ]
    roots = [tree.root for tree in trees]
    # a synthetic root holds the top-level spans of a trace whose root span is missing
    spans = [
        (tree.size if found is None else found.size) - (1 if tree.root.synthetic else 0)
        for tree, found in zip(trees, counted, strict=True)
    ]
    columns: dict[str, list[Any]] = {
        "trace_id": [f"{trace.trace_id:032x}" for trace in unique],
        "name": [trace.name for trace in unique],
        "cell": [None if root.synthetic else _cell(root.attributes) for root in roots],
        "start_time": [
            root.row[START] if count else None for root, count in zip(roots, spans, strict=True)
        ],
        "duration_ms": [
            root.duration_ms if count else None for root, count in zip(roots, spans, strict=True)
        ],
        "spans": spans,
        "running": [tree.running_count > 0 for tree in trees],
    }
    totals = [root.subtotal for root in roots]
    for figure in FIGURES:
        columns[figure.name] = _values(figure.kind, figure.name, totals, own=False)
    budgets = [trace_budget(tree) for tree in trees]
    columns["budget"] = [
        None if b is None or b.dollars is None else float(b.dollars) for b in budgets
    ]
    columns["max_tokens"] = [None if b is None else b.max_tokens for b in budgets]
    columns["budget_reached"] = [None if b is None else b.reached for b in budgets]
    columns["budget_refused"] = [None if b is None else b.refused for b in budgets]
    return _typed_frame(columns, TRACE_COLUMNS)


def _cell(attributes: Mapping[str, Any]) -> str | None:
    cell = attributes.get(CELL_ID_KEY)
    return cell if isinstance(cell, str) else None
