"""`an.instrument()`: what it instruments, what it leaves alone, and how it says so.

The library-by-library figures are in tests/test_frameworks.py; here, the decisions.
Cases that depend on what a process has imported or instrumented before run in a fresh
interpreter (`run_script`), with the real packages.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import litellm
import pytest
from langchain_openai import ChatOpenAI
from openinference.instrumentation.langchain import LangChainInstrumentor
from openinference.instrumentation.openai import OpenAIInstrumentor
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import agenta_notebook as an
from agenta_notebook import demo
from agenta_notebook.integrations import instrument as instrument_module
from agenta_notebook.integrations import openai as openai_integration

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def server() -> Iterator[demo.DemoServer]:
    with demo.start() as running:
        yield running


def run_script(script: str, *arguments: str, **environment: str) -> dict[str, Any]:
    """Run `script` in a fresh interpreter; it prints `RESULT <json>` last."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPENAI_", "ANTHROPIC_")) and not key.startswith("AGENTA_NOTEBOOK")
    }
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_OFFLINE_MODE="true", **environment)
    completed = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert completed.returncode == 0, completed.stdout[-3000:] + completed.stderr[-5000:]
    printed, _, result = completed.stdout.rpartition("RESULT ")
    value: dict[str, Any] = json.loads(result)
    value["printed"] = printed.splitlines()
    return value


# -- names -------------------------------------------------------------------------------------
def test_an_unknown_library_is_refused_before_anything_is_done() -> None:
    with pytest.raises(ValueError, match=r"unknown library 'llamaindex'.*openai, anthropic"):
        an.instrument("openai", "llamaindex")
    assert not openai_integration.is_instrumented()  # openai was not instrumented either
    with pytest.raises(ValueError, match="unknown library"):
        an.uninstrument("bedrock")


def test_names_are_forgiving_and_nothing_is_undone_that_was_not_done() -> None:
    # Spellings of the same libraries; none was instrumented by instrument(): nothing to undo.
    assert an.uninstrument("Google_GenAI", "google.genai", "LangChain", "langchain-core") == []


def test_the_outcome_reads_as_a_sentence() -> None:
    outcome = instrument_module.Outcome("litellm", "instrumentor missing", "litellm")
    assert str(outcome) == "litellm: instrumentor missing: pip install 'agenta-notebook[litellm]'"
    assert str(instrument_module.Outcome("x", "not installed")) == "x: not installed"


# -- what is already there -----------------------------------------------------------------------
def test_a_litellm_callback_that_records_spans_counts_as_instrumented(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(litellm, "callbacks", ["otel"])
    outcomes = an.instrument("litellm")
    assert outcomes["litellm"].status == "already instrumented"
    assert capsys.readouterr().out == (
        "litellm: already instrumented by LiteLLM's 'otel' callback\n"
    )
    assert an.uninstrument("litellm") == []


def test_your_own_instrumentor_is_seen_and_left_alone(capsys: pytest.CaptureFixture[str]) -> None:
    instrumentor = LangChainInstrumentor()
    assert not instrumentor.is_instrumented_by_opentelemetry
    instrumentor.instrument()
    try:
        outcomes = an.instrument("langchain")
        assert outcomes["langchain"].status == "already instrumented"
        assert outcomes["langchain"].detail == "openinference-instrumentation-langchain"
        assert an.uninstrument() == []
        assert instrumentor.is_instrumented_by_opentelemetry  # still yours
    finally:
        instrumentor.uninstrument()
    assert "langchain: already instrumented by openinference-instrumentation-langchain" in (
        capsys.readouterr().out
    )


# -- where the spans go ------------------------------------------------------------------------
def test_spans_go_to_the_tracer_provider_given(
    server: demo.DemoServer, capsys: pytest.CaptureFixture[str]
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    outcomes = an.instrument("langchain", "openai", tracer_provider=provider)
    try:
        assert [outcome.status for outcome in outcomes.values()] == ["instrumented"] * 2
        chat = ChatOpenAI(model="gpt-4o-mini", base_url=server.base_url, api_key="sk-x")
        chat.invoke("Where do the spans go?")
    finally:
        assert sorted(an.uninstrument()) == ["langchain", "openai"]
    scopes = sorted(
        span.instrumentation_scope.name
        for span in exporter.get_finished_spans()
        if span.instrumentation_scope is not None
    )
    assert scopes == [
        "openinference.instrumentation.langchain",
        "openinference.instrumentation.openai",
    ]
    # Undone entirely: the instrumentor put on that provider, and instrument_openai's part.
    assert not OpenAIInstrumentor().is_instrumented_by_opentelemetry
    assert not openai_integration.is_instrumented()
    exporter.clear()
    chat.invoke("Anyone?")
    assert exporter.get_finished_spans() == ()
    capsys.readouterr()


# -- fresh processes ----------------------------------------------------------------------------
ON_IMPORT_SCRIPT = r"""
import json, sys, warnings
import agenta_notebook as an
from agenta_notebook.integrations import openai as openai_integration

result = {}
assert "langchain_core" not in sys.modules and "google.genai" not in sys.modules
outcome = an.instrument("langchain")["langchain"]
result["pending"] = [outcome.status, outcome.on_import, "langchain_core" in sys.modules]
result["again"] = str(an.instrument("langchain")["langchain"])
import langchain_core.language_models
from openinference.instrumentation.langchain import LangChainInstrumentor
result["after_import"] = LangChainInstrumentor().is_instrumented_by_opentelemetry
result["undone"] = an.uninstrument("langchain")
result["after_undo"] = LangChainInstrumentor().is_instrumented_by_opentelemetry

# Stop waiting before the import: nothing is instrumented when it comes.
an.instrument("google-genai")
result["cancelled"] = an.uninstrument("google-genai")
import google.genai
from openinference.instrumentation.google_genai import GoogleGenAIInstrumentor
result["google_after_import"] = GoogleGenAIInstrumentor().is_instrumented_by_opentelemetry

# OpenTelemetry's own OpenAI instrumentation is in place: no second recorder, no warning.
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor as OfficialInstrumentor
OfficialInstrumentor().instrument()
with warnings.catch_warnings():
    warnings.simplefilter("error")
    outcome = an.instrument("openai")["openai"]
result["openai"] = [outcome.status, outcome.detail]
result["openai_watch"] = openai_integration.is_instrumented()
OfficialInstrumentor().uninstrument()
# OpenLLMetry's (traceloop) OpenAI instrumentor likewise.
from opentelemetry.instrumentation.openai import OpenAIInstrumentor as TraceloopInstrumentor
TraceloopInstrumentor().instrument()
result["openllmetry"] = str(an.instrument("openai")["openai"])
print("RESULT " + json.dumps(result))
"""


def test_libraries_not_imported_yet_are_instrumented_on_import() -> None:
    result = run_script(ON_IMPORT_SCRIPT)
    assert result["pending"] == ["instrumented", True, False]
    assert result["again"] == (
        "langchain: already instrumented by openinference-instrumentation-langchain"
        " (when it is imported)"
    )
    assert result["after_import"] is True
    assert result["undone"] == ["langchain"]
    assert result["after_undo"] is False
    assert result["cancelled"] == ["google-genai"]
    assert result["google_after_import"] is False
    assert result["openai"] == [
        "already instrumented",
        "opentelemetry-instrumentation-openai-v2",
    ]
    assert result["openai_watch"] is False
    assert result["openllmetry"] == (
        "openai: already instrumented by OpenLLMetry's opentelemetry-instrumentation-openai"
    )
    assert result["printed"][0] == (
        "langchain: instrumented with openinference-instrumentation-langchain when it is imported"
    )
    assert result["printed"][-2] == (
        "openai: already instrumented by opentelemetry-instrumentation-openai-v2"
    )


MISSING_SCRIPT = r"""
import importlib.abc, json, sys

class Hide(importlib.abc.MetaPathFinder):
    # As if these were not installed: the real packages are, in this environment.
    hidden = ("litellm", "openinference.instrumentation.google_genai")
    def find_spec(self, name, path=None, target=None):
        if any(name == h or name.startswith(h + ".") for h in self.hidden):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, Hide())
import agenta_notebook as an

outcomes = an.instrument("litellm", "google-genai", "anthropic")
result = {name: [o.status, o.detail, o.on_import] for name, o in outcomes.items()}

# ANTHROPIC_OPEN_TELEMETRY=false: the SDK is silent, OpenInference's instrumentor records.
anthropic_url = sys.argv[1]
import anthropic
with an.trace("claude") as trace:
    client = anthropic.Anthropic(base_url=anthropic_url, api_key="sk-x", max_retries=0)
    message = client.messages.create(
        model="claude-haiku-4-5", max_tokens=100,
        messages=[{"role": "user", "content": "Name a colour."}],
    )
result["scopes"] = sorted(n.record.scope for n in trace.nodes if n.usage.is_model_call)
result["calls"] = trace.totals.model_calls
result["input"] = [trace.totals.input_tokens, message.usage.input_tokens]
result["undone"] = an.uninstrument()
# OpenLLMetry's (traceloop) Anthropic instrumentor in place: left alone.
from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor
AnthropicInstrumentor().instrument()
result["openllmetry"] = str(an.instrument("anthropic")["anthropic"])
print("RESULT " + json.dumps(result))
"""


def test_missing_packages_and_a_silenced_anthropic_sdk(server: demo.DemoServer) -> None:
    result = run_script(MISSING_SCRIPT, server.anthropic_base_url, ANTHROPIC_OPEN_TELEMETRY="false")
    assert result["printed"][:3] == [
        "litellm: not installed",
        "google-genai: instrumentor missing: pip install 'agenta-notebook[google-genai]'",
        "anthropic: instrumented with openinference-instrumentation-anthropic when it is imported",
    ]
    assert result["litellm"] == ["not installed", "", False]
    assert result["google-genai"] == ["instrumentor missing", "google-genai", False]
    assert result["anthropic"][:2] == ["instrumented", "openinference-instrumentation-anthropic"]
    assert result["scopes"] == ["openinference.instrumentation.anthropic"]
    assert result["calls"] == 1
    assert result["input"][0] == result["input"][1]  # no cache tokens in this call
    assert result["undone"] == ["anthropic"]
    assert result["openllmetry"] == (
        "anthropic: already instrumented by OpenLLMetry's opentelemetry-instrumentation-anthropic"
    )


def test_the_anthropic_sdk_traces_itself_by_default(
    server: demo.DemoServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import anthropic

    monkeypatch.delenv("ANTHROPIC_OPEN_TELEMETRY", raising=False)
    outcomes = an.instrument("anthropic")
    assert outcomes["anthropic"].status == "traces itself"
    assert capsys.readouterr().out == "anthropic: traces itself (the SDK emits its own spans)\n"
    client = anthropic.Anthropic(base_url=server.anthropic_base_url, api_key="x", max_retries=0)
    with an.trace("claude") as trace:
        client.messages.create(
            model="claude-haiku-4-5",
            max_tokens=100,
            messages=[{"role": "user", "content": "Name a colour."}],
        )
    calls = [node for node in trace.nodes if node.usage.is_model_call]
    assert [node.record.scope for node in calls] == ["com.anthropic.sdk.python"]
    assert trace.totals.model_calls == 1
