"""Issue 15's budget guard: what it costs a model request, with and without a budget.

The guards are on from the package's import (`agenta_notebook.budget`): every request the
openai client builds goes through `BaseClient._build_request`'s guard, budget or not.
Three ways of building the same request, interleaved, best of several rounds, CPU time:

- **bare**: the client's own `_build_request` (the guard's `__wrapped__`);
- **guarded, no budget**: the guard with no budget anywhere (one dict's truth test);
- **guarded, budget**: inside `an.trace(budget=...)` that is far from reached (the guard
  finds the trace's budget and reads its counted totals).

The guard alone (around a function that does nothing) gives its own cost: building a
real request varies by more than that between rounds. Then the same three around a whole
`client.chat.completions.create` answered in process (`httpx.MockTransport`: no socket),
and what the import hook costs every other import (`find_spec` of a module it does not
watch).

    .venv/bin/python benchmarks/bench_budget.py [--calls 20000] [--rounds 7]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import clock, machine_line

import agenta_notebook as an
from agenta_notebook import budget

ANSWER = {
    "id": "chatcmpl-bench",
    "object": "chat.completion",
    "created": 0,
    "model": "gpt-4o-mini",
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Wind."},
            "finish_reason": "stop",
        }
    ],
    "usage": {"prompt_tokens": 12, "completion_tokens": 2, "total_tokens": 14},
}


def _per_call(run: Callable[[], Any], calls: int) -> float:
    """CPU microseconds per call of `run`, over `calls` calls."""
    started = clock()
    for _ in range(calls):
        run()
    return (clock() - started) / calls * 1e6


def _best(ways: dict[str, Callable[[], float]], rounds: int) -> dict[str, float]:
    """The best of `rounds` runs of each way, interleaved (a shared machine)."""
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(rounds):
        for name, way in ways.items():
            best[name] = min(best[name], way())
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()

    import httpx
    import openai
    import openai._base_client as base
    from openai._models import FinalRequestOptions

    guarded = base.BaseClient._build_request
    assert getattr(guarded, "__agenta_notebook_budget__", False), "guarded on import"
    bare = guarded.__wrapped__  # type: ignore[attr-defined]  # (set by the guard)
    client = openai.OpenAI(
        api_key="sk-bench",
        base_url="http://127.0.0.1:9/v1",
        max_retries=0,
        # (openai 3 types its client as httpx2's, and takes httpx's too)
        http_client=httpx.Client(  # type: ignore[arg-type]
            transport=httpx.MockTransport(lambda _: httpx.Response(200, json=ANSWER))
        ),
    )
    options = FinalRequestOptions.construct(
        method="post",
        url="/chat/completions",
        json_data={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Why?"}]},
    )
    messages: Any = [{"role": "user", "content": "Why?"}]
    calls = args.calls

    def build_bare() -> float:
        return _per_call(lambda: bare(client, options), calls)

    def build_guarded() -> float:
        return _per_call(lambda: guarded(client, options), calls)

    def build_budgeted() -> float:
        with an.trace("budgeted", budget=1_000_000):
            return _per_call(lambda: guarded(client, options), calls)

    def ask() -> Any:
        return client.chat.completions.create(model="gpt-4o-mini", messages=messages)

    def create(install: bool, budgeted: bool) -> Callable[[], float]:
        def run() -> float:
            base.BaseClient._build_request = guarded if install else bare  # type: ignore[method-assign]
            try:
                if budgeted:
                    with an.trace("budgeted", budget=1_000_000):
                        return _per_call(ask, calls // 10)
                return _per_call(ask, calls // 10)
            finally:
                base.BaseClient._build_request = guarded  # type: ignore[method-assign]

        return run

    def noop(_client: Any, _options: Any) -> None:
        return None

    wrapped_noop = budget.GUARD(noop)

    def guard_bare() -> float:
        return _per_call(lambda: noop(client, options), calls)

    def guard_alone() -> float:
        return _per_call(lambda: wrapped_noop(client, options), calls)

    def guard_budgeted() -> float:
        with an.trace("budgeted", budget=1_000_000):
            return _per_call(lambda: wrapped_noop(client, options), calls)

    alone = _best(
        {"bare": guard_bare, "guarded, no budget": guard_alone, "guarded, budget": guard_budgeted},
        args.rounds,
    )
    built = _best(
        {
            "bare": build_bare,
            "guarded, no budget": build_guarded,
            "guarded, budget": build_budgeted,
        },
        args.rounds,
    )
    created = _best(
        {
            "bare": create(False, False),
            "guarded, no budget": create(True, False),
            "guarded, budget": create(True, True),
        },
        args.rounds,
    )
    hook = budget.IMPORT_HOOK
    lookups = _best(
        {
            "find_spec (a module not watched)": lambda: _per_call(
                lambda: hook.find_spec("json.decoder"), calls
            )
        },
        args.rounds,
    )
    print(machine_line())
    print(f"the guard alone (around a no-op), µs per request ({calls:,} calls):")
    for name, value in alone.items():
        print(f"  {name:22} {value:8.3f}  (+{value - alone['bare']:.3f})")
    print(f"_build_request, µs per request ({calls:,} calls, best of {args.rounds}):")
    for name, value in built.items():
        print(f"  {name:22} {value:8.2f}  (+{value - built['bare']:.2f})")
    print(f"chat.completions.create in process, µs per request ({calls // 10:,} calls):")
    for name, value in created.items():
        print(f"  {name:22} {value:8.1f}  (+{value - created['bare']:.1f})")
    for name, value in lookups.items():
        print(f"import hook, {name}: {value:.3f} µs per import")
    print(
        "RESULT " + json.dumps({"guard": alone, "build": built, "create": created, "hook": lookups})
    )


if __name__ == "__main__":
    main()
