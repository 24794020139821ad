"""`export_to` a real Phoenix server: it reads our spans as we do.

The test starts Arize Phoenix (`arize-phoenix`, from its own venv `.venv-phoenix`, which
`./run test` builds: its pins are not the main environment's) on 127.0.0.1, on free
ports, with its data in a temporary directory, telemetry and every outside resource
off, and a guard that records and refuses any connection it tries to open beyond this
machine. A traced block with our own `@span(type="llm")` + `record_usage` spans, a
claim, and an OpenAI call (OpenInference's instrumentor, against the project's stand-in
server) inside an LLM-typed wrapper is exported with `an.export_to`; then Phoenix's REST
API (`GET /v1/projects/default/spans`, `.../traces`) must show:

- every span once, each of a kind (our LLM spans are LLM, not UNKNOWN);
- on each LLM span, the model and the token counts the roll-up counts there (none on
  the wrapper, none on the claim);
- the sum over its LLM spans, and its own total for the trace, equal to our root's.

Expected figures are computed here from the numbers recorded and the usage the server
returned, costs with `genai_prices.calc_price`.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import genai_prices
import pytest

import agenta_notebook as an
from agenta_notebook import demo
from agenta_notebook.live import Trace

PHOENIX_VENV = Path(__file__).resolve().parent.parent / ".venv-phoenix"
#: Phoenix takes 15-40 s to start on the 2-core CI machine (its first start compiles).
STARTUP_SECONDS = 75.0
#: How long Phoenix may take to have stored the spans it accepted.
INGEST_SECONDS = 20.0

#: Runs Phoenix's server with Python's sockets guarded: a connection or a name lookup
#: beyond this machine is written to OUTBOUND_LOG and refused.
LAUNCHER = r"""
import os, runpy, sys

sys.path.insert(0, os.environ["AGENTA_TEST_GUARD_PATH"])
from loopback_guard import Guard

Guard(log_path=os.environ["AGENTA_TEST_OUTBOUND_LOG"]).install()
sys.argv = ["phoenix", "serve"]
runpy.run_module("phoenix.server.main", run_name="__main__")
"""


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class Phoenix:
    url: str
    process: subprocess.Popen[bytes]
    log: Path
    outbound_log: Path

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(f"{self.url}{path}", timeout=10) as response:
            return json.load(response)

    def log_tail(self, lines: int = 40) -> str:
        text = self.log.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def outbound(self) -> list[str]:
        if not self.outbound_log.exists():
            return []
        return self.outbound_log.read_text(encoding="utf-8").splitlines()


def wait_until_up(phoenix: Phoenix, started: float) -> None:
    while time.monotonic() - started < STARTUP_SECONDS:
        if phoenix.process.poll() is not None:
            pytest.fail(f"Phoenix exited with {phoenix.process.returncode}:\n{phoenix.log_tail()}")
        try:
            with urllib.request.urlopen(f"{phoenix.url}/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    pytest.fail(f"Phoenix was not up after {STARTUP_SECONDS:.0f} s:\n{phoenix.log_tail()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)  # uvicorn's own graceful stop
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


@pytest.fixture(scope="module")
def phoenix(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Phoenix]:
    python = PHOENIX_VENV / "bin" / "python"
    if not python.exists():
        pytest.fail(f"{PHOENIX_VENV} is missing: `./run test` builds it (arize-phoenix)")
    directory = tmp_path_factory.mktemp("phoenix")
    port, grpc_port = free_port(), free_port()
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PHOENIX_", "OTEL_", "OPENAI_", "ANTHROPIC_"))
    }
    environment.update(
        {
            "HOME": str(directory),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(port),
            "PHOENIX_GRPC_PORT": str(grpc_port),
            "PHOENIX_WORKING_DIR": str(directory / "working"),
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "PHOENIX_ALLOW_EXTERNAL_RESOURCES": "false",
            "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
            "PHOENIX_ENABLE_MCP_SERVER": "false",
            "AGENTA_TEST_OUTBOUND_LOG": str(directory / "outbound.log"),
            "AGENTA_TEST_GUARD_PATH": str(Path(__file__).resolve().parent),
        }
    )
    log = directory / "phoenix.log"
    started = time.monotonic()
    with log.open("wb") as output:
        process = subprocess.Popen(
            [str(python), "-c", LAUNCHER],
            cwd=directory,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    server = Phoenix(f"http://127.0.0.1:{port}", process, log, directory / "outbound.log")
    try:
        wait_until_up(server, started)
        print(f"Phoenix up in {time.monotonic() - started:.1f} s", file=sys.stderr)
        yield server
    finally:
        stop(process)
    assert server.outbound() == [], "Phoenix tried to reach beyond this machine"


@pytest.fixture()
def openai_instrumented(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)  # the stand-in, never OpenAI
    instrumented = an.instrument_openai()
    yield
    if instrumented:
        an.uninstrument_openai()


def expected_cost(model: str, input_tokens: int, output_tokens: int, cached: int = 0) -> Decimal:
    usage = genai_prices.Usage(
        input_tokens=input_tokens, output_tokens=output_tokens, cache_read_tokens=cached or None
    )
    return genai_prices.calc_price(usage, model, provider_id="openai").total_price


@an.span(type="retriever")
def retrieve(question: str) -> list[str]:
    return [f"a document about {question}"]


@an.span(type="tool")
def search(query: str) -> str:
    return query.upper()


@an.span(name="ask gpt-4o", type="llm")
def ask_big(question: str, docs: list[str]) -> str:
    an.record_usage(
        model="gpt-4o",
        provider="openai",
        input_tokens=1200,
        output_tokens=80,
        cache_read_tokens=200,
    )
    return "an answer"


@an.span(name="ask gpt-4o-mini", type="llm")
def ask_small(question: str) -> str:
    an.record_usage(model="gpt-4o-mini", provider="openai", input_tokens=300, output_tokens=20)
    return "a short answer"


def traced_block(client: Any) -> tuple[Trace, Any]:
    """Our spans, a claim over two of them, and an instrumented call in a wrapper."""
    with an.trace("exported to phoenix") as trace:
        with an.span("answer", type="agent"):
            # The run's totals, stamped on the agent: a claim over the calls below.
            an.record_usage(input_tokens=1500, output_tokens=100)
            docs = retrieve("spans")
            ask_big("What is a span?", docs)
            ask_small(search("a trace"))

        @an.span(name="wrapped call", type="llm")
        def wrapped(question: str) -> Any:
            return client.chat.completions.create(
                model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
            )

        reply = wrapped("Say hello to Phoenix")
    return trace, reply


def phoenix_spans(phoenix: Phoenix, trace_id: str, count: int) -> list[dict[str, Any]]:
    """The trace's spans as Phoenix's REST API returns them, once it has all `count`."""
    deadline = time.monotonic() + INGEST_SECONDS
    spans: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        spans = phoenix.get(f"/v1/projects/default/spans?trace_id={trace_id}&limit=1000")["data"]
        if len(spans) >= count:
            return spans
        time.sleep(0.25)
    pytest.fail(f"Phoenix has {len(spans)} of the {count} spans after {INGEST_SECONDS} s")


def test_phoenix_reads_our_exported_trace_as_we_do(
    phoenix: Phoenix, openai_instrumented: None
) -> None:
    server = demo.start()
    try:
        client = demo.client(server, max_retries=0, timeout=10)
        export = an.export_to(f"{phoenix.url}/v1/traces", timeout=10)
        trace, reply = traced_block(client)
        assert export.flush()
    finally:
        server.stop()
        an.stop_export(wait=2.0)

    # Our figures, against the numbers recorded and the usage the server returned.
    call = reply.usage
    totals = trace.totals
    assert totals.input_tokens == 1200 + 300 + call.prompt_tokens
    assert totals.output_tokens == 80 + 20 + call.completion_tokens
    assert totals.total_tokens == 1280 + 320 + call.total_tokens
    assert totals.model_calls == 3
    assert totals.cost == (
        expected_cost("gpt-4o", 1200, 80, cached=200)
        + expected_cost("gpt-4o-mini", 300, 20)
        + expected_cost(
            "gpt-4o-mini",
            call.prompt_tokens,
            call.completion_tokens,
            cached=call.prompt_tokens_details.cached_tokens or 0,
        )
    )
    assert export.spans_sent == len(trace.nodes)
    assert export.spans_failed == 0

    trace_id = f"{trace.trace_id:032x}"
    spans = phoenix_spans(phoenix, trace_id, len(trace.nodes))
    by_id = {span["context"]["span_id"]: span for span in spans}
    assert len(by_id) == len(spans) == len(trace.nodes)  # each span once
    assert set(by_id) == {f"{node.span_id:016x}" for node in trace.nodes}

    kinds = {span["name"]: span["span_kind"] for span in spans}
    assert kinds == {
        "exported to phoenix": "CHAIN",
        "answer": "AGENT",
        "retrieve": "RETRIEVER",
        "search": "TOOL",
        "ask gpt-4o": "LLM",
        "ask gpt-4o-mini": "LLM",
        "wrapped call": "LLM",
        "ChatCompletion": "LLM",
    }

    # Each LLM span: the model, and the tokens our roll-up counts there, no others.
    llm_spans = [span for span in spans if span["span_kind"] == "LLM"]
    for span in llm_spans:
        node = trace.tree.by_id[int(span["context"]["span_id"], 16)]
        attributes = span["attributes"]
        seen = (
            attributes.get("llm.token_count.prompt"),
            attributes.get("llm.token_count.completion"),
            attributes.get("llm.token_count.total"),
        )
        ours = (node.own.input_tokens, node.own.output_tokens, node.own.total_tokens)
        assert seen == ours, span["name"]
        assert attributes.get("llm.model_name") == node.usage.model, span["name"]
    assert trace.find("wrapped call").role == "model call wrapper"
    assert (
        "llm.token_count.total"
        not in by_id[f"{trace.find('wrapped call').span_id:016x}"]["attributes"]
    )
    answer = by_id[f"{trace.find('answer').span_id:016x}"]["attributes"]
    assert not [key for key in answer if key.startswith("llm.token_count")]  # the claim
    small = by_id[f"{trace.find('ask gpt-4o-mini').span_id:016x}"]["attributes"]
    assert (small["llm.model_name"], small["llm.token_count.total"]) == ("gpt-4o-mini", 320)
    big = by_id[f"{trace.find('ask gpt-4o').span_id:016x}"]["attributes"]
    assert big["llm.token_count.prompt_details.cache_read"] == 200
    assert big["llm.provider"] == "openai"

    # What Phoenix sums equals our root: over its LLM spans, and its own trace total.
    def summed(key: str) -> int:
        return sum(int(span["attributes"].get(key) or 0) for span in llm_spans)

    assert summed("llm.token_count.prompt") == totals.input_tokens
    assert summed("llm.token_count.completion") == totals.output_tokens
    assert (
        summed("llm.token_count.total") == totals.total_tokens == trace.root.subtotal.total_tokens
    )
    [phoenix_trace] = [
        item
        for item in phoenix.get("/v1/projects/default/traces?limit=100")["data"]
        if item["trace_id"] == trace_id
    ]
    assert phoenix_trace["token_count_prompt"] == totals.input_tokens
    assert phoenix_trace["token_count_completion"] == totals.output_tokens
    assert phoenix_trace["token_count_total"] == totals.total_tokens
