"""pandas export: one row per span, own figures and subtotals, nulls kept apart from 0."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Final

import pandas as pd

from .tree import Figures, SpanNode, Trace, _collector_paused

if TYPE_CHECKING:
    pass

_TOKEN_COLUMNS: Final = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)

#: Column -> nullable pandas dtype, in the order of the frame.
COLUMNS: Final[dict[str, str]] = {
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
    **{column: "Int64" for column in _TOKEN_COLUMNS},
    "cost": "Float64",
    "cost_source": "string",
    "priced_model": "string",
    "model_call": "boolean",
    "unpriced": "boolean",
    **{f"subtotal_{column}": "Int64" for column in _TOKEN_COLUMNS},
    "subtotal_cost": "Float64",
    "subtotal_model_calls": "Int64",
    "subtotal_unpriced_calls": "Int64",
    "subtotal_errors": "Int64",
    "warnings": "string",
}


def _hex(value: int | None, width: int) -> str | None:
    return None if value is None else f"{value:0{width}x}"


def _row(trace: Trace, trace_hex: str, node: SpanNode) -> list[Any]:
    record = node.record
    own: Figures = node.own
    subtotal: Figures = node.subtotal
    counted = node.role in ("model call", "unreported model call", "claim counted")
    return [
        trace_hex,
        trace.name,
        None if node.synthetic else _hex(record.span_id, 16),
        None if node.parent is None else _hex(node.parent.record.span_id, 16),
        record.name,
        node.type,
        node.depth,
        record.start_time_ns,
        record.end_time_ns,
        node.duration_ms,
        record.status,
        node.is_error_origin,
        record.end_time_ns is None,
        node.detached,
        node.role,
        node.usage.model,
        node.usage.provider,
        own.input_tokens,
        own.output_tokens,
        own.total_tokens,
        own.cache_read_tokens,
        own.cache_write_tokens,
        own.reasoning_tokens,
        None if own.cost is None else float(own.cost),
        node.priced.source if counted else None,
        node.priced.matched_model if counted else None,
        own.model_calls == 1,
        own.unpriced_calls == 1,
        subtotal.input_tokens,
        subtotal.output_tokens,
        subtotal.total_tokens,
        subtotal.cache_read_tokens,
        subtotal.cache_write_tokens,
        subtotal.reasoning_tokens,
        None if subtotal.cost is None else float(subtotal.cost),
        subtotal.model_calls,
        subtotal.unpriced_calls,
        subtotal.errors,
        "\n".join(node.warnings) if node.warnings else None,
    ]


def _frame(rows: list[list[Any]]) -> pd.DataFrame:
    columns: list[tuple[Any, ...]] = list(zip(*rows, strict=True)) if rows else [()] * len(COLUMNS)
    data: dict[str, Any] = {}
    for (column, dtype), values in zip(COLUMNS.items(), columns, strict=True):
        dtype_name: Any = dtype
        if dtype.startswith("datetime64"):
            times: Any = pd.array(list(values), dtype="Int64")
            data[column] = pd.to_datetime(times, unit="ns", utc=True)
        else:
            data[column] = pd.array(list(values), dtype=dtype_name)
    return pd.DataFrame(data)


def trace_dataframe(trace: Trace) -> pd.DataFrame:
    """One row per span of `trace`, parents before children (depth-first)."""
    return traces_dataframe([trace])


def traces_dataframe(traces: Iterable[Trace]) -> pd.DataFrame:
    """The rows of several traces in one frame."""
    rows: list[list[Any]] = []
    for trace in traces:
        nodes = trace.tree.nodes
        with _collector_paused():  # many small lists, none of them garbage
            trace_hex = f"{trace.trace_id:032x}"
            rows.extend([_row(trace, trace_hex, node) for node in nodes])
    with _collector_paused():
        return _frame(rows)


def spans_dataframe() -> pd.DataFrame:
    """Every span of every trace the session still retains, oldest trace first.

    >>> from agenta_notebook import spans_dataframe
    >>> list(spans_dataframe().columns)[:3]
    ['trace_id', 'trace_name', 'span_id']
    """
    from .collector import get_collector

    return traces_dataframe(get_collector().traces())
