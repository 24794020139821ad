"""Scale: roll-up, DataFrame, static HTML and first widget display for 1k to 1M spans,
peak memory, memory retained per span, and memory after 1,000 traced cells.

    .venv/bin/python benchmarks/bench_scale.py [--quick] [--sizes 1000 10000 ...]

Every size runs in a fresh IPython kernel (so the peak RSS, `ru_maxrss`, is that size's
alone, and the widget is displayed through a real kernel's iopub). The spans are real
SDK spans of one trace made with `span` + `record_usage` (bench_core's `make_spans`:
root -> agents -> 4 llm calls and 6 tools each), kept by the collector. Timings are CPU
seconds of the kernel process, each a ratio to one plain pass over the same finished
spans that reads one attribute of each (the baseline, measured in the same kernel):
  - rollup: `trace.tree` on a fresh `Trace` fed those spans (spans -> records -> tree
    with every subtotal and price);
  - frame: `trace.to_dataframe()`;  html: `html.static_html(trace)`;
  - widget: `display.show_trace(trace)` (widget view + static HTML + text summary, sent
    to the frontend), then closed; also counts the widget models it created.
Growth per 10x is the ratio of each timing (and of the peak memory) at 10x the spans:
linear is about 10x.

Memory (plain subprocesses, `tracemalloc`):
  - retained per span: what the collector keeps for a finished traced block (the SDK
    spans), and after its tree is built (records + nodes; the SDK spans are released),
    against an `InMemorySpanExporter` keeping the same spans (same names, parents and
    attributes) on a bare provider;
  - 1,000 traced cells, simulated with `collector.start_root` (what the magic does per
    cell: root span, 10 spans with usage, tree and static HTML built), with the default
    retention: memory after 1,000 cells against after 200 (the retention bound).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import (  # noqa: E402
    bare_provider,
    best_of,
    clock,
    machine_line,
    peak_rss_bytes,
    plain_pass,
    rss_bytes,
    started_kernel,
)

SIZES = (1_000, 10_000, 100_000, 1_000_000)
QUICK_SIZES = (1_000, 10_000, 100_000)
PHASES = ("rollup", "frame", "html", "widget")


def _repeats(count: int) -> int:
    return 5 if count <= 1_000 else 3 if count <= 10_000 else 2 if count <= 100_000 else 1


# -- one size, inside a fresh kernel ---------------------------------------------------------


def measure(count: int) -> dict[str, Any]:
    """Run inside a kernel: make `count` spans, then time every phase on them."""
    from bench_core import fresh_trace, make_spans

    from agenta_notebook.views.display import show_trace
    from agenta_notebook.views.html import static_html
    from agenta_notebook.views.widget import live_widget_count

    repeats = _repeats(count)
    warm_up, _ = make_spans(10)  # first use of the widget modules, outside the timings
    show_trace(warm_up).close()
    start_rss = rss_bytes()
    started = clock()
    template, raw = make_spans(count)
    made = clock() - started

    result: dict[str, Any] = {
        "spans": count,
        "make": made,
        "pass": best_of(repeats + 2, lambda: plain_pass(raw)),
    }
    rollup = float("inf")
    trace = None
    for _ in range(repeats):
        trace = None
        gc.collect()
        trace = fresh_trace(template, raw)
        started = clock()
        tree = trace.tree
        rollup = min(rollup, clock() - started)
        assert len(tree.nodes) == count
        del tree
    assert trace is not None
    result["rollup"] = rollup
    gc.collect()
    result["frame"] = best_of(repeats, trace.to_dataframe)
    gc.collect()
    result["html"] = best_of(repeats, lambda: static_html(trace))
    widget = float("inf")
    for _ in range(repeats):
        gc.collect()
        before = live_widget_count()
        started = clock()
        shown = show_trace(trace)
        widget = min(widget, clock() - started)
        result["models"] = live_widget_count() - before
        shown.close()
        result["models_left"] = live_widget_count() - before
    result["widget"] = widget
    result["peak_mb"] = (peak_rss_bytes() - start_rss) / 2**20
    return result


def run_size(count: int) -> dict[str, Any]:
    """`measure(count)` in a fresh kernel; its result."""
    lines: list[str] = []

    def collect(message: dict[str, Any]) -> None:
        if message["msg_type"] == "stream":
            lines.append(message["content"]["text"])
        elif message["msg_type"] == "error":
            lines.append("\n".join(message["content"]["traceback"]))

    code = (
        f"import json, sys\nsys.path.insert(0, {str(HERE)!r})\n"
        "from bench_scale import measure\n"
        f"print('SCALE ' + json.dumps(measure({count})))\n"
    )
    with started_kernel() as client:
        reply = client.execute_interactive(code, timeout=1800, output_hook=collect)
    text = "".join(lines)
    if reply["content"]["status"] != "ok" or "SCALE " not in text:
        raise RuntimeError(f"scale benchmark failed for {count} spans:\n{text}")
    result: dict[str, Any] = json.loads(text.split("SCALE ", 1)[1].splitlines()[0])
    return result


def growth(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """For each pair of sizes 10x apart, the ratio of each timing and of peak memory."""
    by_size = {result["spans"]: result for result in results}
    rows = []
    for result in results:
        larger = by_size.get(result["spans"] * 10)
        if larger is None:
            continue
        row: dict[str, Any] = {"from": result["spans"], "to": larger["spans"]}
        for key in ("pass", *PHASES, "peak_mb"):
            row[key] = larger[key] / result[key] if result[key] > 0 else float("nan")
        rows.append(row)
    return rows


# -- memory ------------------------------------------------------------------------------


def _replay(plan: list[tuple[int, int | None, str, dict[str, Any]]], tracer: Any) -> None:
    """Make the same spans again (names, parents, attributes) with another tracer."""
    from opentelemetry import trace as otel_trace

    children: dict[int | None, list[tuple[int, int | None, str, dict[str, Any]]]] = {}
    for entry in plan:
        children.setdefault(entry[1], []).append(entry)

    def make(entry: tuple[int, int | None, str, dict[str, Any]], parent: Any) -> None:
        context = otel_trace.set_span_in_context(parent) if parent is not None else None
        copy = tracer.start_span(entry[2], context=context, attributes=entry[3])
        for child in children.get(entry[0], ()):
            make(child, copy)
        copy.end()

    for top in children[None]:
        make(top, None)


def retained_per_span(count: int) -> dict[str, float]:
    """Bytes per span kept by the collector (spans; then tree) and by a bare exporter."""
    from bench_core import make_spans
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import agenta_notebook as an

    collector = an.get_collector()
    make_spans(100)  # first-use costs (imports, caches) outside the measurement
    collector.clear()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    template, raw = make_spans(count)
    del raw  # the collector's own references remain
    gc.collect()
    spans_kept = tracemalloc.get_traced_memory()[0] - before
    built = template.tree
    gc.collect()
    with_tree = tracemalloc.get_traced_memory()[0] - before
    plan = [
        (node.span_id, node.record.parent_span_id, node.name, dict(node.record.attributes))
        for node in built.nodes
    ]
    del built, template
    collector.clear()
    gc.collect()
    baseline_before = tracemalloc.get_traced_memory()[0]
    exporter = InMemorySpanExporter()
    provider = bare_provider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    _replay(plan, provider.get_tracer("bench"))
    gc.collect()
    bare = tracemalloc.get_traced_memory()[0] - baseline_before
    tracemalloc.stop()
    assert len(exporter.get_finished_spans()) == count
    return {
        "spans": count,
        "ours_spans": spans_kept / count,
        "ours_tree": with_tree / count,
        "bare": bare / count,
    }


def traced_cells(cells: int, spans_per_cell: int = 10) -> dict[str, float]:
    """Memory after `cells` simulated traced cells with the default retention."""
    from opentelemetry import context as otel_context
    from opentelemetry import trace as otel_trace

    import agenta_notebook as an
    from agenta_notebook.collector import DEFAULT_MAX_TRACES
    from agenta_notebook.runtime import set_last_trace, start_root
    from agenta_notebook.views.html import static_html

    collector = an.get_collector()
    collector.set_retention(DEFAULT_MAX_TRACES)

    def cell(index: int) -> None:
        root, trace = start_root(f"cell {index}")
        token = otel_context.attach(otel_trace.set_span_in_context(root))
        try:
            for step in range(spans_per_cell):
                with an.span("call", type="llm"):
                    an.record_usage(model="gpt-4o", input_tokens=100 + step, output_tokens=20)
        finally:
            otel_context.detach(token)
            root.end()
            trace.closed = True
            set_last_trace(trace)
        static_html(trace)

    cell(-1)
    collector.clear()
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    at: dict[int, float] = {}
    started = clock()
    for index in range(cells):
        cell(index)
        if index + 1 in (DEFAULT_MAX_TRACES, cells):
            gc.collect()
            at[index + 1] = tracemalloc.get_traced_memory()[0] - before
    elapsed = clock() - started
    tracemalloc.stop()
    return {
        "cells": cells,
        "bound": DEFAULT_MAX_TRACES,
        "kept_traces": len(collector.traces()),
        "at_bound": at[DEFAULT_MAX_TRACES],
        "at_end": at[cells],
        "per_cell_ms": elapsed / cells * 1e3,
    }


def run_memory(kind: str, value: int) -> dict[str, Any]:
    """`retained_per_span` or `traced_cells` in a subprocess of its own."""
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--memory", kind, str(value)],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    marker = [line for line in done.stdout.splitlines() if line.startswith("MEMORY ")]
    if done.returncode != 0 or not marker:
        raise RuntimeError(f"memory benchmark {kind} failed:\n{done.stderr}")
    result: dict[str, Any] = json.loads(marker[-1][7:])
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="skip 1M spans")
    parser.add_argument("--sizes", type=int, nargs="*", help="span counts (default 1k..1M)")
    parser.add_argument("--memory", nargs=2, metavar=("KIND", "N"), help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.memory:
        kind, value = options.memory[0], int(options.memory[1])
        data = retained_per_span(value) if kind == "span" else traced_cells(value)
        print("MEMORY " + json.dumps(data), flush=True)
        return
    sizes = options.sizes or (QUICK_SIZES if options.quick else SIZES)
    print(f"machine: {machine_line()}")
    header = f"{'spans':>9} {'pass ms':>9}" + "".join(
        f" {p + ' ms':>10} {'ratio':>8}" for p in PHASES
    )
    print(header + f" {'models':>7} {'peak MB':>8}")
    results = []
    for count in sizes:
        result = run_size(count)
        results.append(result)
        line = f"{count:>9,} {result['pass'] * 1e3:>9.1f}"
        for phase in PHASES:
            line += f" {result[phase] * 1e3:>10.1f} {result[phase] / result['pass']:>7.1f}x"
        print(line + f" {result['models']:>7} {result['peak_mb']:>8.0f}", flush=True)
    for row in growth(results):
        print(
            f"growth {row['from']:,} -> {row['to']:,}: "
            + ", ".join(f"{key} {row[key]:.1f}x" for key in ("pass", *PHASES, "peak_mb"))
        )
    span = run_memory("span", 10_000)
    print(
        f"retained per span (10k): spans {span['ours_spans']:.0f} B, with tree "
        f"{span['ours_tree']:.0f} B, bare exporter {span['bare']:.0f} B"
    )
    cells = run_memory("cells", 1_000)
    print(
        f"after {cells['cells']} simulated cells: {cells['at_end'] / 2**20:.1f} MB "
        f"(after {cells['bound']}: {cells['at_bound'] / 2**20:.1f} MB), "
        f"{cells['kept_traces']} traces kept"
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    main()
