"""`an.compare(*traces)`: spans aligned by path, deltas for two traces, spreads for more."""

from __future__ import annotations

import re
import statistics
from decimal import Decimal, localcontext
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from live_kernel import Kernel, started

import agenta_notebook as an
from agenta_notebook.core.rollup import SpanNode
from agenta_notebook.io.compare import MAX_HTML_ROWS
from agenta_notebook.runtime import MAX_COMPARISON_VIEWS

STEPS = ("retrieve", "generate", "grade")


def chain(model: str, *, scale: int = 1, name: str = "chain") -> an.Trace:
    """A 3-step chain, every step one model call of `model`."""
    with an.trace(name) as trace:
        for index, step in enumerate(STEPS):
            with an.span(step, type="llm"):
                an.record_usage(
                    model=model,
                    input_tokens=100 * scale + index,
                    output_tokens=10 * scale + index,
                )
    return trace


def by_name(trace: an.Trace) -> dict[str, SpanNode]:
    nodes = {node.name: node for node in trace.tree.nodes}
    assert len(nodes) == len(trace.tree.nodes)  # the names are unique in these traces
    return nodes


def figures(node: SpanNode) -> dict[str, Any]:
    return {
        "cost": node.subtotal.cost,
        "tokens": node.subtotal.total_tokens,
        "duration_ms": node.duration_ms,
        "calls": node.subtotal.model_calls,
    }


def row_of(frame: pd.DataFrame, path: str) -> pd.Series:
    rows = frame[frame[("span", "path")] == path]
    assert len(rows) == 1, (path, frame[("span", "path")].tolist())
    return rows.iloc[0]


def test_two_runs_of_a_chain_compare_row_by_row_with_the_right_deltas() -> None:
    first, second = chain("gpt-4o"), chain("gpt-4o-mini", scale=3)
    frame = an.compare(first, second).to_dataframe()
    assert frame[("span", "path")].tolist() == [
        "chain",
        "chain/retrieve[0]",
        "chain/generate[0]",
        "chain/grade[0]",
    ]
    assert frame[("span", "depth")].tolist() == [0, 1, 1, 1]
    a_nodes, b_nodes = by_name(first), by_name(second)
    for name in ("chain", *STEPS):
        row = row_of(frame, "chain" if name == "chain" else f"chain/{name}[0]")
        a, b = figures(a_nodes[name]), figures(b_nodes[name])
        assert a["cost"] is not None and b["cost"] is not None
        assert a["cost"] != b["cost"]  # the models are priced differently
        assert row[("delta", "cost")] == float(b["cost"] - a["cost"])
        assert row[("delta", "tokens")] == b["tokens"] - a["tokens"]
        assert row[("delta", "calls")] == b["calls"] - a["calls"]
        assert row[("delta", "duration_ms")] == pytest.approx(b["duration_ms"] - a["duration_ms"])
        for label, side in (("0: chain", a), ("1: chain", b)):
            assert row[(label, "cost")] == float(side["cost"])
            assert row[(label, "tokens")] == side["tokens"]
            assert row[(label, "calls")] == side["calls"]
    assert str(frame[("delta", "tokens")].dtype) == "Int64"
    assert str(frame[("delta", "cost")].dtype) == "Float64"


def test_trace_names_label_the_column_groups() -> None:
    frame = an.compare(chain("gpt-4o", name="a"), chain("gpt-4o", name="b")).to_dataframe()
    assert {"a", "b", "delta", "span"} <= set(frame.columns.get_level_values(0))


def test_twenty_runs_of_one_shape_give_min_median_max_per_node() -> None:
    runs = [
        chain("gpt-4o" if index % 3 else "gpt-4o-mini", scale=1 + index % 7) for index in range(20)
    ]
    frame = an.compare(*runs).to_dataframe()
    assert "delta" not in frame.columns.get_level_values(0)
    assert "0: chain" not in frame.columns.get_level_values(0)  # per-trace columns: opt-in
    assert frame[("span", "runs")].tolist() == [20] * 4
    every = [by_name(run) for run in runs]
    for name in ("chain", *STEPS):
        row = row_of(frame, "chain" if name == "chain" else f"chain/{name}[0]")
        for figure in ("cost", "tokens", "duration_ms", "calls"):
            values = [figures(nodes[name])[figure] for nodes in every]
            floats = [float(value) for value in values]
            assert row[("min", figure)] == float(min(values)), figure
            assert row[("max", figure)] == float(max(values)), figure
            assert row[("median", figure)] == pytest.approx(statistics.median(floats)), figure
    wide = an.compare(*runs).to_dataframe(per_trace=True)
    last = [figures(node)["tokens"] for node in runs[19].tree.nodes]
    assert wide[("19: chain", "tokens")].tolist() == last


def test_twenty_runs_in_a_kernel_give_min_median_max_per_node(tmp_path: Path) -> None:
    """A loop over 20 dataset rows, one trace each, against the stand-in in a real kernel:
    each node's min / median / max are those of the 20 runs' own subtotals."""
    with started(Kernel, tmp_path, KERNEL_SETUP) as kernel:
        kernel.run(
            "runs = []\n"
            "for index in range(20):\n"
            '    with an.trace("chain") as run:\n'
            '        chain("gpt-4o" if index % 3 else "gpt-4o-mini")\n'
            "    runs.append(run)\n"
            "frame = an.compare(*runs).to_dataframe()"
        )
        paths = kernel.value('frame[("span", "path")].tolist()')
        spread = {
            (kind, figure): kernel.value(f'frame[("{kind}", "{figure}")].astype(object).tolist()')
            for kind in ("min", "median", "max")
            for figure in ("cost", "tokens", "calls")
        }
        counts = kernel.value('frame[("span", "runs")].tolist()')
        every = kernel.value("[figures(run) for run in runs]")
    assert len(paths) == 7 and counts == [20] * 7
    keys = list(every[0])
    assert all(list(run) == keys for run in every)  # one shape
    for row, key in enumerate(keys):
        costs = [Decimal(run[key][0]) for run in every]
        tokens = [run[key][1] for run in every]
        calls = [run[key][2] for run in every]
        assert len(set(costs)) == 2  # two models: the spread is not a constant
        for kind, pick in (("min", min), ("median", statistics.median), ("max", max)):
            assert spread[(kind, "cost")][row] == pytest.approx(float(pick(costs))), (kind, key)
            assert spread[(kind, "tokens")][row] == pick(tokens), (kind, key)
            assert spread[(kind, "calls")][row] == pick(calls), (kind, key)


def grader(counts: tuple[int, ...], extra: bool = False) -> an.Trace:
    """Two steps, each calling `grade` several times (tokens tell the calls apart)."""
    with an.trace("eval") as trace:
        for step, count in enumerate(counts):
            with an.span(f"step{step}"):
                for call in range(count):
                    with an.span("grade", type="llm"):
                        an.record_usage(
                            model="gpt-4o", input_tokens=1000 * step + call + 1, output_tokens=0
                        )
        if extra:
            with an.span("retry", type="llm"):
                an.record_usage(model="gpt-4o", input_tokens=7, output_tokens=0)
    return trace


def test_repeated_siblings_align_by_ordinal_and_a_span_in_one_run_only_is_na() -> None:
    frame = an.compare(grader((3, 2)), grader((4, 2), extra=True)).to_dataframe()
    a, b = "0: eval", "1: eval"
    for step, count in enumerate((3, 2)):
        for call in range(count):
            row = row_of(frame, f"eval/step{step}[0]/grade[{call}]")
            assert row[(a, "tokens")] == row[(b, "tokens")] == 1000 * step + call + 1
            assert row[("delta", "tokens")] == 0
    fourth = row_of(frame, "eval/step0[0]/grade[3]")
    assert pd.isna(fourth[(a, "tokens")]) and pd.isna(fourth[(a, "cost")])
    assert fourth[(b, "tokens")] == 4
    assert pd.isna(fourth[("delta", "tokens")]) and pd.isna(fourth[("delta", "cost")])
    retry = row_of(frame, "eval/retry[0]")
    assert pd.isna(retry[(a, "calls")]) and retry[(b, "calls")] == 1
    # one tree: the extra grade sits under its step, after the grades both runs have
    paths = frame[("span", "path")].tolist()
    assert paths.index("eval/step0[0]/grade[3]") == paths.index("eval/step0[0]/grade[2]") + 1
    assert paths.index("eval/step0[0]/grade[3]") < paths.index("eval/step1[0]")
    assert len(paths) == 1 + 2 + 4 + 2 + 1


def test_unpriced_stays_distinct_from_zero() -> None:
    priced, unpriced = chain("gpt-4o"), chain("no-such-model-anywhere")
    frame = an.compare(priced, unpriced).to_dataframe()
    root = row_of(frame, "chain")
    assert pd.isna(root[("1: chain", "cost")])
    assert root[("1: chain", "unpriced")] == 3
    assert root[("0: chain", "unpriced")] == 0
    assert pd.isna(root[("delta", "cost")])
    assert root[("delta", "tokens")] == 0  # the tokens are still known


def test_a_trace_loaded_from_a_file_compares_with_todays(tmp_path: Path) -> None:
    yesterday, today = chain("gpt-4o"), chain("gpt-4o-mini")
    path = tmp_path / "yesterday.json"
    yesterday.save(path)
    loaded = an.load(path)
    frame = an.compare(loaded, today).to_dataframe()
    direct = an.compare(yesterday, today).to_dataframe()
    for figure in ("cost", "tokens", "calls", "duration_ms"):
        assert frame[("delta", figure)].tolist() == pytest.approx(
            direct[("delta", figure)].tolist()
        ), figure
    same = an.compare(yesterday, loaded).to_dataframe()
    assert same[("delta", "tokens")].tolist() == [0] * 4
    assert same[("delta", "cost")].tolist() == [Decimal(0)] * 4


def test_bad_input_is_refused_with_a_clear_message() -> None:
    run = chain("gpt-4o")
    with pytest.raises(TypeError, match=r"argument 1 is a str"):
        an.compare(run, "run")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match=r"unpack it, an.compare\(\*traces\)"):
        an.compare([run, run])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 2 traces"):
        an.compare(run)
    with pytest.raises(ValueError, match="got 0"):
        an.compare()


class Cells(HTMLParser):
    """The table's rows: each a list of (text, classes) cells, header rows included."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: list[list[tuple[str, set[str]]]] = []
        self.cell: list[str] | None = None
        self.classes: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th"):
            self.cell = []
            self.classes = set((dict(attrs).get("class") or "").split())

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self.cell is not None:
            self.rows[-1].append(("".join(self.cell), self.classes))
            self.cell = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.cell.append(data)


def table(comparison: an.Comparison) -> list[list[tuple[str, set[str]]]]:
    parser = Cells()
    parser.feed(comparison._repr_html_())
    return parser.rows


def test_the_html_is_one_tree_with_a_group_per_trace_and_the_biggest_changes_marked() -> None:
    def run(big: int, name: str) -> an.Trace:
        with an.trace(name) as trace:
            for step, tokens in (("plan", 10), ("<script>alert(1)</script>", big), ("end", 5)):
                with an.span(step, type="llm"):
                    an.record_usage(model="gpt-4o", input_tokens=tokens, output_tokens=0)
            if big > 100:
                with an.span("only-in-b", type="tool"):
                    pass
        return trace

    comparison = an.compare(run(50, "a<b>"), run(5000, "b"))
    html = comparison._repr_html_()
    assert "<script>" not in html and "&lt;script&gt;" in html
    rows = table(comparison)
    groups = [text for text, _ in rows[0]][1:]
    assert groups == ["a<b>", "b", "delta"]  # escaped in the markup, the text once parsed
    names = [row[0][0] for row in rows[2:]]
    assert names == ["a<b>", "plan", "<script>alert(1)</script>", "end", "only-in-b"]
    heads = [text for text, _ in rows[1]]
    tokens_delta = len(heads) - 4 + heads[-4:].index("tokens")
    script = rows[2 + 2]
    assert script[tokens_delta][0] == "+4,950"
    assert {"an-cmp-top", "an-cmp-up"} <= script[tokens_delta][1]
    assert "an-cmp-top" not in rows[2 + 1][tokens_delta][1]  # "plan" did not change
    only = rows[2 + 4]
    assert only[heads.index("calls")][0] == "—"  # absent from the first trace
    assert only[tokens_delta][0] == "—"


def test_the_html_of_many_runs_shows_min_median_max() -> None:
    runs = [chain("gpt-4o", scale=scale) for scale in (1, 2, 9)]
    rows = table(an.compare(*runs))
    assert [text for text, _ in rows[0]][1:] == ["min", "median", "max"]
    root = rows[2]
    heads = [text for text, _ in rows[1]]
    tokens = [index for index, head in enumerate(heads) if head == "tokens"]
    totals = sorted(run.tree.root.subtotal.total_tokens or 0 for run in runs)
    assert [root[index][0] for index in tokens] == [f"{total:,}" for total in totals]


def test_cost_deltas_are_exact_whatever_the_notebook_decimal_context() -> None:
    first, second = chain("gpt-4o"), chain("gpt-4o-mini", scale=3)
    exact = an.compare(first, second).to_dataframe()[("delta", "cost")].tolist()
    with localcontext() as context:
        context.prec = 2
        coarse = an.compare(first, second)
        assert coarse.to_dataframe()[("delta", "cost")].tolist() == exact
        html = coarse._repr_html_()
    # durations and tokens aside, the costs shown are the exact ones too
    assert html == an.compare(first, second)._repr_html_()


def test_the_html_shows_the_first_spans_and_says_how_many_more() -> None:
    def wide(calls: int) -> an.Trace:
        with an.trace("wide") as trace:
            for _ in range(calls):
                with an.span("call", type="tool"):
                    pass
        return trace

    comparison = an.compare(wide(MAX_HTML_ROWS + 20), wide(3))
    assert len(comparison.to_dataframe()) == MAX_HTML_ROWS + 21
    rows = table(comparison)
    assert len(rows) == 2 + MAX_HTML_ROWS
    assert f"{21:,} more spans" in comparison._repr_html_()


def test_calls_named_after_their_model_align_across_models() -> None:
    def run(model: str) -> an.Trace:
        with an.trace("chat") as trace, an.span("step"):
            for _ in range(2):
                with an.span(f"chat {model}", type="llm"):
                    an.record_usage(model=model, input_tokens=10, output_tokens=1)
        return trace

    frame = an.compare(run("gpt-4o"), run("gpt-4o-mini")).to_dataframe()
    assert frame[("span", "path")].tolist() == [
        "chat",
        "chat/step[0]",
        "chat/step[0]/chat {model}[0]",
        "chat/step[0]/chat {model}[1]",
    ]
    assert frame[("span", "name")].tolist()[2:] == ["chat gpt-4o", "chat gpt-4o"]
    assert frame[("delta", "calls")].tolist() == [0, 0, 0, 0]
    assert frame[("delta", "cost")].notna().all()


# -- in a real kernel, through the stand-in ---------------------------------------------------
KERNEL_SETUP = """
import os, openai
import agenta_notebook as an
from agenta_notebook import demo
an.instrument_openai()
server = demo.start()
os.environ["OPENAI_API_KEY"] = "sk-dummy-for-the-stand-in"
client = openai.OpenAI(base_url=server.base_url, max_retries=0, timeout=10)

def chain(model):
    for step in ("retrieve", "generate", "grade"):
        with an.span(step):
            client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": f"{step} a sailing boat"}])

def figures(trace):
    return {n.name + "/" + (n.parent.name if n.parent else ""): [
        None if n.subtotal.cost is None else str(n.subtotal.cost),
        n.subtotal.total_tokens, n.subtotal.model_calls] for n in trace.tree.nodes}
"""


def test_two_traced_cells_compare_in_a_kernel(tmp_path: Path) -> None:
    with started(Kernel, tmp_path, KERNEL_SETUP) as kernel:
        kernel.run('%%agenta_trace chain --quiet -o a\nchain("gpt-4o")')
        kernel.run('%%agenta_trace chain --quiet -o b\nchain("gpt-4o-mini")')
        cell = kernel.run("comparison = an.compare(a, b)\ncomparison")
        shown = [o for o in cell.outputs if o.output_type == "display_data"]
        assert "delta" in shown[0]["data"]["text/html"]
        by_magic = kernel.run("%agenta_compare a b")  # the same table, from the magic
        magic_shown = [o for o in by_magic.outputs if o.output_type == "display_data"]
        assert magic_shown[0]["data"]["text/html"] == shown[0]["data"]["text/html"]
        for line, message in (
            ("%agenta_compare a", "at least two"),
            ("%agenta_compare a nothing_here", "NameError"),
            ("%agenta_compare a 42", "is a int, not a trace"),
        ):
            failed = kernel.run(line, fails=True)
            text = "".join(o.get("text", "") for o in failed.outputs if o.output_type == "stream")
            assert text.startswith("UsageError: %agenta_compare: "), (line, text)
            assert message in text, (line, text)
        kernel.run("frame = comparison.to_dataframe()")
        paths = kernel.value('frame[("span", "path")].tolist()')
        deltas = {
            figure: kernel.value(f'frame[("delta", "{figure}")].astype(object).tolist()')
            for figure in ("cost", "tokens", "calls")
        }
        a, b = kernel.value("figures(a)"), kernel.value("figures(b)")
    assert paths[0] == "chain" and len(paths) == len(a) == len(b) == 7
    assert [path.split("/")[-1] for path in paths[1::2]] == [
        "retrieve[0]",
        "generate[0]",
        "grade[0]",
    ]
    keys = list(a)
    assert list(b) == keys  # the same shape: one ChatCompletion under each step
    for row, key in enumerate(keys):
        cost_a, tokens_a, calls_a = a[key]
        cost_b, tokens_b, calls_b = b[key]
        if cost_a is None or cost_b is None:
            assert deltas["cost"][row] is None
        else:
            assert cost_a != cost_b
            assert deltas["cost"][row] == float(Decimal(cost_b) - Decimal(cost_a))
        assert deltas["tokens"][row] == tokens_b - tokens_a
        assert deltas["calls"][row] == calls_b - calls_a == 0


def test_a_span_with_no_call_in_one_run_has_a_known_zero_not_an_unknown() -> None:
    """A step that made no model call in run A (cost $0, 0 tokens) and one in run B: its
    deltas are the call's cost and tokens, not `<NA>`; a spread counts the zero too."""

    def run(calls: int) -> an.Trace:
        with an.trace("run") as result, an.span("retrieve"):
            for _ in range(calls):
                with an.span("llm", type="llm"):
                    an.record_usage(model="gpt-4o", input_tokens=100, output_tokens=10)
        return result

    a, b = run(0), run(1)
    frame = an.compare(a, b).to_dataframe()
    row = frame[frame[("span", "path")] == "run/retrieve[0]"].iloc[0]
    step_b = b.find("retrieve").subtotal
    assert step_b.cost is not None and step_b.total_tokens is not None
    assert row[("delta", "cost")] == float(step_b.cost)
    assert row[("delta", "tokens")] == step_b.total_tokens
    spread = an.compare(a, b, run(0)).to_dataframe()
    row = spread[spread[("span", "path")] == "run/retrieve[0]"].iloc[0]
    assert row[("min", "cost")] == 0 and row[("max", "cost")] == float(step_b.cost)
    assert row[("max", "unpriced")] == 0


def test_medians_of_counts_show_as_whole_numbers_in_the_html() -> None:
    """Four runs: a median is the mean of the two middle values; of counts (calls, tokens)
    it shows as a whole number ("1", not "1.0"), or with its one decimal when halfway."""

    def run(tokens: int) -> an.Trace:
        with an.trace("loop") as trace:
            for step in ("ask", "check"):
                with an.span(step, type="llm"):
                    an.record_usage(
                        model="gpt-4o", input_tokens=tokens * (2 if step == "ask" else 1)
                    )
        return trace

    rows = table(an.compare(*(run(tokens) for tokens in (10, 11, 12, 13))))
    heads = [text for text, _ in rows[1]]
    assert [text for text, _ in rows[0]][1:] == ["min", "median", "max"]
    width = (len(heads) - 1) // 3
    median = {head: 1 + width + index for index, head in enumerate(heads[1 : 1 + width])}
    by_name = {row[0][0]: row for row in rows[2:]}
    assert by_name["loop"][median["calls"]][0] == "2"
    assert by_name["ask"][median["calls"]][0] == "1"
    assert by_name["check"][median["calls"]][0] == "1"
    assert by_name["ask"][median["tokens"]][0] == "23"  # (22 + 24) / 2
    assert by_name["check"][median["tokens"]][0] == "11.5"  # (11 + 12) / 2
    assert by_name["loop"][median["tokens"]][0] == "34.5"  # (33 + 36) / 2


# -- the widget ------------------------------------------------------------------------------
def _number(text: str) -> float:
    """A count as the widget shows it ("+4,950", "-12", "11.5") as a number."""
    return float(text.replace(",", "").replace("+", ""))


def test_the_widget_shows_the_rows_columns_and_deltas_of_the_dataframe() -> None:
    from agenta_notebook.views.compare_view import ComparisonView

    comparison = an.compare(grader((3, 2)), grader((4, 1), extra=True))
    frame = comparison.to_dataframe()
    view = ComparisonView(comparison.table())
    try:
        view.expand_to_depth(100)
        lines = [line for line, _ in view.visible]
        assert [line.row for line in lines] == list(range(len(frame)))
        shown_names = [text.lstrip("\u2003▸▾ ").split(" #")[0] for _, text in view.visible]
        assert shown_names == frame[("span", "name")].tolist()
        groups = [group for group, _ in frame.columns if group != "span"]
        assert [group for group, _ in view.columns][::4] == list(dict.fromkeys(groups))
        assert all(column in frame.columns for column in view.columns)
        for line in lines:
            cells = view.cells(line.row)
            assert len(cells) == len(view.columns)
            for (group, figure), (text, _) in zip(view.columns, cells, strict=True):
                value = frame.iloc[line.row][(group, figure)]
                if figure in ("tokens", "calls"):
                    assert (text == "—") == pd.isna(value), (group, figure, text)
                    if text != "—":
                        assert _number(text) == value, (group, figure, text)
                elif figure == "cost":
                    table_group = next(g for g in view.table.groups if g.label == group)
                    known = table_group.values["cost"][line.row]
                    if known is None:
                        assert text == "—"
                    else:
                        assert float(known) == value and text != "—"
        # the delta of a grade only the second run has is unknown, as in the frame
        fourth = frame[("span", "path")].tolist().index("eval/step0[0]/grade[3]")
        delta_tokens = view.columns.index(("delta", "tokens"))
        assert view.cells(fourth)[delta_tokens][0] == "—"
    finally:
        view.close()


def test_the_widget_highlights_the_same_biggest_changes_as_the_html() -> None:
    from agenta_notebook.views.compare_view import ComparisonView

    comparison = an.compare(grader((3, 2)), grader((4, 5), extra=True))
    rows = table(comparison)[2:]
    view = ComparisonView(comparison.table())
    try:
        tops = 0
        for row, html_row in enumerate(rows):
            widget_classes = [set(classes) for _, classes in view.cells(row)]
            assert widget_classes == [classes for _, classes in html_row[1:]], row
            tops += sum("an-cmp-top" in classes for classes in widget_classes)
        assert tops >= 3
    finally:
        view.close()


def test_the_widget_of_many_runs_shows_the_spread_and_how_many_runs_have_each_span() -> None:
    from agenta_notebook.views.compare_view import ComparisonView

    runs = [grader((2, 1), extra=index == 0) for index in range(3)]
    runs.append(grader((3, 1)))
    comparison = an.compare(*runs)
    frame = comparison.to_dataframe()
    view = ComparisonView(comparison.table())
    try:
        view.expand_to_depth(100)
        assert view.columns[0] == ("span", "runs")
        assert [group for group, _ in view.columns[1:]][::4] == ["min", "median", "max"]
        for line, _ in view.visible:
            cells = view.cells(line.row)
            assert int(cells[0][0]) == frame.iloc[line.row][("span", "runs")]
            for (group, figure), (text, _) in zip(view.columns[1:], cells[1:], strict=True):
                if figure in ("tokens", "calls"):
                    assert _number(text) == pytest.approx(frame.iloc[line.row][(group, figure)])
        retry = frame[("span", "path")].tolist().index("eval/retry[0]")
        assert view.cells(retry)[0][0] == "1"
        grade_3 = frame[("span", "path")].tolist().index("eval/step0[0]/grade[2]")
        assert view.cells(grade_3)[0][0] == "1"
    finally:
        view.close()


def test_the_widget_opens_a_few_levels_pages_wide_parents_and_toggles_on_click() -> None:
    from agenta_notebook.views.compare_view import ComparisonView
    from agenta_notebook.views.state import PAGE_SIZE

    def wide(calls: int) -> an.Trace:
        with an.trace("wide") as trace:
            with an.span("small step"), an.span("inner"), an.span("deeper"):
                pass
            with an.span("loop"):
                for call in range(calls):
                    with an.span("call", type="llm"):
                        an.record_usage(model="gpt-4o", input_tokens=call + 1, output_tokens=1)
        return trace

    comparison = an.compare(wide(PAGE_SIZE + 50), wide(PAGE_SIZE + 60))
    view = ComparisonView(comparison.table())
    try:
        texts = [text.strip("\u2003 ") for _, text in view.visible]
        # the whole tree would be over the automatic budget: the first level only
        assert texts == ["▾ wide", "▸ small step", "▸ loop"]
        view.click_line(2)  # expand "loop": a page of its calls and a "show more" line
        lines = [line for line, _ in view.visible]
        assert len(lines) == 3 + PAGE_SIZE + 1
        assert lines[-1].kind == "more" and lines[-1].remaining == 60
        assert "show 60 more (60 not shown)" in view.visible[-1][1]
        view.click_line(len(lines) - 1)
        assert len(view.visible) == 3 + PAGE_SIZE + 60
        assert view.visible[2][1].strip("\u2003 ") == "▾ loop"
        view.click_line(2)  # collapse it again
        assert [text.strip("\u2003 ") for _, text in view.visible][2] == "▸ loop"
        assert len(view.visible) == 3
        assert "3 of" in view.note.value and "aligned spans shown" in view.note.value
    finally:
        view.close()


def test_two_ten_thousand_span_traces_draw_only_the_visible_rows() -> None:
    from agenta_notebook.views.compare_view import ComparisonView
    from agenta_notebook.views.state import MAX_ROWS

    def big(scale: int) -> an.Trace:
        with an.trace("big") as trace:
            for step in range(100):
                with an.span(f"step {step}"):
                    for _ in range(99):
                        with an.span("call", type="llm"):
                            an.record_usage(model="gpt-4o", input_tokens=scale, output_tokens=1)
        return trace

    comparison = an.compare(big(1), big(2))
    assert len(comparison.names) == 1 + 100 * 100
    view = ComparisonView(comparison.table())
    try:
        assert len(view.visible) == 101  # the root and its steps
        view.expand_to_depth(100)
        assert len(view.visible) == MAX_ROWS and view.state.truncated
        assert view.figures.value.count('class="agn-line"') == MAX_ROWS
        assert f"stopped at {MAX_ROWS:,} rows" in view.note.value
        assert view.widget_count == 6  # however many rows: a constant number of widgets
    finally:
        view.close()
    assert view.closed and view.widget_count == 0


def test_outside_a_kernel_a_comparison_shows_its_static_html_and_text() -> None:
    comparison = an.compare(chain("gpt-4o"), chain("gpt-4o-mini", scale=3))
    bundle = comparison._repr_mimebundle_()
    assert set(bundle) == {"text/plain", "text/html"}
    assert bundle["text/html"] == comparison._repr_html_()
    lines = bundle["text/plain"].splitlines()
    assert lines[0] == "Comparison of 2 traces, 4 aligned spans"
    assert lines[-1].startswith("  delta: cost -$") and "tokens +660" in lines[-1]


WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def test_in_a_kernel_the_magic_and_display_show_the_widget_with_its_static_twin(
    tmp_path: Path,
) -> None:
    with started(Kernel, tmp_path, KERNEL_SETUP) as kernel:
        kernel.run('%%agenta_trace chain --quiet -o a\nchain("gpt-4o")')
        kernel.run('%%agenta_trace chain --quiet -o b\nchain("gpt-4o-mini")')
        by_magic = kernel.run("%agenta_compare a b")
        displayed = kernel.run("display(an.compare(a, b))")
        ending = kernel.run("an.compare(a, b, a)")
        expected_html = kernel.value("an.compare(a, b)._repr_html_()")
        roots = (
            "sorted(type(w).__name__ for w in __import__('ipywidgets').widgets.widget"
            "._instances.values() if 'agn-cmp-root' in getattr(w, '_dom_classes', ()))"
        )
        models = kernel.value(roots)
        bundles = []
        for shown_cell in (by_magic, displayed, ending):
            shown = [o for o in shown_cell.outputs if o.output_type == "display_data"]
            assert len(shown) == 1, shown_cell.outputs
            bundles.append(dict(shown[0]["data"]))  # a copy: the output is updated below
        # Shown again and again, only the newest few stay open; unloading closes them.
        many = kernel.run("for _ in range(20):\n    display(an.compare(a, b))")
        after_many = kernel.value(roots)
        # The closed ones' outputs (updated in place, by display id) keep text and HTML.
        for evicted in (by_magic.outputs[0], displayed.outputs[0], many.outputs[0]):
            assert set(evicted["data"]) == {"text/plain", "text/html"}, evicted["data"].keys()
        assert WIDGET_VIEW in many.outputs[-1]["data"]
        kernel.run("%unload_ext agenta_notebook")
        after_unload = kernel.value(roots)
        assert all(WIDGET_VIEW not in output["data"] for output in many.outputs)
    for data in bundles:
        assert set(data) == {WIDGET_VIEW, "text/html", "text/plain"}
        assert data[WIDGET_VIEW]["model_id"]
    assert len({data[WIDGET_VIEW]["model_id"] for data in bundles}) == 3  # one view each
    assert bundles[0]["text/html"] == bundles[1]["text/html"] == expected_html
    assert bundles[0]["text/plain"].startswith("Comparison of 2 traces, 7 aligned spans")
    assert "delta: cost " in bundles[0]["text/plain"]
    assert "median: cost " in bundles[2]["text/plain"]
    assert models == ["VBox", "VBox", "VBox"]  # the three shown, each its own
    assert after_many == ["VBox"] * MAX_COMPARISON_VIEWS
    assert after_unload == []


def test_the_html_of_many_runs_says_which_spans_only_some_runs_have() -> None:
    runs = [grader((2, 1), extra=index == 0) for index in range(3)]
    rows = table(an.compare(*runs))
    names = [row[0][0] for row in rows[2:]]
    assert names[-1] == "retry (in 1 of 3 runs)"
    assert names[:2] == ["eval", "step0"]  # every run has them: no note


# -- the widget's models: shared layout and styles, all closed, a bounded number open -------


def _open_models() -> dict[str, Any]:
    from ipywidgets.widgets.widget import _instances

    return dict(_instances)


def test_closing_a_comparison_view_closes_every_model_it_made() -> None:
    from agenta_notebook.views.compare_view import ComparisonView

    table_ = an.compare(chain("gpt-4o"), chain("gpt-4o-mini")).table()
    ComparisonView(table_).close()  # the layout and styles every view shares exist now
    before = _open_models()
    view = ComparisonView(table_)
    made = {key: model for key, model in _open_models().items() if key not in before}
    assert len(made) == view.widget_count == 6  # the six widgets, no layout or style of their own
    view.close()
    assert view.widget_count == 0
    assert not [model for model in made.values() if model.comm is not None]
    assert _open_models().keys() == before.keys()


def test_a_comparison_displayed_again_and_again_keeps_a_bounded_number_of_views_open(
    fresh_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agenta_notebook.views import compare_view

    monkeypatch.setattr(compare_view, "_in_kernel", lambda: True)
    comparison = an.compare(chain("gpt-4o"), chain("gpt-4o-mini"))
    comparison._repr_mimebundle_()  # the shared layout and styles exist now
    before = len(_open_models())
    shown = [comparison._repr_mimebundle_() for _ in range(3 * MAX_COMPARISON_VIEWS)]
    assert all(WIDGET_VIEW in data for data in shown)
    # the newest views stay open; the oldest (and every model they made) are closed
    assert len(_open_models()) - before == 6 * (MAX_COMPARISON_VIEWS - 1)
    open_ids = {key for key, _ in _open_models().items()}
    newest = [data[WIDGET_VIEW]["model_id"] for data in shown[-MAX_COMPARISON_VIEWS:]]
    assert set(newest) <= open_ids
    assert not {data[WIDGET_VIEW]["model_id"] for data in shown[:-MAX_COMPARISON_VIEWS]} & open_ids
    assert fresh_runtime.views.comparison_count() == MAX_COMPARISON_VIEWS


def test_reset_closes_the_open_comparison_views(
    fresh_runtime: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agenta_notebook.views import compare_view

    monkeypatch.setattr(compare_view, "_in_kernel", lambda: True)
    comparison = an.compare(chain("gpt-4o"), chain("gpt-4o-mini"))
    ids = [comparison._repr_mimebundle_()[WIDGET_VIEW]["model_id"] for _ in range(3)]
    assert set(ids) <= _open_models().keys()
    fresh_runtime.reset()
    assert not set(ids) & _open_models().keys()
    assert fresh_runtime.views.comparison_count() == 0
    assert not [
        model
        for model in _open_models().values()
        if "agn-cmp-root" in getattr(model, "_dom_classes", ())
    ]


# -- "—" is absent or unknown only; a span with no model call is a known zero ---------------


def test_a_span_with_no_call_shows_a_known_zero_in_its_trace_columns_and_absent_shows_a_dash() -> (
    None
):
    from agenta_notebook.views.compare_view import ABSENT, ComparisonView

    def run(extra: bool) -> an.Trace:
        with an.trace("run") as result:
            with an.span("retrieve"):
                pass
            with an.span("llm", type="llm"):
                an.record_usage(model="gpt-4o", input_tokens=100, output_tokens=10)
            if extra:
                with an.span("rerank"):
                    pass
        return result

    comparison = an.compare(run(False), run(True))
    frame = comparison.to_dataframe()
    retrieve = frame[("span", "path")].tolist().index("run/retrieve[0]")
    rerank = frame[("span", "path")].tolist().index("run/rerank[0]")
    view = ComparisonView(comparison.table())
    try:
        view.expand_to_depth(9)
        cells = dict(zip(view.columns, view.cells(retrieve), strict=True))
        absent = dict(zip(view.columns, view.cells(rerank), strict=True))
    finally:
        view.close()
    rows = table(comparison)
    heads = [text for text, _ in rows[1]][1:]
    groups = [label for label in ("0: run", "1: run", "delta") for _ in range(4)]
    html = dict(zip(zip(groups, heads, strict=True), rows[2 + retrieve][1:], strict=True))
    html_absent = dict(zip(zip(groups, heads, strict=True), rows[2 + rerank][1:], strict=True))
    for label in ("0: run", "1: run"):
        # the widget and the HTML: $0 and 0, as the delta is (a known zero, not unknown)
        assert cells[(label, "cost")][0] == html[(label, "cost")][0] == "$0"
        assert cells[(label, "tokens")][0] == html[(label, "tokens")][0] == "0"
        assert cells[(label, "calls")][0] == "0"
        assert frame.iloc[retrieve][(label, "cost")] == 0
        assert frame.iloc[retrieve][(label, "tokens")] == 0
    assert cells[("delta", "cost")][0] == "$0" and cells[("delta", "tokens")][0] == "0"
    # absent from the first run: a grey dash there, and in the delta
    for figure in ("cost", "tokens", "calls"):
        assert absent[("0: run", figure)] == ("—", (ABSENT,))
        assert html_absent[("0: run", figure)] == ("—", {ABSENT})
        assert absent[("delta", figure)][0] == "—"
        assert pd.isna(frame.iloc[rerank][("0: run", figure)])
    assert absent[("1: run", "cost")][0] == "$0"


# -- three or more runs: a run with unpriced calls counts its known part, a lower bound ------


def test_a_run_with_only_unpriced_calls_counts_in_the_cost_spread_as_its_lower_bound() -> None:
    def run(tokens: int, model: str) -> an.Trace:
        with an.trace("loop") as result, an.span("ask", type="llm"):
            an.record_usage(model=model, input_tokens=tokens, output_tokens=1)
        return result

    runs = [run(10, "my-own-llm"), run(20, "gpt-4o"), run(30, "gpt-4o")]
    comparison = an.compare(*runs)
    frame = comparison.to_dataframe()
    # computed here from each run's own subtotal: the known dollars (none: 0) of every run
    known = [run.tree.root.subtotal.cost or Decimal(0) for run in runs]
    assert runs[0].tree.root.subtotal.cost is None and known[1] > 0
    root = frame.iloc[0]
    assert root[("span", "runs")] == 3
    assert root[("min", "cost")] == float(min(known)) == 0
    assert root[("median", "cost")] == float(statistics.median(known))
    assert root[("max", "cost")] == float(max(known))
    assert root[("max", "unpriced")] == 1  # so the spread is one of lower bounds
    rows = table(comparison)
    heads = [text for text, _ in rows[1]]
    costs = [rows[2][index][0] for index, head in enumerate(heads) if head == "cost"]
    assert costs[0] == "$0 + 1 unpriced"
    assert all(text.endswith(" + 1 unpriced") for text in costs)
    table_ = comparison.table()
    spread = {group.label: group.values["cost"][0] for group in table_.groups}
    assert spread == {
        "min": min(known),
        "median": statistics.median(known),
        "max": max(known),
    }


def _scoped_widths(view: Any) -> dict[tuple[str, str], int]:
    """The widths (px) the view's header gives its columns: (group index or "runs", name)."""
    scope = next(c for c in view.widget._dom_classes if c.startswith("agn-cmp-v"))
    rule = rf"\.agn-cmp-root\.{scope} (?:\.agn-cmp-g(\d) )?\.agn-cmp-([a-z-]+){{width:(\d+)px}}"
    return {
        (group or "runs", name): int(width)
        for group, name, width in re.findall(rule, view.header.value)
    }


def test_figure_columns_widen_for_figures_that_would_not_fit_and_never_narrow() -> None:
    from agenta_notebook.views.compare_view import (
        CELL_PADDING,
        COLUMNS,
        TOP,
        UP,
        ComparisonView,
        column_widths,
        text_width,
    )

    defaults = {name: width for name, _, width in COLUMNS}
    # Upper bounds of what Chromium measured, in JupyterLab's font, for these texts in
    # bold (a highlighted cell) with the cell's padding; narrow characters count less.
    measured = {"+0.38 ms": 77, "+59m 59s": 81, "+99h 59m": 82, "+1,234,567": 92}
    measured |= {"+123,456": 78, "-$0.000123": 91, "+$12.3456": 87}
    for text, width in measured.items():
        assert text_width(text) >= width, text
    assert text_width("1,1") < text_width("111") < text_width("1m1")
    assert text_width("") == CELL_PADDING
    assert text_width("+0.38 ms", bold=False) < text_width("+0.38 ms")
    # Short figures keep the default widths; a long one widens only its own column, the
    # more when it is highlighted (in bold); never below `at_least`.
    short: dict[str, list[tuple[str, tuple[str, ...]]]] = {name: [("1", ())] for name in defaults}
    assert column_widths(short) == defaults
    widths = column_widths({**short, "tokens": [("+12,345,678", ())]})
    assert widths == {**defaults, "tokens": text_width("+12,345,678", bold=False)}
    assert widths["tokens"] > defaults["tokens"]
    bold = column_widths({**short, "tokens": [("+12,345,678", (UP, TOP))]})
    assert bold["tokens"] == text_width("+12,345,678") > widths["tokens"]
    assert column_widths(short, at_least={**defaults, "calls": 99})["calls"] == 99

    # Two runs that swap ten million tokens between two spans under a step: the root's
    # and the step's deltas are 0, the spans' are +/- 9,999,999 (highlighted).
    def swapped(first: int, second: int) -> an.Trace:
        with an.trace("swap") as trace, an.span("step"):
            for name, tokens in (("a", first), ("b", second)):
                with an.span(name, type="llm"):
                    an.record_usage(model="gpt-4o", input_tokens=tokens, output_tokens=0)
        return trace

    comparison = an.compare(swapped(10_000_000, 1), swapped(1, 10_000_000))
    view = ComparisonView(comparison.table(), auto_budget=1)
    try:
        assert [text.strip("\u2003 ") for _, text in view.visible] == ["▾ swap", "▸ step"]
        before = _scoped_widths(view)
        assert before[("2", "tokens")] == defaults["tokens"]  # two zero deltas
        assert before[("0", "tokens")] == text_width("10,000,001", bold=False)
        header = view.header.value
        view.click_line(1)  # the spans show: the delta group's tokens column widens
        assert len(view.visible) == 4
        after = _scoped_widths(view)
        assert after[("2", "tokens")] == text_width("+9,999,999") > defaults["tokens"]
        assert after.keys() == before.keys()
        assert all(after[key] >= width for key, width in before.items())  # none narrows
        assert view.header.value != header
        # Every group's label spans its columns (and its left border); the heads and each
        # line of figures put the groups in the same order.
        for index, group in enumerate(view.table.groups):
            width = sum(after[str(index), name.replace("_", "-")] for name in defaults) + 1
            assert f'style="width:{width}px" title="{group.label}"' in view.header.value
        groups = r'class="agn-cmp-group agn-cmp-g(\d)"'
        assert re.findall(groups, view.header.value) == ["0", "1", "2"]
        assert re.findall(groups, view.figures.value) == ["0", "1", "2"] * 4
        # Collapsing hides the spans again but moves no column.
        header = view.header.value
        view.click_line(1)
        assert len(view.visible) == 2
        assert view.header.value == header
    finally:
        view.close()

    # Three or more runs: the "runs" column widens for a count that would not fit.
    table = an.compare(chain("gpt-4o"), chain("gpt-4o"), chain("gpt-4o")).table()
    assert _scoped_widths(ComparisonView(table))[("runs", "runs")] == 46
    table.runs = [12_345] * table.rows
    many = ComparisonView(table)
    try:
        assert _scoped_widths(many)[("runs", "runs")] == text_width("12,345", bold=False) > 46
        assert 'style="width:{}px"></span>'.format(text_width("12,345", bold=False)) in (
            many.header.value
        )
    finally:
        many.close()
