"""Issue 14's live cell: one cell making 100k spans (50k steps of two nested spans, a
short sleep every 2,000 steps), untraced, with bare OpenTelemetry, traced quietly, and
traced with the live tree shown.

Parts, each printing ratios measured in the same run:

- `--part process` (default): in this process, no kernel. The same block untraced, with
  bare SDK spans kept by an `InMemorySpanExporter`, inside `an.trace()` (quiet), and
  inside `an.trace()` with a reader thread reading `trace.tree` every 0.25 s as the live
  view's redraw timer does; that last one twice: folding (the incremental roll-up) and
  building in full on every read (the roll-up before issue 14, forced here). Then the
  settle: `trace.tree` once more after the block, and the counted totals.
- `--part fold`: the roll-up alone, on bench_core's 100k finished SDK spans: one full
  build (`trace.tree` on a fresh trace, bench_core's (b)) against the same spans told
  to a fresh trace as the collector does (started, then ended, in time order; a span
  read while "running" is already finished here) in batches of events with
  `trace.totals` read after each (each batch folded in), then `trace.tree` once; every
  timing as a ratio to one plain pass over the spans (CPU time), with and without the
  time the garbage collector took during the run.
- `--part scale --steps 500000`: issue 14's 1M-span check in a fresh kernel: roll-up +
  DataFrame CPU time, and the peak RSS over the kernel's before the cell, per span.
- `--part cellfold`: the folds of the live cell's own spans in this process (`trace.tree`
  read every 1,850 steps, as often as the view redraws that cell) against one full build
  of the same spans when the block ends (a `--quiet` cell's settle), CPU time less the
  garbage collector's.
- `--part where`: where the CPU of the kernel cells goes: the whole process, the cell's
  own thread, the live view's redraws (their thread CPU, how many), and the cyclic
  garbage collector (its time, and collections per generation, from `gc.callbacks`).
- `--part calls`: `--part where` with a model call in each step (the inner span records
  usage: half the spans have a cost of their own), traced quietly and shown.
- `--part kernel`: the cells in a real kernel (`%%agenta_trace --quiet`, `%%agenta_trace`,
  no magic, bare SDK spans), wall time from the execute request to idle, and how long
  after the cell's last line the kernel went idle (when the next cell can start).

    .venv/bin/python benchmarks/bench_live.py [--part process|fold|cellfold|kernel|where|calls|all]
        [--steps 50000]
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (
    bare_provider,
    kernel_value,
    machine,
    run_code,
    started_kernel,
)

STEP_CODE = """
def run_steps(make_span, steps={steps}):
    for step in range(steps):
        with make_span("step"):
            with make_span("inner"):
                pass
        if step % 2000 == 1999:
            time.sleep(0.001)
"""


def _steps(make_span: Callable[[str], AbstractContextManager[Any]], steps: int) -> None:
    for step in range(steps):
        with make_span("step"), make_span("inner"):
            pass
        if step % 2000 == 1999:
            time.sleep(0.001)


class _Reader:
    """Reads `trace.tree` every `interval` seconds on its own thread, as the view does."""

    def __init__(self, trace: Any, interval: float = 0.25) -> None:
        self.trace = trace
        self.interval = interval
        self.reads = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.wait(self.interval):
            self.trace.tree  # noqa: B018 - the redraw's read
            self.reads += 1

    def __enter__(self) -> _Reader:
        self.thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.thread.join()


def _timed(run: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, CPU seconds of the process, result)."""
    gc.collect()
    wall, cpu = time.perf_counter(), time.process_time()
    result = run()
    return time.perf_counter() - wall, time.process_time() - cpu, result


class _CollectorTime:
    """Seconds spent in the cyclic garbage collector while it is installed (`gc.callbacks`;
    one thread). Whether a full collection lands inside a timed run of the fold is a
    matter of luck (one costs about as much as the fold of 100k spans), so the fold's
    timings are also printed without it."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self._started = 0.0

    def _on_gc(self, phase: str, _info: dict[str, Any]) -> None:
        if phase == "start":
            self._started = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._started

    def __enter__(self) -> _CollectorTime:
        gc.callbacks.append(self._on_gc)
        return self

    def __exit__(self, *_exc: object) -> None:
        gc.callbacks.remove(self._on_gc)


def part_process(steps: int, rounds: int) -> None:
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    import agenta_notebook as an
    from agenta_notebook.core import incremental

    def untraced() -> None:
        _steps(an.span, steps)

    def bare() -> int:
        exporter = InMemorySpanExporter()
        provider = bare_provider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        tracer = provider.get_tracer("bench")
        _steps(tracer.start_as_current_span, steps)
        return len(exporter.get_finished_spans())

    def quiet() -> tuple[int, float]:
        with an.trace("quiet") as trace:
            _steps(an.span, steps)
        settle = time.perf_counter()
        count = len(trace.tree.nodes)
        return count, time.perf_counter() - settle

    def shown() -> tuple[int, float, int]:
        with an.trace("shown") as trace, _Reader(trace) as reader:
            _steps(an.span, steps)
        settle = time.perf_counter()
        count = len(trace.tree.nodes)
        return count, time.perf_counter() - settle, reader.reads

    def refuse(self: Any, records: Any) -> bool:
        raise incremental.NeedsFullBuild("forced: the roll-up before issue 14")

    def shown_rebuilding() -> tuple[int, float, int]:
        original = incremental.IncrementalTree.update
        incremental.IncrementalTree.update = refuse  # type: ignore[method-assign]
        try:
            return shown()
        finally:
            incremental.IncrementalTree.update = original  # type: ignore[method-assign]

    kinds: dict[str, Callable[[], Any]] = {
        "untraced": untraced,
        "bare SDK (InMemorySpanExporter)": bare,
        "an.trace() quiet": quiet,
        "an.trace() + reader, folding": shown,
        "an.trace() + reader, full builds": shown_rebuilding,
    }
    walls: dict[str, list[float]] = {kind: [] for kind in kinds}
    cpus: dict[str, list[float]] = {kind: [] for kind in kinds}
    notes: dict[str, str] = {}
    for _round in range(rounds):  # interleaved, so that drift hits every kind alike
        for kind, run in kinds.items():
            wall, cpu, result = _timed(run)
            walls[kind].append(wall)
            cpus[kind].append(cpu)
            if isinstance(result, tuple):
                notes[kind] = f"settle {result[1] * 1e3:.0f} ms" + (
                    f", {result[2]} reads" if len(result) > 2 else ""
                )
                if result[0] != 2 * steps + 1:
                    raise RuntimeError(f"{kind}: {result[0]} nodes, not {2 * steps + 1}")
    print(", ".join(f"{key} {value}" for key, value in machine().items()))
    print(f"{2 * steps:,} spans, {rounds} rounds interleaved; best wall / best CPU seconds")
    base_wall, base_cpu = min(walls["untraced"]), min(cpus["untraced"])
    bare_wall = min(walls["bare SDK (InMemorySpanExporter)"])
    quiet_wall = min(walls["an.trace() quiet"])
    print(f"{'':<34}{'wall s':>8}{'CPU s':>8}{'/untraced':>11}{'/bare':>7}{'/quiet':>8}  note")
    for kind in kinds:
        wall, cpu = min(walls[kind]), min(cpus[kind])
        print(
            f"{kind:<34}{wall:>8.2f}{cpu:>8.2f}{wall / base_wall:>10.2f}x"
            f"{wall / bare_wall:>6.2f}x{wall / quiet_wall:>7.2f}x  {notes.get(kind, '')}"
        )
    print(f"(untraced CPU {base_cpu:.2f} s)")


def part_fold(count: int, rounds: int) -> None:
    from _common import plain_pass
    from bench_core import fresh_trace, make_spans

    from agenta_notebook.core.rollup import build_tree

    template, raw = make_spans(count)

    def full() -> Any:
        trace = fresh_trace(template, raw[:0])
        for span in raw:
            trace.span_ended(span.context.span_id, span)
        return trace, trace.tree

    # As the collector tells a live trace: each span when it starts, and when it ends.
    events = sorted(
        [(span.start_time, 0, span) for span in raw] + [(span.end_time, 1, span) for span in raw],
        key=lambda event: (event[0], event[1]),
    )

    def folded(batch: int) -> Callable[[], Any]:
        def run() -> Any:
            trace = fresh_trace(template, raw[:0])
            for start in range(0, len(events), batch):
                for _time, ends, span in events[start : start + batch]:
                    if ends:
                        trace.span_ended(span.context.span_id, span)
                    else:
                        trace.span_started(span.context.span_id, span)
                trace.totals  # noqa: B018 - what a budget or a redraw reads
            return trace, trace.tree

        return run

    full()  # first-use costs (price table, imports) outside the timings
    kinds: dict[str, Callable[[], Any]] = {
        "plain pass": lambda: plain_pass(raw),
        "full build (bench_core b)": full,
        "folded, batches of 10,000": folded(10_000),
        "folded, batches of 1,000": folded(1_000),
        "folded, batches of 100": folded(100),
    }
    best: dict[str, float] = {}
    best_less_gc: dict[str, float] = {}
    for _round in range(rounds):
        for kind, run in kinds.items():
            gc.collect()  # (as `_timed` does, before the collector's time is counted)
            with _CollectorTime() as collector:
                started = time.process_time()
                result = run()
                cpu = time.process_time() - started
            best[kind] = min(best.get(kind, cpu), cpu)
            less = cpu - collector.seconds
            best_less_gc[kind] = min(best_less_gc.get(kind, less), less)
            if isinstance(result, tuple):
                trace, tree = result
                assert len(tree.nodes) == count
                reference = build_tree(trace.records(), trace.root_span_id, name=trace.name)
                assert repr(tree.totals) == repr(reference.totals), kind
            del result
    print(", ".join(f"{key} {value}" for key, value in machine().items()))
    print(f"{count:,} finished SDK spans (bench_core's shape), best of {rounds}, CPU time")
    base = best["plain pass"]
    print(f"{'':<28}{'CPU ms':>10}{'/ pass':>8}{'less GC ms':>12}{'/ pass':>8}")
    for kind, value in best.items():
        less = best_less_gc[kind]
        print(
            f"{kind:<28}{value * 1e3:>10.1f}{value / base:>7.2f}x"
            f"{less * 1e3:>12.1f}{less / base:>7.2f}x"
        )


def part_cell_fold(steps: int, rounds: int) -> None:
    """The folds of the live cell's own spans (a step over an inner span, nothing of
    their own), in this process: `trace.tree` read every 1,850 steps (about as often
    as the view redraws that cell in the kernel), against one full build of the same
    spans when the block ends (the settle of a `--quiet` cell); CPU time of those reads
    less the garbage collector's time in them."""
    import agenta_notebook as an

    every = 1_850

    def folds() -> tuple[float, int]:
        cpu, reads = 0.0, 0
        with an.trace("folded") as trace, _CollectorTime() as collector:
            for step in range(steps):
                with an.span("step"), an.span("inner"):
                    pass
                if step % every == every - 1:
                    collected, started = collector.seconds, time.process_time()
                    trace.tree  # noqa: B018 - the redraw's read
                    cpu += time.process_time() - started - (collector.seconds - collected)
                    reads += 1
        return cpu, reads

    def settle() -> tuple[float, float]:
        with an.trace("settled") as trace:
            _steps(an.span, steps)
        with _CollectorTime() as collector:
            started = time.process_time()
            trace.tree.nodes  # noqa: B018 - the settle's full build and walk
            return time.process_time() - started, collector.seconds

    folded: list[float] = []
    built: list[float] = []
    reads = 0
    for _round in range(rounds):
        gc.collect()
        cpu, reads = folds()
        folded.append(cpu)
        gc.collect()
        cpu, collected = settle()
        built.append(cpu - collected)
    print(", ".join(f"{key} {value}" for key, value in machine().items()))
    print(f"{2 * steps:,} spans of the live cell, best of {rounds}, CPU less GC")
    print(f"folded in {reads} reads  {min(folded):>8.3f} s")
    print(f"one full build           {min(built):>8.3f} s")
    print(f"folds / full build       {min(folded) / min(built):>8.2f}x")


def _kernel_cells(steps: int) -> dict[str, str]:
    body = "run_steps({maker})\nEND = time.time()"
    return {
        "untraced": "# {n}\n" + body.format(maker="span"),
        "bare SDK": "# {n}\n" + body.format(maker="bare_tracer.start_as_current_span"),
        "quiet": "%%agenta_trace live --quiet\n# {n}\n" + body.format(maker="span"),
        "shown": "%%agenta_trace live\n# {n}\n" + body.format(maker="span"),
    }


KERNEL_SETUP = """
%load_ext agenta_notebook
import time, gc
from agenta_notebook import span
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from agenta_notebook.runtime import detach
_bare = TracerProvider()
detach(_bare)  # the collector attaches itself to every SDK provider: a bare one stays bare
_exporter = InMemorySpanExporter()
_bare.add_span_processor(SimpleSpanProcessor(_exporter))
bare_tracer = _bare.get_tracer("bench")
"""


def part_kernel(steps: int, rounds: int) -> None:
    def run(client: Any, code: str) -> tuple[float, float]:
        start = time.perf_counter()
        run_code(client, code, timeout=600)
        idle_wall, idle_epoch = time.perf_counter(), time.time()
        return idle_wall - start, idle_epoch - float(kernel_value(client, "END"))

    cells = _kernel_cells(steps)
    totals: dict[str, list[float]] = {kind: [] for kind in cells}
    after: dict[str, list[float]] = {kind: [] for kind in cells}
    with started_kernel() as client:
        for code in (KERNEL_SETUP, STEP_CODE.format(steps=steps)):
            run_code(client, code)
        run(client, cells["shown"].format(n="warm-up"))
        for n in range(rounds):
            for kind, code in cells.items():
                run_code(client, "_exporter.clear(); gc.collect();")
                total, late = run(client, code.format(n=n))
                totals[kind].append(total)
                after[kind].append(late)
    print(", ".join(f"{key} {value}" for key, value in machine().items()))
    print(f"{2 * steps:,} spans per cell, one kernel, {rounds} rounds interleaved (median)")
    base = statistics.median(totals["untraced"])
    bare = statistics.median(totals["bare SDK"])
    quiet = statistics.median(totals["quiet"])
    print(
        f"{'cell':<10}{'wall s':>8}{'/untraced':>11}{'/bare':>7}{'/quiet':>8}"
        f"{'idle after end s':>18}"
    )
    for kind in cells:
        value = statistics.median(totals[kind])
        print(
            f"{kind:<10}{value:>8.2f}{value / base:>10.2f}x{value / bare:>6.2f}x"
            f"{value / quiet:>7.2f}x{statistics.median(after[kind]):>18.2f}"
        )
    print("targets: shown <= 1.15x quiet; quiet <= 0.8x bare (stretch <= 1.3x untraced);")
    print("idle after the cell's last line <= 0.2 s")


SCALE_CELL = """%%agenta_trace scale --quiet
run_steps(span, {steps})
"""

SCALE_MEASURE = """
import resource, time
import pandas as pd
def _rss_kb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() // 1024
def _peak_kb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
from agenta_notebook import last_trace
_t = last_trace()
_p0 = _peak_kb()
_c0 = time.process_time()
_counted_frame = _t.to_dataframe()  # no tree built yet: the spans that count, and columns
_c1 = time.process_time()
_p1 = _peak_kb()
_counted_nodes = _t.counted().tree.size  # (not kept: the tree below lets it go)
_tree = _t.tree
_c2 = time.process_time()
_frame = _t.to_dataframe()  # from the whole tree's nodes
_c3 = time.process_time()
pd.testing.assert_frame_equal(_counted_frame, _frame)
SCALE = dict(
    spans=len(_tree.nodes),
    rows=len(_frame),
    counted_nodes=_counted_nodes,
    counted_frame=_c1 - _c0,
    rollup=_c2 - _c1,
    frame=_c3 - _c2,
    cell_peak_kb=_p0,
    counted_peak_kb=_p1,
    peak_kb=_peak_kb(),
    now_kb=_rss_kb(),
)
"""


def part_scale(steps: int) -> None:
    """Issue 14's 1M-span check: a `--quiet` traced cell making `2 * steps` spans in a
    fresh kernel (nothing else keeps the SDK spans), then `trace.to_dataframe()` with no
    tree built (as a user's first read: nodes only for the spans that count), then
    `trace.tree` and `trace.to_dataframe()` again from its nodes: their CPU time (the
    two frames checked equal), and the kernel's peak RSS over its RSS just before the
    cell, per span."""
    with started_kernel() as client:
        for code in (
            KERNEL_SETUP,
            STEP_CODE.format(steps=10),
            "%%agenta_trace warm --quiet\nrun_steps(span, 10)",
        ):
            run_code(client, code)
        run_code(
            client,
            "import gc, resource; gc.collect()\n"
            "START_KB = int(open('/proc/self/statm').read().split()[1])"
            " * resource.getpagesize() // 1024",
        )
        start_kb = kernel_value(client, "START_KB")
        started = time.perf_counter()
        run_code(client, SCALE_CELL.format(steps=steps), timeout=3600)
        cell = time.perf_counter() - started
        run_code(client, SCALE_MEASURE, timeout=3600)
        result = kernel_value(client, "SCALE")
    spans = result["spans"] - 1  # the root
    print(", ".join(f"{key} {value}" for key, value in machine().items()))
    print(f"{spans:,} spans in one --quiet traced cell (a fresh kernel), cell wall {cell:.1f} s")
    counted = result["counted_frame"]
    print(
        "DataFrame first, no tree built (nodes only for the spans that count:"
        f" {result['counted_nodes']:,}; the others from columns): {counted:.2f} s CPU"
        " (target < 5 s at 1M)"
    )
    total = result["rollup"] + result["frame"]
    print(
        f"then the whole tree {result['rollup']:.2f} s + its DataFrame {result['frame']:.2f} s"
        f" = {total:.2f} s CPU; first / tree + DataFrame {counted / total:.2f}x"
        " (the two frames are checked equal)"
    )

    def per_span(kb: float) -> str:
        return f"{(kb - start_kb) * 1024 / spans:,.0f} B"

    print(
        "RSS over the kernel's before the cell, per span (target <= 1,536 B): peak in the"
        f" cell {per_span(result['cell_peak_kb'])}; peak with the first DataFrame"
        f" {per_span(result['counted_peak_kb'])}; peak at the end, with both frames and the"
        f" tree {per_span(result['peak_kb'])}; at the end {per_span(result['now_kb'])}"
    )


WHERE_SETUP = """
import gc as _gc, threading as _threading, time as _time
from agenta_notebook.views import display as _display
WHERE = {}
def _reset_where():
    WHERE.update(redraws=0, redraw_cpu=0.0, gc=0.0, collections=[0, 0, 0], cell=0.0)
    WHERE["process"] = _time.process_time()
_reset_where()
_gc_started = {}
def _on_gc(phase, info):
    if phase == "start":
        _gc_started[_threading.get_ident()] = _time.perf_counter()
        return
    started = _gc_started.pop(_threading.get_ident(), None)
    if started is not None:
        WHERE["gc"] += _time.perf_counter() - started
        WHERE["collections"][info["generation"]] += 1
_gc.callbacks.append(_on_gc)
_real_redraw = _display.TraceDisplay._redraw
def _timed_redraw(self, *, settle):
    started = _time.thread_time()
    try:
        return _real_redraw(self, settle=settle)
    finally:
        WHERE["redraws"] += 1
        WHERE["redraw_cpu"] += _time.thread_time() - started
_display.TraceDisplay._redraw = _timed_redraw
"""

WHERE_CELL = """{magic}
_cell_started = _time.thread_time()
run_steps({maker})
WHERE["cell"] = _time.thread_time() - _cell_started
"""


#: The live cell's steps with a model call inside: the inner span records usage (one
#: priced call of the same cost each), so that half the spans have a cost of their own.
MODEL_CALL_SETUP = """
from contextlib import contextmanager as _contextmanager
from agenta_notebook import record_usage as _record_usage
@_contextmanager
def model_call(name):
    if name == "inner":
        with span(name, type="llm") as called:
            _record_usage(model="gpt-4o", input_tokens=120, output_tokens=30)
            yield called
    else:
        with span(name) as step:
            yield step
"""


def part_where(steps: int, rounds: int, maker: str = "span") -> None:
    """Where the CPU of each kernel cell goes (CPU seconds, median of `rounds`); with
    `maker="model_call"`, a model call in each step."""
    cells = {
        "untraced": WHERE_CELL.format(magic="", maker=maker),
        "quiet": WHERE_CELL.format(magic="%%agenta_trace where --quiet", maker=maker),
        "shown": WHERE_CELL.format(magic="%%agenta_trace where", maker=maker),
    }
    found: dict[str, list[dict[str, Any]]] = {kind: [] for kind in cells}
    with started_kernel() as client:
        for code in (KERNEL_SETUP, STEP_CODE.format(steps=steps), WHERE_SETUP, MODEL_CALL_SETUP):
            run_code(client, code)
        for _round in range(rounds):
            for kind, code in cells.items():
                run_code(client, "_exporter.clear(); gc.collect(); _reset_where()")
                run_code(client, code, timeout=3600)
                found[kind].append(
                    kernel_value(
                        client, "dict(WHERE, process=_time.process_time() - WHERE['process'])"
                    )
                )
    print(", ".join(f"{key} {value}" for key, value in machine().items()))
    print(f"{2 * steps:,} spans per cell, one kernel, {rounds} rounds interleaved (median)")
    if maker != "span":
        print(f"each step calls a model: {steps:,} spans with a cost of their own")
    print(
        f"{'cell':<10}{'process s':>10}{'cell thread s':>15}{'redraws':>9}{'redraw s':>10}"
        f"{'gc s':>7}  collections (gen 0/1/2)"
    )
    for kind, runs in found.items():

        def median(key: str, runs: list[dict[str, Any]] = runs) -> float:
            return float(statistics.median(run[key] for run in runs))

        collections = "/".join(
            str(int(statistics.median(run["collections"][g] for run in runs))) for g in range(3)
        )
        print(
            f"{kind:<10}{median('process'):>10.2f}{median('cell'):>15.2f}"
            f"{median('redraws'):>9.0f}{median('redraw_cpu'):>10.2f}{median('gc'):>7.2f}"
            f"  {collections}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part",
        choices=["process", "fold", "cellfold", "kernel", "where", "calls", "scale", "all"],
        default="process",
    )
    parser.add_argument("--spans", type=int, default=100_000, help="for --part fold")
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=2)
    options = parser.parse_args()
    if options.part in ("process", "all"):
        part_process(options.steps, options.rounds)
    if options.part in ("fold", "all"):
        part_fold(options.spans, options.rounds)
    if options.part in ("cellfold", "all"):
        part_cell_fold(options.steps, max(options.rounds, 3))
    if options.part in ("kernel", "all"):
        part_kernel(options.steps, options.rounds)
    if options.part in ("where", "all"):
        part_where(options.steps, options.rounds)
    if options.part in ("calls", "all"):
        part_where(options.steps, options.rounds, maker="model_call")
    if options.part == "scale":  # not in "all": a million spans take minutes
        part_scale(options.steps)


if __name__ == "__main__":
    main()
