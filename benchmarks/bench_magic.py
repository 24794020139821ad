"""What `%%agenta_trace` adds to a cell, measured in a real kernel.

Runs the same cell (10 nested spans) in one kernel, 200 times each:
  - baseline: no magic (the spans are still made, and dropped by the collector);
  - `%%agenta_trace --quiet`: recorded, nothing shown;
  - `%%agenta_trace`: recorded and the live tree displayed.
Each cell is timed from the execute request to the kernel going idle, as a frontend
waits for it; the three kinds are interleaved so that drift hits them alike. Prints the
median and mean per cell, the added cost against the baseline measured in this run
(targets: under 20 ms displayed, under 3 ms quiet), the output messages per cell, and
how much of the displayed cell's time is spent inside the view.

    .venv/bin/python benchmarks/bench_magic.py [--cells 200]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from typing import Any

from _common import (  # (importing _common keeps cells out of the ledger)
    kernel_value,
    run_code,
    started_kernel,
    timed_code,
)

SETUP = """
%load_ext agenta_notebook
from agenta_notebook import span

def nested(depth=10):
    if depth == 0:
        return
    with span(f"level {depth}"):
        nested(depth - 1)

# Time spent inside the view (show_trace and the view's methods), to split the added
# cost between the magic and the display.
import time as _time
import agenta_notebook.views.display as _display
_show_trace = _display.show_trace
VIEW_SECONDS = [0.0]

class _TimedView:
    def __init__(self, view):
        self._view = view
    def __getattr__(self, name):
        method = getattr(self._view, name)
        def timed(*args, **kwargs):
            start = _time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                VIEW_SECONDS[0] += _time.perf_counter() - start
        return timed

def _timed_show_trace(trace):
    start = _time.perf_counter()
    try:
        return _TimedView(_show_trace(trace))
    finally:
        VIEW_SECONDS[0] += _time.perf_counter() - start

_display.show_trace = _timed_show_trace
"""

# `{n}` makes every cell distinct, as in a notebook of 200 cells (the same text twice
# would be a re-run of one cell, which also closes that cell's previous view).
CELLS = {
    "baseline": "# cell {n}\nnested()",
    "quiet": "%%agenta_trace bench --quiet\n# cell {n}\nnested()",
    "displayed": "%%agenta_trace bench\n# cell {n}\nnested()",
}


class _Counter:
    """Counts the output messages (iopub) a cell produces."""

    def __init__(self) -> None:
        self.messages = 0

    def __call__(self, _msg: dict[str, Any]) -> None:
        self.messages += 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cells", type=int, default=200, help="cells of each kind")
    parser.add_argument("--warmup", type=int, default=20, help="untimed cells of each kind")
    options = parser.parse_args()

    with started_kernel() as client:
        timed_code(client, SETUP)
        times: dict[str, list[float]] = {kind: [] for kind in CELLS}
        counters = {kind: _Counter() for kind in CELLS}
        for n in range(options.warmup):
            for code in CELLS.values():
                timed_code(client, code.format(n=f"warmup {n}"))
        timed_code(client, "VIEW_SECONDS[0] = 0.0")
        for n in range(options.cells):
            for kind, code in CELLS.items():
                times[kind].append(timed_code(client, code.format(n=n), counters[kind]))
        view_seconds = float(kernel_value(client, "VIEW_SECONDS[0]"))
        # (a failed assert stops the run: the traced cell did not record its 11 spans)
        run_code(client, "import agenta_notebook as an; assert len(an.last_trace().nodes) == 11")

    base_median = statistics.median(times["baseline"])
    base_mean = statistics.fmean(times["baseline"])
    print(f"{options.cells} cells of each kind, 10 nested spans per cell, one kernel")
    print(
        f"{'cell':<11}{'median ms':>11}{'mean ms':>10}{'added ms (median)':>19}{'ratio':>8}"
        f"{'messages':>10}"
    )
    for kind, samples in times.items():
        median = statistics.median(samples)
        mean = statistics.fmean(samples)
        added = (median - base_median) * 1e3
        print(
            f"{kind:<11}{median * 1e3:>11.2f}{mean * 1e3:>10.2f}{added:>19.2f}"
            f"{median / base_median:>8.2f}{counters[kind].messages / options.cells:>10.1f}"
        )
    quiet_added = (statistics.median(times["quiet"]) - base_median) * 1e3
    shown_added = (statistics.median(times["displayed"]) - base_median) * 1e3
    view_ms = view_seconds / options.cells * 1e3
    print(
        f"added per cell: quiet {quiet_added:.2f} ms (target < 3), "
        f"displayed {shown_added:.2f} ms (target < 20); "
        f"baseline mean {base_mean * 1e3:.2f} ms"
    )
    print(
        f"inside the kernel, the view (show_trace and finish) took {view_ms:.2f} ms "
        "per displayed cell; the rest of the added cost is the magic and the messages"
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
