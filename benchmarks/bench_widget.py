"""Time to first display of the trace widget, against building the Trace, in a real kernel.

For traces of 1k, 10k and 100k synthetic spans this prints, per size:
- build: building the `Trace` and its tree (the baseline, best of 3);
- first display: `show_trace(trace)` on the built trace (widget + static HTML + text, sent
  to a real kernel's iopub), as a ratio to build (target <= 2x);
- widget models created by that first display (target <= 1,000);
- the static `text/html` size (target < 1 MB);
- models left after `close()` (should be 0).

Run: .venv/bin/python benchmarks/bench_widget.py [sizes...]
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from _common import started_kernel  # (importing _common keeps cells out of the ledger)

SIZES = (1_000, 10_000, 100_000)


def synthetic_records(count: int) -> list[Any]:
    """An agent run of `count` spans: root -> steps -> (llm call, tool -> llm call, ...)."""
    from agenta_notebook.core.rollup import SpanRecord

    trace_id = 0xABC
    records = [SpanRecord(trace_id, 1, None, "agent run", 0, 10 * count + 10)]
    models = ("gpt-4o-mini", "gpt-4o", "claude-3-5-haiku-latest", "my-local-llama")
    span_id = 1
    step = 0
    while span_id < count:
        step += 1
        step_id = span_id + 1
        start = span_id * 10
        records.append(
            SpanRecord(
                trace_id,
                step_id,
                1,
                f"step {step}",
                start,
                start + 80,
                attributes={"ag.type.node": "agent"},
            )
        )
        span_id = step_id
        tool_id = 0
        for position in range(8):
            if span_id >= count:
                break
            span_id += 1
            begin = start + position * 10 + 1
            if position % 3 == 1:
                tool_id = span_id
                records.append(
                    SpanRecord(
                        trace_id,
                        span_id,
                        step_id,
                        "search tool",
                        begin,
                        begin + 9,
                        attributes={"ag.type.node": "tool"},
                    )
                )
                continue
            parent = tool_id if position % 3 == 2 and tool_id else step_id
            failed = step % 97 == 0 and position == 0
            records.append(
                SpanRecord(
                    trace_id,
                    span_id,
                    parent,
                    "chat",
                    begin,
                    begin + 5,
                    status="ERROR" if failed else "UNSET",
                    attributes={
                        "ag.type.node": "llm",
                        "gen_ai.request.model": models[(step + position) % len(models)],
                        "gen_ai.usage.input_tokens": 100 + position,
                        "gen_ai.usage.output_tokens": 20 + step % 7,
                    },
                )
            )
    return records


def measure(count: int) -> dict[str, Any]:
    """Run inside a kernel: build, then first display, then close."""
    import gc

    from agenta_notebook.live import Trace
    from agenta_notebook.views.display import show_trace
    from agenta_notebook.views.widget import live_widget_count

    records = synthetic_records(count)
    builds = []
    for _ in range(3):
        gc.collect()
        started = time.perf_counter()
        trace = Trace(0xABC, "agent run", root_span_id=1, records=records)
        _ = trace.tree
        builds.append(time.perf_counter() - started)
    displays = []
    models = html_size = left = 0
    for _ in range(3):
        gc.collect()
        before = live_widget_count()
        started = time.perf_counter()
        shown = show_trace(trace)
        displays.append(time.perf_counter() - started)
        models = live_widget_count() - before
        html_size = len(shown.bundle()["text/html"].encode())
        shown.close()
        left = live_widget_count() - before
    return {
        "spans": len(trace.nodes),
        "build_s": min(builds),
        "display_s": min(displays),
        "models": models,
        "html_bytes": html_size,
        "left_after_close": left,
    }


def main(sizes: tuple[int, ...]) -> None:
    with started_kernel() as client:
        print(
            f"{'spans':>8} {'build':>9} {'display':>9} {'ratio':>6} {'models':>7} "
            f"{'html KB':>8} {'left':>5}"
        )
        for count in sizes:
            code = (
                "import json, runpy, sys\n"  # the kernel imports _common from here too
                f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
                f"_bench = runpy.run_path({str(Path(__file__).resolve())!r})\n"
                f"print('BENCH ' + json.dumps(_bench['measure']({count})))\n"
            )
            lines: list[str] = []

            def collect(message: dict[str, Any], into: list[str] = lines) -> None:
                if message["msg_type"] == "stream":
                    into.append(message["content"]["text"])
                elif message["msg_type"] == "error":
                    into.append("\n".join(message["content"]["traceback"]))

            reply = client.execute_interactive(code, timeout=900, output_hook=collect)
            text = "".join(lines)
            if reply["content"]["status"] != "ok" or "BENCH " not in text:
                raise SystemExit(f"benchmark failed for {count}:\n{text}")
            result = json.loads(text.split("BENCH ", 1)[1].splitlines()[0])
            ratio = result["display_s"] / result["build_s"]
            print(
                f"{result['spans']:>8,} {result['build_s'] * 1000:>7.0f}ms "
                f"{result['display_s'] * 1000:>7.0f}ms {ratio:>5.2f}x {result['models']:>7,} "
                f"{result['html_bytes'] / 1024:>8.1f} {result['left_after_close']:>5}"
            )


if __name__ == "__main__":
    main(tuple(int(arg) for arg in sys.argv[1:]) or SIZES)
