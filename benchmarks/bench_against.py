"""This checkout against an older commit, timed in the same run: roll-up, DataFrame and
first display of one big trace.

    .venv/bin/python benchmarks/bench_against.py [--ref f799656] [--spans 100000] [--rounds 3]

The older commit is exported with `git archive` into a temporary directory (nothing is
checked out over this tree) and each version runs in its own fresh interpreter of the
project's venv, with the version's package first on `sys.path`; the runs alternate,
old and new, `--rounds` times, and the best CPU time of each phase is kept. Only the
public API is used, so any two versions compare:
  - spans: `trace()` with agents of 4 `span(type="llm")` calls that `record_usage` and 6
    tools each (36% of the spans carry usage), collected as they end;
  - (a small trace goes through every phase first, so first-use costs are left out)
  - rollup: the first `trace.tree` (records -> tree with every subtotal and price);
  - frame: `trace.to_dataframe()` on the built tree;
  - display: `trace._repr_mimebundle_()` (what a notebook calls to show the trace: the
    widget view, its static HTML twin and the text summary), in a plain interpreter;
the older commit is the baseline: the ratio printed is new / old.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import _common  # noqa: F401  (keeps the benchmark's cells out of the spend ledger)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PHASES = ("spans", "rollup", "frame", "display")

CHILD = r"""
import gc, json, sys, time
import agenta_notebook as an

def clock():
    return time.process_time()

def main(n, report=True):
    per_agent = 11  # the agent span, 4 llm calls, 6 tools
    agents = max(1, (n - 1) // per_agent)
    started = clock()
    with an.trace("bench") as trace:
        for a in range(agents):
            with an.span(f"agent {a}", type="agent"):
                for i in range(4):
                    with an.span("llm", type="llm"):
                        an.record_usage(
                            model=("gpt-4o", "gpt-4o-mini", "claude-3-5-sonnet")[i % 3],
                            input_tokens=100 + i,
                            output_tokens=20 + i,
                        )
                for i in range(6):
                    with an.span(f"tool {i}", type="tool"):
                        pass
    spans_time = clock() - started
    gc.collect()
    started = clock()
    tree = trace.tree
    rollup = clock() - started
    count = len(tree.nodes)
    started = clock()
    trace.to_dataframe()
    frame = clock() - started
    started = clock()
    bundle = trace._repr_mimebundle_()
    display = clock() - started
    assert "text/html" in bundle or "text/plain" in bundle
    if report:
        print(json.dumps({"spans": spans_time, "rollup": rollup, "frame": frame,
                          "display": display, "nodes": count,
                          "tokens": int(trace.totals.total_tokens or 0)}))

main(300, report=False)  # first use: imports, the price table's caches, pandas
main(int(sys.argv[1]))
"""


def export_ref(ref: str, into: Path) -> Path:
    """`git archive` of `ref` unpacked into `into`; returns the directory to put on the path."""
    archive = subprocess.run(
        ["git", "-C", str(ROOT), "archive", ref], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def run_child(source: Path, spans: int) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(source))
    env.pop("AGENTA_NOTEBOOK_STRICT", None)
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(spans)],
        env=env,
        cwd=tempfile.gettempdir(),  # so that `import agenta_notebook` takes PYTHONPATH's
        capture_output=True,
        text=True,
    )
    if done.returncode:
        raise SystemExit(f"the run on {source} failed:\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ref", default="f799656", help="the older commit (default f799656)")
    parser.add_argument("--spans", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agenta-notebook-ref-") as tmp:
        old_source = export_ref(args.ref, Path(tmp))
        best: dict[str, dict[str, float]] = {"old": {}, "new": {}}
        tokens: dict[str, int] = {}
        for _ in range(args.rounds):
            for label, source in (("old", old_source), ("new", ROOT)):
                result = run_child(source, args.spans)
                tokens[label] = int(result["tokens"])
                for key in PHASES:
                    value = result[key]
                    best[label][key] = min(best[label].get(key, value), value)
    if tokens["old"] != tokens["new"]:
        print(f"WARNING: the two versions disagree on the tokens: {tokens}")
    print(f"{args.spans:,} spans, best of {args.rounds} rounds, CPU ms; {args.ref} vs this tree")
    print(f"{'phase':<10}{'old ms':>12}{'new ms':>12}{'new/old':>10}")
    for phase in PHASES:
        old, new = best["old"][phase], best["new"][phase]
        print(f"{phase:<10}{old * 1000:>12.1f}{new * 1000:>12.1f}{new / old:>9.2f}x")


if __name__ == "__main__":
    main()
