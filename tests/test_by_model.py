"""`trace.by_model()`: one row per model, every token figure, unpriced kept apart from 0."""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import pandas as pd
import pytest

import agenta_notebook as an
from agenta_notebook.core.fields import FIGURES
from agenta_notebook.core.rollup import SpanNode
from agenta_notebook.io.frame import MODEL_COLUMNS

TOKEN_NAMES = [figure.name for figure in FIGURES if figure.kind == "tokens"]


@pytest.fixture
def models() -> an.Trace:
    """Priced, free, unpriced, half-priced and model-less calls, with every token figure."""
    with an.trace("models") as result:
        with an.span("agent", type="agent"):
            with an.span("big", type="llm"):
                an.record_usage(
                    model="gpt-4o",
                    input_tokens=1_000,
                    output_tokens=200,
                    cache_read_tokens=400,
                    reasoning_tokens=50,
                )
            with an.span("big again", type="llm"):
                an.record_usage(model="gpt-4o", input_tokens=300, output_tokens=30)
            with an.span("small", type="llm"):
                an.record_usage(
                    model="gpt-4o-mini", input_tokens=90, output_tokens=9, cache_write_tokens=20
                )
            with an.span("free", type="llm"):
                an.record_usage(model="free-model", input_tokens=5, output_tokens=5, cost=0)
            for _ in range(2):
                with an.span("local", type="llm"):
                    an.record_usage(model="my-local-llama", input_tokens=7, output_tokens=3)
            with an.span("house stated", type="llm"):
                an.record_usage(model="house-llm", input_tokens=10, output_tokens=2, cost=0.25)
            with an.span("house unpriced", type="llm"):
                an.record_usage(model="house-llm", input_tokens=4, output_tokens=1)
            with an.span("anonymous", type="llm"):
                an.record_usage(input_tokens=11, output_tokens=1)
            with an.span("tool", type="tool"):
                pass
    return result


def group_key(node: SpanNode) -> str:
    return node.priced.matched_model or node.usage.model or "(unknown model)"


def optional_sum(values: Iterable[Any]) -> Any:
    """None when every value is None (unknown), else the sum of the known ones."""
    known = [value for value in values if value is not None]
    return sum(known) if known else None


def expected_rows(trace: an.Trace) -> dict[str, dict[str, Any]]:
    """Per model, summed here from every node of the tree (not from the frame's code)."""
    groups: dict[str, list[SpanNode]] = {}
    for node in trace.tree.nodes:
        if node.counts_usage:
            groups.setdefault(group_key(node), []).append(node)
    rows: dict[str, dict[str, Any]] = {}
    for model, nodes in groups.items():
        row: dict[str, Any] = {
            name: optional_sum(getattr(node.own, name) for node in nodes) for name in TOKEN_NAMES
        }
        cost = optional_sum(node.own.cost for node in nodes)
        row["cost"] = None if cost is None else float(cost)
        row["calls"] = sum(1 for node in nodes if node.usage.is_model_call)
        row["unpriced_calls"] = sum(1 for node in nodes if node.priced.source == "unpriced")
        rows[model] = row
    return rows


def value(cell: Any) -> Any:
    return None if cell is pd.NA else cell


def test_columns_and_nullable_dtypes(models: an.Trace) -> None:
    frame = models.by_model()
    assert list(frame.columns) == list(MODEL_COLUMNS)
    assert {column: str(frame[column].dtype) for column in frame.columns} == dict(MODEL_COLUMNS)
    assert set(TOKEN_NAMES) | {"model", "calls", "cost", "unpriced_calls"} == set(frame.columns)


def test_rows_equal_sums_over_the_nodes(models: an.Trace) -> None:
    frame = models.by_model()
    expected = expected_rows(models)
    assert sorted(frame["model"]) == sorted(expected)
    assert len(expected) == 6  # 2 priced, free, unpriced, half-priced, unknown
    for record in frame.to_dict("records"):
        wanted = expected[record["model"]]
        got = {column: value(record[column]) for column in wanted}
        assert got == pytest.approx(wanted), record["model"]


def test_unpriced_is_null_and_free_is_zero(models: an.Trace) -> None:
    frame = models.by_model().set_index("model")
    local = frame.loc["my-local-llama"]
    assert local["cost"] is pd.NA and local["calls"] == 2 and local["unpriced_calls"] == 2
    assert local["total_tokens"] == 20
    free = frame.loc["free-model"]
    assert free["cost"] == 0.0 and free["unpriced_calls"] == 0
    house = frame.loc["house-llm"]  # the known part, and one call missing from it
    assert house["cost"] == pytest.approx(0.25) and house["unpriced_calls"] == 1
    unknown = frame.loc["(unknown model)"]
    assert unknown["cost"] is pd.NA and unknown["input_tokens"] == 11
    big = frame.loc[next(model for model in frame.index if model.endswith("gpt-4o"))]
    assert big["cache_read_tokens"] == 400 and big["reasoning_tokens"] == 50
    assert big["cache_write_tokens"] is pd.NA  # no call of it stated one: unknown, not 0


def test_agrees_with_the_tree_breakdown(models: an.Trace) -> None:
    frame = models.by_model()
    rows = models.tree.by_model()
    assert list(frame["model"]) == [row.model for row in rows]  # most expensive first
    for record, row in zip(frame.to_dict("records"), rows, strict=True):
        assert record["calls"] == row.calls and record["unpriced_calls"] == row.unpriced_calls
        assert value(record["input_tokens"]) == row.input_tokens
        assert value(record["total_tokens"]) == row.total_tokens
        assert value(record["cost"]) == (None if row.cost is None else float(row.cost))
    total = sum((row.cost for row in rows if row.cost is not None), Decimal(0))
    assert frame["cost"].sum() == pytest.approx(float(total))
    assert frame["cost"].sum() == pytest.approx(float(models.totals.cost or 0))


def test_the_groupby_idiom_turns_unpriced_into_zero(models: an.Trace) -> None:
    """What the README warns of: pandas' sum of only nulls is 0.0 unless `min_count=1`."""
    spans = models.to_dataframe()
    naive = spans.groupby("model")["cost"].sum()
    assert naive["my-local-llama"] == 0.0  # the trap
    right = spans.groupby("model")["cost"].sum(min_count=1)
    assert right["my-local-llama"] is pd.NA and right["free-model"] == 0.0
    assert models.by_model().set_index("model")["cost"]["my-local-llama"] is pd.NA


def test_a_trace_without_model_calls_has_no_rows() -> None:
    with an.trace("quiet") as quiet, an.span("step"):
        pass
    frame = quiet.by_model()
    assert len(frame) == 0
    assert {column: str(frame[column].dtype) for column in frame.columns} == dict(MODEL_COLUMNS)


def test_a_loaded_trace_gives_the_same_rows(models: an.Trace, tmp_path: Any) -> None:
    path = tmp_path / "models.json"
    models.save(path)
    pd.testing.assert_frame_equal(an.load(path).by_model(), models.by_model())
