"""Budgets: a traced loop stops sending requests once its counted cost (or tokens)
reaches the budget. Requests are counted at the stand-in server, not by our code.

A "call's worth" is measured by one call in a trace of its own (the stand-in answers a
prompt the same way every time), so the budgets below are 10 calls' worth whatever the
model's price.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.machinery
import json
import os
import subprocess
import sys
import threading
import types
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from live_kernel import Kernel, started, stdout

import agenta_notebook as an
from agenta_notebook import budget as budget_module
from agenta_notebook import demo
from agenta_notebook.runtime import BUDGET_DOLLARS, BUDGET_TOKENS, RUNTIME

MODEL = "gpt-4o-mini"
MESSAGES: list[Any] = [{"role": "user", "content": "What limits the speed of a sailing boat?"}]
CALLS = 100
WORTH = 10  # the budget, in calls


@pytest.fixture(scope="module")
def server() -> Iterator[demo.DemoServer]:
    with demo.start() as running:
        yield running


@pytest.fixture(autouse=True)
def instrumented(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # Only for the stand-in: every client below is pointed at 127.0.0.1.
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-for-the-stand-in")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    an.instrument_openai()
    yield
    an.uninstrument_openai()


@pytest.fixture()
def client(server: demo.DemoServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base_url, max_retries=0, timeout=10)


@pytest.fixture()
def async_client(server: demo.DemoServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, max_retries=0, timeout=10)


def ask(client: openai.OpenAI) -> Any:
    return client.chat.completions.create(model=MODEL, messages=MESSAGES)


def one_call(client: openai.OpenAI) -> tuple[Decimal, int]:
    """The cost and tokens of one call, as counted in a trace of its own."""
    with an.trace("one call") as one:
        ask(client)
    assert one.totals.cost is not None and one.totals.cost > 0
    assert one.totals.total_tokens
    return one.totals.cost, one.totals.total_tokens


def sent(server: demo.DemoServer, before: int) -> int:
    return len(server.requests) - before


def test_sync_loop_stops_at_a_dollar_budget(server: demo.DemoServer, client: openai.OpenAI) -> None:
    cost, _ = one_call(client)
    budget = cost * WORTH
    before = len(server.requests)
    done = 0
    with pytest.raises(an.BudgetExceeded) as caught, an.trace("loop", budget=budget) as loop:
        for _ in range(CALLS):
            ask(client)
            done += 1
    assert WORTH <= sent(server, before) <= WORTH + 1
    assert done == sent(server, before), "every request that left was answered"
    error = caught.value
    assert error.budget == budget and error.spent >= budget
    assert error.spent == loop.totals.cost
    assert "/chat/completions" in error.call and MODEL in error.call
    assert f"${budget}" in str(error)
    assert loop.totals.cost is not None and loop.totals.cost >= budget
    assert not RUNTIME.budgets.by_trace, "the budget ends with its trace"
    # The refused request is no model call: it never opened the instrumentor's span.
    assert loop.totals.model_calls == done and loop.totals.unpriced_calls == 0
    assert loop.root.record.attributes[BUDGET_DOLLARS] == str(budget)
    assert loop.root.record.status == "ERROR"


def test_unpriced_calls_do_not_count_toward_a_dollar_budget(
    server: demo.DemoServer, client: openai.OpenAI
) -> None:
    cost, _ = one_call(client)
    before = len(server.requests)
    with pytest.raises(an.BudgetExceeded) as caught, an.trace("mixed", budget=cost * 2) as mixed:
        for _ in range(5):
            client.chat.completions.create(model="my-local-model", messages=MESSAGES)
        for _ in range(10):
            ask(client)
    assert sent(server, before) == 5 + 2, "the 5 unpriced calls all went, then 2 priced"
    assert mixed.totals.unpriced_calls == 5
    assert caught.value.unpriced_calls == 5
    assert "5 call(s) of unknown cost" in str(caught.value)


def test_stream_loop_stops_at_the_budget(server: demo.DemoServer, client: openai.OpenAI) -> None:
    cost, _ = one_call(client)
    before = len(server.requests)
    with pytest.raises(an.BudgetExceeded), an.trace("streams", budget=cost * 5):
        for _ in range(30):
            stream = client.chat.completions.create(
                model=MODEL,
                messages=MESSAGES,
                stream=True,
                stream_options={"include_usage": True},
            )
            for _chunk in stream:
                pass
    assert 5 <= sent(server, before) <= 6


def test_max_tokens_stops_the_loop(server: demo.DemoServer, client: openai.OpenAI) -> None:
    _, tokens = one_call(client)
    before = len(server.requests)
    with pytest.raises(an.BudgetExceeded) as caught:
        with an.trace("tokens", max_tokens=tokens * WORTH) as loop:
            for _ in range(CALLS):
                ask(client)
    assert WORTH <= sent(server, before) <= WORTH + 1
    assert caught.value.budget == tokens * WORTH
    assert caught.value.spent == loop.totals.total_tokens
    assert "token budget" in str(caught.value)
    assert loop.root.record.attributes[BUDGET_TOKENS] == tokens * WORTH


@pytest.mark.parametrize("limit", [1, 4])
def test_gather_fan_out_goes_over_by_at_most_the_concurrency(
    server: demo.DemoServer,
    client: openai.OpenAI,
    async_client: openai.AsyncOpenAI,
    limit: int,
) -> None:
    cost, _ = one_call(client)

    async def fan_out() -> list[Any]:
        gate = asyncio.Semaphore(limit)

        async def one() -> Any:
            async with gate:
                return await async_client.chat.completions.create(model=MODEL, messages=MESSAGES)

        return await asyncio.gather(*(one() for _ in range(CALLS)), return_exceptions=True)

    before = len(server.requests)
    with an.trace("fan-out", budget=cost * WORTH):
        results = asyncio.run(fan_out())
    refused = [r for r in results if isinstance(r, an.BudgetExceeded)]
    others = [r for r in results if isinstance(r, BaseException) and r not in refused]
    assert others == []
    assert WORTH <= sent(server, before) <= WORTH + limit
    assert len(refused) == CALLS - sent(server, before)


def test_threads_share_their_trace_budget(server: demo.DemoServer, client: openai.OpenAI) -> None:
    cost, _ = one_call(client)
    refused: list[BaseException] = []

    def worker(context: Any) -> None:
        from opentelemetry import context as otel_context

        token = otel_context.attach(context)
        try:
            for _ in range(25):
                ask(client)
        except an.BudgetExceeded as error:
            refused.append(error)
        finally:
            otel_context.detach(token)

    from opentelemetry import context as otel_context

    before = len(server.requests)
    with an.trace("threads", budget=cost * WORTH):
        threads = [
            threading.Thread(target=worker, args=(otel_context.get_current(),)) for _ in range(4)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
    assert len(refused) == 4, "every thread was stopped"
    assert WORTH <= sent(server, before) <= WORTH + 4


def test_anthropic_client_is_guarded_too(
    server: demo.DemoServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_OPEN_TELEMETRY", raising=False)
    claude = demo.anthropic_client(server, max_retries=0, timeout=10)

    def ask_claude() -> Any:
        return claude.messages.create(model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES)

    with an.trace("one") as one:
        ask_claude()
    assert one.totals.cost is not None and one.totals.cost > 0
    before = len(server.requests)
    with (
        pytest.raises(an.BudgetExceeded),
        an.trace("claude", budget=one.totals.cost * 3) as looped,
    ):
        for _ in range(20):
            ask_claude()
    assert 3 <= sent(server, before) <= 4
    # Refused before the SDK's own span: no model call for it.
    assert looped.totals.model_calls == sent(server, before)
    assert looped.totals.unpriced_calls == 0

    aclaude = demo.async_anthropic_client(server, max_retries=0, timeout=10)

    async def stream_loop() -> None:
        for _ in range(20):
            async with aclaude.messages.stream(
                model="claude-haiku-4-5", max_tokens=64, messages=MESSAGES
            ) as stream:
                async for _event in stream:
                    pass

    before = len(server.requests)
    with pytest.raises(an.BudgetExceeded), an.trace("streams", budget=one.totals.cost * 3):
        asyncio.run(stream_loop())
    assert 3 <= sent(server, before) <= 4
    assert isinstance(claude, anthropic.Anthropic)


def run_script(
    script: str,
    *arguments: str,
    cwd: Path | None = None,
    environment: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run `script` in a fresh interpreter (instrumentors that cannot be taken off stay
    out of this process); it prints `RESULT <json>` last."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPENAI_", "ANTHROPIC_", "AGENTA_NOTEBOOK"))
    }
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_OFFLINE_MODE="true")
    env.update(environment or {})
    done = subprocess.run(
        [sys.executable, "-c", script, *arguments],
        cwd=cwd or Path(__file__).parent.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result: dict[str, Any] = json.loads(done.stdout.rpartition("RESULT ")[2])
    return result


# The official OpenTelemetry instrumentor and OpenLLMetry's open their span before the
# request is built: the refused request leaves a failed model-call span behind.
# What the budget scripts share, under `with demo.start() as server:` once `ask()` is
# defined: one call priced in trace "one", then up to 20 more in trace "loop" with a
# budget of three such calls. Leaves `loop`, `error` (what the loop raised, or None) and
# `sent` (the requests the stand-in saw in the loop).
SPEND_THREE_CALLS = """
    with an.trace("one") as one:
        ask()
    before = len(server.requests)
    error = None
    try:
        with an.trace("loop", budget=one.totals.cost * 3) as loop:
            for _ in range(20):
                ask()
    except Exception as caught:
        error = caught
    sent = len(server.requests) - before"""

OTHER_INSTRUMENTOR_SCRIPT = (
    """
import asyncio, json, os, sys
import agenta_notebook as an
from agenta_notebook import demo
if sys.argv[1] == "openai-v2":
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
else:
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor
OpenAIInstrumentor().instrument()
import openai
os.environ["OPENAI_API_KEY"] = "sk-dummy-for-the-stand-in"
MESSAGES = [{"role": "user", "content": "What limits the speed of a sailing boat?"}]
result = {}

def figures(trace, error, sent):
    refused = [n for n in trace.nodes if n.role == "refused by budget"]
    return {
        "sent": sent, "error": error,
        "calls": trace.totals.model_calls, "unpriced": trace.totals.unpriced_calls,
        "errors": trace.totals.errors, "refused": len(refused),
        "refused_own": [[n.own.model_calls, n.own.unpriced_calls, n.own.errors] for n in refused],
        "roles": sorted({n.role for n in trace.nodes if n.usage.is_model_call}),
    }

with demo.start() as server:
    client = openai.OpenAI(base_url=server.base_url, max_retries=0, timeout=10)
    aclient = openai.AsyncOpenAI(base_url=server.base_url, max_retries=0, timeout=10)
    def ask():
        return client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
"""
    + SPEND_THREE_CALLS
    + """
    error = error and [type(error).__name__, str(error)]
    result["loop"] = figures(loop, error, sent)

    async def fan_out():
        gate = asyncio.Semaphore(2)
        async def one_call():
            async with gate:
                return await aclient.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
        return await asyncio.gather(*(one_call() for _ in range(20)), return_exceptions=True)

    before = len(server.requests)
    with an.trace("fan-out", budget=one.totals.cost * 3) as fan:
        answers = asyncio.run(fan_out())
    result["fan_out"] = figures(fan, None, len(server.requests) - before)
    result["fan_out"]["raised"] = sorted({type(a).__name__ for a in answers})
    result["fan_out"]["budget_exceeded"] = sum(isinstance(a, an.BudgetExceeded) for a in answers)
print("RESULT " + json.dumps(result))
"""
)


@pytest.mark.parametrize("instrumentor", ["openai-v2", "openllmetry"])
def test_a_refused_call_under_another_instrumentor_is_no_model_call(instrumentor: str) -> None:
    result = run_script(OTHER_INSTRUMENTOR_SCRIPT, instrumentor)
    loop = result["loop"]
    assert loop["error"][0] == "BudgetExceeded"
    assert 3 <= loop["sent"] <= 4
    # Its span is there, failed, with a role of its own: no call, nothing unpriced.
    assert loop["refused"] == 1 and loop["refused_own"] == [[0, 0, 1]]
    assert loop["calls"] == loop["sent"], "model calls are the requests the server got"
    assert loop["unpriced"] == 0 and loop["errors"] == 1
    assert loop["roles"] == ["model call", "refused by budget"]
    # Nothing was in flight: the refused call itself is not "of unknown cost".
    assert "unknown cost" not in loop["error"][1], loop["error"][1]

    fan = result["fan_out"]
    assert fan["raised"] == ["BudgetExceeded", "ChatCompletion"]
    assert 3 <= fan["sent"] <= 3 + 2
    assert fan["budget_exceeded"] == 20 - fan["sent"] == fan["refused"]
    assert fan["calls"] == fan["sent"] and fan["unpriced"] == 0
    assert fan["errors"] == fan["refused"]


OPENLLMETRY_ANTHROPIC_SCRIPT = (
    """
import json, sys
import agenta_notebook as an
from agenta_notebook import demo
from opentelemetry.instrumentation.anthropic import AnthropicInstrumentor
AnthropicInstrumentor().instrument()
with demo.start() as server:
    claude = demo.anthropic_client(server, max_retries=0, timeout=10)
    def ask():
        return claude.messages.create(model="claude-haiku-4-5", max_tokens=64,
                                      messages=[{"role": "user", "content": "Why?"}])
"""
    + SPEND_THREE_CALLS
    + """
    error = error and type(error).__name__
    refused = [n for n in loop.nodes if n.role == "refused by budget"]
    print("RESULT " + json.dumps({
        "sent": sent, "error": error,
        "calls": loop.totals.model_calls, "unpriced": loop.totals.unpriced_calls,
        "refused": [n.record.scope for n in refused],
    }))
"""
)


@pytest.mark.parametrize("sdk_spans", ["true", "false"])
def test_a_refused_call_under_openllmetry_anthropic_is_no_model_call(sdk_spans: str) -> None:
    """OpenLLMetry's Anthropic instrumentor opens its span before the SDK's `request`,
    where the guard refuses: alone, or beside the SDK's own spans (rule 13)."""
    env = {"ANTHROPIC_OPEN_TELEMETRY": sdk_spans}
    result = run_script(OPENLLMETRY_ANTHROPIC_SCRIPT, environment=env)
    assert result["error"] == "BudgetExceeded"
    assert 3 <= result["sent"] <= 4
    assert result["refused"] == ["opentelemetry.instrumentation.anthropic"]
    assert result["calls"] == result["sent"] and result["unpriced"] == 0


def _failed_call(error_type: str | None, exception_type: str | None, message: str) -> str:
    """The role of a failed model-call span that records these (no usage, no status code)."""
    from agenta_notebook.core.rollup import SpanEvent, SpanRecord, build_tree

    attributes: dict[str, Any] = {
        "gen_ai.operation.name": "chat",
        "gen_ai.request.model": MODEL,
    }
    if error_type is not None:
        attributes["error.type"] = error_type
    events = ()
    if exception_type is not None:
        events = (
            SpanEvent(
                "exception",
                15,
                {"exception.type": exception_type, "exception.message": message},
            ),
        )
    root = SpanRecord(1, 1, None, "loop", 0, 100, status="ERROR")
    call = SpanRecord(
        1, 2, 1, "chat", 10, 20, "ERROR", message, attributes, events, scope="some.instrumentor"
    )
    tree = build_tree([root, call])
    [node] = [n for n in tree.nodes if n.span_id == 2]
    return node.role


@pytest.mark.parametrize(
    ("error_type", "exception_type", "role"),
    [
        ("BudgetExceeded", None, "refused by budget"),
        (None, "agenta_notebook.budget.BudgetExceeded", "refused by budget"),
        ("<class 'agenta_notebook.budget.BudgetExceeded'>", None, "refused by budget"),
        (None, "<class 'BudgetExceeded'>", "refused by budget"),
        ("other.BudgetExceeded", None, "unreported model call"),
        (None, "mypkg.BudgetExceeded", "unreported model call"),
        ("<class 'x.BudgetExceeded'>", None, "unreported model call"),
        (None, "agenta_notebook.budget.BudgetExceeded.Sub", "unreported model call"),
        ("ValueError", "ValueError", "unreported model call"),
        ("MyBudgetExceededError", None, "unreported model call"),
        (None, "BudgetExceeded: spent", "unreported model call"),
        ("budget exceeded", None, "unreported model call"),
    ],
)
def test_a_refusal_is_told_by_the_exception_type_only(
    error_type: str | None, exception_type: str | None, role: str
) -> None:
    # The message names BudgetExceeded in every case: user text is never read for it.
    assert _failed_call(error_type, exception_type, "BudgetExceeded: over budget") == role


# argv: what to instrument (LiteLLM's spans, or the openai client's below it); how the
# script calls LiteLLM ("module": `litellm.completion` looked up at each call, "bound":
# `from litellm import completion` before any budget); "reset" for a `RUNTIME.reset()`
# before LiteLLM is imported.
LITELLM_SCRIPT = (
    """
import json, sys
import agenta_notebook as an
from agenta_notebook import demo
instrumented, binding, reset = sys.argv[1:4]
an.instrument(instrumented)
if reset == "reset":
    from agenta_notebook.runtime import RUNTIME
    RUNTIME.reset()  # a fresh import's state: the guards and the import hook on
    an.instrument(instrumented)
if binding == "bound":
    from litellm import completion  # bound before any budget: the guard is in it already
else:
    import litellm
    def completion(**arguments):
        return litellm.completion(**arguments)
with demo.start() as server:
    def ask():
        return completion(model="openai/gpt-4o-mini", api_base=server.base_url,
                          api_key="sk-dummy-for-the-stand-in",
                          messages=[{"role": "user", "content": "Why?"}])
"""
    + SPEND_THREE_CALLS
    + """
    error = error and type(error).__name__
    print("RESULT " + json.dumps({"sent": sent, "error": error,
                                  "calls": loop.totals.model_calls,
                                  "unpriced": loop.totals.unpriced_calls}))
"""
)


def test_litellm_calls_are_refused_with_budget_exceeded(tmp_path: Path) -> None:
    result = run_script(LITELLM_SCRIPT, "litellm", "module", "-", cwd=tmp_path)
    assert result["error"] == "BudgetExceeded", "LiteLLM does not turn it into its own error"
    assert 3 <= result["sent"] <= 4
    assert result["calls"] == result["sent"], "the refused call is no model call"


@pytest.mark.parametrize("instrumented", ["litellm", "openai"])
def test_litellm_imported_before_the_budget_is_guarded(tmp_path: Path, instrumented: str) -> None:
    result = run_script(LITELLM_SCRIPT, instrumented, "bound", "-", cwd=tmp_path)
    assert result["error"] == "BudgetExceeded", "not LiteLLM's InternalServerError"
    assert 3 <= result["sent"] <= 4
    assert result["calls"] == result["sent"] and result["unpriced"] == 0


HOOKED_LOADER_SCRIPT = """
import copy, importlib.util, json, warnings
warnings.simplefilter("ignore")
import agenta_notebook
spec = importlib.util.find_spec("litellm")  # through the import hook: not imported yet
result = {"copied": type(copy.copy(spec.loader)) is type(spec.loader)}
import litellm
import pkg_resources
result["loaders"] = [type(litellm.__loader__).__name__, type(litellm.__spec__.loader).__name__]
result["exists"] = pkg_resources.resource_exists("litellm", "__init__.py")
guard = litellm.completion
result["guarded"] = getattr(guard, "__agenta_notebook_budget__", None) is guard
print("RESULT " + json.dumps(result))
"""


def test_the_import_hook_leaves_the_library_its_own_loader(tmp_path: Path) -> None:
    result = run_script(HOOKED_LOADER_SCRIPT, cwd=tmp_path)
    assert result["copied"] is True, "copying the hook's loader does not recurse"
    assert result["loaders"] == ["SourceFileLoader", "SourceFileLoader"]
    assert result["exists"] is True, "pkg_resources knows the library's loader"
    assert result["guarded"] is True


IMPORT_ORDER_SCRIPT = """
import json, sys
import agenta_notebook as an
from agenta_notebook.runtime import RUNTIME
MARK = "__agenta_notebook_budget__"
def guarded(function):
    return getattr(function, MARK, None) is function
LIBRARIES = ("openai", "anthropic", "litellm")
result = {"imported_by_us": sorted(m for m in LIBRARIES if m in sys.modules)}
with an.trace("budgeted", budget=1):
    pass
result["imported_by_a_budget"] = sorted(m for m in LIBRARIES if m in sys.modules)
import openai._base_client as base
result["guarded_on_import"] = guarded(base.BaseClient._build_request)
RUNTIME.reset()  # a fresh import's state: the guards on
result["after_reset"] = guarded(base.BaseClient._build_request)
import anthropic._base_client as claude
result["anthropic_after_reset"] = guarded(claude.BaseClient._build_request)
RUNTIME.budgets.reset(guards=False)  # what unloading the extension does
result["after_unload"] = [
    guarded(base.BaseClient._build_request),
    guarded(claude.BaseClient._build_request),
]
RUNTIME.budgets.guard()  # what loading the extension does
result["guarded_again"] = [
    guarded(base.BaseClient._build_request),
    guarded(claude.BaseClient._build_request),
    guarded(claude.SyncAPIClient.request),
]
print("RESULT " + json.dumps(result))
"""


def test_guards_are_put_on_at_import_kept_by_reset_and_taken_off_by_unload(
    tmp_path: Path,
) -> None:
    result = run_script(IMPORT_ORDER_SCRIPT, cwd=tmp_path)
    assert result["imported_by_us"] == [] and result["imported_by_a_budget"] == []
    assert result["guarded_on_import"] is True, "guarded when imported, before any budget"
    assert result["after_reset"] is True, "reset is a fresh import: the guards on"
    assert result["anthropic_after_reset"] is True, "the import hook is back on too"
    assert result["after_unload"] == [False, False]
    assert result["guarded_again"] == [True, True, True]


def test_litellm_imported_after_a_reset_is_guarded(tmp_path: Path) -> None:
    result = run_script(LITELLM_SCRIPT, "openai", "bound", "reset", cwd=tmp_path)
    assert result["error"] == "BudgetExceeded", "not LiteLLM's InternalServerError"
    assert 3 <= result["sent"] <= 4


def test_no_budget_changes_nothing(server: demo.DemoServer, client: openai.OpenAI) -> None:
    cost, _ = one_call(client)
    with pytest.raises(an.BudgetExceeded), an.trace("spent", budget=cost):
        for _ in range(3):
            ask(client)
    before = len(server.requests)
    with an.trace("free") as free:
        for _ in range(15):
            ask(client)
    for _ in range(5):  # outside any trace
        ask(client)
    assert sent(server, before) == 20
    assert free.totals.cost == cost * 15


@pytest.mark.parametrize(
    ("budget", "max_tokens", "error"),
    [
        (0, None, ValueError),
        (-1, None, ValueError),
        ("lots", None, ValueError),
        (float("nan"), None, ValueError),
        (True, None, TypeError),
        (None, 0, ValueError),
        (None, 2.5, TypeError),
    ],
)
def test_bad_budgets_are_refused_before_the_trace_starts(
    budget: Any, max_tokens: Any, error: type[Exception]
) -> None:
    before = len(an.get_collector().traces())
    with (
        pytest.raises(error, match=r"(budget|max_tokens) must be"),
        an.trace("bad", budget=budget, max_tokens=max_tokens),
    ):
        pytest.fail("the block must not run")
    assert len(an.get_collector().traces()) == before
    assert not RUNTIME.budgets.by_trace


# -- in a real kernel -----------------------------------------------------------------------
SETUP = """
import os, openai
import agenta_notebook as an
from agenta_notebook import demo
an.instrument_openai()
server = demo.start()
os.environ["OPENAI_API_KEY"] = "sk-dummy-for-the-stand-in"
client = openai.OpenAI(base_url=server.base_url, max_retries=0, timeout=10)
def ask():
    return client.chat.completions.create(model="gpt-4o-mini", messages=[
        {"role": "user", "content": "What limits the speed of a sailing boat?"}])
"""


@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Kernel]:
    path: Path = tmp_path_factory.mktemp("budget")
    with started(Kernel, path, SETUP) as live:
        yield live


def test_cell_with_budget_fails_with_budget_exceeded(kernel: Kernel) -> None:
    kernel.run("%%agenta_trace --quiet -o one\nask()")
    cost = kernel.value("str(one.totals.cost)")
    budget = Decimal(cost) * WORTH
    kernel.run("before = len(server.requests)")
    cell = kernel.run(
        f"%%agenta_trace --quiet --budget {budget} -o looped\nfor _ in range({CALLS}):\n    ask()",
        fails=True,
    )
    errors = [o for o in cell.outputs if o.output_type == "error"]
    assert [e.ename for e in errors] == ["BudgetExceeded"]
    assert f"${budget}" in errors[0].evalue
    assert WORTH <= kernel.value("len(server.requests) - before") <= WORTH + 1
    assert kernel.value("looped.closed") is True
    assert Decimal(kernel.value("str(looped.totals.cost)")) >= budget
    assert kernel.value("len(looped.nodes)") > WORTH, "the trace holds the calls made"
    assert kernel.value("len(an.RUNTIME.budgets.by_trace)") == 0

    kernel.run("before = len(server.requests)")
    _, tokens = kernel.value("[0, one.totals.total_tokens]")
    cell = kernel.run(
        f"%%agenta_trace --quiet --max-tokens {tokens * WORTH}\nfor _ in range({CALLS}):\n"
        "    ask()",
        fails=True,
    )
    assert [o.ename for o in cell.outputs if o.output_type == "error"] == ["BudgetExceeded"]
    assert WORTH <= kernel.value("len(server.requests) - before") <= WORTH + 1

    shown = kernel.run(
        f"%%agenta_trace --budget {budget}\nfor _ in range(30):\n    ask()", fails=True
    )
    assert [o.ename for o in shown.outputs if o.output_type == "error"] == ["BudgetExceeded"]
    assert [o for o in shown.outputs if o.output_type == "display_data"], "the trace is shown"

    kernel.run("before = len(server.requests)")
    kernel.run("%%agenta_trace --quiet\nfor _ in range(12):\n    ask()")
    assert kernel.value("len(server.requests) - before") == 12, "no budget: every call"


def test_bad_budget_option_is_a_usage_error(kernel: Kernel) -> None:
    kernel.run("not_set = True")
    for option in (
        "--budget abc",
        "--budget 0",
        "--budget -1",
        "--max-tokens 1.5",
        "--max-tokens 0",
        "--max-tokens x",
    ):
        cell = kernel.run(f"%%agenta_trace {option}\nnot_set = False", fails=True)
        message = stdout(cell)
        assert message.startswith("UsageError: %%agenta_trace: --"), (option, message)
        assert message.count("\n") == 1, message
        assert [o for o in cell.outputs if o.output_type == "error"] == []
    assert kernel.value("not_set") is True


def test_unloading_takes_the_guards_off_and_loading_puts_them_back(kernel: Kernel) -> None:
    kernel.run(
        "import openai._base_client as base\n"
        "def guarded():\n"
        "    method = base.BaseClient._build_request\n"
        "    return getattr(method, '__agenta_notebook_budget__', None) is method"
    )
    assert kernel.value("guarded()") is True
    kernel.run("%unload_ext agenta_notebook")
    assert kernel.value("guarded()") is False
    kernel.run("%load_ext agenta_notebook")
    assert kernel.value("guarded()") is True, "on again with the extension, before any budget"
    kernel.run("before = len(server.requests)")
    cell = kernel.run(
        f"%%agenta_trace --quiet --max-tokens 1\nfor _ in range({CALLS}):\n    ask()", fails=True
    )
    assert [o.ename for o in cell.outputs if o.output_type == "error"] == ["BudgetExceeded"]
    assert kernel.value("len(server.requests) - before") == 1


# -- review fixes ---------------------------------------------------------------------------


def test_a_trace_started_inside_a_budgeted_one_spends_from_its_budget(
    server: demo.DemoServer, client: openai.OpenAI
) -> None:
    """A helper that opens its own `an.trace` inside a budgeted trace is covered by that
    budget: its calls count toward it and are refused once it is reached."""
    cost, _ = one_call(client)
    before = len(server.requests)
    with pytest.raises(an.BudgetExceeded), an.trace("outer", budget=cost * 2):
        for _ in range(10):
            with an.trace("inner step"):
                ask(client)
    assert 2 <= sent(server, before) <= 3


def test_a_task_that_outlives_the_block_still_spends_from_its_budget(
    server: demo.DemoServer, async_client: openai.AsyncOpenAI, client: openai.OpenAI
) -> None:
    cost, _ = one_call(client)
    before = len(server.requests)
    refused: list[BaseException] = []

    async def loop() -> None:
        try:
            for _ in range(10):
                await async_client.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": "hi"}]
                )
        except an.BudgetExceeded as error:
            refused.append(error)

    async def main() -> None:
        with an.trace("background", budget=cost * 2):
            with an.span("work"):  # the task's parent span, still running after the block
                task = asyncio.get_running_loop().create_task(loop())
                await asyncio.sleep(0)
            await asyncio.sleep(0)
        await task

    asyncio.run(main())
    assert refused and 2 <= sent(server, before) <= 3


def test_reset_puts_the_request_guards_back_on() -> None:
    import openai._base_client as base

    with an.trace("guarded", budget=1):
        pass
    assert getattr(base.BaseClient._build_request, "__agenta_notebook_budget__", False)
    RUNTIME.reset()
    assert getattr(base.BaseClient._build_request, "__agenta_notebook_budget__", False)
    assert budget_module.IMPORT_HOOK in sys.meta_path and not RUNTIME.budgets.by_trace


def _foreign_over(ours: Any) -> Any:
    """An instrumentor's wrapper over our guard, made with `functools.wraps` (it copies
    the guard's `__dict__`, our mark included)."""

    @functools.wraps(ours)
    def foreign(*args: Any, **kwargs: Any) -> Any:
        return ours(*args, **kwargs)

    return foreign


def test_a_foreign_wrapper_over_a_guard_is_not_taken_for_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import openai._base_client as base

    def completion(**kwargs: Any) -> str:
        return "sent"

    litellm = types.ModuleType("litellm")
    litellm.completion = completion  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "litellm", litellm)
    ours = base.BaseClient.__dict__["_build_request"]
    try:
        budget_module.install_guards()
        our_completion = litellm.completion  # type: ignore[attr-defined]
        assert our_completion is not completion
        foreign_request = _foreign_over(ours)
        foreign_completion = _foreign_over(our_completion)
        base.BaseClient._build_request = foreign_request  # type: ignore[method-assign]
        litellm.completion = foreign_completion  # type: ignore[attr-defined]
        budget_module.install_guards()
        outermost = [base.BaseClient.__dict__["_build_request"], litellm.completion]  # type: ignore[attr-defined]
        assert outermost[0].__wrapped__ is foreign_request, "guarded again, outermost"
        assert outermost[1].__wrapped__ is foreign_completion, "guarded again, outermost"
        budget_module.uninstall_guards()
        assert base.BaseClient.__dict__["_build_request"] is foreign_request, "kept"
        assert litellm.completion is foreign_completion, "kept"  # type: ignore[attr-defined]
    finally:
        base.BaseClient._build_request = ours  # type: ignore[method-assign]
        budget_module.install_guards()


def test_a_library_still_being_imported_is_left_to_the_import_hook(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Another thread is importing openai: its `_base_client` is in `sys.modules`, half
    run (no `BaseClient` yet). A budget starting now skips it, with no internal error:
    the hook guards it when its run ends."""
    half = types.ModuleType("openai._base_client")
    half.__spec__ = importlib.machinery.ModuleSpec("openai._base_client", None)
    half.__spec__._initializing = True  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "openai._base_client", half)
    with an.trace("budgeted", budget=1):
        pass
    budget_module.uninstall_guards()
    budget_module.install_guards()
    assert not [record for record in caplog.records if record.levelname == "ERROR"]

    class BaseClient:  # the rest of its run
        def _build_request(self, options: Any) -> Any:
            return options

    original = BaseClient.__dict__["_build_request"]
    half.BaseClient = BaseClient  # type: ignore[attr-defined]
    half.__spec__._initializing = False  # type: ignore[attr-defined]
    budget_module.install_guards()  # what the hook does at the end of its run
    assert BaseClient.__dict__["_build_request"].__wrapped__ is original, "guarded now"
