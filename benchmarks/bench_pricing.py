"""Benchmark of pricing inside the roll-up, and of the OpenAI instrumentation's overhead.

Run: `.venv/bin/python benchmarks/bench_pricing.py [--quick]`. Prints ratios; asserts
nothing about time. Every baseline is measured in the same process and run:

(a) `price_usage` over 100k model-call usages (20 models, varied token counts, as in a
    long trace), against calling `genai_prices.calc_price` directly for each: the
    caches should make ours much cheaper than the table lookups it replaces.
(b) The same with every usage distinct (no repeated token counts), the worst case for
    the per-count cache. "cold" starts with every cache of `core.pricing` empty.
(c) The first price of each model in a process: finding it in the table and measuring
    its rates with `calc_price` (what "cold" pays once per model).
(d) One chat completion against the offline stand-in with `instrument_openai()`, inside
    `trace()`, against the same call with no instrumentation (the HTTP round trip on
    127.0.0.1 is the baseline).
"""

from __future__ import annotations

import argparse
import random
import time
from collections.abc import Callable
from typing import Any

import _common  # noqa: F401  (keeps the benchmark's cells out of the spend ledger)
import genai_prices
import openai

import agenta_notebook as an
from agenta_notebook import demo
from agenta_notebook.core import pricing
from agenta_notebook.core.usage import Usage

MODELS = [
    "gpt-4o",
    "gpt-4o-mini",
    "openai/gpt-4.1-mini",
    "o3-mini",
    "o4-mini",
    "claude-3-5-sonnet-latest",
    "anthropic/claude-3-5-haiku-latest",
    "gemini-1.5-flash",
    "my-local-llama",
    "text-embedding-3-small",
]


def best_of(repeats: int, run: Callable[[], Any]) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def usages(count: int, distinct: bool) -> list[Usage]:
    chooser = random.Random(7)
    result = []
    for index in range(count):
        model = MODELS[index % len(MODELS)]
        input_tokens = index if distinct else chooser.randrange(50, 60)
        result.append(
            Usage(
                input_tokens=input_tokens + 100,
                output_tokens=chooser.randrange(10, 20),
                cache_read_tokens=64,
                model=model,
                provider="openai" if model == "text-embedding-3-small" else None,
            )
        )
    return result


def direct(batch: list[Usage]) -> None:
    for usage in batch:
        assert usage.model is not None
        try:
            genai_prices.calc_price(
                genai_prices.Usage(
                    input_tokens=usage.input_tokens,
                    output_tokens=usage.output_tokens,
                    cache_read_tokens=usage.cache_read_tokens,
                ),
                usage.model,
                provider_id=usage.provider,
            )
        except LookupError:
            pass


def ours(batch: list[Usage]) -> None:
    for usage in batch:
        pricing.price_usage(usage)


def bench_pricing(count: int) -> None:
    for label, distinct in (("repeated counts", False), ("distinct counts", True)):
        batch = usages(count, distinct)
        baseline = best_of(3, lambda batch=batch: direct(batch))  # type: ignore[misc]
        clear_caches()
        cold = best_of(1, lambda batch=batch: ours(batch))  # type: ignore[misc]
        warm = best_of(3, lambda batch=batch: ours(batch))  # type: ignore[misc]
        print(
            f"price {count:,} usages ({label}): calc_price directly {baseline * 1e3:8.1f} ms;"
            f" price_usage cold {cold * 1e3:7.1f} ms ({cold / baseline:5.2f}x),"
            f" warm {warm * 1e3:7.1f} ms ({warm / baseline:5.3f}x)"
        )


def clear_caches() -> None:
    for cache in (pricing._table_match, pricing._linear_price, pricing._table_cost):
        cache.cache_clear()


def bench_first_price(repeats: int) -> None:
    first = usages(len(MODELS), distinct=False)

    def run() -> None:
        clear_caches()
        ours(first)

    took = best_of(repeats, run)
    print(
        f"first price of each of {len(MODELS)} models (table lookup + rates):"
        f" {took * 1e3:6.1f} ms, {took / len(MODELS) * 1e3:5.2f} ms per model"
    )


def bench_openai(calls: int) -> None:
    with demo.start() as server:
        client = openai.OpenAI(base_url=server.base_url, api_key="sk-dummy", max_retries=0)
        messages: Any = [{"role": "user", "content": "How fast is a boat?"}]

        def run() -> None:
            for _ in range(calls):
                client.chat.completions.create(model="gpt-4o-mini", messages=messages)

        run()  # warm the connection
        baseline = best_of(3, run)
        an.instrument_openai()
        try:

            def traced() -> None:
                with an.trace("bench"):
                    run()

            instrumented = best_of(3, traced)
        finally:
            an.uninstrument_openai()
    print(
        f"{calls} chat completions on 127.0.0.1: plain {baseline / calls * 1e3:6.2f} ms/call;"
        f" instrumented + traced {instrumented / baseline:5.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    arguments = parser.parse_args()
    bench_pricing(10_000 if arguments.quick else 100_000)
    bench_first_price(3 if arguments.quick else 10)
    bench_openai(20 if arguments.quick else 100)


if __name__ == "__main__":
    main()
