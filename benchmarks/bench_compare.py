"""What `an.compare(a, b)` costs on two already-built traces, against building one of them.

Run: `.venv/bin/python benchmarks/bench_compare.py [--spans 10000] [--repeats 5]`. Prints
a table; asserts nothing about time. In one process and run:

  - build: `trace.tree` on a fresh live Trace fed the finished SDK spans of a 10k-span
    trace (`bench_core.make_spans` / `fresh_trace`: conversion, roll-up, pricing);
  - align: `an.compare(a, b)` on two such traces whose trees are already built;
  - align + frame: the same and `.to_dataframe()`, what a user asks for.

Target (issue 15): comparing two built traces costs at most as much as building one,
a ratio <= 1x.
"""

from __future__ import annotations

import argparse
import gc
import sys
from collections.abc import Sequence
from pathlib import Path

import agenta_notebook as an

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import best_of, clock, machine_line  # noqa: E402
from bench_core import fresh_trace, make_spans  # noqa: E402


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--spans", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    options = parser.parse_args(argv)
    count, repeats = options.spans, options.repeats

    template, raw = make_spans(count)
    build = float("inf")
    for _ in range(repeats):
        trace = fresh_trace(template, raw)
        started = clock()
        tree = trace.tree
        build = min(build, clock() - started)
        assert len(tree.nodes) == count
        del trace, tree
        gc.collect()

    first, second = fresh_trace(template, raw), make_spans(count)[0]
    assert len(first.tree.nodes) == len(second.tree.nodes) == count  # both built
    align = best_of(repeats, lambda: an.compare(first, second))
    framed = best_of(repeats, lambda: an.compare(first, second).to_dataframe())
    rows = len(an.compare(first, second).to_dataframe())
    assert rows == count, rows
    an.get_collector().clear()

    print(f"# bench_compare: {count:,} spans per trace, best of {repeats}")
    print(f"# {machine_line()}")
    print(f"{'measure':<34}{'ms':>10}{'ratio to build':>16}")
    print(f"{'build one trace (trace.tree)':<34}{build * 1e3:>10.1f}{1.0:>15.2f}x")
    print(f"{'compare two built traces':<34}{align * 1e3:>10.1f}{align / build:>15.2f}x")
    print(f"{'  ... and .to_dataframe()':<34}{framed * 1e3:>10.1f}{framed / build:>15.2f}x")
    print("target: compare <= 1x build")


if __name__ == "__main__":
    main()
