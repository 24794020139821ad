"""Record every call made with the `openai` client as a model-call span, priced.

>>> import agenta_notebook as an
>>> _ = an.instrument_openai()      # once per session; later calls do nothing

This uses OpenInference's maintained instrumentor
(`openinference-instrumentation-openai`), wired to the tracer provider the collector
is on, so calls made inside `trace(...)` or a traced cell appear in its tree: chat
completions (sync, async, streamed), the Responses API, embeddings and the legacy
completions. The instrumentor writes `openinference.span.kind`, `llm.model_name`,
`llm.system` / `llm.provider` and `llm.token_count.*` (with cache-read, cache-write
and reasoning details), which `agenta_notebook.core.usage` reads and `pricing` costs.

Streams: usage is read from the final chunk, so pass
`stream_options={"include_usage": True}` to chat completions (the Responses API
always reports it). A stream's span ends when the stream is exhausted, closed or
garbage-collected; a stream the consumer abandoned (a `break` out of the loop while
the stream object stays referenced, as in a notebook global) is ended when its
trace's root span ends, with status unset, no usage (none was received) and the
attribute `agenta_notebook.stream.abandoned = True`. The stream itself is left
open, so code that resumes reading it later behaves exactly as without tracing.

OpenTelemetry's own instrumentation (`opentelemetry-instrumentation-openai-v2`) works
too, without this function: its `gen_ai.*` spans go to the global provider the collector
is on, and are read and priced the same way. Its current version (2.4b0) records input
and output tokens only, no cache-read or reasoning counts, so cached input is priced at
the full input rate. Use one instrumentor, not both: `instrument_openai()` warns and does
nothing when the official one is active (each call would be two nested model calls).

Instrument when the extension loads: set the environment variable
`AGENTA_NOTEBOOK_INSTRUMENT_OPENAI=1` (or `true`, `yes`, `on`) before
`%load_ext agenta_notebook`; the extension calls `maybe_instrument_on_load()`.
"""

from __future__ import annotations

import importlib
import os
import warnings
import weakref
from collections.abc import Callable
from typing import Any, Final

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import ReadableSpan, Span, SpanProcessor

from agenta_notebook import forksafe
from agenta_notebook.budget import check_request
from agenta_notebook.errors import internal_error
from agenta_notebook.runtime import RUNTIME, attach_everywhere, get_collector

__all__ = [
    "ABANDONED_STREAM",
    "INSTRUMENT_ON_LOAD_ENV",
    "instrument_openai",
    "is_instrumented",
    "maybe_instrument_on_load",
    "uninstrument_openai",
]

#: Environment variable that makes the extension instrument OpenAI when it loads.
INSTRUMENT_ON_LOAD_ENV: Final = "AGENTA_NOTEBOOK_INSTRUMENT_OPENAI"
#: Attribute set on the span of a stream its consumer abandoned before the end.
ABANDONED_STREAM: Final = "agenta_notebook.stream.abandoned"
_TRUE_WORDS: Final = frozenset({"1", "true", "yes", "on"})
# Bound on the streams remembered for traces whose root never ends.
_MAX_WATCHED_TRACES: Final = 1024


def _finish_abandoned(stream: Any) -> None:
    """End the span of an OpenInference stream proxy that was not read to the end.

    Goes through the proxy's own finishing code, so the partial output it accumulated
    is recorded as on any other end; only the span is ended, never the HTTP stream.
    """
    if getattr(stream, "_self_is_finished", True):
        return
    with_span = getattr(stream, "_self_with_span", None)
    span = getattr(with_span, "_span", None)
    if isinstance(span, otel_trace.Span) and span.is_recording():
        span.set_attribute(ABANDONED_STREAM, True)
    finish = getattr(stream, "_finish_tracing", None)
    if callable(finish):
        finish(status=None)


class _StreamWatch(SpanProcessor):
    """Ends the spans of streams still open when the root span of their trace ends.

    Streams are held by weak reference, keyed by trace id: a stream that is dropped is
    ended by the instrumentor when it is garbage-collected, and this never keeps one
    alive.
    """

    def __init__(self) -> None:
        self._streams: dict[int, list[weakref.ref[Any]]] = {}
        self._lock = forksafe.new_lock()

    def watch(self, trace_id: int, stream: Any) -> None:
        try:
            reference = weakref.ref(stream)
        except TypeError:
            return
        with self._lock:
            if trace_id not in self._streams and len(self._streams) >= _MAX_WATCHED_TRACES:
                self._prune()
            self._streams.setdefault(trace_id, []).append(reference)

    def _prune(self) -> None:
        for trace_id in list(self._streams):
            alive = [ref for ref in self._streams[trace_id] if ref() is not None]
            if alive:
                self._streams[trace_id] = alive
            else:
                del self._streams[trace_id]
        while len(self._streams) >= _MAX_WATCHED_TRACES:  # the oldest traces first
            del self._streams[next(iter(self._streams))]

    def on_start(self, span: Span, parent_context: otel_context.Context | None = None) -> None:
        pass

    def on_end(self, span: ReadableSpan) -> None:
        # Hot path: one attribute test and one truth test for almost every span.
        if span.parent is not None or not self._streams:
            return
        context = span.context
        if context is None:
            return
        with self._lock:
            references = self._streams.pop(context.trace_id, None)
        for reference in references or ():
            stream = reference()
            if stream is None:
                continue
            try:
                _finish_abandoned(stream)
            except Exception:  # never break the code that ended the root
                internal_error("ending the span of an abandoned stream")

    def shutdown(self) -> None:
        with self._lock:
            self._streams.clear()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True


# What instrument_openai() did is the runtime's (`RUNTIME.instruments`): the stream watch
# while instrumented (its processor is added once to every provider and stays, inert
# while no watch is set), and how to undo the rest.


def is_instrumented() -> bool:
    """True while `instrument_openai()` is in effect."""
    return RUNTIME.instruments.stream_watch is not None


def _watch_stream(response: Any) -> None:
    watch = RUNTIME.instruments.stream_watch
    if watch is None or not hasattr(response, "_self_with_span"):
        return  # not a stream the instrumentor is tracing
    span_context = otel_trace.get_current_span().get_span_context()
    if span_context.is_valid:
        watch.watch(span_context.trace_id, response)


def _options(args: Any, kwargs: Any) -> Any:
    """The `options` argument of `request(cast_to, options, ...)`."""
    return args[1] if len(args) > 1 else kwargs.get("options")


def _sync_request(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    __tracebackhide__ = True  # IPython and pytest leave this frame out
    # Before the instrumentor's span: a request refused by a budget is no model call.
    check_request(_options(args, kwargs))
    response = wrapped(*args, **kwargs)
    try:
        _watch_stream(response)
    except Exception:  # the user's call succeeded: never fail it over our bookkeeping
        internal_error("watching an OpenAI stream")
    return response


async def _async_request(wrapped: Any, instance: Any, args: Any, kwargs: Any) -> Any:
    __tracebackhide__ = True  # IPython and pytest leave this frame out
    check_request(_options(args, kwargs))
    response = await wrapped(*args, **kwargs)
    try:
        _watch_stream(response)
    except Exception:  # the user's call succeeded: never fail it over our bookkeeping
        internal_error("watching an OpenAI stream")
    return response


def _official_instrumentor_active() -> bool:
    """True when OpenTelemetry's own OpenAI instrumentor (openai-v2) is instrumenting."""
    try:
        module = importlib.import_module("opentelemetry.instrumentation.openai_v2")
    except ImportError:  # not installed, or an install whose dependencies are missing
        return False
    instrumentor = getattr(module, "OpenAIInstrumentor", None)
    if instrumentor is None:  # a version we do not know: not the one we look for
        return False
    return bool(instrumentor().is_instrumented_by_opentelemetry)


def instrument_openai() -> bool:
    """Trace every `openai` client call (sync and async) into agenta_notebook's traces.

    Idempotent: returns True when this call instrumented the client, False when it was
    already done (by an earlier call, or by your own `OpenAIInstrumentor().instrument()`,
    whose spans the collector also sees when they go to the global SDK provider).

    >>> from agenta_notebook import instrument_openai, trace
    >>> _ = instrument_openai()
    >>> # with trace("answer"): client.chat.completions.create(...)   -> one priced span
    """
    state = RUNTIME.instruments
    with state.lock:
        if state.stream_watch is not None:
            return False
        try:
            openai = importlib.import_module("openai")
            from openinference.instrumentation.openai import OpenAIInstrumentor
            from wrapt import wrap_function_wrapper
        except ImportError as error:
            raise ImportError(
                "instrument_openai() needs the `openai` and "
                "`openinference-instrumentation-openai` packages: "
                "pip install 'agenta-notebook[openai]'"
            ) from error
        if _official_instrumentor_active():
            warnings.warn(
                "agenta_notebook: OpenAI calls are already traced by the official "
                "opentelemetry-instrumentation-openai-v2; instrument_openai() does not add "
                "OpenInference's instrumentor on top, or every call would be recorded "
                "twice (two nested model calls, both counted). Its gen_ai.* spans are "
                "costed as they are; to switch, call its OpenAIInstrumentor().uninstrument().",
                stacklevel=2,
            )
            return False
        get_collector()
        provider = RUNTIME.tracing.provider
        instrumentor = OpenAIInstrumentor()
        instrumented_by_us = False
        if not instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.instrument(tracer_provider=provider)
            if not instrumentor.is_instrumented_by_opentelemetry:
                warnings.warn(
                    "agenta_notebook: openinference-instrumentation-openai refused to "
                    "instrument this version of openai; OpenAI calls are not traced.",
                    stacklevel=2,
                )
                return False
            instrumented_by_us = True
        # Outermost wrappers: they see the stream proxies the instrumentor returns.
        originals = (openai.OpenAI.request, openai.AsyncOpenAI.request)
        wrap_function_wrapper(openai, "OpenAI.request", _sync_request)
        wrap_function_wrapper(openai, "AsyncOpenAI.request", _async_request)
        watch = state.stream_processor
        if not isinstance(watch, _StreamWatch):
            watch = _StreamWatch()
            state.stream_processor = watch
            # On every SDK provider: a root may come from any.
            attach_everywhere(watch)
        state.stream_watch = watch
        state.openai_undo = _undo(openai, originals, instrumented_by_us)
        return True


def _undo(openai: Any, originals: tuple[Any, Any], instrumented_by_us: bool) -> Callable[[], None]:
    """How to undo one `instrument_openai()`: put back what it replaced."""

    def undo() -> None:
        openai.OpenAI.request, openai.AsyncOpenAI.request = originals
        if instrumented_by_us:
            from openinference.instrumentation.openai import OpenAIInstrumentor

            OpenAIInstrumentor().uninstrument()

    return undo


def uninstrument_openai() -> None:
    """Undo `instrument_openai()`: OpenAI calls are no longer traced."""
    state = RUNTIME.instruments
    with state.lock:
        watch, undo = state.stream_watch, state.openai_undo
        if watch is None:
            return
        state.stream_watch = state.openai_undo = None
        if undo is not None:
            undo()
        watch.shutdown()  # forget the streams it watched; it stays on the provider, inert


def maybe_instrument_on_load() -> bool:
    """Instrument OpenAI if `AGENTA_NOTEBOOK_INSTRUMENT_OPENAI` is set to 1/true/yes/on.

    Called by the IPython extension when it loads. Never raises: if the packages are
    missing, it warns and returns False.
    """
    if os.environ.get(INSTRUMENT_ON_LOAD_ENV, "").strip().lower() not in _TRUE_WORDS:
        return False
    try:
        return instrument_openai()
    except ImportError as error:  # the packages are missing: say so, load the extension
        warnings.warn(f"agenta_notebook: could not instrument OpenAI: {error}", stacklevel=2)
        return False
    except Exception:  # an instrumentor that fails: the extension loads all the same
        internal_error("instrumenting OpenAI when the extension loaded")
        return False
