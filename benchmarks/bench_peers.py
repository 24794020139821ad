"""Per-span overhead of MLflow's `@mlflow.trace`, against bare OpenTelemetry, next to ours.

MLflow sets up OpenTelemetry globals of its own, so it runs in a separate venv
(`benchmarks/.venv-peers`, git-ignored), in a subprocess that also measures the bare
OpenTelemetry baseline (the one `bench_core.py` uses: a span on a separate SDK provider
with an in-memory exporter, `start_as_current_span` + `set_attributes` of the four
usage keys). The MLflow side is a function decorated `@mlflow.trace(span_type="LLM")`
that sets the same four attributes on its span, inside one root span; traces go to a
local file store in a temporary directory (tracking URI `file://...`), notebook display
off, nothing on the network; the timing includes writing the trace (root end + flush of
MLflow's async logging queue). Ours is `bench_core.bench_span_overhead` in this process.

    .venv/bin/python benchmarks/bench_peers.py --install   # once: the peers' venv
    .venv/bin/python benchmarks/bench_peers.py [--quick]

Set `AGENTA_BENCH_PEERS_PYTHON` to use another interpreter that has `mlflow-tracing`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PEERS_VENV = HERE / ".venv-peers"
#: mlflow-tracing is the skinny client; its local file store also needs these two.
PEER_PACKAGES = ("mlflow-tracing", "sqlparse", "pyyaml")
INSTALL_HINT = (
    "not installed: run `.venv/bin/python benchmarks/bench_peers.py --install` "
    f"(pip install {' '.join(PEER_PACKAGES)} into benchmarks/.venv-peers)"
)


@dataclass(frozen=True)
class PeerResult:
    """Seconds per call of MLflow and of the bare baseline, measured in one subprocess."""

    name: str
    version: str
    peer_per_call: float
    bare_per_call: float
    median_ratio: float
    traces_written: int


def peers_python() -> Path | None:
    """The interpreter of the peers' venv, if there is one."""
    configured = os.environ.get("AGENTA_BENCH_PEERS_PYTHON")
    candidate = Path(configured) if configured else PEERS_VENV / "bin" / "python"
    return candidate if candidate.exists() else None


def install() -> None:
    """Create `benchmarks/.venv-peers` (git-ignored) and install MLflow's tracing client."""
    subprocess.run([sys.executable, "-m", "venv", str(PEERS_VENV)], check=True)
    (PEERS_VENV / ".gitignore").write_text("*\n", encoding="utf-8")
    python = str(PEERS_VENV / "bin" / "python")
    subprocess.run([python, "-m", "pip", "install", "--quiet", *PEER_PACKAGES], check=True)


def measure_mlflow(calls: int, rounds: int) -> PeerResult | str:
    """Run the MLflow measurement in the peers' venv; a reason string if it cannot run."""
    python = peers_python()
    if python is None:
        return INSTALL_HINT
    probe = subprocess.run(
        [str(python), "-c", "import mlflow"], capture_output=True, text=True, check=False
    )
    if probe.returncode != 0:
        return INSTALL_HINT
    done = subprocess.run(
        [str(python), str(Path(__file__).resolve()), "--child", str(calls), str(rounds)],
        capture_output=True,
        text=True,
        check=False,
        timeout=1800,
        env={**os.environ, "PYTHONPATH": str(HERE)},
    )
    marker = [line for line in done.stdout.splitlines() if line.startswith("PEER ")]
    if done.returncode != 0 or not marker:
        return f"failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}"
    data = json.loads(marker[-1][5:])
    return PeerResult(**data)


# -- the child, in the peers' venv (no agenta_notebook there) -----------------------------


def _child(calls: int, rounds: int) -> None:
    os.environ["MLFLOW_ALLOW_FILE_STORE"] = "true"  # the local store, without the nag
    import logging

    logging.getLogger("mlflow").setLevel(logging.ERROR)
    store = tempfile.mkdtemp(prefix="agenta-bench-mlflow-")
    import mlflow  # type: ignore[import-not-found, unused-ignore]
    from _common import BARE_ATTRIBUTES, bare_opentelemetry, clock
    from mlflow.entities.trace_location import MlflowExperimentLocation  # type: ignore[import-not-found, unused-ignore]
    from mlflow.tracing.client import TracingClient  # type: ignore[import-not-found, unused-ignore]
    from mlflow.tracing.display import disable_notebook_display  # type: ignore[import-not-found, unused-ignore]

    uri = Path(store).as_uri()
    mlflow.set_tracking_uri(uri)
    experiment = TracingClient(uri).store.create_experiment("bench")
    mlflow.tracing.set_destination(MlflowExperimentLocation(experiment))
    disable_notebook_display()

    @mlflow.trace(span_type="LLM")  # type: ignore[untyped-decorator, unused-ignore]
    def traced_call() -> None:
        span = mlflow.get_current_active_span()
        assert span is not None, "MLflow tracing is not recording"
        span.set_attributes(BARE_ATTRIBUTES)

    bare_call, bare_root, bare_finished = bare_opentelemetry()

    def peer() -> float:
        started = clock()
        with mlflow.start_span("bench calls"):
            for _ in range(calls):
                traced_call()
        mlflow.flush_trace_async_logging()
        return clock() - started

    def bare() -> float:
        started = clock()
        with bare_root():
            for _ in range(calls):
                bare_call()
        elapsed = clock() - started
        assert bare_finished() == calls + 1
        return elapsed

    peer(), bare()  # warm up: imports, the store, first-call caches
    peer_times: list[float] = []
    bare_times: list[float] = []
    for index in range(rounds):
        if index % 2:
            bare_times.append(bare())
            peer_times.append(peer())
        else:
            peer_times.append(peer())
            bare_times.append(bare())
    traces = Path(store) / experiment / "traces"
    written = sum(1 for _ in traces.iterdir()) if traces.exists() else 0
    result = {
        "name": "mlflow @mlflow.trace",
        "version": mlflow.__version__,
        "peer_per_call": min(peer_times) / calls,
        "bare_per_call": min(bare_times) / calls,
        "median_ratio": statistics.median(
            p / b for p, b in zip(peer_times, bare_times, strict=True)
        ),
        "traces_written": written,
    }
    print("PEER " + json.dumps(result), flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer calls, for a smoke run")
    parser.add_argument("--install", action="store_true", help="create the peers' venv")
    parser.add_argument("--child", nargs=2, type=int, metavar=("CALLS", "ROUNDS"))
    options = parser.parse_args(argv)
    if options.child:
        _child(*options.child)
        return
    if options.install:
        install()
    calls, rounds = (1_000, 3) if options.quick else (5_000, 7)
    sys.path.insert(0, str(HERE))
    from bench_core import bench_span_overhead

    ours, ours_bare, ours_ratio = bench_span_overhead(calls, rounds)
    peer = measure_mlflow(calls, rounds)
    print(f"{'':<28}{'us/call':>10}{'bare us/call':>14}{'ratio (median pair)':>21}")
    print(
        f"{'ours: @span + record_usage':<28}{ours * 1e6:>10.2f}{ours_bare * 1e6:>14.2f}"
        f"{ours_ratio:>20.2f}x"
    )
    if isinstance(peer, str):
        print(f"{'mlflow @mlflow.trace':<28}{peer}")
        return
    print(
        f"{peer.name + ' ' + peer.version:<28}{peer.peer_per_call * 1e6:>10.2f}"
        f"{peer.bare_per_call * 1e6:>14.2f}{peer.median_ratio:>20.2f}x"
    )
    print(
        f"MLflow / ours, each against its own bare baseline: "
        f"{peer.median_ratio / ours_ratio:.1f}x ({peer.traces_written} traces written)"
    )


if __name__ == "__main__":
    main()
