"""Agenta SDK rows of issue 10 that need no kernel, run by tests/test_agenta.py with the
side venv's python (agenta 0.125 pins openai<3, so it cannot share the main venv).

Environment: DEMO_BASE_URL (the OpenAI stand-in, started by the test), AGENTA_HOST (a
local OTLP receiver standing in for Agenta's backend). Prints one JSON object last.
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any

from trace_summary import summary

import agenta_notebook as an
from agenta_notebook import demo
from agenta_notebook.threads import enable_thread_propagation

BASE_URL = os.environ["DEMO_BASE_URL"]


def settled(trace: Any, timeout: float = 20.0) -> Any:
    """`trace` once no span of it is still running (callbacks may end spans late)."""
    deadline = time.monotonic() + timeout
    while trace.running and time.monotonic() < deadline:
        time.sleep(0.02)
    return trace


def usage_of(reply: Any) -> dict[str, Any]:
    usage = reply.usage
    details = getattr(usage, "prompt_tokens_details", None)
    return {
        "prompt_tokens": usage.prompt_tokens,
        "completion_tokens": usage.completion_tokens,
        "total_tokens": usage.total_tokens,
        "cached_tokens": getattr(details, "cached_tokens", None) or 0,
    }


def main() -> None:
    # What %load_ext does first: the collector, and thread propagation.
    an.get_collector()
    enable_thread_propagation()

    import agenta as ag
    import litellm
    import openai

    ag.init()  # AGENTA_HOST: the local receiver
    client = openai.OpenAI(base_url=BASE_URL, api_key=demo.DEMO_API_KEY)
    results: dict[str, Any] = {}

    # -- Agenta's LiteLLM callback, litellm's OpenAI provider against the stand-in --------
    messages = [
        {"role": "system", "content": "You answer in one short sentence, no more."},
        {"role": "user", "content": "Name a colour"},
    ]
    litellm.callbacks = [ag.callbacks.litellm_handler()]
    with an.trace("litellm callback") as trace:
        reply = litellm.completion(
            model="openai/gpt-4o-mini",
            messages=messages,
            api_base=BASE_URL,
            api_key=demo.DEMO_API_KEY,
        )
    litellm.callbacks = []
    results["litellm"] = {
        "trace": summary(settled(trace)),
        "usage": usage_of(reply),
        # The same request straight to the stand-in (deterministic): the usage it returns.
        "direct_usage": usage_of(
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)
        ),
    }

    # -- from here on, OpenAI calls are instrumented (OpenInference, through our helper) --
    assert an.instrument_openai()

    # -- an @ag.instrument LLM function returning the legacy dict around the call --------
    calls: list[dict[str, Any]] = []

    @ag.instrument(spankind="llm")
    def legacy_llm(question: str) -> dict[str, Any]:
        response = client.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": question}]
        )
        usage = usage_of(response)
        calls.append(usage)
        import genai_prices

        price = genai_prices.calc_price(
            genai_prices.Usage(
                input_tokens=usage["prompt_tokens"], output_tokens=usage["completion_tokens"]
            ),
            "gpt-4o-mini",
            provider_id="openai",
        )
        return {
            "message": response.choices[0].message.content,
            "cost": float(price.total_price),
            "usage": {k: usage[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
        }

    @ag.instrument(spankind="workflow")
    def app(question: str) -> str:
        return str(legacy_llm(question)["message"])

    with an.trace("legacy dict") as trace:
        app("What is a span?")
    results["legacy"] = {"trace": summary(settled(trace)), "usage": calls}

    # -- the agent runtime's usage stamp, written by the agenta package's own function ---
    from agenta.sdk.agents.tracing import record_usage

    @ag.instrument(spankind="workflow")
    def agent_run(task: str) -> str:
        # What the agent handler does with its harness's result (agents/handler.py).
        record_usage({"input": 1200, "output": 300, "total": 1500, "cost": 0.0042})
        return "done"

    with an.trace("agent runtime") as trace:
        agent_run("summarise")
    results["agent"] = {"trace": summary(settled(trace))}

    ag.tracing.tracer_provider.force_flush()
    sys.stdout.flush()
    print(json.dumps(results))


if __name__ == "__main__":
    main()
