"""The one place that holds what the package keeps while a session runs.

Everything that lives longer than one call is owned by a `Runtime`, in a few small parts:

- `tracing`: the collector and where it is wired (the SDK tracer providers it is on, the
  processors added to each of them), our own provider and tracer, retention, the last
  trace;
- `prices`: the user's prices (`set_prices`), one immutable snapshot at a time, and who
  to tell when they change;
- `views`: the trace views open in the notebook (closed when their trace is dropped,
  redrawn when prices change), the newest comparison widgets, and the widget models
  they share;
- `exports`: the OTLP export route (`export_to`);
- `instruments`: what `instrument()` and `instrument_openai()` did, and how to undo it;
- `threads`: whether threads inherit the current span;
- `capture`: what `@span` records of its functions' inputs and outputs (`set_capture`);
- `ledger`: whether, and where, finished traced cells are written to the spend ledger
  (`set_ledger`; the writer is `io/ledger.py`).

There is one default instance, `RUNTIME`; the package's functions (`trace`,
`last_trace`, `set_retention`, `set_prices`, `export_to`, `instrument`, ...) act on it.
`print(RUNTIME.describe())` shows all of it; `RUNTIME.reset()` puts the session back as
it was when the package was imported (the test suite calls it between tests).

Some state is process-wide by nature and so is not reset: the wrapped
`TracerProvider.__init__` (which tells the runtime of every new SDK provider), the
provider OpenTelemetry holds as the global one, the wrappers of `threading` (inert while
propagation is off), the post-import hooks `instrument()` registered (inert unless a
library is pending), and the logging filter of the OTLP export (see `io/otlp.py`).
"""

from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider

from agenta_notebook import forksafe
from agenta_notebook.collector import (
    TRACER_NAME,
    Collector,
    DropListener,
    add_processors,
    collector_on,
    existing_providers,
    fail_span,
    global_provider,
    home_provider,
    hook_new_providers,
    remove_processors,
    root_attributes,
)
from agenta_notebook.core.pricing import NO_USER_PRICES, ModelPrices, UserPrices, parse_prices
from agenta_notebook.core.pricing import calculate_cost as calculate_cost_with
from agenta_notebook.errors import internal_error
from agenta_notebook.live import Trace, UserPricesSource
from agenta_notebook.version import __version__

if TYPE_CHECKING:
    from agenta_notebook.core.usage import Usage

__all__ = [
    "BUDGET_DOLLARS",
    "BUDGET_TOKENS",
    "RUNTIME",
    "Budget",
    "Budgets",
    "Runtime",
    "attach_everywhere",
    "attached_providers",
    "calculate_cost",
    "clear_prices",
    "detach",
    "get_collector",
    "get_tracer",
    "last_trace",
    "ledger_file",
    "ledger_path",
    "make_budget",
    "set_capture",
    "set_last_trace",
    "set_ledger",
    "set_prices",
    "set_retention",
    "start_root",
    "trace",
    "user_prices",
    "with_budget",
]

PriceListener = Callable[[], None]


# -- tracing: the collector and its wiring ---------------------------------------------------


class Tracing:
    """The collector, the providers it is on, our provider and tracer, the last trace.

    The collector is made (and wired) on first use. `processors()` are added to every
    SDK tracer provider of the process, the collector first: those alive then and every
    one made later (see `agenta_notebook.collector`).
    """

    def __init__(self, user_prices: UserPricesSource, on_drop: DropListener) -> None:
        self.lock = forksafe.new_rlock()
        #: the collector, once installed
        self.collector: Collector | None = None
        #: the SDK provider our own spans are made with (ours, or an SDK global one)
        self.provider: TracerProvider | None = None
        self.tracer: otel_trace.Tracer | None = None
        #: the trace of the last traced block or cell
        self.last_trace: Trace | None = None
        self._user_prices = user_prices
        self._on_drop = on_drop
        self._everywhere: list[SpanProcessor] = []
        self._providers: weakref.WeakSet[TracerProvider] = weakref.WeakSet()

    # -- installing ----------------------------------------------------------------------
    def get_collector(self) -> Collector:
        """The collector, attached to every SDK tracer provider on first use."""
        collector = self.collector
        if collector is not None:
            return collector
        with self.lock:
            if self.collector is not None:
                return self.collector
            current = otel_trace.get_tracer_provider()  # may load OTEL_PYTHON_TRACER_PROVIDER
            # A provider wired by an earlier copy of the package (reloaded) keeps its
            # collector: one collector per provider, never two.
            collector = collector_on(current) or Collector()
            collector.user_prices = self._user_prices
            if self._on_drop not in collector.drop_listeners:
                collector.add_drop_listener(self._on_drop)
            if not any(known is collector for known in self._everywhere):
                self._everywhere.insert(0, collector)
            hook_new_providers(self.attach)
            for provider in existing_providers():
                self.attach(provider)
            own = home_provider()  # attached by the hook if it is new
            self.attach(own)
            self.collector, self.provider = collector, own
            return collector

    def get_tracer(self) -> otel_trace.Tracer:
        """The tracer of this package's own spans (on `provider`: see `get_tracer`)."""
        tracer = self.tracer
        if tracer is None:
            self.get_collector()
            with self.lock:
                assert self.provider is not None
                tracer = self.tracer = self.provider.get_tracer(TRACER_NAME, __version__)
        return tracer

    def _home(self) -> TracerProvider | None:
        return self.provider

    def attach(self, provider: TracerProvider) -> None:
        """Add our processors to `provider` (the collector first). Never raises: it runs
        inside the user's `TracerProvider()`."""
        try:
            with self.lock:
                if add_processors(provider, self._everywhere, self._home):
                    self._providers.add(provider)
        except Exception:  # a provider of an odd kind: never break the code that made it
            internal_error("attaching the collector to a tracer provider")

    def attach_everywhere(self, processor: SpanProcessor) -> None:
        """Add `processor` to every SDK tracer provider of the process, now and to come."""
        self.get_collector()
        with self.lock:
            if not any(known is processor for known in self._everywhere):
                self._everywhere.append(processor)
            providers = list(self._providers)
        for provider in providers:
            self.attach(provider)

    def withdraw(self, processor: SpanProcessor) -> None:
        """Take `processor` off every provider it was added to (not the collector)."""
        with self.lock:
            if processor is self.collector:
                raise ValueError("the collector stays on its providers")
            self._everywhere = [known for known in self._everywhere if known is not processor]
            for provider in list(self._providers):
                remove_processors(provider, [processor], for_good=False)

    def detach(self, provider: TracerProvider) -> None:
        """Take our processors off `provider` and leave it alone from now on."""
        with self.lock:
            remove_processors(provider, None, for_good=True)
            self._providers.discard(provider)

    def attached_providers(self) -> list[TracerProvider]:
        """The SDK tracer providers the collector is attached to (alive ones)."""
        with self.lock:
            return list(self._providers)

    def processors(self) -> tuple[SpanProcessor, ...]:
        """The processors added to every provider, the collector first."""
        with self.lock:
            return tuple(self._everywhere)

    # -- traces --------------------------------------------------------------------------
    def start_root(
        self, name: str, attributes: Mapping[str, Any] | None = None
    ) -> tuple[otel_trace.Span, Trace]:
        """Start the root span of a new trace and register it; the caller ends the span."""
        collector = self.get_collector()
        tracer = self.tracer or self.get_tracer()
        # An empty context: a traced block always starts its own trace (rollup.md rule 9).
        root = tracer.start_span(
            name, context=otel_context.Context(), attributes=root_attributes(attributes)
        )
        span_context = root.get_span_context()
        trace = collector.get(span_context.trace_id)
        if trace is None:  # not sampled, or a provider that is not ours: an empty trace
            trace = Trace(span_context.trace_id, name, user_prices=self._user_prices)
        return root, trace

    def reset(self) -> None:
        """No trace, default retention, no last trace (the wiring stays as it is)."""
        if self.collector is not None:
            self.collector.reset(drop_listeners=[self._on_drop])
        self.last_trace = None

    def withdraw_all(self) -> None:
        """Take every processor but the collector off every provider."""
        with self.lock:
            others = self._everywhere[1:]
        for processor in others:
            self.withdraw(processor)

    def describe(self) -> list[str]:
        collector = self.collector
        if collector is None:
            return ["collector: not installed yet (it is on first use)"]
        traces = collector.traces()
        spans = sum(trace.span_count for trace in traces)
        running = sum(1 for trace in traces if not trace.root_ended)
        providers = self.attached_providers()
        ours = self.provider
        names = [
            type(provider).__name__ + (" (ours)" if provider is ours else "")
            for provider in providers
        ]
        current = global_provider()
        global_name = "none" if current is None else type(current).__name__
        last = self.last_trace
        last_line = "none" if last is None else f"{last.name!r} ({last.span_count} spans)"
        lines = [
            f"retained: {len(traces)} traces ({running} running), {spans:,} spans; "
            f"at most {collector.max_traces:,} traces / {collector.max_spans:,} spans",
            f"draining: {collector.draining} dropped traces waiting for open spans",
            f"last trace: {last_line}",
            f"providers: {len(providers)} SDK tracer providers: " + (", ".join(names) or "none"),
            "processors on each: "
            + ", ".join(type(processor).__name__ for processor in self.processors()),
            f"global provider: {global_name}",
        ]
        return lines


# -- prices --------------------------------------------------------------------------------


class Prices:
    """The user's prices: one immutable `UserPrices` snapshot, swapped on each change.

    Traces read `current()` when they build their tree; its `version` grows with every
    change, so a tree built under older prices is rebuilt (rollup.md rule 15).
    """

    def __init__(self, listeners: tuple[PriceListener, ...] = ()) -> None:
        self._lock = forksafe.new_lock()
        self._current: UserPrices = NO_USER_PRICES
        self._permanent = listeners
        self._listeners: list[PriceListener] = list(listeners)

    def current(self) -> UserPrices:
        """The prices now (the source every trace of this runtime reads)."""
        return self._current

    def set(self, model: str, prices: ModelPrices) -> None:
        with self._lock:
            self._current = self._current.with_price(model, prices)
        self._changed()

    def clear(self, model: str | None = None) -> None:
        with self._lock:
            self._current = self._current.without(model)
        self._changed()

    def add_listener(self, listener: PriceListener) -> None:
        """Call `listener()` after every change of the prices."""
        with self._lock:
            if listener not in self._listeners:
                self._listeners.append(listener)

    def remove_listener(self, listener: PriceListener) -> None:
        with self._lock:
            if listener in self._listeners:
                self._listeners.remove(listener)

    def _changed(self) -> None:
        with self._lock:
            listeners = tuple(self._listeners)
        for listener in listeners:
            try:
                listener()
            except Exception:  # a view failing to redraw must not fail set_prices
                internal_error("a listener of price changes")

    def reset(self) -> None:
        """No user prices (a new version all the same: no stale tree survives)."""
        with self._lock:
            self._current = self._current.without(None)
            self._listeners = list(self._permanent)

    def describe(self) -> list[str]:
        current = self._current
        models = ", ".join(sorted(current.by_model)) or "none"
        return [f"user prices (version {current.version}): {models}"]


# -- open views -----------------------------------------------------------------------------


class View(Protocol):
    """An open view of a trace (`views.display.TraceDisplay`)."""

    def refresh(self) -> None: ...

    def close(self) -> None: ...


class Closable(Protocol):
    """An open view that only needs closing (`views.compare_view.ComparisonView`)."""

    def close(self) -> None: ...


#: At most this many comparison widgets stay open; showing one more closes the oldest.
MAX_COMPARISON_VIEWS: Final = 8
#: At most this many views of traces the collector does not keep (loaded from a file)
#: stay open; registering one more closes the oldest (its output keeps the static HTML).
MAX_UNKEPT_VIEWS: Final = 20


class OpenViews:
    """The trace views open in the notebook, by trace, and the widget models they share.

    A view is closed when the collector drops its trace (a long session does not pile up
    widget models) and redrawn when the user's prices change. Views of traces outside
    retention (`an.load`) are bounded instead: the newest `MAX_UNKEPT_VIEWS` stay open.
    """

    def __init__(self) -> None:
        self._lock = forksafe.new_lock()
        #: open views by `id(trace)`
        self._by_trace: dict[int, list[View]] = {}
        #: the open views of traces the collector does not keep, oldest first
        self._unkept: list[View] = []
        #: the open comparison widgets, oldest first (at most `MAX_COMPARISON_VIEWS`)
        self._comparisons: list[Closable] = []
        #: the layout and styles every widget view shares (`views/widget.py` makes them
        #: once; a cache of models, not state of the session: `reset()` keeps them)
        self.widget_models: tuple[Any, ...] | None = None
        forksafe.register(self.after_fork)

    def after_fork(self) -> None:
        """In a forked child the open views are the parent's: forgotten, never closed
        (closing would talk to the parent's front end), and their models with them."""
        self._by_trace = {}
        self._unkept = []
        self._comparisons = []
        self.widget_models = None

    def register(self, trace: Trace, view: View, *, kept: bool = True) -> None:
        """Add an open view; one of a trace the collector does not keep (`kept=False`)
        may close the oldest such view."""
        with self._lock:
            self._by_trace.setdefault(id(trace), []).append(view)
            if kept:
                return
            self._unkept.append(view)
            evicted = self._unkept[:-MAX_UNKEPT_VIEWS]
            del self._unkept[:-MAX_UNKEPT_VIEWS]
        _close(evicted)  # each unregisters itself

    def unregister(self, trace: Trace, view: View) -> None:
        with self._lock:
            if view in self._unkept:
                self._unkept.remove(view)
            views = self._by_trace.get(id(trace))
            if views is not None:
                if view in views:
                    views.remove(view)
                if not views:
                    del self._by_trace[id(trace)]

    def register_comparison(self, view: Closable) -> None:
        """Add an open comparison widget; past `MAX_COMPARISON_VIEWS` the oldest closes."""
        with self._lock:
            self._comparisons.append(view)
            evicted = self._comparisons[:-MAX_COMPARISON_VIEWS]
            del self._comparisons[:-MAX_COMPARISON_VIEWS]
        _close(evicted)

    def unregister_comparison(self, view: Closable) -> None:
        with self._lock:
            if view in self._comparisons:
                self._comparisons.remove(view)

    def comparison_count(self) -> int:
        """How many comparison widgets are open (for leak checks)."""
        with self._lock:
            return len(self._comparisons)

    def close_comparisons(self) -> None:
        """Close every open comparison widget (reset, extension unload)."""
        with self._lock:
            views, self._comparisons = self._comparisons, []
        _close(views)

    def count(self) -> int:
        """How many views are open (for leak checks)."""
        with self._lock:
            return sum(len(views) for views in self._by_trace.values())

    def trace_dropped(self, trace: Trace) -> None:
        """Close the views of a trace the collector dropped."""
        with self._lock:
            views = self._by_trace.pop(id(trace), [])
        _close(views)

    def refresh_all(self) -> None:
        """Redraw every open view (new user prices: rule 15)."""
        with self._lock:
            views = [view for group in self._by_trace.values() for view in group]
        for view in views:
            try:
                view.refresh()
            except Exception:  # one view failing must not keep the others stale
                internal_error("redrawing a trace view with new prices")

    def reset(self) -> None:
        """Close every open view."""
        with self._lock:
            views = [view for group in self._by_trace.values() for view in group]
            self._by_trace.clear()
            self._unkept.clear()
        _close(views)
        self.close_comparisons()

    def describe(self) -> list[str]:
        with self._lock:
            views, traces = sum(len(v) for v in self._by_trace.values()), len(self._by_trace)
        return [f"open views: {views} (of {traces} traces)"]


def _close(views: Sequence[Closable]) -> None:
    for view in views:
        try:
            view.close()
        except Exception:  # one view failing to close must not keep the others open
            internal_error("closing a trace view")


# -- exports ------------------------------------------------------------------------------


class Exports:
    """The OTLP export route (`io/otlp.py`): one processor on every provider, made by the
    first `export_to`, handing the spans of our traces to the export of the moment."""

    def __init__(self) -> None:
        self.lock = forksafe.new_lock()
        self.processor: SpanProcessor | None = None

    def reset(self) -> None:
        """Stop the export and forget the route (the runtime withdraws it)."""
        with self.lock:
            processor, self.processor = self.processor, None
        if processor is not None:
            try:
                processor.shutdown()  # stops the running export (queued spans get a moment)
            except Exception:
                internal_error("stopping the OTLP export")

    def describe(self) -> list[str]:
        processor = self.processor
        return ["export: " + ("none" if processor is None else repr(processor))]


# -- instrumented libraries ------------------------------------------------------------------


class StreamWatch(Protocol):
    """Ends the spans of streams abandoned before their end (`integrations/openai.py`)."""

    def watch(self, trace_id: int, stream: Any) -> None: ...

    def shutdown(self) -> None: ...


class Instruments:
    """What `instrument()` and `instrument_openai()` did, and how to undo it."""

    def __init__(self) -> None:
        self.lock = forksafe.new_rlock()
        #: instrument(): library -> how to undo what it did
        self.undo: dict[str, Callable[[], None]] = {}
        #: instrument(): library -> the provider to use, for those waiting for an import
        self.pending: dict[str, otel_trace.TracerProvider | None] = {}
        #: instrument(): libraries with a post-import hook. Process-wide: such a hook
        #: cannot be removed, so this survives `reset()` (the hook is inert unless pending)
        self.import_hooks: set[str] = set()
        #: instrument_openai(): the stream watch while instrumented, and how to undo it
        self.stream_watch: StreamWatch | None = None
        self.openai_undo: Callable[[], None] | None = None
        #: the stream watch's processor: added once to every provider, inert when off
        self.stream_processor: SpanProcessor | None = None

    def reset(self) -> None:
        """Undo every instrumentation this package made; stop waiting for imports."""
        with self.lock:
            self.pending.clear()
            undos = list(self.undo.values())
            self.undo.clear()
        for undo in undos:
            try:
                undo()
            except Exception:
                internal_error("undoing an instrumentation")
        with self.lock:
            openai_undo = self.openai_undo
        if openai_undo is not None:
            try:
                openai_undo()
            except Exception:
                internal_error("undoing instrument_openai()")
        with self.lock:
            self.openai_undo = self.stream_watch = self.stream_processor = None

    def describe(self) -> list[str]:
        with self.lock:
            done = sorted(self.undo)
            if self.openai_undo is not None and "openai" not in done:
                done.append("openai (instrument_openai)")
            pending = sorted(self.pending)
        return [
            "instrumented: "
            + (", ".join(done) or "none")
            + ("; on import: " + ", ".join(pending) if pending else "")
        ]


# -- budgets --------------------------------------------------------------------------------


class Budget:
    """The limits a trace asked for: dollars of counted cost, tokens, or both."""

    __slots__ = ("covered", "dollars", "max_tokens")

    def __init__(self, dollars: Decimal | None, max_tokens: int | None) -> None:
        self.dollars = dollars
        self.max_tokens = max_tokens
        #: the traces it counts: its own, and the traces started inside it (an
        #: `an.trace` of a helper, a traced cell run from it), whose spending it covers
        self.covered: list[Trace] = []

    def __repr__(self) -> str:
        return f"<Budget dollars={self.dollars} max_tokens={self.max_tokens}>"

    def attributes(self) -> dict[str, Any]:
        """What the root span of its trace records of it (`BUDGET_DOLLARS`, `BUDGET_TOKENS`)."""
        found: dict[str, Any] = {}
        if self.dollars is not None:
            found[BUDGET_DOLLARS] = str(self.dollars)
        if self.max_tokens is not None:
            found[BUDGET_TOKENS] = self.max_tokens
        return found


#: Root-span attributes of a trace with a budget: its dollars (a decimal string) and tokens.
BUDGET_DOLLARS: Final = "agenta_notebook.budget.dollars"
BUDGET_TOKENS: Final = "agenta_notebook.budget.max_tokens"


def with_budget(
    attributes: Mapping[str, Any] | None, budget: Budget | None
) -> Mapping[str, Any] | None:
    """`attributes` for a root span, with those of `budget` added (if any)."""
    if budget is None:
        return attributes
    return {**(attributes or {}), **budget.attributes()}


def make_budget(budget: Any = None, max_tokens: Any = None) -> Budget | None:
    """Check a budget's values (dollars > 0, tokens a whole number > 0): None for none.

    Raises TypeError or ValueError on a bad value, before anything starts."""
    dollars: Decimal | None = None
    if budget is not None:
        if isinstance(budget, bool) or not isinstance(budget, (int, float, Decimal, str)):
            raise TypeError(f"budget must be a number of dollars, not {type(budget).__name__}")
        try:
            dollars = Decimal(str(budget).strip())
        except ArithmeticError:
            raise ValueError(f"budget must be a number of dollars, not {budget!r}") from None
        if not dollars.is_finite() or dollars <= 0:
            raise ValueError(f"budget must be a positive number of dollars, not {budget!r}")
    if max_tokens is not None:
        if isinstance(max_tokens, bool) or not isinstance(max_tokens, int):
            raise TypeError(f"max_tokens must be an int, not {type(max_tokens).__name__}")
        if max_tokens <= 0:
            raise ValueError(f"max_tokens must be a positive number of tokens, not {max_tokens}")
    if dollars is None and max_tokens is None:
        return None
    return Budget(dollars, max_tokens)


class Budgets:
    """The budgets of the traces running with one, by trace id (`agenta_notebook.budget`
    refuses a model request of such a trace once its counted figures reach the budget)."""

    def __init__(self) -> None:
        #: trace id -> the budgets that cover it (its own first, then those of the traces
        #: it was started in); read without a lock before every model request
        self.by_trace: dict[int, tuple[Budget, ...]] = {}
        self._traces: dict[int, Trace] = {}
        #: install and remove the request guards (set by `agenta_notebook.budget`)
        self.install_guards: Callable[[], None] | None = None
        self.uninstall_guards: Callable[[], None] | None = None

    def start(self, trace: Trace, budget: Budget | None, enclosing: int = 0) -> None:
        """`trace` starts, with `budget` or none, inside the trace `enclosing` (0: none):
        a trace started inside a budgeted one is covered by that budget too."""
        self._prune()
        covering = self.by_trace.get(enclosing, ()) if enclosing else ()
        if budget is not None:
            covering = (budget, *covering)
        if not covering:
            return
        install = self.install_guards
        if install is not None:
            install()
        for each in covering:
            each.covered.append(trace)
        self._traces[trace.trace_id] = trace
        self.by_trace[trace.trace_id] = covering

    def end(self, trace: Trace) -> None:
        """`trace`'s block ended. Its budget holds while any of its spans runs (a task
        or a thread that outlives the block still spends for it): budgets are dropped
        when their trace has no running span, at the next start or end."""
        if len(trace.open_spans()) <= 1:  # its root only, about to end: done spending
            self._traces.pop(trace.trace_id, None)
            self.by_trace.pop(trace.trace_id, None)
        self._prune()

    def _prune(self) -> None:
        for trace_id, trace in list(self._traces.items()):
            if not trace.running:
                self._traces.pop(trace_id, None)
                self.by_trace.pop(trace_id, None)

    def guard(self) -> None:
        """Put the request guards on (the extension's load; the package's import does)."""
        install = self.install_guards
        if install is not None:
            install()

    def reset(self, *, guards: bool = True) -> None:
        """Forget the budgets. The request guards are put back as a fresh import has them
        (on, with the import hook), or left off with `guards=False` (the unload)."""
        self.by_trace.clear()
        self._traces.clear()
        uninstall = self.uninstall_guards
        if uninstall is not None:
            uninstall()
        if guards:
            self.guard()

    def describe(self) -> list[str]:
        return [f"budgets: {len(self.by_trace)} running trace(s) with one"]


# -- threads --------------------------------------------------------------------------------


class ThreadPropagation:
    """Whether threads started now inherit the current span (`threads.py`).

    `threads.py`'s wrappers of `threading` are installed once per process and read
    `active` on each thread start; turning propagation off makes them pass through.
    """

    def __init__(self) -> None:
        self.lock = forksafe.new_lock()
        self.active = False

    def reset(self) -> None:
        with self.lock:
            self.active = False

    def describe(self) -> list[str]:
        return ["thread propagation: " + ("on" if self.active else "off")]


# -- capture of inputs and outputs -----------------------------------------------------------

#: A redaction hook: given an attribute key (``ag.data.inputs.password``) and the Python
#: value, returns what to record (None records nothing).
Redactor = Callable[[str, Any], Any]

DEFAULT_CAPTURE_MAX_CHARS: Final = 2_000
DEFAULT_CAPTURE_MAX_TOTAL: Final = 16_000
DEFAULT_CAPTURE_MAX_ITEMS: Final = 100


class Capture:
    """What `@span` records of its functions' arguments, return values and yields.

    Read on every decorated call without the lock (each field is one atomic read; a call
    racing `set_capture` sees the old or the new value of each); written under it.
    """

    def __init__(self) -> None:
        self.lock = forksafe.new_lock()
        self.enabled = True
        self.max_chars = DEFAULT_CAPTURE_MAX_CHARS
        self.max_total = DEFAULT_CAPTURE_MAX_TOTAL
        self.max_items = DEFAULT_CAPTURE_MAX_ITEMS
        self.redact: Redactor | None = None
        #: Whether the failing redaction hook was already reported (once per hook).
        self.redact_warned = False

    def configure(
        self,
        enabled: bool | None,
        max_chars: int | None,
        max_total: int | None,
        max_items: int | None,
        redact: Redactor | bool | None,
    ) -> None:
        """Validate every argument first, then change them all (or nothing)."""
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(f"set_capture: enabled must be True or False, not {enabled!r}")
        for label, bound in (
            ("max_chars", max_chars),
            ("max_total", max_total),
            ("max_items", max_items),
        ):
            if bound is None:
                continue
            if not isinstance(bound, int) or isinstance(bound, bool):
                raise TypeError(f"set_capture: {label} must be an int, not {bound!r}")
            if bound < 1:
                raise ValueError(f"set_capture: {label} must be at least 1, not {bound}")
        if redact is True or (redact is not None and redact is not False and not callable(redact)):
            raise TypeError(
                f"set_capture: redact must be a callable (key, value) -> value, "
                f"or False to remove it, not {redact!r}"
            )
        with self.lock:
            if enabled is not None:
                self.enabled = enabled
            if max_chars is not None:
                self.max_chars = max_chars
            if max_total is not None:
                self.max_total = max_total
            if max_items is not None:
                self.max_items = max_items
            if redact is False:
                self.redact = None
                self.redact_warned = False
            elif callable(redact):
                self.redact = redact
                self.redact_warned = False

    def reset(self) -> None:
        with self.lock:
            self.enabled = True
            self.max_chars = DEFAULT_CAPTURE_MAX_CHARS
            self.max_total = DEFAULT_CAPTURE_MAX_TOTAL
            self.max_items = DEFAULT_CAPTURE_MAX_ITEMS
            self.redact = None
            self.redact_warned = False

    def describe(self) -> list[str]:
        if not self.enabled:
            return ["capture of inputs/outputs: off"]
        hook = self.redact
        return [
            f"capture of inputs/outputs: on (max {self.max_chars:,} chars a value, "
            f"{self.max_total:,} a span, {self.max_items:,} yielded items"
            + (f", redact={getattr(hook, '__qualname__', repr(hook))}" if hook else "")
            + ")"
        ]


# -- the spend ledger -----------------------------------------------------------------------

#: The environment variable that moves the ledger (a file or a folder) or turns it off.
LEDGER_ENV: Final = "AGENTA_NOTEBOOK_LEDGER"
#: The ledger's file name inside a folder (the user's data folder, or one given).
LEDGER_FILE_NAME: Final = "ledger.sqlite3"
_OFF_WORDS: Final = frozenset({"off", "0", "false", "no", "none"})


def default_ledger_path() -> Path:
    """The ledger in the user's data folder (`platformdirs.user_data_dir`)."""
    from platformdirs import user_data_dir

    return Path(user_data_dir("agenta-notebook")) / LEDGER_FILE_NAME


def _ledger_file(path: Path) -> Path:
    """The ledger file for a path given: a folder (one that exists, or a name with no
    extension that does not exist yet) holds `LEDGER_FILE_NAME`; anything else (an
    existing file, whatever its name) is the file itself."""
    if path.is_dir():
        return path / LEDGER_FILE_NAME
    if not path.suffix and not path.exists() and not path.name.startswith("."):
        return path / LEDGER_FILE_NAME
    return path


def ledger_file(path: str | os.PathLike[str]) -> Path:
    """`path` as the ledger file it names (`~` expanded; a folder holds the ledger);
    ValueError for a path that cannot name a file."""
    text = os.fspath(path)
    if not isinstance(text, str) or not text.strip() or "\0" in text:
        raise ValueError(f"a spend ledger path must name a file or a folder, not {path!r}")
    return _ledger_file(Path(text).expanduser())


class Ledger:
    """Whether finished traced cells are written to the spend ledger, and where.

    On by default, in the user's data folder; `set_ledger` wins over the environment
    variable ``AGENTA_NOTEBOOK_LEDGER`` (a path, or ``off``), which wins over the default.
    Read once per finished cell (`path()`, a few attribute reads), written under the lock.
    """

    def __init__(self) -> None:
        self.lock = forksafe.new_lock()
        #: set_ledger(enabled=...): None follows the environment (on unless it says off)
        self.enabled: bool | None = None
        #: set_ledger(path=...): None follows the environment, else the default
        self.chosen: Path | None = None
        #: the last resolution: ((enabled, chosen, environment variable), path)
        self._resolved: tuple[tuple[bool | None, Path | None, str], Path | None] | None = None

    def configure(self, enabled: bool | None, path: str | os.PathLike[str] | None) -> None:
        """Validate both arguments first, then change them (or nothing)."""
        if enabled is not None and not isinstance(enabled, bool):
            raise TypeError(f"set_ledger: enabled must be True or False, not {enabled!r}")
        chosen: Path | None = None
        if path is not None:
            if not isinstance(path, str | os.PathLike):
                raise TypeError(f"set_ledger: path must be a str or a path, not {path!r}")
            text = os.fspath(path)
            if not isinstance(text, str) or not text.strip() or "\0" in text:
                raise ValueError(f"set_ledger: path must name a file or a folder, not {path!r}")
            chosen = Path(text).expanduser()
        with self.lock:
            if enabled is not None:
                self.enabled = enabled
            if chosen is not None:
                self.chosen = chosen

    def path(self) -> Path | None:
        """The ledger file rows are written to now, or None when the ledger is off.

        Read at the end of every traced cell: resolved once per setting (the switch,
        the chosen path, the environment variable), not once per cell."""
        key = (self.enabled, self.chosen, os.environ.get(LEDGER_ENV, ""))
        cached = self._resolved
        if cached is not None and cached[0] == key:
            return cached[1]
        path = self._resolve(*key)
        self._resolved = (key, path)
        return path

    @staticmethod
    def _resolve(enabled: bool | None, chosen: Path | None, setting: str) -> Path | None:
        if enabled is False:
            return None
        if chosen is not None:
            return _ledger_file(chosen)
        setting = setting.strip()
        if setting.lower() in _OFF_WORDS:
            return None if enabled is None else default_ledger_path()
        if setting:
            if "\0" in setting:
                return None  # cannot name a file: off (`describe` shows it)
            return _ledger_file(Path(setting).expanduser())
        return default_ledger_path()

    def reset(self) -> None:
        with self.lock:
            self.enabled = None
            self.chosen = None

    def describe(self) -> list[str]:
        path = self.path()
        if path is not None:
            return [f"spend ledger: on, {path}"]
        why = "set_ledger(enabled=False)" if self.enabled is False else f"{LEDGER_ENV}=off"
        return [f"spend ledger: off ({why})"]


# -- the runtime ----------------------------------------------------------------------------


class Runtime:
    """Everything the package keeps during a session, in one place (see the module)."""

    def __init__(self) -> None:
        self.views = OpenViews()
        self.prices = Prices(listeners=(self.views.refresh_all,))
        self.tracing = Tracing(user_prices=self.prices.current, on_drop=self.views.trace_dropped)
        self.exports = Exports()
        self.instruments = Instruments()
        self.threads = ThreadPropagation()
        self.capture = Capture()
        self.ledger = Ledger()
        self.budgets = Budgets()

    def reset(self) -> None:
        """Back to the state of a fresh import, in one call.

        Stops the export, undoes the instrumentation, closes the open views, forgets
        every trace and the user's prices, restores the default retention, turns thread
        propagation off, restores the default capture settings and the ledger's (on,
        where the environment says). The collector stays on its providers (process-wide
        wiring).
        """
        self.exports.reset()
        self.instruments.reset()
        self.tracing.withdraw_all()  # the export route, the stream watch, any other
        self.views.reset()
        self.tracing.reset()
        self.prices.reset()
        self.threads.reset()
        self.capture.reset()
        self.ledger.reset()
        self.budgets.reset()

    def describe(self) -> str:
        """What is attached, retained, priced, exported and open, one line each."""
        lines = [
            *self.tracing.describe(),
            *self.prices.describe(),
            *self.exports.describe(),
            *self.views.describe(),
            *self.instruments.describe(),
            *self.threads.describe(),
            *self.capture.describe(),
            *self.ledger.describe(),
            *self.budgets.describe(),
        ]
        return "agenta_notebook runtime\n" + "\n".join(f"  {line}" for line in lines)

    def __repr__(self) -> str:
        collector = self.tracing.collector
        traces = len(collector.traces()) if collector is not None else 0
        export = self.exports.processor
        return (
            f"<Runtime traces={traces} providers={len(self.tracing.attached_providers())} "
            f"user_prices={len(self.prices.current().by_model)} "
            f"export={'on' if export is not None else 'off'} views={self.views.count()} "
            f"threads={'on' if self.threads.active else 'off'}>"
        )


#: The default runtime: the package's functions act on it.
RUNTIME: Final = Runtime()


# -- the package's functions, on the default runtime ---------------------------------------


def get_collector() -> Collector:
    """The process's collector, attached to every SDK tracer provider on first use."""
    return RUNTIME.tracing.get_collector()


def get_tracer() -> otel_trace.Tracer:
    """The tracer this package's spans are made with.

    On a provider this package installed, it follows the global provider: once a
    library (Agenta's `ag.init()`, Logfire) sets its own, our spans are made there too,
    so its exporter receives the whole tree.
    """
    tracing = RUNTIME.tracing
    return tracing.tracer or tracing.get_tracer()


def attach_everywhere(processor: SpanProcessor) -> None:
    """Add `processor` to every SDK tracer provider of the process, now and to come.

    What the collector gets, for a processor that must see the spans of our traces
    whichever provider made them (the OTLP export, say). Added once per provider.
    """
    RUNTIME.tracing.attach_everywhere(processor)


def detach(provider: TracerProvider) -> None:
    """Take our processors off `provider` and leave it alone from now on.

    For a provider that must stay bare (a benchmark's baseline): it no longer feeds the
    collector, so spans made with it are not part of any trace.
    """
    RUNTIME.tracing.detach(provider)


def attached_providers() -> list[TracerProvider]:
    """The SDK tracer providers the collector is attached to (alive ones)."""
    return RUNTIME.tracing.attached_providers()


def set_retention(max_traces: int | None = None, max_spans: int | None = None) -> None:
    """Bound what the session keeps: at most `max_traces` traces and `max_spans` spans.

    The oldest traces are dropped first. Defaults: 200 traces, 2,000,000 spans. Each
    bound is a positive int (or None: unchanged); a bad one raises TypeError or
    ValueError and changes nothing.
    """
    get_collector().set_retention(max_traces, max_spans)


def set_capture(
    enabled: bool | None = None,
    *,
    max_chars: int | None = None,
    max_total: int | None = None,
    max_items: int | None = None,
    redact: Redactor | bool | None = None,
) -> None:
    """Choose what `@span` records of its functions' inputs and outputs.

    `enabled`: capture on (the default) or off for every decorated function.
    `max_chars`: the longest value recorded (longer ones end with "…"; default 2,000).
    `max_total`: the characters recorded per span, inputs and outputs together
    (default 16,000). `max_items`: the yielded items a generator's span keeps (default
    100). `redact`: a callable `(key, value) -> value` given each attribute key
    (`ag.data.inputs.password`) and the Python value, returning what to record (None
    records nothing); `False` removes it. Arguments left as None are unchanged; a bad
    one raises TypeError or ValueError and changes nothing.
    """
    RUNTIME.capture.configure(enabled, max_chars, max_total, max_items, redact)


def set_ledger(enabled: bool | None = None, *, path: str | os.PathLike[str] | None = None) -> None:
    """Turn the spend ledger on or off, or move it.

    Every finished ``%%agenta_trace`` cell appends its totals by model (no prompts, no
    outputs) to a local SQLite file; `agenta_notebook.spend_dataframe()` and
    ``%agenta_spend`` read it. `enabled`: on (the default) or off. `path`: the file, or
    a folder to hold ``ledger.sqlite3``. Without a call, the environment variable
    ``AGENTA_NOTEBOOK_LEDGER`` (a path, or ``off``) decides, else the file is in the
    user's data folder (`platformdirs.user_data_dir("agenta-notebook")`). Arguments left
    as None are unchanged; a bad one raises TypeError or ValueError and changes nothing.
    """
    RUNTIME.ledger.configure(enabled, path)


def ledger_path() -> Path | None:
    """The ledger file finished cells are written to now, or None when it is off."""
    return RUNTIME.ledger.path()


def last_trace() -> Trace | None:
    """The trace of the last traced block or cell, or `None` if there was none."""
    return RUNTIME.tracing.last_trace


def set_last_trace(trace: Trace) -> None:
    """Make `trace` the one `last_trace()` returns (a traced block or cell just ended)."""
    RUNTIME.tracing.last_trace = trace


def start_root(
    name: str, attributes: Mapping[str, Any] | None = None
) -> tuple[otel_trace.Span, Trace]:
    """Start the root span of a new trace and register it; the caller must end the span."""
    return RUNTIME.tracing.start_root(name, attributes)


@contextmanager
def trace(
    name: str = "trace",
    *,
    attributes: Mapping[str, Any] | None = None,
    budget: float | Decimal | str | None = None,
    max_tokens: int | None = None,
) -> Iterator[Trace]:
    """Run a block inside one root span and yield its `Trace`, complete when it exits.

    With `budget` (dollars) or `max_tokens`, a model request of this trace made once its
    counted cost (or tokens) has reached the limit raises `BudgetExceeded` instead of
    leaving the process (openai and anthropic clients; see docs/options.md).

    >>> from agenta_notebook import trace, span
    >>> with trace("demo") as t:
    ...     with span("step"):
    ...         pass
    >>> [node.name for node in t.nodes]
    ['demo', 'step']
    """
    if not isinstance(name, str):  # a file's trace name is text: refuse before starting
        raise TypeError(f"the trace's name must be a str, not {type(name).__name__}")
    limits = make_budget(budget, max_tokens)
    enclosing = otel_trace.get_current_span().get_span_context().trace_id
    root, result = start_root(name, with_budget(attributes, limits))
    token = otel_context.attach(otel_trace.set_span_in_context(root))
    try:
        RUNTIME.budgets.start(result, limits, enclosing)
        yield result
    except BaseException as error:
        fail_span(root, error)
        raise
    finally:
        RUNTIME.budgets.end(result)
        otel_context.detach(token)
        try:
            root.end()  # may raise: a user's span processor (the SDK does not catch)
        finally:
            result.closed = True
            set_last_trace(result)


def user_prices() -> UserPrices:
    """The user's prices now (set with `set_prices`), as an immutable snapshot."""
    return RUNTIME.prices.current()


def set_prices(
    model: str,
    *,
    input: float | int | str | Decimal,
    output: float | int | str | Decimal,
    cache_read: float | int | str | Decimal | None = None,
    cache_write: float | int | str | Decimal | None = None,
) -> None:
    """Set the price of `model` in dollars per million tokens; it wins over the table.

    `model` matches the span's model name in any case, or `provider/model`. Cache
    tokens are part of the input (the inclusive convention) and are charged at
    `cache_read` / `cache_write` when given, else at `input`; reasoning tokens are
    part of the output and charged at `output`. Kept traces and open views are priced
    again with it (rollup.md rule 15).

    >>> set_prices("my-local-llama", input=0.1, output=0.2)
    >>> calculate_cost("my-local-llama", {"input_tokens": 1_000_000})
    Decimal('0.1')
    >>> clear_prices()
    """
    prices = parse_prices(
        input=input, output=output, cache_read=cache_read, cache_write=cache_write
    )
    RUNTIME.prices.set(model, prices)


def clear_prices(model: str | None = None) -> None:
    """Forget the user price of `model`, or of every model."""
    RUNTIME.prices.clear(model)


def calculate_cost(
    model: str, usage: Usage | Mapping[str, Any] | Any, provider: str | None = None
) -> Decimal | None:
    """Dollar cost of `usage` on `model`; `None` when the model has no known price.

    User prices (`set_prices`) win over genai-prices' bundled table. Nothing is
    fetched from the network.

    >>> calculate_cost("gpt-4o", {"prompt_tokens": 1000, "completion_tokens": 100})
    Decimal('0.0035')
    >>> calculate_cost("my-local-llama", {"input_tokens": 10}) is None
    True
    """
    return calculate_cost_with(model, usage, provider, user_prices=RUNTIME.prices.current())
