"""pandas export: one row per span, own figures and subtotals, nulls kept apart from 0.

The figure columns come from the table of figures (`core/fields.py`): each figure has a
subtotal column, `subtotal_<figure>`, and most have an own column, the span's own counted
figure (a count is a flag there: the span is one model call, one unpriced call).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from operator import attrgetter
from types import MappingProxyType
from typing import Any, Final

import numpy as np
import pandas as pd

from agenta_notebook.core.fields import FIGURES, Figure, Kind
from agenta_notebook.core.rollup import Figures, SpanNode
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


def _cost(cost: Decimal | None) -> float | None:
    return None if cost is None else float(cost)


def _columns(traces: Iterable[Trace]) -> dict[str, list[Any]]:
    """Every column as one list, built column by column (no per-row lists to transpose)."""
    nodes: list[SpanNode] = []
    trace_ids: list[str] = []
    trace_names: list[str] = []
    for trace in traces:
        trace_nodes = trace.tree.nodes
        nodes.extend(trace_nodes)
        trace_ids.extend([f"{trace.trace_id:032x}"] * len(trace_nodes))
        trace_names.extend([trace.name] * len(trace_nodes))
    records = [node.record for node in nodes]
    usages = [node.usage for node in nodes]
    owns: list[Figures] = [node.own for node in nodes]
    subtotals: list[Figures] = [node.subtotal for node in nodes]
    priced = [node.priced if node.counts_usage else None for node in nodes]
    columns: dict[str, list[Any]] = {
        "trace_id": trace_ids,
        "trace_name": trace_names,
        "span_id": [None if node.synthetic else f"{node.record.span_id:016x}" for node in nodes],
        "parent_span_id": [
            None if node.parent is None else f"{node.parent.record.span_id:016x}" for node in nodes
        ],
        "name": [record.name for record in records],
        "type": [usage.span_type for usage in usages],
        "depth": [node.depth for node in nodes],
        "start_time": [record.start_time_ns for record in records],
        "end_time": [record.end_time_ns for record in records],
        "duration_ms": [node.duration_ms for node in nodes],
        "status": [record.status for record in records],
        "error": [node.is_error_origin for node in nodes],
        "running": [record.end_time_ns is None for record in records],
        "detached": [node.detached for node in nodes],
        "role": [node.role for node in nodes],
        "model": [usage.model for usage in usages],
        "provider": [usage.provider for usage in usages],
    }
    for figure in FIGURES:
        name = figure.name
        if figure.own_column is not None:
            columns[figure.own_column] = _values(figure.kind, name, owns, own=True)
        if figure.kind == "money":
            columns["cost_source"] = [None if price is None else price.source for price in priced]
            columns["priced_model"] = [
                None if price is None else price.matched_model for price in priced
            ]
        columns[figure.subtotal_column] = _values(figure.kind, name, subtotals, own=False)
    columns["warnings"] = [
        "\n".join(warning.message for warning in found) if (found := node.span_warnings) else None
        for node in nodes
    ]
    return columns


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


def _frame(columns: dict[str, list[Any]]) -> pd.DataFrame:
    return pd.DataFrame(
        {column: _column(columns[column], dtype) for column, dtype in COLUMNS.items()}
    )


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
    return traces_dataframe([trace])


def traces_dataframe(traces: Iterable[Trace]) -> pd.DataFrame:
    """The rows of several traces in one frame."""
    built = [(trace, trace.tree) for trace in traces]  # build outside the pause below
    with gc_paused():  # many lists, none of them garbage
        return _frame(_columns(trace for trace, _ in built))


def spans_dataframe() -> pd.DataFrame:
    """Every span of every trace the session still retains, oldest trace first.

    >>> from agenta_notebook import spans_dataframe
    >>> list(spans_dataframe().columns)[:3]
    ['trace_id', 'trace_name', 'span_id']
    """
    return traces_dataframe(get_collector().traces())
