"""What the spend ledger adds to a `--quiet` traced cell, measured in a real kernel.

Runs the same cell (10 nested spans, 3 of them model calls) in one kernel, 200 times each:
  - baseline: no magic;
  - quiet, ledger off: `%%agenta_trace --quiet` with `set_ledger(enabled=False)`;
  - quiet, ledger on: the same with `set_ledger(enabled=True)` (the file in a temporary
    folder, never the user's data folder).
Each cell is timed from the execute request to the kernel going idle; the kinds are
interleaved so that drift hits them alike. Prints the median per cell, the ledger's added
cost (on minus off, target under 3 ms), the time spent on the cell's path inside
`ledger.record` (queueing only: the writer thread builds and writes the rows), and the
rows found in the file afterwards.

    .venv/bin/python benchmarks/bench_ledger.py [--cells 200]
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import statistics
import sys
import tempfile
from pathlib import Path

from _common import kernel_value, started_kernel, timed_code

SETUP = """
%load_ext agenta_notebook
import time as _time
import agenta_notebook as an
from agenta_notebook import span, record_usage
from agenta_notebook.io import ledger as _ledger

def nested(depth=10):
    if depth == 0:
        return
    with span(f"level {depth}", type="llm" if depth <= 3 else None):
        if depth <= 3:
            record_usage(model="gpt-4o-mini", input_tokens=100 + depth, output_tokens=20)
        nested(depth - 1)

RECORD_SECONDS = []
_record = _ledger.record
def _timed_record(*args, **kwargs):
    start = _time.perf_counter()
    try:
        return _record(*args, **kwargs)
    finally:
        RECORD_SECONDS.append(_time.perf_counter() - start)
_ledger.record = _timed_record
"""

CELLS = {
    "baseline": "# cell {n}\nan.set_ledger(enabled=True)\nnested()",
    "quiet, ledger off": "%%agenta_trace bench --quiet\n# cell {n}\n"
    "an.set_ledger(enabled=False)\nnested()",
    "quiet, ledger on": "%%agenta_trace bench --quiet\n# cell {n}\n"
    "an.set_ledger(enabled=True)\nnested()",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200, help="cells of each kind")
    parser.add_argument("--warmup", type=int, default=20, help="untimed cells of each kind")
    options = parser.parse_args()

    folder = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    path = folder / "ledger.sqlite3"
    os.environ["AGENTA_NOTEBOOK_LEDGER"] = str(path)  # inherited by the kernel
    with started_kernel() as client:
        timed_code(client, SETUP)
        times: dict[str, list[float]] = {kind: [] for kind in CELLS}
        for n in range(options.warmup):
            for code in CELLS.values():
                timed_code(client, code.format(n=f"warmup {n}"))
        timed_code(client, "_ledger.flush(); RECORD_SECONDS.clear()")
        for n in range(options.cells):
            for kind, code in CELLS.items():
                times[kind].append(timed_code(client, code.format(n=n)))
        timed_code(client, "assert _ledger.flush(60)")
        # even calls: ledger-off cells (a lookup, then nothing), odd: queued ones
        record_us = {
            kind: [
                float(kernel_value(client, f"sorted(RECORD_SECONDS[{start}::2])[{q}] * 1e6"))
                for q in (
                    f"len(RECORD_SECONDS[{start}::2]) // 2",
                    f"len(RECORD_SECONDS[{start}::2]) * 9 // 10",
                )
            ]
            for kind, start in (("off", 0), ("on", 1))
        }
    with sqlite3.connect(path) as connection:
        cells = connection.execute("SELECT COUNT(*) FROM spend WHERE model IS NULL").fetchone()[0]
        rows = connection.execute("SELECT COUNT(*) FROM spend").fetchone()[0]

    base = statistics.median(times["baseline"])
    print(f"{options.cells} cells of each kind, 10 nested spans (3 model calls), one kernel")
    print(f"{'cell':<20}{'median ms':>11}{'mean ms':>10}{'vs baseline':>13}")
    for kind, samples in times.items():
        median = statistics.median(samples)
        print(
            f"{kind:<20}{median * 1e3:>11.2f}{statistics.fmean(samples) * 1e3:>10.2f}"
            f"{median / base:>13.3f}"
        )
    off = statistics.median(times["quiet, ledger off"])
    on = statistics.median(times["quiet, ledger on"])
    print(
        f"ledger on vs off: +{(on - off) * 1e3:.2f} ms per quiet cell (target < 3), "
        f"ratio {on / off:.3f}"
    )
    for kind, (median, p90) in record_us.items():
        print(
            f"on the cell's path, ledger.record with the ledger {kind}: "
            f"{median:.0f} us median, {p90:.0f} us p90 (the kernel's other threads included)"
        )
    print(f"ledger file: {cells} cells, {rows} rows ({path})")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
