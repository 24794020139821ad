"""Instructions, not seconds: the roll-up, the DataFrame and the live fold counted by
valgrind's callgrind, so that two commits compare on a machine too noisy to time them.

On a shared machine the CPU time of one roll-up moves by 15% or more from run to run;
the number of instructions the interpreter executes for it moves by well under 1%
(the children run with one hash seed; the spans' random ids still differ). Each
figure here comes from child processes run under `valgrind --tool=callgrind`: one does
only the setup, the others the setup and then the measured operation `--repeat` times;
the difference, per repetition and per span, is the operation's count. Like every
benchmark here it prints ratios against a baseline measured in the same run.

- **plain pass** (the baseline of `bench_core.py` (b)): one pass over the finished SDK
  spans reading one attribute each;
- **roll-up**: `trace.tree` of a fresh trace fed the same spans (bench_core (b): SDK
  spans -> records -> the tree with every subtotal);
- **DataFrame**: `to_dataframe()` of that tree;
- **live fold**: the records of issue 14's live cell (a step over an inner span, nothing
  of their own) folded into a live tree in 27 batches, each followed by what a redraw
  reads (totals and the snapshot's stats), against one full build of the same records.
- **the live cell itself** (`--spans / 2` steps of `span("step")` over `span("inner")`):
  untraced, in `trace()` with its tree read once at the end (`--quiet`), and shown (the
  widget's view of the trace updated 27 times while the steps run, on the same thread,
  and once at the end), the quiet cell as the baseline: what the live view adds in work,
  against what `bench_live.py` times.

Needs valgrind (`apt-get install valgrind`); about twenty minutes on two cores. Counts
are instructions, not time: cache misses and the garbage collector are not in them (the
collector is off in the children, which leave without the collection at exit), so they
say which commit does less work, while `bench_core.py` and `bench_live.py` say what it
costs.

    .venv/bin/python benchmarks/bench_instructions.py [--spans 20000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from _common import machine

#: (group, operation): the setups are "core" (bench_core's spans) and "cell" (the live
#: cell's records); "none" is a group's setup alone
RUNS = (
    ("core", "none"),
    ("core", "pass"),
    ("core", "rollup"),
    ("core", "rollup+frame"),
    ("cell", "none"),
    ("cell", "build"),
    ("cell", "fold"),
    ("live", "none"),
    ("live", "untraced"),
    ("live", "quiet"),
    ("live", "shown"),
)
BATCHES = 27  # the live cell's redraws in the kernel (`bench_live.py --part cellfold`)


def _core_setup(spans: int) -> dict[str, Callable[[], Any]]:
    from _common import plain_pass
    from bench_core import fresh_trace, make_spans

    template, raw = make_spans(spans)
    # first-use costs (imports, the price table) in every child, the setup's alone too
    small_template, small = make_spans(60)
    warm = fresh_trace(small_template, small)
    warm.tree  # noqa: B018
    warm.to_dataframe()

    def rollup() -> Any:
        return fresh_trace(template, raw).tree

    def rollup_frame() -> Any:
        trace = fresh_trace(template, raw)
        trace.tree  # noqa: B018 - built first: the frame reads it
        return trace.to_dataframe()

    return {"pass": lambda: plain_pass(raw), "rollup": rollup, "rollup+frame": rollup_frame}


def _cell_setup(spans: int, records_file: str) -> dict[str, Callable[[], Any]]:
    import agenta_notebook as an
    from agenta_notebook.core.incremental import IncrementalTree
    from agenta_notebook.core.pricing import NO_USER_PRICES
    from agenta_notebook.core.rollup import PARENT_ID, SPAN_ID, build_tree, split_records

    # As a live trace keeps them, and gives them to the build and the fold: each span's
    # row and attributes (the collector's conversion is not counted here)
    records = list(split_records(an.load(records_file).records()))
    root = next(span for span in records if span[0][PARENT_ID] is None)
    root_id = root[0][SPAN_ID]
    rest = [span for span in records if span is not root]
    # even: a step and its inner span in one batch, as a live trace that saw the step
    # start has it (an inner span whose parent comes in a later batch is a late parent)
    batch = 2 * -(-len(rest) // (2 * BATCHES))
    build_tree(records[:200])  # first-use costs, in every child

    def fold() -> Any:
        tree = IncrementalTree(
            build_tree([root], root_id),
            root_span_id=root_id,
            name="cell",
            user_prices=NO_USER_PRICES,
        )
        for start in range(0, len(rest), batch):
            tree.update(rest[start : start + batch])
            tree.totals  # noqa: B018 - what a redraw reads
            tree.snapshot().stats  # noqa: B018
        return tree

    return {"build": lambda: build_tree(records, root_id), "fold": fold}


def _live_setup(spans: int) -> dict[str, Callable[[], Any]]:
    import agenta_notebook as an
    from agenta_notebook.views.widget import TraceView

    steps = spans // 2
    every = -(-steps // BATCHES)

    def run_steps(view: Any = None) -> None:
        for step in range(steps):
            with an.span("step"), an.span("inner"):
                pass
            if view is not None and step % every == every - 1:
                view.update()

    def quiet() -> Any:
        with an.trace("cell") as trace:
            run_steps()
        trace.tree  # noqa: B018 - the tree a quiet cell's totals come from
        an.get_collector().clear()

    def shown() -> Any:
        with an.trace("cell") as trace:
            view = TraceView(trace)
            run_steps(view)
        view.update()
        view.close()
        an.get_collector().clear()

    quiet()  # first-use costs (imports, the widget's modules), in every child
    shown()
    return {"untraced": run_steps, "quiet": quiet, "shown": shown}


def _child(group: str, operation: str, spans: int, repeat: int, records_file: str) -> None:
    if group == "core":
        operations = _core_setup(spans)
    elif group == "cell":
        operations = _cell_setup(spans, records_file)
    else:
        operations = _live_setup(spans)
    gc.collect()
    gc.disable()  # instructions of the operation, not of when the collector happens to run
    if operation != "none":
        run = operations[operation]
        for _ in range(repeat):
            run()
    # No collection at exit (the operations' garbage is not theirs to count) and no
    # teardown: the setup-only child and the others end alike.
    os._exit(0)


def cell_trace(steps: int) -> Any:
    """The live cell's trace (`bench_live.py`'s cell): `steps` steps, each over one inner
    span, made in `trace()`; the collector lets go of it."""
    import agenta_notebook as an

    with an.trace("cell") as trace:
        for _step in range(steps):
            with an.span("step"), an.span("inner"):
                pass
    an.get_collector().clear()
    return trace


def _cell_records(steps: int, path: str) -> None:
    """The live cell's spans, made once and saved (`Trace.save`); the children load them."""
    cell_trace(steps).save(path)


def _count(run: tuple[str, str], spans: int, repeat: int, records_file: str) -> int:
    group, operation = run
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        group,
        operation,
        "--spans",
        str(spans),
        "--repeat",
        str(repeat),
        "--records",
        records_file,
    ]
    environment = {**os.environ, "PYTHONHASHSEED": "0"}  # the same sets in every child
    done = subprocess.run(
        command, capture_output=True, text=True, check=False, cwd=os.getcwd(), env=environment
    )
    found = re.search(r"Collected\s*:\s*(\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise RuntimeError(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=20_000, help="spans per setup")
    parser.add_argument("--repeat", type=int, default=3, help="repetitions per operation")
    parser.add_argument("--child", nargs=2, metavar=("GROUP", "OPERATION"), help=argparse.SUPPRESS)
    parser.add_argument("--records", help=argparse.SUPPRESS)
    options = parser.parse_args(argv)
    if options.child:
        group, operation = options.child
        _child(group, operation, options.spans, options.repeat, options.records)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt-get install valgrind)")
    spans, repeat = options.spans, options.repeat
    with tempfile.TemporaryDirectory() as folder:
        records_file = str(Path(folder) / "cell.json")
        _cell_records(spans // 2, records_file)
        with ThreadPoolExecutor(max_workers=os.cpu_count() or 2) as pool:
            counts = dict(
                zip(
                    RUNS,
                    pool.map(lambda run: _count(run, spans, repeat, records_file), RUNS),
                    strict=True,
                )
            )

    def per_span(group: str, operation: str) -> float:
        return float((counts[(group, operation)] - counts[(group, "none")]) / repeat / spans)

    plain = per_span("core", "pass")
    rollup = per_span("core", "rollup")
    frame = per_span("core", "rollup+frame") - rollup
    build = per_span("cell", "build")
    fold = per_span("cell", "fold")
    print(", ".join(f"{key} {value}" for key, value in machine().items()))
    print(f"instructions per span (callgrind), {spans:,} spans, {repeat} repetitions")
    print(f"{'':<36}{'per span':>10}{'ratio':>9}")
    print(f"{'plain pass (bench_core b baseline)':<36}{plain:>10,.0f}{1:>8.2f}x")
    print(f"{'roll-up (bench_core b)':<36}{rollup:>10,.0f}{rollup / plain:>8.2f}x")
    print(f"{'DataFrame of it':<36}{frame:>10,.0f}{frame / plain:>8.2f}x")
    print(f"{'live cell: one full build':<36}{build:>10,.0f}{build / plain:>8.2f}x")
    print(
        f"{f'live cell: folded in {BATCHES} batches':<36}{fold:>10,.0f}{fold / plain:>8.2f}x"
        f"   {fold / build:.2f}x the full build"
    )
    quiet = per_span("live", "quiet")
    print("\nthe live cell itself, per span (the quiet cell is the baseline)")
    for label, operation in (("untraced", "untraced"), ("--quiet", "quiet"), ("shown", "shown")):
        count = per_span("live", operation)
        print(f"{label:<36}{count:>10,.0f}{count / quiet:>8.2f}x")


if __name__ == "__main__":
    main()
