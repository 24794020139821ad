"""Spend budgets: a model request of a trace over its budget never leaves the process.

>>> import agenta_notebook as an
>>> with an.trace("loop", budget=0.50):          # doctest: +SKIP
...     for row in rows:
...         client.chat.completions.create(...)  # BudgetExceeded once $0.50 is counted

`trace(..., budget=DOLLARS, max_tokens=N)` and `%%agenta_trace --budget DOLLARS
--max-tokens N` register the limits of their trace (`RUNTIME.budgets`). Before each
request the openai and anthropic clients build (their shared `_base_client`, so sync,
async and streamed calls alike) and LiteLLM's entry points (`litellm.completion`, ...),
the guard finds the trace of the current span and reads its counted figures
(`Trace.totals`, cheap): once the cost reaches the budget, or the tokens reach
`max_tokens`, the request raises `BudgetExceeded` before it is sent.

Counted figures are those of the calls that have ended: requests already in flight
when the limit is reached still complete, so a fan-out of k concurrent calls may go
over by up to k calls. Unpriced calls do not count toward a dollar budget (their cost is
unknown); the exception's message says how many there were. Without a budget the guard
costs one dict lookup per request.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import inspect
import sys
from decimal import Decimal
from typing import Any, Final

from opentelemetry import trace as otel_trace

from agenta_notebook import forksafe
from agenta_notebook.core.fields import sum_figures
from agenta_notebook.errors import internal_error
from agenta_notebook.runtime import RUNTIME, Budget

__all__ = ["GUARDED", "LITELLM_CALLS", "BudgetExceeded", "check", "check_request", "install_guards"]

#: The client libraries whose request path is guarded (each has its own `_base_client`).
GUARDED: Final = ("openai", "anthropic")
#: Marks a guarded `_build_request`, so that a library is never wrapped twice.
_MARK: Final = "__agenta_notebook_budget__"
_LOCK = forksafe.new_lock()


class BudgetExceeded(Exception):
    """A model request of a trace whose counted cost (or tokens) reached its budget.

    Raised before the request is sent. `spent` and `budget` are dollars (`Decimal`) for a
    dollar budget, tokens (`int`) for `max_tokens`; `call` names the refused request;
    `unpriced_calls` counts the calls of the trace whose cost is unknown (not counted).
    """

    def __init__(
        self,
        spent: Decimal | int,
        budget: Decimal | int,
        call: str,
        *,
        unpriced_calls: int = 0,
    ) -> None:
        self.spent = spent
        self.budget = budget
        self.call = call
        self.unpriced_calls = unpriced_calls
        if isinstance(budget, Decimal):
            what = f"budget of ${budget} reached: this trace has spent ${spent} (counted)"
            if unpriced_calls:
                what += (
                    f"; {unpriced_calls} call(s) of unknown cost (unpriced, or still running) "
                    "are not counted toward it"
                )
        else:
            what = f"token budget of {budget} reached: this trace has used {spent} tokens"
        super().__init__(f"{what}; refused: {call}")


def _describe(options: Any) -> str:
    """The refused request, as `POST /chat/completions (model gpt-4o-mini)`."""
    method = str(getattr(options, "method", "") or "").upper()
    url = str(getattr(options, "url", "") or "")
    body = getattr(options, "json_data", None)
    model = body.get("model") if isinstance(body, dict) else None
    return f"{method} {url}" + (f" (model {model})" if isinstance(model, str) else "")


def _over(budget: Budget) -> tuple[Decimal | int, Decimal | int, int] | None:
    covered = budget.covered
    if len(covered) == 1:
        totals = covered[0].totals
    else:  # with the traces started inside its own
        totals = sum_figures([trace.totals for trace in covered])
    if budget.dollars is not None:
        cost = totals.cost if totals.cost is not None else Decimal(0)
        if cost >= budget.dollars:
            return cost, budget.dollars, totals.unpriced_calls
    if budget.max_tokens is not None:
        tokens = totals.total_tokens or 0
        if tokens >= budget.max_tokens:
            return tokens, budget.max_tokens, totals.unpriced_calls
    return None


def check(options: Any = None, *, call: str | None = None) -> None:
    """Raise `BudgetExceeded` if the current trace has a budget it has reached.

    `options` is the client's request options, or `call` the refused call's name (for
    the message). Called by the guards before every request; free when no trace has a
    budget.
    """
    budgets = RUNTIME.budgets.by_trace
    if not budgets:
        return
    context = otel_trace.get_current_span().get_span_context()
    covering = budgets.get(context.trace_id)
    if not covering:
        return
    over = None
    try:
        for budget in covering:
            over = _over(budget)
            if over is not None:
                break
    except Exception:  # our failure must not refuse (or break) the user's request
        internal_error("checking a trace's budget")
        return
    if over is not None:
        spent, limit, unpriced = over
        refused = call if call is not None else _describe(options)
        raise BudgetExceeded(spent, limit, refused, unpriced_calls=unpriced)


def check_request(options: Any) -> None:
    """`check` for a client's request `options`, unless it reads (GET: no model call)."""
    if RUNTIME.budgets.by_trace and str(getattr(options, "method", "")).lower() != "get":
        check(options)


def _guard(original: Any) -> Any:
    def _build_request(self: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # IPython and pytest leave this frame out
        check_request(options)
        return original(self, options, *args, **kwargs)

    setattr(_build_request, _MARK, True)
    _build_request.__wrapped__ = original  # type: ignore[attr-defined]
    return _build_request


def _guard_sync_request(original: Any) -> Any:
    def request(self: Any, cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # IPython and pytest leave this frame out
        check_request(options)
        return original(self, cast_to, options, *args, **kwargs)

    setattr(request, _MARK, True)
    request.__wrapped__ = original  # type: ignore[attr-defined]
    return request


def _guard_async_request(original: Any) -> Any:
    async def request(self: Any, cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # IPython and pytest leave this frame out
        check_request(options)
        return await original(self, cast_to, options, *args, **kwargs)

    setattr(request, _MARK, True)
    request.__wrapped__ = original  # type: ignore[attr-defined]
    return request


def _litellm_call(name: str, kwargs: dict[str, Any]) -> str:
    model = kwargs.get("model")
    return f"litellm.{name}" + (f" (model {model})" if isinstance(model, str) else "")


def _guard_litellm(name: str, original: Any) -> Any:
    """LiteLLM turns any exception of the client below into its own: refuse at its door,
    before its instrumentor's span, so that the error is `BudgetExceeded`."""
    if inspect.iscoroutinefunction(original):

        @functools.wraps(original)
        async def guarded_async(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True  # IPython and pytest leave this frame out
            if RUNTIME.budgets.by_trace:
                check(call=_litellm_call(name, kwargs))
            return await original(*args, **kwargs)

        guarded: Any = guarded_async
    else:

        @functools.wraps(original)
        def guarded_sync(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True  # IPython and pytest leave this frame out
            if RUNTIME.budgets.by_trace:
                check(call=_litellm_call(name, kwargs))
            return original(*args, **kwargs)

        guarded = guarded_sync
    setattr(guarded, _MARK, True)
    return guarded


#: LiteLLM's entry points that make model requests.
LITELLM_CALLS: Final = (
    "completion",
    "acompletion",
    "text_completion",
    "atext_completion",
    "embedding",
    "aembedding",
    "responses",
    "aresponses",
)


def _install_litellm() -> None:
    """Guard LiteLLM's entry points, if it is imported (importing it is slow and may
    download its price map: never done here). Called at every budget's start, so that a
    LiteLLM imported (or instrumented) since is guarded, outermost, then."""
    litellm = sys.modules.get("litellm")
    if litellm is None:
        return
    for name in LITELLM_CALLS:
        current = getattr(litellm, name, None)
        if callable(current) and not getattr(current, _MARK, False):
            setattr(litellm, name, _guard_litellm(name, current))


def _wrap(cls: Any, name: str, guard: Any) -> None:
    current = cls.__dict__.get(name)
    if current is not None and not getattr(current, _MARK, False):
        setattr(cls, name, guard(current))


def _install(library: str) -> None:
    if importlib.util.find_spec(library) is None:
        return
    module = importlib.import_module(f"{library}._base_client")
    # Every request is built here, whoever wrapped the client's methods: the last line.
    _wrap(module.BaseClient, "_build_request", _guard)
    if library == "anthropic":
        # The SDK opens its own span in `request`: refuse before it, so that a refused
        # request is no model call. (For openai, `instrument_openai()` checks before the
        # instrumentor's span; an instrumentor that wraps `OpenAI.request` itself keeps
        # the method it found, so only `_build_request` is certain to be reached.)
        _wrap(module.SyncAPIClient, "request", _guard_sync_request)
        _wrap(module.AsyncAPIClient, "request", _guard_async_request)


def install_guards() -> None:
    """Guard the request path of every installed client library (once each). Never
    raises: a library that cannot be guarded is reported as a failure of ours."""
    with _LOCK:
        for library in GUARDED:
            try:
                _install(library)
            except Exception:
                internal_error(f"guarding the {library} client's requests for a budget")
        try:
            _install_litellm()
        except Exception:
            internal_error("guarding LiteLLM's calls for a budget")


def uninstall_guards() -> None:
    """Put back what `install_guards` wrapped, where our wrapper is still the one
    installed (`RUNTIME.reset()`, unloading the extension)."""
    with _LOCK:
        for library in GUARDED:
            module = sys.modules.get(f"{library}._base_client")
            if module is None:
                continue
            for cls, name in (
                (module.BaseClient, "_build_request"),
                (getattr(module, "SyncAPIClient", None), "request"),
                (getattr(module, "AsyncAPIClient", None), "request"),
            ):
                current = None if cls is None else cls.__dict__.get(name)
                if current is not None and getattr(current, _MARK, False):
                    setattr(cls, name, current.__wrapped__)
        litellm = sys.modules.get("litellm")
        if litellm is not None:
            for name in LITELLM_CALLS:
                current = getattr(litellm, name, None)
                if current is not None and getattr(current, _MARK, False):
                    setattr(litellm, name, current.__wrapped__)


RUNTIME.budgets.install_guards = install_guards
RUNTIME.budgets.uninstall_guards = uninstall_guards
