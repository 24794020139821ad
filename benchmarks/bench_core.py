"""Benchmark of the core: span overhead and roll-up cost, as ratios to baselines.

Run: `.venv/bin/python benchmarks/bench_core.py [--quick]`. Prints a table; asserts
nothing about time. Every baseline is measured in the same process and run:

(a) An `@span`-decorated function that calls `record_usage(model=..., tokens)`, inside an
    open `trace()` so the collector keeps its spans, against a bare OpenTelemetry span
    from a separate SDK `TracerProvider` (SimpleSpanProcessor + InMemorySpanExporter)
    that sets the same attribute keys with `start_as_current_span` + `set_attributes`.
    Target: at most 1.3x.
(c) Capture of inputs and outputs: an `@span` function `answer(question: str, k: int = 3)`
    returning a short str, called with two arguments, against the same bare span calling
    the same undecorated function and setting the same attributes (`ag.type.node`,
    `ag.data.inputs.question`, `ag.data.inputs.k` at the start,
    `ag.data.outputs.__default__` after the call). Target: at most 1.5x. Then with
    capture off (`set_capture(enabled=False)`) against the bare span setting only
    `ag.type.node`. Target: at most 1.1x.
(d) Capture of a large argument and result: an `@span` function `embed(x)` called with and
    returning 300 embeddings of 1,536 floats (460,800 floats, ~5 MB of JSON), with capture
    on against capture off (both ours). The capture is cut at `max_chars`, and so is the
    work: no target, the ratio is reported (it was ~5,000x, 0.6 s a call, when whole
    values were serialised before being cut).
(b) Building the Trace (SDK spans -> records -> tree with every subtotal) and then the
    DataFrame, for 10k and 100k finished spans, against one plain Python pass over the
    same finished spans that reads one attribute of each. Targets: the roll-up at most
    3x that pass, and the DataFrame at most 3x as well; 100k at most 12x 10k.
"""

from __future__ import annotations

import argparse
import functools
import gc
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import agenta_notebook as an
from agenta_notebook.collector import rows_from_spans
from agenta_notebook.core.usage import AG_INPUT_TOKENS, AG_MODEL, AG_OUTPUT_TOKENS, AG_TYPE
from agenta_notebook.io.frame import trace_dataframe
from agenta_notebook.live import Trace

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import bare_provider, best_of, clock, machine_line, plain_pass  # noqa: E402

# -- (a) per-call overhead -------------------------------------------------------------


@an.span("call", type="llm")
def traced_call() -> None:
    an.record_usage(model="gpt-4o", input_tokens=120, output_tokens=30)


def plain_answer(question: str, k: int = 3) -> str:
    return "Paris"


traced_answer = an.span("answer")(plain_answer)
QUESTION = "What is the capital of France?"


def bench_span_overhead(calls: int, rounds: int) -> tuple[float, float, float]:
    """(a): `@span` + `record_usage` against a bare span setting the same keys."""
    attributes: dict[str, str | int] = {
        AG_TYPE: "llm",
        AG_MODEL: "gpt-4o",
        AG_INPUT_TOKENS: 120,
        AG_OUTPUT_TOKENS: 30,
    }

    def bare_call(tracer: Any) -> None:
        with tracer.start_as_current_span("call") as span:
            span.set_attributes(attributes)

    return compare_with_bare(traced_call, bare_call, calls, rounds)


def bench_capture(calls: int, rounds: int, *, capture: bool) -> tuple[float, float, float]:
    """(c): `@span` capturing (or not) two small arguments and a short str result."""
    an.set_capture(enabled=capture)

    def bare_call(tracer: Any) -> None:
        started: dict[str, str | int] = {AG_TYPE: "task"}
        if capture:
            started["ag.data.inputs.question"] = QUESTION
            started["ag.data.inputs.k"] = 5
        with tracer.start_as_current_span("answer", attributes=started) as span:
            result = plain_answer(QUESTION, 5)
            if capture:
                span.set_attribute("ag.data.outputs.__default__", result)

    try:
        return compare_with_bare(lambda: traced_answer(QUESTION, 5), bare_call, calls, rounds)
    finally:
        an.set_capture(enabled=True)


EMBEDDINGS = [[0.1234567] * 1536] * 300


@an.span("embed", type="embedding")
def traced_embed(x: list[list[float]]) -> list[list[float]]:
    return x


def bench_large_capture(calls: int, rounds: int) -> tuple[float, float, float]:
    """(d): `embed(x)` with a large argument and result, capture on against off."""
    times: dict[bool, list[float]] = {True: [], False: []}

    def run(capture: bool) -> None:
        an.set_capture(enabled=capture)
        gc.collect()
        with an.trace("bench embed"):
            started = clock()
            for _ in range(calls):
                traced_embed(EMBEDDINGS)
            times[capture].append(clock() - started)
        an.get_collector().clear()

    try:
        for index in range(rounds):  # interleaved, alternating who goes first
            for capture in (True, False) if index % 2 else (False, True):
                run(capture)
    finally:
        an.set_capture(enabled=True)
    paired = sorted(on / off for on, off in zip(times[True], times[False], strict=True))
    return min(times[True]) / calls, min(times[False]) / calls, paired[len(paired) // 2]


def compare_with_bare(
    traced: Callable[[], object], bare_call: Callable[[Any], None], calls: int, rounds: int
) -> tuple[float, float, float]:
    """Seconds per call for our span and the bare SDK span (best round of each), and
    the median over rounds of the ratio of the two, each pair measured back to back."""
    exporter = InMemorySpanExporter()
    provider = bare_provider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    bare_tracer = provider.get_tracer("bench")

    def ours() -> float:
        gc.collect()
        with an.trace("bench calls") as trace:
            started = clock()
            for _ in range(calls):
                traced()
            elapsed = clock() - started
        assert trace.span_count == calls + 1, "the collector must keep every span"
        an.get_collector().clear()  # as the exporter is cleared: same memory for both
        return elapsed

    def bare() -> float:
        gc.collect()
        with bare_tracer.start_as_current_span("bench calls"):
            started = clock()
            for _ in range(calls):
                bare_call(bare_tracer)
            elapsed = clock() - started
        assert len(exporter.get_finished_spans()) == calls + 1
        exporter.clear()
        return elapsed

    ours_times: list[float] = []
    bare_times: list[float] = []
    for index in range(rounds):  # interleaved, alternating who goes first
        if index % 2:
            bare_times.append(bare())
            ours_times.append(ours())
        else:
            ours_times.append(ours())
            bare_times.append(bare())
    an.get_collector().clear()
    provider.shutdown()
    paired = sorted(o / b for o, b in zip(ours_times, bare_times, strict=True))
    return min(ours_times) / calls, min(bare_times) / calls, paired[len(paired) // 2]


# -- (b) roll-up and DataFrame -----------------------------------------------------------


def make_spans(count: int) -> tuple[Trace, list[ReadableSpan]]:
    """`count` finished SDK spans of one trace: agents over llm calls and tools.

    Shape: root -> agent (10 children: 4 llm calls that record usage, 6 tools), with a
    few spans carrying an agent-level claim, the mix a real agent trace has.
    """
    with an.trace("bench") as trace:
        trace.convert_every = None  # keep the SDK's spans: they are what is measured
        made = 1
        agent_index = 0
        while made < count:
            with an.span("agent", type="agent"):
                made += 1
                agent_index += 1
                for index in range(10):
                    if made >= count:
                        break
                    if index % 10 in (0, 3, 6, 8):
                        with an.span("llm", type="llm"):
                            an.record_usage(
                                model="gpt-4o-mini" if index % 2 else "gpt-4o",
                                input_tokens=100 + index,
                                output_tokens=20 + agent_index % 7,
                            )
                    else:
                        with an.span("tool", type="tool"):
                            pass
                    made += 1
    raw: list[ReadableSpan] = list(trace._finished_raw)
    assert len(raw) == count, (len(raw), count)
    return trace, raw


def fresh_trace(template: Trace, raw: Sequence[ReadableSpan]) -> Trace:
    """A new live Trace fed the same finished spans the collector would feed it."""
    trace = Trace(
        template.trace_id,
        template.name,
        root_span_id=template.root_span_id,
        convert_many=functools.partial(rows_from_spans, resources={}),
    )
    # Converted when the tree is read, so that the roll-up's timing includes the
    # conversion (a live trace converts them in batches as they end).
    trace.convert_every = None
    for span in raw:
        trace.span_ended(span.context.span_id, span)
    return trace


def minimal_rollup(raw: Sequence[ReadableSpan]) -> dict[int, int]:
    """A floor, not a product: the least any roll-up of these spans must do in Python.

    Reads each span's id, parent and two token counts straight from the SDK's internals,
    links children to parents and sums the tokens bottom-up. No records, no pricing, no
    cost, no other figures, no checks, no warnings: what `trace.tree` does on top of
    this is the price of the rest of rollup.md.
    """
    own: dict[int, int] = {}
    children: dict[int | None, list[int]] = {}
    gc.disable()
    try:
        for span in raw:
            values = span._attributes._dict  # type: ignore[union-attr]
            parent = span._parent
            span_id = span._context.span_id  # type: ignore[union-attr]
            own[span_id] = (values.get(AG_INPUT_TOKENS) or 0) + (values.get(AG_OUTPUT_TOKENS) or 0)
            key = parent.span_id if parent is not None else None
            children.setdefault(key, []).append(span_id)
        order: list[int] = []
        stack = list(children.get(None, ()))
        while stack:
            node = stack.pop()
            order.append(node)
            stack.extend(children.get(node, ()))
        total: dict[int, int] = {}
        for node in reversed(order):
            subtotal = own[node]
            for child in children.get(node, ()):
                subtotal += total[child]
            total[node] = subtotal
        return total
    finally:
        gc.enable()


def best_on_fresh(
    template: Trace, raw: Sequence[ReadableSpan], repeats: int, read: Callable[[Trace], Any]
) -> float:
    """The least CPU time of `read` on a fresh trace of `raw`, which must read it from its
    spans that count (checked after each timing)."""
    best = float("inf")
    for _ in range(repeats):
        trace = fresh_trace(template, raw)
        trace.counted_from = 0  # however small (the warm-up's 100 spans)
        started = clock()
        result = read(trace)
        best = min(best, clock() - started)
        counted = trace.counted()
        assert result is not None and counted is not None and counted.size == len(raw)
        del trace, result, counted
        gc.collect()
    return best


def bench_rollup(count: int, repeats: int) -> dict[str, float]:
    template, raw = make_spans(count)
    timings: dict[str, float] = {"pass": best_of(repeats + 2, lambda: plain_pass(raw))}

    build_best = frame_best = float("inf")
    for _ in range(repeats):
        trace = fresh_trace(template, raw)
        started = clock()
        tree = trace.tree
        built = clock()
        frame = trace_dataframe(trace)
        framed = clock()
        assert len(tree.nodes) == count and len(frame) == count
        build_best = min(build_best, built - started)
        frame_best = min(frame_best, framed - built)
        del trace, tree, frame
        gc.collect()
    timings["rollup"] = build_best
    timings["frame"] = frame_best
    # A fresh trace read as the ledger and a first `to_dataframe()` read it: no whole
    # tree, nodes only for the spans that count (`Trace.counted`), the rest in columns
    timings["counted"] = best_on_fresh(template, raw, repeats, lambda trace: trace.counted())
    timings["first frame"] = best_on_fresh(template, raw, repeats, trace_dataframe)
    timings["floor"] = best_of(repeats + 2, lambda: minimal_rollup(raw))
    an.get_collector().clear()
    return timings


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller runs, for a smoke test")
    options = parser.parse_args(argv)
    calls, rounds, repeats = (2_000, 3, 1) if options.quick else (10_000, 11, 3)
    sizes = (1_000, 10_000) if options.quick else (10_000, 100_000)

    print(f"machine: {machine_line()}")
    print()
    ours, bare, median_ratio = bench_span_overhead(calls, rounds)
    print("(a) per call: @span + record_usage vs bare OpenTelemetry span (target <= 1.3x)")
    print(f"    {'ours us/call':>14} {'bare us/call':>14} {'best/best':>10} {'median pair':>12}")
    print(f"    {ours * 1e6:14.2f} {bare * 1e6:14.2f} {ours / bare:9.2f}x {median_ratio:11.2f}x")
    print()
    print("(c) per call: @span capturing answer(question, k) -> str vs a bare span setting")
    print("    the same attributes (target <= 1.5x); capture off vs a bare span (<= 1.1x)")
    heads = f"{'ours us/call':>14} {'bare us/call':>14} {'best/best':>10} {'median pair':>12}"
    print(f"    {'':12} {heads}")
    for label, capture in (("capture on", True), ("capture off", False)):
        ours, bare, median_ratio = bench_capture(calls, rounds, capture=capture)
        print(
            f"    {label:12} {ours * 1e6:14.2f} {bare * 1e6:14.2f} {ours / bare:9.2f}x "
            f"{median_ratio:11.2f}x"
        )
    print()
    print("(d) per call: @span embed(x) with 300 x 1,536 floats in and out, capture on vs off")
    print(f"    {'on us/call':>14} {'off us/call':>14} {'best/best':>10} {'median pair':>12}")
    on, off, median_ratio = bench_large_capture(calls // 10, rounds)
    print(f"    {on * 1e6:14.2f} {off * 1e6:14.2f} {on / off:9.2f}x {median_ratio:11.2f}x")
    print()

    print("(b) roll-up, DataFrame vs one plain pass over the same finished spans (targets <= 3x)")
    print(
        f"    {'spans':>8} {'pass ms':>9} {'rollup ms':>10} {'ratio':>7} "
        f"{'frame ms':>9} {'ratio':>7} {'both ratio':>11} {'floor ms':>9} {'ratio':>7}"
    )
    bench_rollup(100, 1)  # first-use costs (price table, imports) outside the timings
    results: dict[int, dict[str, float]] = {}
    for size in sizes:
        timing = bench_rollup(size, repeats)
        results[size] = timing
        base = timing["pass"]
        print(
            f"    {size:>8} {base * 1e3:9.2f} {timing['rollup'] * 1e3:10.2f} "
            f"{timing['rollup'] / base:6.2f}x {timing['frame'] * 1e3:9.2f} "
            f"{timing['frame'] / base:6.2f}x {(timing['rollup'] + timing['frame']) / base:10.2f}x"
            f" {timing['floor'] * 1e3:9.2f} {timing['floor'] / base:6.2f}x"
        )
    print()
    print(
        "(b') the same spans in a fresh trace, no whole tree: the spans that count rolled up"
        " (the ledger's read), and a first DataFrame (nodes only for those, the rest from"
        " columns)"
    )
    print(f"    {'spans':>8} {'counted ms':>11} {'ratio':>7} {'first frame ms':>15} {'ratio':>7}")
    for size, timing in results.items():
        base = timing["pass"]
        print(
            f"    {size:>8} {timing['counted'] * 1e3:11.2f} {timing['counted'] / base:6.2f}x"
            f" {timing['first frame'] * 1e3:15.2f} {timing['first frame'] / base:6.2f}x"
        )
    small, large = sizes
    growth_rollup = results[large]["rollup"] / results[small]["rollup"]
    growth_both = (results[large]["rollup"] + results[large]["frame"]) / (
        results[small]["rollup"] + results[small]["frame"]
    )
    growth_pass = results[large]["pass"] / results[small]["pass"]
    print(
        "    floor: the least any roll-up does (ids, parents, 2 token counts summed; no"
        " records, prices or checks)"
    )
    print()
    print(
        f"growth {large // 1000}k / {small // 1000}k (target <= 12x): "
        f"roll-up {growth_rollup:.2f}x, roll-up + frame {growth_both:.2f}x, "
        f"plain pass {growth_pass:.2f}x"
    )


if __name__ == "__main__":
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    main()
