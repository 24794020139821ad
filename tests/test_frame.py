"""The pandas export: columns, nullable dtypes, UTC times, and null kept apart from 0."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pandas as pd
import pytest
from conftest import RecordFactory, keys
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from jupyter_core.utils import run_sync
from live_kernel import Kernel, started

import agenta_notebook as an
from agenta_notebook.collector import Collector
from agenta_notebook.core.fields import FIGURES
from agenta_notebook.core.rollup import SpanRecord
from agenta_notebook.io.frame import CELL_ID_KEY, COLUMNS, TRACE_COLUMNS, spans_of_traces
from agenta_notebook.ipython.magic import CELL_ID_ATTRIBUTE

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
    frame = spans_of_traces([])
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


# -- an.traces_dataframe(): one row per trace ------------------------------------------------


def _two_traces() -> tuple[an.Trace, an.Trace]:
    with an.trace("cheap") as cheap, an.span("call", type="llm"):
        an.record_usage(model="gpt-4o-mini", input_tokens=10, output_tokens=2)
    with an.trace("mixed") as mixed:
        with an.span("priced", type="llm"):
            an.record_usage(model="gpt-4o", input_tokens=100, output_tokens=20)
        with an.span("local", type="llm"):
            an.record_usage(model="my-local-llama", input_tokens=5, output_tokens=5)
        with pytest.raises(ValueError), an.span("tool", type="tool"):
            raise ValueError("tool failed")
    return cheap, mixed


def _summed(trace: an.Trace, name: str) -> object:
    """A figure of the whole trace, summed here over its nodes' own figures."""
    values = [getattr(node.own, name) for node in trace.nodes]
    known = [value for value in values if value is not None]
    if not known:
        return pd.NA
    return float(sum(known)) if name == "cost" else sum(known)


def test_traces_dataframe_has_one_row_per_kept_trace(collector: Collector) -> None:
    cheap, mixed = _two_traces()
    frame = an.traces_dataframe()
    assert list(frame.columns) == list(TRACE_COLUMNS)
    assert {column: str(frame[column].dtype) for column in frame.columns} == dict(TRACE_COLUMNS)
    assert list(frame["name"]) == ["cheap", "mixed"]
    assert list(frame["trace_id"]) == [f"{t.trace_id:032x}" for t in (cheap, mixed)]
    for trace, row in zip((cheap, mixed), frame.to_dict("records"), strict=True):
        root = trace.root.record
        assert row["start_time"] == pd.Timestamp(root.start_time_ns, unit="ns", tz="UTC")
        assert root.end_time_ns is not None
        assert row["duration_ms"] == pytest.approx((root.end_time_ns - root.start_time_ns) / 1e6)
        assert row["spans"] == len(trace.nodes) and not row["running"]
        assert pd.isna(row["cell"])  # not a notebook cell
        for figure in FIGURES:
            wanted = _summed(trace, figure.name)
            if wanted is pd.NA:
                assert pd.isna(row[figure.name]), figure.name
            else:
                assert row[figure.name] == pytest.approx(wanted), figure.name
    mixed_row = frame.iloc[1]
    assert (mixed_row["model_calls"], mixed_row["unpriced_calls"], mixed_row["errors"]) == (2, 1, 1)
    assert mixed_row["cost"] > 0
    assert mixed_row["cost"] == pytest.approx(float(mixed.totals.cost or 0))


def test_traces_dataframe_keeps_unpriced_apart_from_zero(collector: Collector) -> None:
    with an.trace("unpriced") as unpriced, an.span("local", type="llm"):
        an.record_usage(model="my-local-llama", input_tokens=5, output_tokens=5)
    with an.trace("free"), an.span("free", type="llm"):
        an.record_usage(model="free-model", input_tokens=1, output_tokens=1, cost=0)
    with an.trace("no calls"), an.span("step"):
        pass
    frame = an.traces_dataframe().set_index("name")
    assert unpriced.totals.cost is None
    assert frame.loc["unpriced", "cost"] is pd.NA and frame.loc["unpriced", "total_tokens"] == 10
    assert frame.loc["free", "cost"] == 0.0
    assert frame.loc["no calls", "cost"] is pd.NA and frame.loc["no calls", "input_tokens"] is pd.NA
    assert frame.loc["no calls", "model_calls"] == 0


def test_traces_dataframe_includes_loaded_traces(collector: Collector, tmp_path: Path) -> None:
    cheap, mixed = _two_traces()
    path = tmp_path / "mixed.json"
    mixed.save(path)
    loaded = an.load(path)
    alone = an.traces_dataframe(loaded)
    assert list(alone["name"]) == ["mixed"]
    both = an.traces_dataframe(loaded, kept=True)
    assert list(both["name"]) == ["cheap", "mixed", "mixed"]
    saved, again = both.iloc[1], both.iloc[2]
    for column in TRACE_COLUMNS:
        assert (saved[column] is again[column] is pd.NA) or saved[column] == again[column], column
    assert list(an.traces_dataframe(cheap, cheap, kept=False)["name"]) == ["cheap"]
    assert list(an.traces_dataframe(cheap, kept=True)["name"]) == ["cheap", "mixed"]


def test_traces_dataframe_with_no_trace() -> None:
    an.get_collector().clear()
    frame = an.traces_dataframe()
    assert len(frame) == 0
    assert {column: str(frame[column].dtype) for column in frame.columns} == dict(TRACE_COLUMNS)


def test_traces_dataframe_refuses_a_list(collector: Collector) -> None:
    cheap, mixed = _two_traces()
    with pytest.raises(TypeError, match=r"traces_dataframe\(\*traces\)"):
        an.traces_dataframe([cheap, mixed])  # type: ignore[arg-type]


def test_traces_dataframe_of_a_running_trace(records: RecordFactory) -> None:
    root = records.add("root", running=True)
    records.add("done", root, type="llm", **keys({"gen_ai.usage.input_tokens": 3}))
    live = an.Trace(records.trace_id, "live", records=records.all)
    row = an.traces_dataframe(live).iloc[0]
    assert row["running"] and row["duration_ms"] is pd.NA and row["spans"] == 2
    assert row["input_tokens"] == 3


def test_cell_id_key_is_the_magics() -> None:
    assert CELL_ID_KEY == CELL_ID_ATTRIBUTE


def test_traces_dataframe_in_a_kernel_names_the_cells(tmp_path: Path) -> None:
    """`%%agenta_trace` cells run as JupyterLab runs them (the cell id in the request)."""
    with started(Kernel, tmp_path, "import agenta_notebook as an") as kernel:
        kc = kernel.client.kc
        assert kc is not None
        get_shell = run_sync(kc.get_shell_msg)
        for cell_id, name in (("cell-a", "first"), ("cell-b", "second")):
            code = f"%%agenta_trace {name} --quiet\nwith an.span('x', type='llm'):\n"
            code += "    an.record_usage(model='gpt-4o', input_tokens=4, output_tokens=1)"
            content = {"code": code, "silent": False, "store_history": True}
            message = kc.session.msg("execute_request", content, metadata={"cellId": cell_id})
            kc.shell_channel.send(message)
            reply = get_shell(timeout=60)
            while reply["parent_header"].get("msg_id") != message["header"]["msg_id"]:
                reply = get_shell(timeout=60)
            assert reply["content"]["status"] == "ok"
        kernel.run("with an.trace('plain'):\n    pass")
        rows = kernel.value(
            "an.traces_dataframe()[['name', 'cell', 'total_tokens']]"
            ".astype(object).where(lambda f: f.notna(), None).values.tolist()"
        )
    assert rows == [["first", "cell-a", 5], ["second", "cell-b", 5], ["plain", None, None]]


# -- the frame's content, against a row-by-row reference ----------------------------------


def _reference_frame(trace: an.Trace) -> pd.DataFrame:
    """The span frame built the plain way: one dict per node, each value as documented."""

    def hexed(value: int | None) -> str | None:
        return None if value is None else f"{value:016x}"

    def utc(ns: int | None) -> object:
        if ns is None or not -(2**63) < ns < 2**63:
            return pd.NaT
        return pd.Timestamp(ns, unit="ns", tz="UTC")

    rows = []
    for node in trace.nodes:
        record, usage, own, subtotal = node.record, node.usage, node.own, node.subtotal
        priced = node.priced if node.counts_usage else None
        row: dict[str, object] = {
            "trace_id": f"{trace.trace_id:032x}",
            "trace_name": trace.name,
            "span_id": None if node.synthetic else hexed(record.span_id),
            "parent_span_id": None if node.parent is None else hexed(node.parent.record.span_id),
            "name": record.name,
            "type": usage.span_type,
            "depth": node.depth,
            "start_time": utc(record.start_time_ns),
            "end_time": utc(record.end_time_ns),
            "duration_ms": node.duration_ms,
            "status": record.status,
            "error": node.is_error_origin,
            "running": record.end_time_ns is None,
            "detached": node.detached,
            "role": node.role,
            "model": usage.model,
            "provider": usage.provider,
            "cost_source": None if priced is None else priced.source,
            "priced_model": None if priced is None else priced.matched_model,
            "warnings": "\n".join(node.warnings) or None,
        }
        for figure in FIGURES:
            for column, figures in ((figure.own_column, own), (figure.subtotal_column, subtotal)):
                if column is None:
                    continue
                value = getattr(figures, figure.name)
                if figure.kind == "money":
                    value = None if value is None else float(value)
                elif figure.kind == "count" and figures is own:
                    value = value > 0
                row[column] = value
        rows.append(row)
    columns = {}
    for column, dtype in COLUMNS.items():
        values = [row[column] for row in rows]
        if dtype.startswith("datetime64"):
            columns[column] = pd.Series(values, dtype=dtype)
        elif dtype == "Int64" and any(v is not None and not -(2**63) <= v < 2**63 for v in values):
            columns[column] = pd.Series(values, dtype=object)  # exact past 64 bits
        else:
            columns[column] = pd.Series(values, dtype=dtype)
    return pd.DataFrame(columns)


def test_frame_equals_the_row_by_row_reference(sample: an.Trace) -> None:
    pd.testing.assert_frame_equal(sample.to_dataframe(), _reference_frame(sample), check_exact=True)


_IDS = st.one_of(st.integers(min_value=1, max_value=9), st.just(2**64 - 1), st.just(2**63))
_TOKENS = st.one_of(st.none(), st.integers(min_value=0, max_value=10**6), st.just(2**64))
_HAND_MADE = st.builds(
    SpanRecord,
    trace_id=st.just(7),
    span_id=_IDS,
    parent_span_id=st.one_of(st.none(), _IDS, st.just(404)),
    name=st.sampled_from(("a", "b", "llm")),
    start_time_ns=st.one_of(
        st.integers(min_value=0, max_value=2**40), st.sampled_from((2**64, -(2**63)))
    ),
    end_time_ns=st.one_of(
        st.none(), st.integers(min_value=2**40, max_value=2**41), st.just(2**63 - 1)
    ),
    status=st.sampled_from(("UNSET", "OK", "ERROR")),
    attributes=st.fixed_dictionaries(
        {},
        optional={
            "ag.type.node": st.sampled_from(("llm", "tool", "agent")),
            "ag.meta.response.model": st.sampled_from(("gpt-4o", "my-local-llama")),
            "gen_ai.usage.input_tokens": _TOKENS,
            "gen_ai.usage.output_tokens": _TOKENS,
            "gen_ai.usage.cache_read.input_tokens": _TOKENS,
            "ag.metrics.unit.costs.total": st.sampled_from((0, 0.5, 1e-9)),
        },
    ),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batch=st.lists(_HAND_MADE, min_size=1, max_size=10), root=st.one_of(st.none(), _IDS))
def test_frame_of_hand_made_records_equals_the_reference(
    batch: list[SpanRecord], root: int | None
) -> None:
    """Synthetic roots, detached and running spans, ids and counts past 63 bits, times past
    int64: the column-at-once build gives what the row-by-row one does."""
    trace = an.Trace(7, "fuzz", root_span_id=root, records=batch)
    pd.testing.assert_frame_equal(trace.to_dataframe(), _reference_frame(trace), check_exact=True)


def _nested(levels: int) -> an.Trace:
    """A chain of `levels` spans, each with a model call beside the next."""
    with an.trace("deep") as result:

        def below(level: int) -> None:
            with an.span(f"level {level}", type="agent"):
                with an.span(f"call {level}", type="llm"):
                    an.record_usage(model="gpt-4o", input_tokens=level, output_tokens=1)
                if level < levels:
                    below(level + 1)

        below(1)
    return result


@pytest.mark.parametrize("levels", [3, 12])
def test_frame_of_a_deep_trace_equals_the_reference(levels: int) -> None:
    """Every level's parent id, and the calls' figures shared by their own and subtotal
    columns (a leaf's subtotal is its own figures)."""
    trace = _nested(levels)
    frame = trace.to_dataframe()
    pd.testing.assert_frame_equal(frame, _reference_frame(trace), check_exact=True)
    assert frame["depth"].max() == levels + 1  # the calls, below the trace's root


def test_frame_of_several_traces_equals_their_references() -> None:
    traces = [_nested(2), _nested(4)]
    expected = pd.concat([_reference_frame(trace) for trace in traces], ignore_index=True)
    pd.testing.assert_frame_equal(spans_of_traces(traces), expected, check_exact=True)


# -- the budget of each trace (issue 15) ------------------------------------------------------


def _spend(tokens: int) -> None:
    with an.span("call", type="llm"):
        an.record_usage(model="gpt-4o", input_tokens=tokens, output_tokens=tokens)


def test_traces_dataframe_shows_each_budget_and_whether_it_stopped_a_call(
    collector: Collector, tmp_path: Path
) -> None:
    from agenta_notebook.budget import check

    with an.trace("one call") as one:
        _spend(100)
    cost = one.totals.cost
    assert cost is not None
    with pytest.raises(an.BudgetExceeded), an.trace("refused", budget=cost * 2) as refused:
        for _ in range(5):
            check(call="the next call")  # what the guards do before each request
            _spend(100)
    with an.trace("within", budget=cost * 10, max_tokens=10_000):
        _spend(100)
    with an.trace("tokens", max_tokens=400) as tokens:
        _spend(100)
        _spend(100)
    with an.trace("caught", budget=cost) as caught:
        _spend(100)
        with pytest.raises(an.BudgetExceeded), an.span("step"):
            check(call="the next call")  # refused inside a step, caught there
    path = tmp_path / "refused.json"
    refused.save(path)
    loaded = an.load(path)

    frame = an.traces_dataframe(loaded, kept=True)
    for column in ("budget", "max_tokens", "budget_reached", "budget_refused"):
        assert str(frame[column].dtype) == TRACE_COLUMNS[column]
    records = frame.to_dict("records")
    assert [row["name"] for row in records] == [
        "one call",
        "refused",
        "within",
        "tokens",
        "caught",
        "refused",
    ]
    by_name = {row["name"]: row for row in records}
    none = by_name["one call"]
    for column in ("budget", "max_tokens", "budget_reached", "budget_refused"):
        assert pd.isna(none[column]), column
    for row in (records[1], records[5]):  # the trace and its loaded copy
        assert row["budget"] == pytest.approx(float(cost * 2)) and pd.isna(row["max_tokens"])
        assert row["budget_reached"] is True and row["budget_refused"] is True
    within = by_name["within"]
    assert within["budget"] == pytest.approx(float(cost * 10)) and within["max_tokens"] == 10_000
    assert within["budget_reached"] is False and within["budget_refused"] is False
    token_row = by_name["tokens"]
    assert pd.isna(token_row["budget"]) and token_row["max_tokens"] == 400
    assert tokens.totals.total_tokens == 400
    assert token_row["budget_reached"] is True and token_row["budget_refused"] is False
    caught_row = by_name["caught"]
    assert caught.root.record.status != "ERROR", "the refusal was caught inside the trace"
    assert caught_row["budget_reached"] is True and caught_row["budget_refused"] is True
