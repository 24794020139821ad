"""The benchmark suite in one command: one table, every timing a ratio to a baseline
measured in the same run.

    .venv/bin/python benchmarks/run.py            # everything (a few minutes; 1M spans)
    .venv/bin/python benchmarks/run.py --quick    # no 1M spans, no peers, fewer cells

Rows (see each script's docstring for the details of its measurement):
  - span: `@span` + `record_usage` per call vs a bare OpenTelemetry span (bench_core);
  - peer: MLflow's `@mlflow.trace` vs bare OpenTelemetry in its own venv and subprocess,
    and MLflow vs ours, each against its own bare baseline (bench_peers);
  - cell: `%%agenta_trace` in a real kernel, quiet and displayed, vs the same plain cell
    (bench_magic, run as it is);
  - scale: roll-up, DataFrame, static HTML, first widget display for 1k..1M spans vs a
    plain pass over the same spans, peak memory, growth per 10x (bench_scale);
  - memory: retained per span vs an in-memory exporter, and after 1,000 traced cells
    vs after 200 (the default retention) (bench_scale).
"""

from __future__ import annotations

import argparse
import math
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import machine_line  # noqa: E402


@dataclass(frozen=True)
class Row:
    measurement: str
    value: str
    baseline: str
    ratio: str
    note: str = ""


def _ratio(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}x"


def _progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def span_rows(quick: bool) -> tuple[list[Row], float]:
    from bench_core import bench_span_overhead

    calls, rounds = (2_000, 3) if quick else (10_000, 11)
    ours, bare, median = bench_span_overhead(calls, rounds)
    row = Row(
        "span: @span(type='llm') + record_usage, per call",
        f"{ours * 1e6:.2f} us",
        f"{bare * 1e6:.2f} us bare OpenTelemetry",
        _ratio(median),
        f"target <= 1.3x; median of {rounds} paired rounds of {calls:,} calls",
    )
    return [row], median


def peer_rows(ours_ratio: float) -> list[Row]:
    from bench_peers import PeerResult, measure_mlflow

    result = measure_mlflow(5_000, 7)
    if not isinstance(result, PeerResult):
        return [Row("peer: MLflow @mlflow.trace, per call", result, "", "")]
    return [
        Row(
            f"peer: MLflow {result.version} @mlflow.trace, per call",
            f"{result.peer_per_call * 1e6:.2f} us",
            f"{result.bare_per_call * 1e6:.2f} us bare OpenTelemetry (same subprocess)",
            _ratio(result.median_ratio),
            f"local file store, display off; {result.traces_written} traces written",
        ),
        Row(
            "peer: MLflow / ours, each over its own bare baseline",
            _ratio(result.median_ratio),
            _ratio(ours_ratio),
            _ratio(result.median_ratio / ours_ratio),
            "how many times more MLflow adds than we do",
        ),
    ]


def cell_rows(quick: bool) -> list[Row]:
    cells, warmup = ("30", "5") if quick else ("200", "20")
    done = subprocess.run(
        [sys.executable, str(HERE / "bench_magic.py"), "--cells", cells, "--warmup", warmup],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
    )
    medians: dict[str, float] = {}
    for line in done.stdout.splitlines():
        parts = line.split()
        # bench_magic's table: kind, median ms, mean ms, added ms, ratio[, more columns]
        if len(parts) >= 5 and parts[0] in ("baseline", "quiet", "displayed"):
            medians[parts[0]] = float(parts[1])
    if done.returncode != 0 or len(medians) != 3:
        tail = ((done.stderr or done.stdout).strip().splitlines() or [""])[-1]
        return [Row("cell: %%agenta_trace", f"failed: {tail[:100]}", "", "")]
    base = medians["baseline"]
    rows = []
    for kind, target in (("quiet", 3), ("displayed", 20)):
        added = medians[kind] - base
        rows.append(
            Row(
                f"cell: %%agenta_trace{' --quiet' if kind == 'quiet' else ''} (10 spans), "
                "real kernel",
                f"{medians[kind]:.2f} ms",
                f"{base:.2f} ms same cell, no magic",
                _ratio(medians[kind] / base),
                f"adds {added:.2f} ms (target < {target} ms); median of {cells} cells",
            )
        )
    return rows


def scale_rows(sizes: tuple[int, ...]) -> list[Row]:
    from bench_scale import PHASES, growth, run_size

    rows: list[Row] = []
    results = []
    for count in sizes:
        _progress(f"scale: {count:,} spans in a fresh kernel")
        result = run_size(count)
        results.append(result)
        base = result["pass"]
        for phase in PHASES:
            label = {
                "rollup": "roll-up (trace.tree)",
                "frame": "DataFrame",
                "html": "static HTML",
                "widget": "first widget display",
            }[phase]
            note = f"{result['models']} widget models" if phase == "widget" else ""
            rows.append(
                Row(
                    f"scale {count:,}: {label}",
                    f"{result[phase] * 1e3:,.1f} ms",
                    f"{base * 1e3:,.1f} ms plain pass",
                    _ratio(result[phase] / base),
                    note,
                )
            )
        rows.append(
            Row(
                f"scale {count:,}: peak memory (RSS over the kernel's start)",
                f"{result['peak_mb']:,.0f} MB",
                "",
                "",
                f"{result['peak_mb'] * 2**20 / count:,.0f} B per span",
            )
        )
    for row in growth(results):
        parts = ", ".join(
            f"{key} {row[key]:.1f}x" for key in ("rollup", "frame", "html", "widget", "peak_mb")
        )
        rows.append(
            Row(
                f"growth {row['from']:,} -> {row['to']:,} spans",
                parts,
                f"plain pass {row['pass']:.1f}x",
                _ratio(row["rollup"]),
                "linear is ~10x (ratio column: roll-up)",
            )
        )
    return rows


def memory_rows() -> list[Row]:
    from bench_scale import run_memory

    span = run_memory("span", 10_000)
    cells = run_memory("cells", 1_000)
    return [
        Row(
            "memory per span retained by the collector (finished block)",
            f"{span['ours_spans']:,.0f} B",
            f"{span['bare']:,.0f} B InMemorySpanExporter",
            _ratio(span["ours_spans"] / span["bare"]),
            "the SDK spans themselves (10k spans)",
        ),
        Row(
            "memory per span retained once the tree is built",
            f"{span['ours_tree']:,.0f} B",
            f"{span['bare']:,.0f} B InMemorySpanExporter",
            _ratio(span["ours_tree"] / span["bare"]),
            "records + nodes; the SDK spans are released",
        ),
        Row(
            f"memory after {cells['cells']:,} traced cells (simulated, start_root)",
            f"{cells['at_end'] / 2**20:.1f} MB",
            f"{cells['at_bound'] / 2**20:.1f} MB after {cells['bound']} cells",
            _ratio(cells["at_end"] / cells["at_bound"]),
            f"{cells['kept_traces']} traces kept (default retention {cells['bound']}); "
            "10 spans + tree + static HTML per cell",
        ),
    ]


def print_table(rows: list[Row]) -> None:
    headers = ("measurement", "value", "baseline (same run)", "ratio", "target / note")
    table = [headers, *((r.measurement, r.value, r.baseline, r.ratio, r.note) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(headers))]

    def line(cells: tuple[str, ...]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"

    print(line(headers))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in table[1:]:
        print(line(row))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="skip 1M spans and the peers")
    options = parser.parse_args(argv)
    started = time.monotonic()
    rows: list[Row] = []
    _progress("span overhead")
    span, ours_ratio = span_rows(options.quick)
    rows += span
    if options.quick:
        rows.append(Row("peer: MLflow @mlflow.trace", "skipped (--quick)", "", ""))
    else:
        _progress("peers (MLflow, separate venv)")
        rows += peer_rows(ours_ratio)
    _progress("cell overhead in a real kernel (bench_magic.py)")
    rows += cell_rows(options.quick)
    sizes = (1_000, 10_000, 100_000) if options.quick else (1_000, 10_000, 100_000, 1_000_000)
    rows += scale_rows(sizes)
    _progress("memory")
    rows += memory_rows()
    print(f"machine: {machine_line()}")
    print(f"suite: {'--quick' if options.quick else 'full'}, {time.monotonic() - started:.0f} s")
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
