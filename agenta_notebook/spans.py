"""`span`: a decorator and context manager for the nodes of a trace; `record_usage`."""

from __future__ import annotations

import asyncio
import functools
import inspect
import warnings
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Final, ParamSpec, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

from agenta_notebook.capture import (
    Capturing,
    Parameters,
    Yields,
    capture_inputs,
    capture_modes,
    capture_output,
)
from agenta_notebook.collector import fail_span
from agenta_notebook.core.pricing import usage_from_any
from agenta_notebook.core.usage import (
    AG_TYPE,
    MODEL_CALL_TYPES,
    figure_attributes,
    usage_attributes,
)
from agenta_notebook.runtime import RUNTIME, Capture, get_tracer

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


#: Set (True) on a span whose code was cancelled (`asyncio.CancelledError`).
CANCELLED_ATTRIBUTE: Final = "agenta_notebook.cancelled"


def _settle(span: otel_trace.Span, error: BaseException) -> None:
    """Record how `error` ended `span`.

    Closing a generator early is how consumers stop it, not a failure. A cancelled task
    is not a failure either: when one task of an `asyncio.TaskGroup` (or a `gather`)
    fails, its siblings are cancelled, and counting each as an error would count one
    exception several times (rollup.md rule 8); the span is marked cancelled instead.
    """
    if isinstance(error, GeneratorExit):
        return
    if isinstance(error, asyncio.CancelledError):
        span.set_attribute(CANCELLED_ATTRIBUTE, True)
        return
    fail_span(span, error)


def _open(
    name: str,
    attributes: dict[str, Any],
    parameters: Parameters,
    inputs: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[otel_trace.Span, Capture | None, int]:
    """Start a decorated call's span with its captured inputs; the capture settings
    (None when capture is off) and the characters the inputs used."""
    settings = RUNTIME.capture
    if not settings.enabled:
        return get_tracer().start_span(name, attributes=attributes), None, 0
    if not inputs or not (args or kwargs):
        return get_tracer().start_span(name, attributes=attributes), settings, 0
    captured, used = capture_inputs(parameters, args, kwargs, settings)
    if captured:
        captured = {**attributes, **captured}
        return get_tracer().start_span(name, attributes=captured), settings, used
    return get_tracer().start_span(name, attributes=attributes), settings, used


class SpanSpec:
    """What `span(...)` returns: use it as a decorator or as a (async) context manager.

    A decorated function keeps no per-call state on this object; each call opens its own
    span. As a context manager, the spans it opened are kept in the current context (not
    on the object), so one `span(...)` object can be nested, re-entered, and entered at
    once by concurrent tasks or threads.
    """

    __slots__ = ("attributes", "capture", "name", "type")

    def __init__(
        self,
        name: str | None,
        type: str,
        attributes: Mapping[str, Any] | None = None,
        capture: Capturing = True,
    ) -> None:
        self.name = name
        self.type = type
        self.attributes: dict[str, Any] = {AG_TYPE: type, **(attributes or {})}
        capture_modes(capture)  # a bad value fails here, before anything is decorated
        self.capture = capture

    # -- decorator -----------------------------------------------------------------------
    def __call__(self, func: F) -> F:
        name = self.name or getattr(func, "__qualname__", None) or repr(func)
        attributes = self.attributes
        legacy = self.type.lower() in MODEL_CALL_TYPES
        inputs, outputs = capture_modes(self.capture)
        parameters = Parameters(func)
        if inspect.isasyncgenfunction(func):
            return functools.wraps(func)(  # type: ignore[return-value]
                _async_generator_wrapper(func, name, attributes, parameters, inputs, outputs)
            )
        if inspect.isgeneratorfunction(func):
            return functools.wraps(func)(  # type: ignore[return-value]
                _generator_wrapper(func, name, attributes, parameters, inputs, outputs)
            )
        if inspect.iscoroutinefunction(func):

            @functools.wraps(func)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                __tracebackhide__ = True  # IPython and pytest leave this frame out
                span, settings, used = _open(name, attributes, parameters, inputs, args, kwargs)
                token = otel_context.attach(otel_trace.set_span_in_context(span))
                try:
                    result = await func(*args, **kwargs)
                    if legacy:
                        _record_returned_usage(span, result)
                    if outputs and settings is not None and result is not None:
                        capture_output(span, result, settings, used)
                    return result
                except BaseException as error:
                    _settle(span, error)
                    raise
                finally:
                    otel_context.detach(token)
                    span.end()

            return async_wrapper  # type: ignore[return-value]

        @functools.wraps(func)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            __tracebackhide__ = True  # IPython and pytest leave this frame out
            span, settings, used = _open(name, attributes, parameters, inputs, args, kwargs)
            token = otel_context.attach(otel_trace.set_span_in_context(span))
            try:
                result = func(*args, **kwargs)
                if legacy:
                    _record_returned_usage(span, result)
                if outputs and settings is not None and result is not None:
                    capture_output(span, result, settings, used)
                return result
            except BaseException as error:
                _settle(span, error)
                raise
            finally:
                otel_context.detach(token)
                span.end()

        return wrapper  # type: ignore[return-value]

    # -- context manager -----------------------------------------------------------------
    def __enter__(self) -> otel_trace.Span:
        span = get_tracer().start_span(self.name or "span", attributes=self.attributes)
        token = otel_context.attach(otel_trace.set_span_in_context(span))
        _OPEN_BLOCKS.set((*_OPEN_BLOCKS.get(), (self, span, token)))
        return span

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span, token = _close_block(self)
        if exc is not None:
            _settle(span, exc)
        otel_context.detach(token)
        span.end()

    async def __aenter__(self) -> otel_trace.Span:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, traceback)

    def __repr__(self) -> str:
        return f"span({self.name!r}, type={self.type!r})"


#: The blocks opened by `span(...)` context managers in the current context, innermost
#: last: each task and thread sees its own, so concurrent blocks never end each other.
_OPEN_BLOCKS: ContextVar[tuple[tuple[SpanSpec, otel_trace.Span, object], ...]] = ContextVar(
    "agenta_notebook_open_blocks", default=()
)


def _close_block(spec: SpanSpec) -> tuple[otel_trace.Span, Any]:
    blocks = _OPEN_BLOCKS.get()
    for index in range(len(blocks) - 1, -1, -1):
        if blocks[index][0] is spec:
            _, span, token = blocks[index]
            _OPEN_BLOCKS.set(blocks[:index] + blocks[index + 1 :])
            return span, token
    raise RuntimeError(f"{spec!r} exited without being entered in this context")


def _generator_wrapper(
    func: Callable[..., Generator[Any, Any, Any]],
    name: str,
    attributes: dict[str, Any],
    parameters: Parameters,
    inputs: bool,
    outputs: bool,
) -> Callable[..., Generator[Any, Any, Any]]:
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        __tracebackhide__ = True  # IPython and pytest leave this frame out
        span, settings, used = _open(name, attributes, parameters, inputs, args, kwargs)
        yields = Yields(settings, used) if outputs and settings is not None else None
        span_context = otel_trace.set_span_in_context(span)
        # The span is current only while the generator's own code runs, never in the
        # consumer's code between two items.
        try:
            token = otel_context.attach(span_context)
            try:
                generator = func(*args, **kwargs)
            finally:
                otel_context.detach(token)
            to_send: Any = None
            to_throw: BaseException | None = None
            while True:
                token = otel_context.attach(span_context)
                try:
                    if to_throw is not None:
                        error, to_throw = to_throw, None
                        item = generator.throw(error)
                    else:
                        item = generator.send(to_send)
                except StopIteration as stop:
                    return stop.value
                finally:
                    otel_context.detach(token)
                if yields is not None:
                    yields.add(item)
                try:
                    to_send = yield item
                except GeneratorExit:
                    token = otel_context.attach(span_context)
                    try:
                        generator.close()
                    finally:
                        otel_context.detach(token)
                    raise
                except BaseException as error:
                    to_throw = error
        except BaseException as error:
            _settle(span, error)
            raise
        finally:
            if yields is not None:
                yields.record(span)
            span.end()

    return wrapper


def _async_generator_wrapper(
    func: Callable[..., AsyncGenerator[Any, Any]],
    name: str,
    attributes: dict[str, Any],
    parameters: Parameters,
    inputs: bool,
    outputs: bool,
) -> Callable[..., AsyncGenerator[Any, Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        __tracebackhide__ = True  # IPython and pytest leave this frame out
        span, settings, used = _open(name, attributes, parameters, inputs, args, kwargs)
        yields = Yields(settings, used) if outputs and settings is not None else None
        span_context = otel_trace.set_span_in_context(span)
        try:
            token = otel_context.attach(span_context)
            try:
                generator = func(*args, **kwargs)
            finally:
                otel_context.detach(token)
            to_send: Any = None
            to_throw: BaseException | None = None
            while True:
                token = otel_context.attach(span_context)
                try:
                    if to_throw is not None:
                        error, to_throw = to_throw, None
                        item = await generator.athrow(error)
                    else:
                        item = await generator.asend(to_send)
                except StopAsyncIteration:
                    return
                finally:
                    otel_context.detach(token)
                if yields is not None:
                    yields.add(item)
                try:
                    to_send = yield item
                except GeneratorExit:
                    token = otel_context.attach(span_context)
                    try:
                        await generator.aclose()
                    finally:
                        otel_context.detach(token)
                    raise
                except BaseException as error:
                    to_throw = error
        except BaseException as error:
            _settle(span, error)
            raise
        finally:
            if yields is not None:
                yields.record(span)
            span.end()

    return wrapper


@overload
def span(
    name: F,
    type: str = "task",
    *,
    attributes: Mapping[str, Any] | None = None,
    capture: Capturing = True,
) -> F: ...


@overload
def span(
    name: str | None = None,
    type: str = "task",
    *,
    attributes: Mapping[str, Any] | None = None,
    capture: Capturing = True,
) -> SpanSpec: ...


def span(
    name: str | Callable[..., Any] | None = None,
    type: str = "task",
    *,
    attributes: Mapping[str, Any] | None = None,
    capture: Capturing = True,
) -> Any:
    """Open a span around a function or a block: a node of the trace.

    `type` is one of workflow, agent, chain, task, tool, retriever, embedding, llm,
    chat, completion, rerank (or your own word); llm, chat, completion, embedding and
    rerank mark model calls. Works on sync and async functions, generators and async
    generators (the span ends when the generator is exhausted, closed or raises).

    >>> @span(type="tool")
    ... def search(query: str) -> list[str]:
    ...     return [query]
    >>> with span("retrieve", type="retriever"):
    ...     docs = search("q")

    A decorated function's arguments and return value (or what a generator yielded) are
    recorded under Agenta's keys, `ag.data.inputs.<parameter>` and
    `ag.data.outputs.__default__` (or one key per item of a returned dict), cut at the
    caps of `set_capture`. `capture=False` records neither, `capture="inputs"` or
    `capture="outputs"` only one; `set_capture(enabled=False)` turns it off everywhere.
    The context-manager form records no inputs or outputs (it has no arguments).

    A function typed as a model call that returns `{"cost": ..., "usage": {...}}`
    (the pattern Agenta's SDK used to ask for) has that usage recorded on its span.
    """
    if callable(name):
        return SpanSpec(None, type, attributes, capture)(name)
    return SpanSpec(name, type, attributes, capture)


def _record_returned_usage(span: otel_trace.Span, result: Any) -> None:
    if not isinstance(result, Mapping) or not ("usage" in result or "cost" in result):
        return
    raw_usage = result.get("usage")
    counts: dict[str, Any] = (
        usage_from_any(raw_usage, keep_bad=True) if raw_usage is not None else {}
    )
    model = result.get("model")
    span.set_attributes(
        usage_attributes(
            model=model if isinstance(model, str) else None,
            cost=result.get("cost"),
            **counts,
        )
    )


def record_usage(
    *,
    model: str | None = None,
    provider: str | None = None,
    input_tokens: int | None = None,
    output_tokens: int | None = None,
    total_tokens: int | None = None,
    cache_read_tokens: int | None = None,
    cache_write_tokens: int | None = None,
    reasoning_tokens: int | None = None,
    cost: float | str | Any | None = None,
    usage: Any = None,
    span: otel_trace.Span | None = None,
) -> None:
    """Record a model call's usage on the current span (or `span`), in Agenta's keys.

    Token counts follow the OpenTelemetry GenAI convention: input includes cache-read
    and cache-write tokens, output includes reasoning tokens. `usage` takes an OpenAI
    usage object or a dict and fills the counts not given. `cost` is the dollar cost the
    provider reported; leave it out to have the price computed.

    >>> from agenta_notebook import span, trace
    >>> with trace("t") as t, span("call", type="llm"):
    ...     record_usage(model="gpt-4o", input_tokens=100, output_tokens=20)
    >>> t.totals.total_tokens
    120
    """
    target = span if span is not None else otel_trace.get_current_span()
    if not target.is_recording():
        warnings.warn("record_usage: no recording span is current", stacklevel=2)
        return
    # The figures of the signature, by name (tests/test_fields.py checks that they are
    # every figure a span states, `fields.STATED`).
    figures: dict[str, Any] = {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "total_tokens": total_tokens,
        "cache_read_tokens": cache_read_tokens,
        "cache_write_tokens": cache_write_tokens,
        "reasoning_tokens": reasoning_tokens,
        "cost": cost,
    }
    if usage is not None:  # fills the figures not given
        for name, value in usage_from_any(usage, keep_bad=True).items():
            if figures.get(name) is None:
                figures[name] = value
    target.set_attributes(figure_attributes(figures, model=model, provider=provider))
