"""The pandas export: columns, nullable dtypes, UTC times, and null kept apart from 0."""

from __future__ import annotations

from decimal import Decimal

import pandas as pd
import pytest
from conftest import RecordFactory, keys

import agenta_notebook as an
from agenta_notebook.collector import Collector
from agenta_notebook.io.frame import COLUMNS, traces_dataframe

REQUIRED = [
    "trace_id",
    "span_id",
    "parent_span_id",
    "name",
    "type",
    "depth",
    "start_time",
    "end_time",
    "duration_ms",
    "status",
    "error",
    "model",
    "provider",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cache_read_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
    "cost",
    "cost_source",
    "subtotal_input_tokens",
    "subtotal_output_tokens",
    "subtotal_total_tokens",
    "subtotal_cache_read_tokens",
    "subtotal_cache_write_tokens",
    "subtotal_reasoning_tokens",
    "subtotal_cost",
    "subtotal_model_calls",
    "subtotal_unpriced_calls",
    "subtotal_errors",
    "warnings",
]


@pytest.fixture
def sample() -> an.Trace:
    with an.trace("frame") as result:
        with an.span("agent", type="agent"):
            with an.span("priced", type="llm"):
                an.record_usage(
                    model="gpt-4o", provider="openai", input_tokens=100, output_tokens=10
                )
            with an.span("free", type="llm"):
                an.record_usage(model="my-local-llama", input_tokens=0, output_tokens=0, cost=0)
            with an.span("unpriced", type="llm"):
                an.record_usage(model="my-local-llama", input_tokens=5, output_tokens=5)
            with an.span("bad", type="llm"):
                an.record_usage(input_tokens="abc")  # type: ignore[arg-type]
        with pytest.raises(ValueError), an.span("tool", type="tool"):
            raise ValueError("tool failed")
    return result


def row(frame: pd.DataFrame, name: str) -> pd.Series:
    matches = frame[frame["name"] == name]
    assert len(matches) == 1
    return matches.iloc[0]


def test_columns_and_nullable_dtypes(sample: an.Trace) -> None:
    frame = sample.to_dataframe()
    assert set(REQUIRED) <= set(frame.columns)
    assert list(frame.columns) == list(COLUMNS)
    for column, dtype in COLUMNS.items():
        assert str(frame[column].dtype) == dtype, column
    assert len(frame) == len(sample.nodes) == 7
    assert list(frame["name"]) == [n.name for n in sample.nodes]  # parents first


def test_ids_parents_and_depth(sample: an.Trace) -> None:
    frame = sample.to_dataframe()
    assert set(frame["trace_id"]) == {f"{sample.trace_id:032x}"}
    root, agent, priced = (row(frame, name) for name in ("frame", "agent", "priced"))
    assert root["parent_span_id"] is pd.NA
    assert agent["parent_span_id"] == root["span_id"]
    assert priced["parent_span_id"] == agent["span_id"]
    assert priced["span_id"] == f"{sample.find('priced').span_id:016x}"
    assert (root["depth"], agent["depth"], priced["depth"]) == (0, 1, 2)


def test_times_are_tz_aware_utc(sample: an.Trace) -> None:
    frame = sample.to_dataframe()
    priced_node = sample.find("priced")
    priced = row(frame, "priced")
    assert str(priced["start_time"].tz) == "UTC"
    assert priced["start_time"] == pd.Timestamp(
        priced_node.record.start_time_ns, unit="ns", tz="UTC"
    )
    assert priced_node.record.end_time_ns is not None
    assert priced["end_time"] == pd.Timestamp(priced_node.record.end_time_ns, unit="ns", tz="UTC")
    assert priced["duration_ms"] == pytest.approx(priced_node.duration_ms)
    assert (frame["end_time"] >= frame["start_time"]).all()


def test_null_is_not_zero(sample: an.Trace) -> None:
    frame = sample.to_dataframe()
    free, unpriced, bad, agent = (row(frame, n) for n in ("free", "unpriced", "bad", "agent"))
    assert free["cost"] == 0.0 and free["input_tokens"] == 0
    assert free["cost_source"] == "reported" and not free["unpriced"]
    assert unpriced["cost"] is pd.NA and unpriced["cost_source"] == "unpriced"
    assert unpriced["unpriced"]
    assert bad["input_tokens"] is pd.NA
    assert agent["cost"] is pd.NA and agent["input_tokens"] is pd.NA  # reports nothing
    assert agent["subtotal_input_tokens"] == 105
    assert frame["cost"].isna().sum() == 5  # root, agent, unpriced, bad, tool
    assert (frame["cost"] == 0).sum() == 1


def test_figures_match_the_tree(sample: an.Trace) -> None:
    frame = sample.to_dataframe()
    root = row(frame, "frame")
    totals = sample.totals
    assert root["subtotal_total_tokens"] == totals.total_tokens == 120
    assert root["subtotal_cost"] == float(totals.cost or Decimal(0)) > 0
    assert root["subtotal_model_calls"] == totals.model_calls == 4
    assert root["subtotal_unpriced_calls"] == totals.unpriced_calls == 2
    assert root["subtotal_errors"] == totals.errors == 1
    priced = row(frame, "priced")
    assert priced["cost_source"] == "price table"
    assert (priced["model"], priced["provider"]) == ("gpt-4o", "openai")
    assert priced["model_call"] and priced["total_tokens"] == 110
    assert "'abc'" in row(frame, "bad")["warnings"]
    assert row(frame, "priced")["warnings"] is pd.NA


def test_error_column_marks_origins(sample: an.Trace) -> None:
    frame = sample.to_dataframe()
    tool = row(frame, "tool")
    assert tool["status"] == "ERROR" and tool["error"]
    assert frame["error"].sum() == 1


def test_running_span_has_no_end_time(records: RecordFactory) -> None:
    root = records.add("root", running=True)
    records.add("done", root, type="llm", **keys({"gen_ai.usage.input_tokens": 3}))
    frame = an.Trace(records.trace_id, "live", records=records.all).to_dataframe()
    root_row = row(frame, "root")
    assert root_row["end_time"] is pd.NaT and root_row["duration_ms"] is pd.NA
    assert root_row["running"] and not row(frame, "done")["running"]


def test_empty_frame_keeps_columns_and_dtypes() -> None:
    frame = traces_dataframe([])
    assert len(frame) == 0
    assert {column: str(frame[column].dtype) for column in frame.columns} == COLUMNS


def test_spans_dataframe_covers_retained_traces(collector: Collector) -> None:
    with an.trace("first"), an.span("a"):
        pass
    with an.trace("second"):
        with an.span("b"):
            pass
        with an.span("c"):
            pass
    frame = an.spans_dataframe()
    assert list(frame["trace_name"]) == ["first", "first", "second", "second", "second"]
    assert frame["trace_id"].nunique() == 2
    an.set_retention(max_traces=1)
    assert list(an.spans_dataframe()["trace_name"].unique()) == ["second"]
