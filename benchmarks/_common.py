"""Helpers shared by the benchmarks: the machine they ran on, timing, the bare baseline.

Imports nothing from `agenta_notebook`, so that `bench_peers.py` can use it from the
peers' separate venv (where only MLflow and OpenTelemetry are installed).
"""

from __future__ import annotations

import datetime
import os
import platform
import resource
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

# A benchmark's traced cells are not the user's spending: keep them out of the spend
# ledger (kernels and subprocesses the benchmarks start inherit this).
os.environ.setdefault("AGENTA_NOTEBOOK_LEDGER", "off")

#: CPU time of this process: on a shared machine it is much steadier than wall time.
clock = time.process_time


@contextmanager
def started_kernel() -> Iterator[Any]:
    """A fresh python3 kernel, ready (it inherits this process's environment); its
    blocking client is yielded, and the kernel is shut down after the block."""
    from jupyter_client.manager import start_new_kernel  # not in the peers' venv

    manager, client = start_new_kernel(kernel_name="python3", startup_timeout=60)
    try:
        yield client
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)


def ignore_output(_message: dict[str, Any]) -> None:
    """An output hook that drops a cell's outputs (the benchmarks time, they do not show)."""


def run_code(
    client: Any,
    code: str,
    timeout: float = 60,
    output_hook: Callable[[dict[str, Any]], None] = ignore_output,
) -> dict[str, Any]:
    """Run `code` in the kernel and return its reply; a cell that fails stops the run.
    `output_hook` sees each output message (dropped by default)."""
    reply: dict[str, Any] = client.execute_interactive(
        code, output_hook=output_hook, timeout=timeout
    )
    if reply["content"]["status"] != "ok":
        raise RuntimeError(f"cell failed: {code!r}: {reply['content']}")
    return reply


def timed_code(
    client: Any, code: str, output_hook: Callable[[dict[str, Any]], None] = ignore_output
) -> float:
    """`run_code`, timed: wall seconds from the execute request to the reply."""
    start = time.perf_counter()
    run_code(client, code, output_hook=output_hook)
    return time.perf_counter() - start


def kernel_value(client: Any, expression: str) -> Any:
    """The value of a Python `expression` in the kernel (read back from its repr); an
    expression that fails stops the run."""
    reply = client.execute_interactive(
        "", output_hook=ignore_output, timeout=60, user_expressions={"v": expression}
    )
    value = reply["content"]["user_expressions"]["v"]
    if value.get("status") != "ok":
        raise RuntimeError(f"could not read {expression}: {value}")
    return eval(value["data"]["text/plain"])


def best_of(repeats: int, run: Callable[[], Any]) -> float:
    """The fastest of `repeats` runs of `run`, in CPU seconds."""
    best = float("inf")
    for _ in range(repeats):
        started = clock()
        run()
        best = min(best, clock() - started)
    return best


def plain_pass(spans: Iterable[Any]) -> int:
    """The baseline of the roll-up timings: one plain pass over finished SDK spans that
    reads one attribute of each (how many are LLM-typed)."""
    llm = 0
    for span in spans:
        attributes = span.attributes
        if attributes is not None and attributes.get("ag.type.node") == "llm":
            llm += 1
    return llm


def _first_line(path: str, prefix: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as lines:
            for line in lines:
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def machine() -> dict[str, str]:
    """nproc, CPU model, RAM, Python version and the date, for the results' header."""
    memory = _first_line("/proc/meminfo", "MemTotal")
    ram = f"{int(memory.split()[0]) / 1024 / 1024:.1f} GB" if memory else "unknown"
    try:
        load = " / ".join(f"{value:.2f}" for value in os.getloadavg())
    except OSError:
        load = "unknown"
    return {
        "nproc": str(os.cpu_count()),
        "cpu": _first_line("/proc/cpuinfo", "model name") or platform.processor() or "unknown",
        "ram": ram,
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "load": load,
    }


def machine_line() -> str:
    info = machine()
    return (
        f"{info['nproc']} cores (nproc), {info['cpu']}, {info['ram']} RAM, "
        f"Python {info['python']}, {info['date']}, load average {info['load']}"
    )


def rss_bytes() -> int:
    """The resident set size of this process now (Linux), 0 if unknown."""
    status = _first_line("/proc/self/status", "VmRSS")
    return int(status.split()[0]) * 1024 if status else 0


def peak_rss_bytes() -> int:
    """The peak resident set size of this process so far (`ru_maxrss`, Linux: KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


#: The attributes the bare baseline sets: what `record_usage(model=..., input_tokens=120,
#: output_tokens=30)` writes on a span typed "llm" (see bench_core.py).
BARE_ATTRIBUTES: dict[str, str | int] = {
    "ag.type.node": "llm",
    "ag.meta.response.model": "gpt-4o",
    "ag.metrics.unit.tokens.prompt": 120,
    "ag.metrics.unit.tokens.completion": 30,
}


def bare_provider() -> Any:
    """A plain SDK `TracerProvider` that stays bare: agenta_notebook attaches its collector
    to every SDK provider made in the process, so the baseline's is detached again."""
    from opentelemetry.sdk.trace import TracerProvider

    from agenta_notebook.runtime import detach

    provider = TracerProvider()
    detach(provider)
    return provider


def bare_opentelemetry() -> tuple[Callable[[], None], Callable[[], Any], Callable[[], int]]:
    """A bare OpenTelemetry span per call, on its own SDK provider (not the global one).

    Returns `(call, root, finished)`: `call()` makes one span with `BARE_ATTRIBUTES`,
    `root()` is a context manager for the enclosing span, and `finished()` returns how
    many spans the in-memory exporter holds, then clears it.
    """
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = bare_provider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("bench")

    def call() -> None:
        with tracer.start_as_current_span("call") as span:
            span.set_attributes(BARE_ATTRIBUTES)

    def root() -> Any:
        return tracer.start_as_current_span("bench calls")

    def finished() -> int:
        count = len(exporter.get_finished_spans())
        exporter.clear()
        return count

    return call, root, finished
