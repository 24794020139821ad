"""Budgets: a traced loop stops sending requests once its counted cost (or tokens)
reaches the budget. Requests are counted at the stand-in server, not by our code.

A "call's worth" is measured by one call in a trace of its own (the stand-in answers a
prompt the same way every time), so the budgets below are 10 calls' worth whatever the
model's price.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from live_kernel import Kernel, started, stdout

import agenta_notebook as an
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


LITELLM_SCRIPT = """
import json
import agenta_notebook as an
from agenta_notebook import demo
an.instrument("litellm")
import litellm
with demo.start() as server:
    def ask():
        return litellm.completion(model="openai/gpt-4o-mini", api_base=server.base_url,
                                  api_key="sk-dummy-for-the-stand-in",
                                  messages=[{"role": "user", "content": "Why?"}])
    with an.trace("one") as one:
        ask()
    before = len(server.requests)
    error = None
    try:
        with an.trace("loop", budget=one.totals.cost * 3) as loop:
            for _ in range(20):
                ask()
    except Exception as caught:
        error = type(caught).__name__
    print("RESULT " + json.dumps({"sent": len(server.requests) - before, "error": error,
                                  "calls": loop.totals.model_calls}))
"""


def test_litellm_calls_are_refused_with_budget_exceeded(tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("OPENAI_", "ANTHROPIC_", "AGENTA_NOTEBOOK"))
    }
    env.update(LITELLM_LOCAL_MODEL_COST_MAP="True", LITELLM_OFFLINE_MODE="true")
    done = subprocess.run(
        [sys.executable, "-c", LITELLM_SCRIPT],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-5000:]
    result = json.loads(done.stdout.rpartition("RESULT ")[2])
    assert result["error"] == "BudgetExceeded", "LiteLLM does not turn it into its own error"
    assert 3 <= result["sent"] <= 4
    assert result["calls"] == result["sent"], "the refused call is no model call"


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


def test_reset_takes_the_request_guards_off() -> None:
    import openai._base_client as base

    with an.trace("guarded", budget=1):
        pass
    assert getattr(base.BaseClient._build_request, "__agenta_notebook_budget__", False)
    RUNTIME.reset()
    assert not getattr(base.BaseClient._build_request, "__agenta_notebook_budget__", False)
