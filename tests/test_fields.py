"""The table of figures (agenta_notebook.core.fields): each figure is declared once, and
every consumer follows the table.

Two kinds of check. First, each consumer against the table: the `Usage` fields, the keys
read and written, the sums, the claim check, the export keys, the DataFrame columns, the
details rows and tooltips, the tree rows, `record_usage` and docs/vocabulary.md say what
the table says, figure by figure, for every figure in it. Second, a copy of the table
with two more figures (`MoreFigures` below): what is derived from a table changes with
it. A figure spelled out by hand again in a consumer fails one or the other.
"""

from __future__ import annotations

import dataclasses
import inspect
import random
import re
from dataclasses import dataclass, field
from decimal import Decimal, localcontext
from pathlib import Path
from typing import Any

import pytest
from conftest import RecordFactory, keys

import agenta_notebook as an
from agenta_notebook.core import fields
from agenta_notebook.core.fields import (
    FIGURE,
    FIGURE_FIELDS,
    FIGURES,
    NO_FIGURES,
    REPORTS_ALL,
    REPORTS_COST,
    REPORTS_TOKENS,
    STATED,
    TOKEN_FIGURES,
    Figure,
    Figures,
    count,
    figure_table,
    implied_bits,
    make_counted,
    make_stated_mask,
    make_sum,
    stated_value,
    sum_figures,
    tokens,
)
from agenta_notebook.core.rollup import SpanWarning, TraceTree, build_tree
from agenta_notebook.core.usage import Usage, figure_attributes, read_usage, usage_attributes
from agenta_notebook.core.vocabulary import USAGE_KEYS, receiver_attributes
from agenta_notebook.io.frame import COLUMNS, figure_columns
from agenta_notebook.live import Trace
from agenta_notebook.views.details import details_html, figures_table_html
from agenta_notebook.views.html import (
    ROW_FIGURES,
    column_heads_html,
    markers,
    row_figures_html,
    static_html,
    tokens_title,
    view_scale,
)

DOCS = Path(__file__).resolve().parent.parent / "docs"


@dataclass(frozen=True, slots=True)
class MoreFigures(Figures):
    """A copy of the table with two more figures: a token count spans state (a part of
    the input) and a count only the roll-up keeps."""

    image_tokens: int | None = field(
        default=None,
        metadata=tokens(
            "image tokens",
            "image",
            keys=("test.image_tokens", "test.images.tokens"),
            export=("gen_ai.usage.image_tokens", "llm.token_count.prompt_details.image"),
            part_of="input_tokens",
        ),
    )
    retries: int = field(default=0, metadata=count("retries", "retries", own_column="retried"))


MORE: tuple[Figure, ...] = figure_table(MoreFigures)
NEW = MORE[len(FIGURES) :]


def tree_of(records: RecordFactory) -> TraceTree:
    return build_tree(records.all)


def distinct_values(table: tuple[Figure, ...], seed: int) -> dict[str, Any]:
    """A value for every figure of `table`, different from figure to figure."""
    chooser = random.Random(seed)
    values: dict[str, Any] = {}
    for figure in table:
        if figure.kind == "money":
            values[figure.name] = Decimal(chooser.randrange(1, 10**6)) / 10**7
        else:
            values[figure.name] = chooser.randrange(1, 10**6)
    return values


# --- the table itself ----------------------------------------------------------------------


def test_the_table_is_read_from_the_declarations_of_figures() -> None:
    assert FIGURE_FIELDS == tuple(f.name for f in dataclasses.fields(Figures))
    assert [figure.name for figure in FIGURES] == list(FIGURE_FIELDS)
    assert dict(FIGURE) == {figure.name: figure for figure in FIGURES}
    for figure in FIGURES:
        declared = Figures.__dataclass_fields__[figure.name]
        assert declared.default == figure.default == (0 if figure.kind == "count" else None)
        assert getattr(NO_FIGURES, figure.name) == figure.default
    # one bit per stated figure, in order; none for the roll-up's own counts
    assert [figure.bit for figure in STATED] == [1 << i for i in range(len(STATED))]
    assert all(figure.bit == 0 for figure in FIGURES if figure not in STATED)
    assert REPORTS_ALL == (1 << len(STATED)) - 1
    assert REPORTS_COST == FIGURE["cost"].bit
    assert REPORTS_TOKENS == sum(f.bit for f in TOKEN_FIGURES if f.part_of is None)
    # stating an input or an output states the total, their sum (rule 5)
    assert implied_bits(FIGURE["input_tokens"]) == (
        FIGURE["input_tokens"].bit | FIGURE["total_tokens"].bit
    )
    assert implied_bits(FIGURE["cost"]) == FIGURE["cost"].bit


def test_figures_stays_a_frozen_slotted_dataclass() -> None:
    figures = Figures(input_tokens=1)
    assert not hasattr(figures, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        figures.input_tokens = 2  # type: ignore[misc]


def test_a_figure_declared_with_the_wrong_type_or_a_missing_reference_is_refused() -> None:
    @dataclass(frozen=True)
    class WrongType:
        cost: int = field(default=0, metadata=fields.money("cost", "cost"))

    with pytest.raises(TypeError, match="cost"):
        figure_table(WrongType)

    @dataclass(frozen=True)
    class WrongPart:
        cached: int | None = field(default=None, metadata=tokens("c", "c", part_of="nothing"))

    with pytest.raises(TypeError, match="cached"):
        figure_table(WrongPart)


def test_a_copy_with_more_figures_extends_the_table() -> None:
    assert MORE[: len(FIGURES)] == FIGURES
    assert [figure.name for figure in NEW] == ["image_tokens", "retries"]
    image, retries = NEW
    assert image.bit == 1 << len(STATED) and retries.bit == 0
    assert (image.own_column, retries.own_column) == ("image_tokens", "retried")
    assert (image.subtotal_column, retries.subtotal_column) == (
        "subtotal_image_tokens",
        "subtotal_retries",
    )


# --- Usage and the keys read and written ------------------------------------------------


def test_usage_declares_every_stated_figure_first_and_in_order() -> None:
    names = [f.name for f in dataclasses.fields(Usage)]
    assert names[: len(STATED)] == [figure.name for figure in STATED]
    for figure in STATED:
        declared = Usage.__dataclass_fields__[figure.name]
        assert declared.type == Figures.__dataclass_fields__[figure.name].type
    # and none of the roll-up's own counts
    assert not {figure.name for figure in FIGURES if not figure.bit} & set(names)


def test_every_key_of_every_stated_figure_is_read_and_the_first_wins() -> None:
    for figure in STATED:
        value: Any = Decimal("0.25") if figure.kind == "money" else 7
        for key in figure.keys:
            usage = read_usage({key: 7 if figure.kind == "tokens" else 0.25})
            assert stated_value(usage, figure) == value, key
            assert usage.reported_fields == implied_bits(figure), key
        everywhere = {key: rank + 1 for rank, key in enumerate(figure.keys)}
        assert getattr(read_usage(everywhere), figure.name) == 1  # the first key present
        bad = read_usage({figure.keys[0]: "abc"})
        assert getattr(bad, figure.name) is None and figure.keys[0] in bad.warnings[0]


def test_usage_attributes_writes_each_figure_under_its_first_key() -> None:
    for figure in STATED:
        value = 0.5 if figure.kind == "money" else 12
        assert usage_attributes(**{figure.name: value}) == {figure.keys[0]: value}
        assert figure_attributes({figure.name: value}) == {figure.keys[0]: value}
    with pytest.raises(TypeError, match="model_calls"):
        usage_attributes(model_calls=1)  # the roll-up counts calls: no span states them


def test_record_usage_takes_every_stated_figure(collector: object) -> None:
    parameters = inspect.signature(an.record_usage).parameters
    assert {figure.name for figure in STATED} <= set(parameters)
    values = distinct_values(STATED, seed=3)
    values["total_tokens"] = values["input_tokens"] + values["output_tokens"]
    with an.trace("record") as trace, an.span("call", type="llm"):
        an.record_usage(model="my-local-llama", **values)
    usage = trace.find("call").usage
    for figure in STATED:
        assert getattr(usage, figure.name) == values[figure.name], figure.name


def test_docs_list_the_keys_of_each_figure_in_the_tables_order() -> None:
    text = (DOCS / "vocabulary.md").read_text(encoding="utf-8")
    read = text.split("## Read", 1)[1].split("\n## ", 1)[0]
    rows = {
        cells[0]: cells[1]
        for line in read.splitlines()
        if line.startswith("| ")
        for cells in [[cell.strip() for cell in line.strip("|").split("|")]]
    }
    for figure in STATED:
        [row] = [keys for name, keys in rows.items() if name.startswith(figure.label)]
        assert re.findall(r"`([^`]+)`", row) == list(figure.keys), figure.name


# --- sums and the roll-up ------------------------------------------------------------------


def reference_sum(parts: list[Any], table: tuple[Figure, ...]) -> dict[str, Any]:
    """The sum figure by figure, written apart from the generated code."""
    total: dict[str, Any] = {}
    for figure in table:
        known = [getattr(part, figure.name) for part in parts]
        known = [value for value in known if value is not None]
        with localcontext(prec=200):
            total[figure.name] = (
                sum(known, Decimal(0) if figure.kind == "money" else 0) if known else figure.default
            )
    return total


@pytest.mark.parametrize("seed", range(5))
def test_the_sums_add_every_figure_of_the_table(seed: int) -> None:
    chooser = random.Random(seed)
    for figures_class, table, summed in (
        (Figures, FIGURES, sum_figures),
        (MoreFigures, MORE, make_sum(MoreFigures, MORE)),
    ):
        parts = []
        for index in range(4):
            values = distinct_values(table, seed * 10 + index)
            # some figures absent in some parts: None is not zero
            values = {name: v for name, v in values.items() if chooser.random() < 0.6}
            parts.append(figures_class(**values))
        expected = reference_sum(parts, table)
        total = summed(parts)
        assert type(total) is figures_class
        assert {figure.name: getattr(total, figure.name) for figure in table} == expected
        assert summed([]) == figures_class()
    assert Figures(input_tokens=1, errors=1) + Figures(input_tokens=2, cost=Decimal(1)) == Figures(
        input_tokens=3, cost=Decimal(1), errors=1
    )


def test_counted_figures_take_the_counted_token_figures_from_the_usage() -> None:
    usage = Usage(**distinct_values(STATED, seed=5))
    counted = FIGURE["input_tokens"].bit | FIGURE["reasoning_tokens"].bit
    own = fields.counted_figures(
        usage, counted, cost=Decimal(2), model_calls=1, unpriced_calls=0, errors=1
    )
    for figure in FIGURES:
        if figure.kind != "tokens":
            continue
        expected = getattr(usage, figure.name) if counted & figure.bit else None
        assert getattr(own, figure.name) == expected, figure.name
    assert (own.cost, own.model_calls, own.unpriced_calls, own.errors) == (Decimal(2), 1, 0, 1)
    # the total, when not stated, is the sum of its terms (rule 5)
    partial = Usage(input_tokens=3, output_tokens=4)
    own = fields.counted_figures(
        partial, REPORTS_ALL, cost=None, model_calls=0, unpriced_calls=0, errors=0
    )
    assert own.total_tokens == 7

    # a copy of the table: its new stated figure comes from the usage, its count is asked
    counted_more = make_counted(MoreFigures, MORE)
    assert "retries" in inspect.signature(counted_more).parameters

    @dataclass(frozen=True)
    class MoreUsage:
        input_tokens: int | None = 5
        output_tokens: int | None = None
        total_tokens: int | None = None
        cache_read_tokens: int | None = None
        cache_write_tokens: int | None = None
        reasoning_tokens: int | None = None
        cost: Decimal | None = None
        image_tokens: int | None = 9

    image_bit = NEW[0].bit
    more = counted_more(
        MoreUsage(), image_bit, cost=None, model_calls=0, unpriced_calls=0, errors=0, retries=2
    )
    assert (more.image_tokens, more.retries, more.input_tokens) == (9, 2, None)
    assert make_stated_mask(MORE)(MoreUsage()) == (
        FIGURE["input_tokens"].bit | FIGURE["total_tokens"].bit | image_bit
    )


def test_every_figure_rolls_up_from_a_call_to_the_root(records: RecordFactory) -> None:
    values = distinct_values(STATED, seed=7)
    values["total_tokens"] = values["input_tokens"] + values["output_tokens"]
    root = records.add("root", type="workflow")
    agent = records.add("agent", root, type="agent")
    attributes = {figure.keys[0]: values[figure.name] for figure in STATED}
    for name in ("one", "two"):
        records.add(name, agent, type="llm", **keys(attributes), status="ERROR")
    totals = tree_of(records).totals
    for figure in STATED:
        doubled = values[figure.name] * 2
        assert getattr(totals, figure.name) == doubled, figure.name
    assert (totals.model_calls, totals.unpriced_calls, totals.errors) == (2, 0, 2)


@pytest.mark.parametrize("figure", STATED, ids=lambda figure: figure.name)
def test_a_claim_is_checked_figure_by_figure(records: RecordFactory, figure: Figure) -> None:
    # The child reports every figure; the claim restates them all, this one off by much.
    values = distinct_values(STATED, seed=11)
    values["total_tokens"] = values["input_tokens"] + values["output_tokens"]
    claim = dict(values)
    claim[figure.name] = values[figure.name] * 3
    root = records.add("claim", type="agent", **keys({f.keys[0]: claim[f.name] for f in STATED}))
    records.add("call", root, type="llm", **keys({f.keys[0]: values[f.name] for f in STATED}))
    tree = tree_of(records)
    mismatch = tree.root.mismatch
    assert mismatch is not None
    differences = mismatch.removeprefix("roll-up mismatch: this span claims ").split(", ")
    assert len(differences) == 1 and differences[0].startswith(f"{figure.label} "), mismatch
    assert [w.kind for w in tree.warnings()] == ["roll-up mismatch"]


# --- warnings have a kind --------------------------------------------------------------------


def test_warnings_carry_their_kind(records: RecordFactory) -> None:
    root = records.add("root", type="workflow", **keys({"ag.metrics.unit.tokens.total": 1}))
    records.add("call", root, type="llm", **keys({"gen_ai.usage.input_tokens": 5}))
    records.add("bad", root, type="llm", **keys({"gen_ai.usage.output_tokens": "x"}))
    records.add("lost", 999, type="tool")
    tree = tree_of(records)
    kinds = {(w.span_name, w.kind) for w in tree.warnings()}
    assert kinds == {
        ("root", "roll-up mismatch"),
        ("bad", "ignored value"),
        ("lost", "detached"),
    }
    for node in tree.nodes:
        assert node.warnings == tuple(w.message for w in node.span_warnings)
        assert all(isinstance(w, SpanWarning) for w in node.span_warnings)
    bad = next(node for node in tree.nodes if node.name == "bad")
    # the badge of the ignored values shows them; the mismatch and detached have their own
    assert [m.label for m in markers(bad) if m.css == "agn-m-warning"] == ["⚠ 1"]
    lost = next(node for node in tree.nodes if node.name == "lost")
    assert not [m for m in markers(lost) if m.css == "agn-m-warning"]


# --- export keys -----------------------------------------------------------------------------


def test_export_keys_come_from_the_table(records: RecordFactory) -> None:
    assert dict(USAGE_KEYS) == {f.name: f.export for f in STATED if f.export != (None, None)}
    values = distinct_values(STATED, seed=13)
    values["total_tokens"] = values["input_tokens"] + values["output_tokens"]
    records.add(
        "call",
        type="llm",
        **keys({"ag.meta.response.model": "my-local-llama"}),
        **keys({f.keys[0]: values[f.name] for f in STATED}),
    )
    node = tree_of(records).root
    added = receiver_attributes(node)
    for figure in STATED:
        for key in figure.export:
            if key is not None and key not in figure.keys[:1]:
                assert added[key] == pytest.approx(float(values[figure.name])), key


# --- the DataFrame ---------------------------------------------------------------------------


def test_the_frames_figure_columns_are_the_tables() -> None:
    derived = figure_columns(FIGURES)
    names = list(COLUMNS)
    start = names.index(next(iter(derived)))
    assert names[start : start + len(derived)] == list(derived)
    assert {column: COLUMNS[column] for column in derived} == derived
    for figure in FIGURES:
        assert derived[figure.subtotal_column] == ("Float64" if figure.kind == "money" else "Int64")
        if figure.own_column is not None:
            assert figure.own_column in derived
    extended = figure_columns(MORE)
    assert set(extended) - set(derived) == {
        "image_tokens",
        "retried",
        "subtotal_image_tokens",
        "subtotal_retries",
    }
    assert (extended["image_tokens"], extended["retried"]) == ("Int64", "boolean")


def test_the_frame_holds_every_figure_of_every_node(records: RecordFactory) -> None:
    values = distinct_values(STATED, seed=17)
    values["total_tokens"] = values["input_tokens"] + values["output_tokens"]
    root = records.add("root", type="workflow")
    records.add("call", root, type="llm", **keys({f.keys[0]: values[f.name] for f in STATED}))
    records.add("tool", root, type="tool", status="ERROR")
    trace = Trace(records.trace_id, "frame", records=records.all)
    frame = trace.to_dataframe()
    for position, node in enumerate(trace.nodes):
        row = frame.iloc[position]
        for figure in FIGURES:
            for column, value in (
                (figure.subtotal_column, getattr(node.subtotal, figure.name)),
                (figure.own_column, getattr(node.own, figure.name)),
            ):
                if column is None:
                    continue
                if figure.kind == "count" and column == figure.own_column:
                    value = value > 0
                if value is None:
                    assert row[column] is __import__("pandas").NA, (node.name, column)
                else:
                    assert row[column] == pytest.approx(float(value)), (node.name, column)


# --- the views -------------------------------------------------------------------------------


def test_the_details_rows_and_the_token_breakdown_follow_the_table() -> None:
    everything = Figures(**distinct_values(FIGURES, seed=19))
    html = figures_table_html(everything, everything)
    assert re.findall(r"<tr><th>([^<]*)</th><td>", html) == [f.label for f in FIGURES]
    title = tokens_title(everything)
    assert [part.rsplit(" ", 1)[0] for part in title.split(", ")] == [
        f.short for f in FIGURES if f.kind == "tokens"
    ]
    # a part of another figure (cache tokens) is left out where nothing has it
    plain = Figures(input_tokens=1, output_tokens=2, total_tokens=3)
    shown = re.findall(r"<tr><th>([^<]*)</th><td>", figures_table_html(plain, plain))
    assert shown == [f.label for f in FIGURES if f.part_of is None]
    assert tokens_title(plain) == "input 1, output 2, total 3"

    # a copy of the table: the new figures get their rows and their place in the breakdown
    more = MoreFigures(**distinct_values(MORE, seed=23))
    more_html = figures_table_html(more, more, MORE)
    assert re.findall(r"<tr><th>([^<]*)</th><td>", more_html)[-2:] == ["image tokens", "retries"]
    assert tokens_title(more, MORE).split(", ")[-1].startswith("image ")
    assert "image" not in tokens_title(MoreFigures(input_tokens=1), MORE)


def test_the_tree_rows_show_the_figures_with_a_column(records: RecordFactory) -> None:
    assert ROW_FIGURES == tuple(figure for figure in FIGURES if figure.column is not None)
    heads = re.findall(r'<span class="agn-c [^"]*">([^<]*)</span>', column_heads_html())
    assert heads == ["duration", *[figure.column for figure in ROW_FIGURES], "share"]
    root = records.add("root", type="workflow")
    records.add(
        "call",
        root,
        type="llm",
        **keys({"ag.metrics.unit.tokens.prompt": 1200, "ag.metrics.unit.tokens.completion": 34}),
        **keys({"ag.meta.response.model": "gpt-4o"}),
    )
    trace = Trace(records.trace_id, "rows", records=records.all)
    node = trace.tree.root
    row = row_figures_html(node, view_scale(node, trace.nodes))
    cells = re.findall(r'<span class="agn-c ([^"]*)"', row)
    assert len(cells) == 1 + len(ROW_FIGURES) + 1  # duration, the figures, the share
    assert '<span class="agn-c agn-tok" title="input 1,200, output 34, total 1,234">1,234<' in row
    assert ">1,234<" in static_html(trace)
    assert "total tokens" in details_html(node)
