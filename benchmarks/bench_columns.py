"""Does a columnar roll-up pay? Issue 14's open question, measured before it is built.

Issue 14 asks for finished spans kept as columns ("the standard library's `array`, or
numpy if you can show it pays") so that the roll-up, the DataFrame and the views read
columns instead of one Python object per span. Before the core is rewritten for it,
this script measures the part that decides it: the **structure** of the roll-up (each
span's parent, its children in start order, depths, the order of the rows, parents
first) and the **sums** of the figures below every span, computed with numpy over
columns, against `build_tree`, which makes and links one `SpanNode` per span.

For each trace (the live cell of `bench_live.py`: steps over an inner span; and the
spans of `bench_core.py` (b): agents over model calls that record usage, tools), one
run prints, each as a ratio to a baseline measured in the same run (one pass over the
same rows reading one attribute of each):

- **nodes**: `build_tree` of the rows, what the product does today;
- **columns, filled from the rows**: the columns a store would hold (ids, parents,
  times, names, statuses, types, and the figures of the spans that state any: each
  span's usage read as `build_tree` reads it), taken from the rows here; a store would
  fill them as spans end, in the cell;
- **columns, rolled up**: from the filled columns, the structure, the depths, the rows'
  order and the subtotals of `FIGURES_SUMMED` figures (two read, the others zero, as
  most figures of most spans are);
- for the cell only (its spans state nothing, as in `bench_live.py --part scale`, the
  1M-span check): **the frame**, `to_dataframe()` from its built tree, against the same
  frame made from the columns.

The columnar results are checked against the product's on every span (`build_tree`'s
rows order, each span's parent, depth, name, status, end and type, both token subtotals
and the figures summed as zero; the cell's frame equal to `to_dataframe()`'s by
`pandas.testing.assert_frame_equal`): a wrong engine fails the run, it does not print a
ratio. The "roll-up + frame" line compares like with like: on the product's side a fresh
`Trace` of the rows, its tree and its frame (what `bench_live.py --part scale` times
after the 1M-span cell); on the columns' side, filling them, rolling up, and the frame.

What the spike leaves out, and a real engine must add: the rules that need more than
sums (a claim checked against what is below, rule 2; model-call wrappers, rule 3; a call
recorded twice, rule 13; errors, warnings, prices; parent cycles, rule 9: it raises), exact
`Decimal` money, a span kept twice (running, then ended), running spans, a trace without
its root span (a synthetic root), and the views. Its level-by-level loops cost one numpy
pass per level: shallow traces (these are two and three levels deep) are its good case,
a chain thousands of spans deep its bad one. Filling the columns from finished rows in
bulk is the cheapest case of it: a store would fill them span by span as they end.
Since issue 14's thirteenth round the structure is the product's own
(`core.columns.shape_from`, which `Trace.counted` uses); the sums are the spike's.
Timings are CPU, the best of `--repeat`, with the garbage collector off during each
timing (and the previous run's result freed before it).

`--part conversion` measures that condition: the live cell (`bench_live.py`'s, `--spans`
spans) traced quietly, as it is today and with a `ColumnSink` filled as the collector
converts each batch of spans that ended (the columns above, in `array`s and lists, the
usage read there), rounds interleaved, CPU time of the process (the garbage collector
on, as in a kernel), each as a ratio to the same cell with bare SDK spans kept by an
`InMemorySpanExporter` (the issue's baseline for a quiet cell); and, timed inside the
filling cell, the CPU of the conversion, of filling the rows' fields and of reading the
usage. Rounds rotate their order; a small cell of each kind runs first. The sink's
columns are checked against the cell's built tree, span by span, after every timed cell
and on a small cell with a model call that records tokens.

    .venv/bin/python benchmarks/bench_columns.py [--spans 100000] [--repeat 3]
        [--part rollup|conversion]
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from array import array
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
from opentelemetry.sdk.trace import ReadableSpan

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import clock, machine_line

import agenta_notebook as an
from agenta_notebook.collector import ResourceMemo, rows_from_spans
from agenta_notebook.core.columns import shape_from
from agenta_notebook.core.fields import FIGURES
from agenta_notebook.core.rollup import (
    END,
    NAME,
    PARENT_ID,
    SPAN_ID,
    START,
    STATUS,
    TRACE_ID,
    RowSpan,
    TraceTree,
    build_tree,
    split_records,
)
from agenta_notebook.core.usage import (
    AG_TYPE,
    read_usage,
    type_only_usage,
)
from agenta_notebook.io.frame import COLUMNS, _hex_ids, _utc
from agenta_notebook.live import Trace

#: How many figures the spike sums at every span: a roll-up sums about this many
#: (tokens of five kinds, calls, unpriced calls, errors); two are read, the rest zero.
FIGURES_SUMMED = 8


class Columns(NamedTuple):
    ids: Any  # uint64, one per span, in the order the rows came
    parents: Any  # uint64, 0 for none
    starts: Any  # int64 nanoseconds
    ends: Any  # int64 nanoseconds (the spike's spans have all ended)
    figures: Any  # int64, spans x FIGURES_SUMMED: each span's own figures
    names: Any  # object: str
    statuses: Any  # object: str
    types: Any  # object: str or None


class RolledUp(NamedTuple):
    parent: Any  # int64: each span's parent's place in the columns, -1 for the root
    position: Any  # int64: each span's row in the parents-first order
    depth: Any  # int64
    subtotals: Any  # int64, spans x FIGURES_SUMMED


def fill_columns(spans: Sequence[RowSpan]) -> Columns:
    """The columns of `spans`: each span's id, parent, start, end, name, status and type,
    its usage read as `build_tree` reads it; the two token counts of the spans that state
    any (the other figures stay zero)."""
    count = len(spans)
    rows = [span[0] for span in spans]
    ids = np.fromiter([row[SPAN_ID] for row in rows], np.uint64, count)
    parents = np.fromiter([row[PARENT_ID] or 0 for row in rows], np.uint64, count)
    starts = np.fromiter([row[START] for row in rows], np.int64, count)
    ends = np.fromiter([row[END] for row in rows], np.int64, count)
    names = np.fromiter([row[NAME] for row in rows], object, count)
    statuses = np.fromiter([row[STATUS] for row in rows], object, count)
    figures = np.zeros((count, FIGURES_SUMMED), np.int64)
    types = np.empty(count, object)
    for position, (_row, attributes) in enumerate(spans):
        # as `rollup.new_node` reads them: most spans carry a type only
        usage = type_only_usage(attributes) or read_usage(attributes)
        types[position] = usage.span_type
        if usage.input_tokens or usage.output_tokens:
            figures[position, 0] = usage.input_tokens or 0
            figures[position, 1] = usage.output_tokens or 0
    return Columns(ids, parents, starts, ends, figures, names, statuses, types)


def roll_up_columns(columns: Columns, root_span_id: int) -> RolledUp:
    """Parents, children in start order (then id), depths and the parents-first order by
    the product's `core.columns.shape_from` (a span whose parent is not among them
    hangs under the root, rule 9); the subtotals summed here, level by level from the
    deepest. Cycles and spans kept twice are not handled in the spike."""
    ids = columns.ids
    root = int(np.flatnonzero(ids == np.uint64(root_span_id))[0])
    shape = shape_from(ids, columns.parents, columns.parents != 0, columns.starts, root)
    if shape is None:
        raise NotImplementedError(
            "a parent cycle, a span twice or a trace too deep: not handled by the spike"
        )
    subtotals = columns.figures.copy()
    for level in reversed(shape.levels[1:]):
        owners = shape.parent[level]
        heads = np.flatnonzero(np.r_[True, owners[1:] != owners[:-1]])
        subtotals[owners[heads]] += np.add.reduceat(subtotals[level], heads, axis=0)
    return RolledUp(shape.parent, shape.position, shape.depth, subtotals)


def frame_of_columns(columns: Columns, rolled: RolledUp, trace_id: int, name: str) -> Any:
    """`to_dataframe()`'s frame of a trace whose spans state nothing (the live cell: the
    1M-span check of `bench_live.py --part scale`), from the columns: each column one
    `take` in the parents-first order; the figure columns, null (counts: zero)."""
    count = len(columns.ids)
    order = np.empty(count, np.int64)
    order[rolled.position] = np.arange(count)
    parent = rolled.parent[order]
    is_root = parent < 0
    start, end = columns.starts[order], columns.ends[order]
    no = np.zeros(count, bool)
    data: dict[str, Any] = {
        "trace_id": pd.array(np.full(count, f"{trace_id:032x}", object), dtype="string"),
        "trace_name": pd.array(np.full(count, name, object), dtype="string"),
        "span_id": _hex_ids(columns.ids[order], no),
        "parent_span_id": _hex_ids(columns.ids[np.where(is_root, 0, parent)], is_root),
        "name": pd.arrays.StringArray(columns.names[order]),
        "type": pd.arrays.StringArray(columns.types[order]),
        "depth": pd.arrays.IntegerArray(rolled.depth[order], no.copy()),
        "start_time": _utc(start),
        "end_time": _utc(end),
        "duration_ms": pd.arrays.FloatingArray((end - start) / 1e6, no.copy()),
        "status": pd.arrays.StringArray(columns.statuses[order]),
        "error": pd.arrays.BooleanArray(no.copy(), no.copy()),
        "running": pd.arrays.BooleanArray(no.copy(), no.copy()),
        "detached": pd.arrays.BooleanArray(no.copy(), no.copy()),
        "role": pd.array(np.full(count, "none", object), dtype="string"),
    }
    nothing: dict[str, Callable[[], Any]] = {
        "Int64": lambda: pd.arrays.IntegerArray(np.zeros(count, np.int64), ~no),
        "Float64": lambda: pd.arrays.FloatingArray(np.zeros(count), ~no),
        "boolean": lambda: pd.arrays.BooleanArray(no.copy(), no.copy()),
        "string": lambda: pd.arrays.StringArray(np.full(count, None, object)),
    }
    counts = {figure.subtotal_column for figure in FIGURES if figure.kind == "count"}
    for column, dtype in COLUMNS.items():
        if column in counts:
            data[column] = pd.arrays.IntegerArray(np.zeros(count, np.int64), no.copy())
        elif column not in data:
            data[column] = nothing[dtype]()
    return pd.DataFrame({column: data[column] for column in COLUMNS}, copy=False)


def check(columns: Columns, rolled: RolledUp, tree: TraceTree) -> None:
    """The columnar result is `build_tree`'s, span by span (or the run stops here)."""
    nodes = tree.nodes
    count = len(columns.ids)
    in_order = np.argsort(rolled.position)
    if not np.array_equal(rolled.position[in_order], np.arange(count)):
        raise AssertionError("the rows' positions are not one row per span")
    if [int(span_id) for span_id in columns.ids[in_order]] != [n.row[SPAN_ID] for n in nodes]:
        raise AssertionError("the columns' row order differs from build_tree's")
    if rolled.subtotals[:, 2:].any():
        raise AssertionError("a figure that no span states has a subtotal")
    for index, node in zip(in_order.tolist(), nodes, strict=True):
        subtotal, parent = node.subtotal, node.parent
        expected = (
            None if parent is None else parent.row[SPAN_ID],
            node.depth,
            node.row[NAME],
            node.row[STATUS],
            node.row[END],
            node.usage.span_type,
            subtotal.input_tokens or 0,
            subtotal.output_tokens or 0,
        )
        above = int(rolled.parent[index])
        got = (
            None if above < 0 else int(columns.ids[above]),
            int(rolled.depth[index]),
            columns.names[index],
            columns.statuses[index],
            int(columns.ends[index]),
            columns.types[index],
            *(int(value) for value in rolled.subtotals[index, :2]),
        )
        if expected != got:
            raise AssertionError(f"span {node.row[SPAN_ID]:x}: {got} != {expected}")


def best(repeat: int, run: Callable[[], Any]) -> tuple[float, Any]:
    fastest, result = float("inf"), None
    for _ in range(repeat):
        result = None  # the previous run's result freed outside the timing
        gc.collect()
        gc.disable()
        try:
            started = clock()
            result = run()
            fastest = min(fastest, clock() - started)
        finally:
            gc.enable()
    return fastest, result


def cell_spans(count: int) -> tuple[list[RowSpan], int]:
    """The live cell's spans (`bench_live.py`): steps, each over one inner span."""
    from bench_instructions import cell_trace

    trace = cell_trace(count // 2)
    assert trace.root_span_id is not None
    return list(split_records(trace.records())), trace.root_span_id


def core_spans(count: int) -> tuple[list[RowSpan], int]:
    """bench_core (b)'s spans, converted to rows as the collector converts them."""
    from bench_core import make_spans

    template, raw = make_spans(count)
    spans = list(split_records(rows_from_spans(raw, resources={})))
    an.get_collector().clear()
    assert template.root_span_id is not None
    return spans, template.root_span_id


def measure(
    label: str, spans: list[RowSpan], root: int, repeat: int, *, quiet: bool = False
) -> None:
    def one_pass() -> int:
        return sum(1 for _row, attributes in spans if attributes.get(AG_TYPE) == "llm")

    base, _ = best(repeat + 2, one_pass)
    nodes_s, tree = best(repeat, lambda: build_tree(spans, root))
    fill_s, columns = best(repeat, lambda: fill_columns(spans))
    roll_s, rolled = best(repeat, lambda: roll_up_columns(columns, root))
    check(columns, rolled, tree)
    del tree
    if not quiet:
        print(
            f"    {label:6} {len(spans):>9,} {base * 1e3:9.1f} {nodes_s * 1e3:10.1f} "
            f"{nodes_s / base:6.1f}x {fill_s * 1e3:10.1f} {fill_s / base:6.1f}x "
            f"{roll_s * 1e3:10.1f} {roll_s / base:6.1f}x {nodes_s / (fill_s + roll_s):12.1f}x"
        )
    if label == "core":
        return
    # Roll-up + frame, like with like: a fresh Trace's tree and frame, against filling
    # the columns, rolling them up and the frame from them (the frames equal, checked)
    trace_id = spans[0][0][TRACE_ID]

    def of_nodes() -> Any:
        trace = Trace(trace_id, "cell", root_span_id=root, records=spans)
        trace.tree  # noqa: B018 - the roll-up, then the frame of its tree
        return trace.to_dataframe()

    def of_columns() -> Any:
        filled = fill_columns(spans)
        return frame_of_columns(filled, roll_up_columns(filled, root), trace_id, "cell")

    nodes_both, frame = best(repeat, of_nodes)
    columns_both, ours = best(repeat, of_columns)
    pd.testing.assert_frame_equal(ours, frame)
    if not quiet:
        print(
            f"    cell roll-up + frame: nodes {nodes_both * 1e3:.1f} ms ({nodes_both / base:.1f}x),"
            f" columns (fill, roll-up, frame) {columns_both * 1e3:.1f} ms"
            f" ({columns_both / base:.1f}x): {nodes_both / columns_both:.1f}x; equal frames"
        )


class ColumnSink:
    """Columns filled as spans end: the collector's conversion of each batch appends its
    rows here (what `fill_columns` takes from finished rows in bulk)."""

    def __init__(self) -> None:
        self.ids = array("Q")
        self.parents = array("Q")
        self.starts = array("q")
        self.ends = array("q")
        self.names: list[str] = []
        self.statuses: list[str] = []
        self.types: list[Any] = []
        #: two token counts per span, input then output (0 when it states none)
        self.tokens = array("q")

    def fill(self, spans: Sequence[RowSpan]) -> None:
        self.fill_rows(spans)
        self.fill_usage(spans)

    def fill_rows(self, spans: Sequence[RowSpan]) -> None:
        """The row's fields."""
        rows = [span[0] for span in spans]
        self.ids.extend([row[SPAN_ID] for row in rows])
        self.parents.extend([row[PARENT_ID] or 0 for row in rows])
        self.starts.extend([row[START] for row in rows])
        self.ends.extend([row[END] or 0 for row in rows])  # (every row here has ended)
        self.names.extend([row[NAME] for row in rows])
        self.statuses.extend([row[STATUS] for row in rows])

    def fill_usage(self, spans: Sequence[RowSpan]) -> None:
        """The type and the tokens each span's usage states, read as `build_tree` does
        (where a tree is built today, after the cell or in a redraw's fold)."""
        types, tokens = self.types.append, self.tokens.extend
        for _row, attributes in spans:
            usage = type_only_usage(attributes) or read_usage(attributes)
            types(usage.span_type)
            tokens((usage.input_tokens or 0, usage.output_tokens or 0))

    def check(self, tree: TraceTree) -> None:
        """Every span of `tree` is in the columns once, with its row's parent, times, name
        and status, and the type and tokens its usage states."""
        nodes = {node.span_id: node for node in tree.nodes}
        if len(self.ids) != len(nodes) or set(self.ids) != set(nodes):
            raise AssertionError(f"{len(self.ids)} spans in the columns, {len(nodes)} in the tree")
        for position, span_id in enumerate(self.ids):
            node = nodes[span_id]
            row, usage = node.row, node.usage
            wanted = (
                row[PARENT_ID] or 0,
                row[START],
                row[END],
                row[NAME],
                row[STATUS],
                usage.span_type,
                usage.input_tokens or 0,
                usage.output_tokens or 0,
            )
            found = (
                self.parents[position],
                self.starts[position],
                self.ends[position],
                self.names[position],
                self.statuses[position],
                self.types[position],
                self.tokens[2 * position],
                self.tokens[2 * position + 1],
            )
            if found != wanted:
                raise AssertionError(f"span {span_id:x}: {found} in the columns, not {wanted}")


def part_conversion(spans: int, repeat: int) -> None:
    """The live cell quiet, without and with columns filled at conversion, against bare
    SDK spans (process CPU, rounds interleaved, each round in another order)."""
    from _common import bare_provider
    from bench_live import _steps, _timed
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from agenta_notebook import collector

    steps = spans // 2
    convert = collector.rows_from_spans

    def bare(cell_steps: int = steps) -> Any:
        exporter = InMemorySpanExporter()
        provider = bare_provider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        _steps(provider.get_tracer("bench").start_as_current_span, cell_steps)
        return exporter

    def quiet(cell_steps: int = steps) -> Any:
        with an.trace("quiet") as trace:
            _steps(an.span, cell_steps)
        return trace

    #: per run of the filling cell: CPU seconds in the conversion, in filling the rows'
    #: fields, and in reading the usage into the columns
    inside: list[list[float]] = []

    def filling(cell_steps: int = steps, call: bool = False) -> Any:
        """The cell, its columns filled as the collector converts (the trace keeps the
        conversion it started with: its last batch, the root, converts on the first
        `trace.tree`, after the timing, as the quiet cell's does); with `call`, one model
        call that records usage after the steps."""
        sink = ColumnSink()
        spent = [0.0, 0.0, 0.0]
        inside.append(spent)

        def converting(
            spans: Iterable[ReadableSpan], resources: ResourceMemo | None = None
        ) -> list[RowSpan]:
            started = time.process_time()
            rows: list[RowSpan] = convert(spans, resources)
            converted = time.process_time()
            sink.fill_rows(rows)
            filled = time.process_time()
            sink.fill_usage(rows)
            spent[0] += converted - started
            spent[1] += filled - converted
            spent[2] += time.process_time() - filled
            return rows

        collector.rows_from_spans = converting  # what the collector's traces convert with
        try:
            with an.trace("quiet, filling columns") as trace:
                _steps(an.span, cell_steps)
                if call:
                    with an.span("call", type="llm"):
                        an.record_usage(model="gpt-4o", input_tokens=7, output_tokens=3)
        finally:
            collector.rows_from_spans = convert
        return trace, sink

    kinds: dict[str, Callable[[], Any]] = {
        "bare SDK spans (InMemorySpanExporter)": bare,
        "an.trace() quiet": quiet,
        "an.trace() quiet + columns at conversion": filling,
    }
    # First-use costs outside the timings; and the sink checked on a cell that states
    # tokens (the timed cell's spans state none)
    bare(300)
    quiet(300)
    trace, sink = filling(300, call=True)
    sink.check(trace.tree)
    if sum(sink.tokens) != 10 or sink.types.count("llm") != 1:
        raise AssertionError("the model call's usage is not in the columns")
    del trace, sink, inside[:]
    an.get_collector().clear()
    cpus: dict[str, list[float]] = {kind: [] for kind in kinds}
    order = list(kinds)
    for round_ in range(repeat):
        for kind in order[round_ % 3 :] + order[: round_ % 3]:
            _wall, cpu, result = _timed(kinds[kind])
            cpus[kind].append(cpu)
            if kind.endswith("conversion"):
                trace, sink = result
                del result
                sink.check(trace.tree)
                del trace, sink  # not kept through the next timing
            else:
                del result
            an.get_collector().clear()
    print(f"machine: {machine_line()}")
    print(f"the live cell, {2 * steps + 1:,} spans; process CPU s, best of {repeat} rounds")
    bare_cpu = min(cpus["bare SDK spans (InMemorySpanExporter)"])
    quiet_cpu = min(cpus["an.trace() quiet"])
    for kind, values in cpus.items():
        cpu = min(values)
        print(
            f"    {kind:<44}{cpu:>7.2f}{cpu / bare_cpu:>7.2f}x bare{cpu / quiet_cpu:>7.2f}x quiet"
            f"   (runs: {', '.join(f'{value:.2f}' for value in values)})"
        )
    print(
        "    inside the cell filling columns, each run: CPU s converting / filling the rows'"
        " fields / reading usage into the columns (the fill's share of the cell's CPU): "
        + "; ".join(
            f"{conversion:.2f} / {rows:.2f} / {usage:.2f} ({(rows + usage) / cpu:.1%})"
            for (conversion, rows, usage), cpu in zip(
                inside, cpus["an.trace() quiet + columns at conversion"], strict=True
            )
        )
    )
    print("    (the cell traced quietly settles on its first `trace.tree`, not timed here)")


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--part", choices=["rollup", "conversion"], default="rollup")
    options = parser.parse_args(argv)
    if options.part == "conversion":
        part_conversion(options.spans, options.repeat)
        return
    # First-use costs (imports, reading usage, the price table) outside the timings
    for label, make in (("cell", cell_spans), ("core", core_spans)):
        measure(label, *make(200), 1, quiet=True)
    print(f"machine: {machine_line()}")
    print("times: CPU ms, best of the runs; ratios to one pass over the rows (baseline)")
    print(
        f"    {'trace':6} {'spans':>9} {'pass ms':>9} {'nodes ms':>10} {'ratio':>7} "
        f"{'fill ms':>10} {'ratio':>7} {'rollup ms':>10} {'ratio':>7} {'nodes/columns':>13}"
    )
    for label, make in (("cell", cell_spans), ("core", core_spans)):
        spans, root = make(options.spans)
        measure(label, spans, root, options.repeat)
        del spans
    print(
        "nodes: build_tree (one SpanNode per span, every rule); fill: the columns taken"
        " from the rows (a store fills them as spans end); rollup: structure, depths,"
        f" order and {FIGURES_SUMMED} figures' subtotals from the columns (no rules but"
        " sums); nodes/columns: build_tree's time over fill + rollup. Each columnar"
        " result is checked against build_tree's, span by span."
    )


if __name__ == "__main__":
    main()
