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

The guards are put on when the package is imported (and the extension loaded): the
libraries already imported are wrapped then, and those imported later as soon as their
module has run (`IMPORT_HOOK`, a `sys.meta_path` finder), so that `from litellm import
completion` after `import agenta_notebook` binds a guarded function, before or after the
first budget. A LiteLLM name bound before `agenta_notebook` is imported (or taken from a
submodule, `litellm.main`) stays unguarded at LiteLLM's door: its request is still
refused at the openai client below, which LiteLLM reports as its `InternalServerError`.
Nothing is imported here. `RUNTIME.reset()` puts the guards back as a fresh import has
them (on, with the hook); unloading the extension takes them off (and the hook), and the
next budget or load puts them back.

Counted figures are those of the calls that have ended: requests already in flight
when the limit is reached still complete, so a fan-out of k concurrent calls may go
over by up to k calls. Unpriced calls do not count toward a dollar budget (their cost is
unknown); the exception's message says how many there were (the refused request's own
span, opened by an instrumentor before the request was built, is not one of them).
Without a budget a guard costs one truth test of a dict: about 0.5 µs per request
(`benchmarks/bench_budget.py`).
"""

from __future__ import annotations

import functools
import importlib.abc
import inspect
import sys
from decimal import Decimal
from typing import Any, Final, NamedTuple

from opentelemetry import trace as otel_trace

from agenta_notebook import forksafe
from agenta_notebook.core.fields import sum_figures
from agenta_notebook.core.rollup import TraceTree, refused_by_budget
from agenta_notebook.errors import internal_error
from agenta_notebook.runtime import BUDGET_DOLLARS, BUDGET_TOKENS, RUNTIME, Budget

__all__ = [
    "GUARD",
    "GUARDED",
    "IMPORT_HOOK",
    "LITELLM_CALLS",
    "BudgetExceeded",
    "GuardOnImport",
    "TraceBudget",
    "check",
    "check_request",
    "install_guards",
    "trace_budget",
    "uninstall_guards",
]

#: The client libraries whose request path is guarded (each has its own `_base_client`).
GUARDED: Final = ("openai", "anthropic")
#: Marks our guards, so that a library is never wrapped twice: a guard's mark is the guard
#: itself (`_is_guard`), since `functools.wraps` copies it to a wrapper made over a guard.
_MARK: Final = "__agenta_notebook_budget__"
_LOCK = forksafe.new_rlock()  # an import under it may guard a module


def _marked(guard: Any) -> Any:
    setattr(guard, _MARK, guard)
    return guard


def _is_guard(function: Any) -> bool:
    """`function` is one of our guards (not another's wrapper made over one)."""
    return function is not None and getattr(function, _MARK, None) is function


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


class TraceBudget(NamedTuple):
    """What a trace says of its budget (its root's attributes, its spans): the limits,
    whether its counted figures reached them, and whether a request was refused."""

    dollars: Decimal | None
    max_tokens: int | None
    reached: bool
    refused: bool


def trace_budget(tree: TraceTree) -> TraceBudget | None:
    """The budget of a trace (live or loaded) from its tree, or None when it had none.

    `reached`: its counted cost (or tokens) is at the budget or over it, or a request was
    refused; `refused`: a span of it failed with `BudgetExceeded` (the trace's block, a
    step that let it through, an instrumentor's span of the refused request). A refusal
    caught inside the trace before any span failed with it leaves no trace of itself.
    """
    root = tree.root
    attributes = root.attributes
    dollars_text = attributes.get(BUDGET_DOLLARS)
    max_tokens = attributes.get(BUDGET_TOKENS)
    dollars: Decimal | None = None
    if isinstance(dollars_text, str):
        try:
            dollars = Decimal(dollars_text)
        except ArithmeticError:
            dollars = None
        if dollars is not None and not dollars.is_finite():
            dollars = None
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        max_tokens = None
    if dollars is None and max_tokens is None:
        return None
    totals = root.subtotal
    refused = any(node.is_error and refused_by_budget(node.record) for node in tree.nodes)
    reached = (
        refused
        or (dollars is not None and (totals.cost or 0) >= dollars)
        or (max_tokens is not None and (totals.total_tokens or 0) >= max_tokens)
    )
    return TraceBudget(dollars, max_tokens, reached, refused)


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


def _pending(covering: tuple[Budget, ...], trace_id: int, span_id: int) -> int:
    """The unpriced calls that the current span itself counts: the span an instrumentor
    opened for the refused request before it was built (running, no usage yet). It is
    no call of unknown cost: the message leaves it out."""
    try:
        for budget in covering:
            for trace in budget.covered:
                if trace.trace_id == trace_id:
                    node = trace.tree.by_id.get(span_id)
                    if node is None or not node.running:
                        return 0
                    return node.own.unpriced_calls
    except Exception:
        internal_error("reading the refused request's span for a budget's message")
    return 0


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
        if unpriced:
            unpriced -= _pending(covering, context.trace_id, context.span_id)
        refused = call if call is not None else _describe(options)
        raise BudgetExceeded(spent, limit, refused, unpriced_calls=unpriced)


def check_request(options: Any) -> None:
    """`check` for a client's request `options`, unless it reads (GET: no model call)."""
    if RUNTIME.budgets.by_trace and str(getattr(options, "method", "")).lower() != "get":
        check(options)


#: The budgets (never replaced: `Budgets.reset()` empties it), read by every guard.
_BUDGETS: Final = RUNTIME.budgets


def _guard(original: Any) -> Any:
    def _build_request(self: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # IPython and pytest leave this frame out
        if _BUDGETS.by_trace:  # without a budget: this test only
            check_request(options)
        return original(self, options, *args, **kwargs)

    _build_request.__wrapped__ = original  # type: ignore[attr-defined]
    return _marked(_build_request)


#: The guard of `BaseClient._build_request` (`benchmarks/bench_budget.py` times it).
GUARD: Final = _guard


def _guard_sync_request(original: Any) -> Any:
    def request(self: Any, cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # IPython and pytest leave this frame out
        if _BUDGETS.by_trace:
            check_request(options)
        return original(self, cast_to, options, *args, **kwargs)

    request.__wrapped__ = original  # type: ignore[attr-defined]
    return _marked(request)


def _guard_async_request(original: Any) -> Any:
    async def request(self: Any, cast_to: Any, options: Any, *args: Any, **kwargs: Any) -> Any:
        __tracebackhide__ = True  # IPython and pytest leave this frame out
        if _BUDGETS.by_trace:
            check_request(options)
        return await original(self, cast_to, options, *args, **kwargs)

    request.__wrapped__ = original  # type: ignore[attr-defined]
    return _marked(request)


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
            if _BUDGETS.by_trace:
                check(call=_litellm_call(name, kwargs))
            return await original(*args, **kwargs)

        guarded: Any = guarded_async
    else:

        @functools.wraps(original)
        def guarded_sync(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True  # IPython and pytest leave this frame out
            if _BUDGETS.by_trace:
                check(call=_litellm_call(name, kwargs))
            return original(*args, **kwargs)

        guarded = guarded_sync
    return _marked(guarded)


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


def _install_litellm(litellm: Any) -> None:
    """Guard LiteLLM's entry points (never imported here: importing it is slow and may
    download its price map). Called when it is imported, and again at every budget's
    start, so that an instrumentor that wrapped them since is guarded too, outermost."""
    for name in LITELLM_CALLS:
        current = getattr(litellm, name, None)
        if callable(current) and not _is_guard(current):
            setattr(litellm, name, _guard_litellm(name, current))


def _wrap(cls: Any, name: str, guard: Any) -> None:
    current = cls.__dict__.get(name)
    if current is not None and not _is_guard(current):
        setattr(cls, name, guard(current))


def _install_client(module: Any) -> None:
    """Guard a client library's `_base_client` module (openai's or anthropic's)."""
    # Every request is built here, whoever wrapped the client's methods: the last line.
    _wrap(module.BaseClient, "_build_request", _guard)
    if module.__name__.startswith("anthropic."):
        # The SDK opens its own span in `request`: refuse before it, so that a refused
        # request is no model call. (For openai, `instrument_openai()` checks before the
        # instrumentor's span; an instrumentor that wraps `OpenAI.request` itself keeps
        # the method it found, so only `_build_request` is certain to be reached.)
        _wrap(module.SyncAPIClient, "request", _guard_sync_request)
        _wrap(module.AsyncAPIClient, "request", _guard_async_request)


#: The modules that carry a guard, and how each is guarded once it is imported.
_GUARDED_MODULES: Final[dict[str, Any]] = {
    **{f"{library}._base_client": _install_client for library in GUARDED},
    "litellm": _install_litellm,
}


def _guard_module(name: str, module: Any) -> None:
    """Guard `module` (one of `_GUARDED_MODULES`); never raises."""
    with _LOCK:
        try:
            _GUARDED_MODULES[name](module)
        except Exception:
            internal_error(f"guarding {name}'s requests for a budget")


class _GuardAfterExec:
    """A module's loader, which guards the module once it has run (the rest: the loader's)."""

    def __init__(self, loader: Any) -> None:
        self._loader = loader

    def __getattr__(self, name: str) -> Any:
        if name == "_loader":  # not set yet (a copy, an unpickling): never recurse
            raise AttributeError(name)
        return getattr(self._loader, name)

    def create_module(self, spec: Any) -> Any:
        return self._loader.create_module(spec)

    def exec_module(self, module: Any) -> None:
        # The module keeps its own loader (pkg_resources, importlib.resources know its
        # type), already while it runs; this one only waits for the end of its run.
        loader = self._loader
        module.__loader__ = loader
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = loader
        loader.exec_module(module)
        _guard_module(module.__name__, module)


class GuardOnImport(importlib.abc.MetaPathFinder):
    """On `sys.meta_path` while the guards are on: a client library imported later
    (openai, anthropic, litellm) is guarded as soon as its module has run, so that
    `from litellm import completion` after `import agenta_notebook` binds a guarded
    function (a name bound before stays unguarded at LiteLLM's door; its request is still
    refused at the openai client, as LiteLLM's `InternalServerError`). Every other import
    costs one set lookup."""

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in _GUARDED_MODULES:
            return None
        finders = sys.meta_path
        try:  # the finders after this one (those before it have declined)
            later = finders[finders.index(self) + 1 :]
        except ValueError:
            return None
        for finder in later:
            find = getattr(finder, "find_spec", None)
            if find is None:
                continue
            spec = find(fullname, path, target)
            if spec is None:
                continue
            loader = spec.loader
            if loader is not None and hasattr(loader, "exec_module"):
                spec.loader = _GuardAfterExec(loader)
            return spec
        return None


#: The import hook, on `sys.meta_path` while the guards are on.
IMPORT_HOOK: Final = GuardOnImport()


def _initializing(module: Any) -> bool:
    """`module` is still running (another thread imports it): the import hook guards it
    when its run ends; before, it may lack what the guards wrap."""
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def install_guards() -> None:
    """Guard the request path of every client library already imported (once each) and
    those imported later (`IMPORT_HOOK`). Imports nothing; never raises: a library that
    cannot be guarded is reported as a failure of ours. Done when the package is
    imported and the extension loaded, and again at each budget's start."""
    with _LOCK:
        if IMPORT_HOOK not in sys.meta_path:
            sys.meta_path.insert(0, IMPORT_HOOK)
        for name in _GUARDED_MODULES:
            module = sys.modules.get(name)
            if module is not None and not _initializing(module):
                _guard_module(name, module)


def uninstall_guards() -> None:
    """Take the import hook off and put back what the guards wrapped, where our wrapper is
    still the one installed (unloading the extension; `RUNTIME.reset()` then installs
    them again)."""
    with _LOCK:
        while IMPORT_HOOK in sys.meta_path:
            sys.meta_path.remove(IMPORT_HOOK)
        for library in GUARDED:
            module = sys.modules.get(f"{library}._base_client")
            if module is None or _initializing(module):
                continue
            for cls, name in (
                (module.BaseClient, "_build_request"),
                (getattr(module, "SyncAPIClient", None), "request"),
                (getattr(module, "AsyncAPIClient", None), "request"),
            ):
                current = None if cls is None else cls.__dict__.get(name)
                if current is not None and _is_guard(current):
                    setattr(cls, name, current.__wrapped__)
        litellm = sys.modules.get("litellm")
        if litellm is not None and not _initializing(litellm):
            for name in LITELLM_CALLS:
                current = getattr(litellm, name, None)
                if current is not None and _is_guard(current):
                    setattr(litellm, name, current.__wrapped__)


RUNTIME.budgets.install_guards = install_guards
RUNTIME.budgets.uninstall_guards = uninstall_guards
# On from the package's import: a library imported before the first budget is guarded.
install_guards()
