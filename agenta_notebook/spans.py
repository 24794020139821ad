"""`span`: a decorator and context manager for the nodes of a trace; `record_usage`."""

from __future__ import annotations

import asyncio
import functools
import inspect
import json
import warnings
from collections.abc import AsyncGenerator, Callable, Generator, Mapping
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Final, Literal, ParamSpec, TypeVar, overload

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

from agenta_notebook.collector import fail_span
from agenta_notebook.core.pricing import usage_from_any
from agenta_notebook.core.usage import (
    AG_TYPE,
    MODEL_CALL_TYPES,
    figure_attributes,
    usage_attributes,
)
from agenta_notebook.errors import internal_error
from agenta_notebook.runtime import RUNTIME, Capture, get_tracer

P = ParamSpec("P")
R = TypeVar("R")
F = TypeVar("F", bound=Callable[..., Any])


#: Set (True) on a span whose code was cancelled (`asyncio.CancelledError`).
CANCELLED_ATTRIBUTE: Final = "agenta_notebook.cancelled"

#: Agenta's keys of a span's inputs and outputs (`ag.data.inputs.<parameter>`,
#: `ag.data.outputs.<key>`, `ag.data.outputs.__default__` for a return value that is
#: not a dict), and the prefix of a value that is JSON text.
INPUTS_PREFIX: Final = "ag.data.inputs."
OUTPUTS_PREFIX: Final = "ag.data.outputs."
DEFAULT_OUTPUT: Final = "ag.data.outputs.__default__"
JSON_PREFIX: Final = "@ag.type=json:"
#: How many items a generator's span yielded (its outputs keep the first `max_items`).
YIELDED_ATTRIBUTE: Final = "agenta_notebook.yielded"
#: Ends a value cut at the size caps (and stands for values dropped past the span's cap).
CUT: Final = "…"

Capturing = bool | Literal["inputs", "outputs"]


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


# -- capture of inputs and outputs --------------------------------------------------------
#
# Flattened as Agenta's SDK does with its default depth (2): one attribute per parameter
# and per key of a returned dict; str, int, float, bool and bytes as they are; dicts,
# lists and pydantic models as `@ag.type=json:` + JSON; anything else as its repr; None
# not recorded. Like Agenta, only the arguments passed are recorded (no defaults), which
# spares binding the signature on every call; unlike it, `self`/`cls` are skipped.


class _Parameters:
    """What a decorated function's signature says, worked out once at decoration."""

    __slots__ = ("keys", "skip", "varargs")

    def __init__(self, func: Callable[..., Any]) -> None:
        self.keys: tuple[str, ...] = ()
        self.skip = 0
        self.varargs = INPUTS_PREFIX + "args"
        try:
            parameters = list(inspect.signature(func).parameters.values())
        except (TypeError, ValueError):  # a builtin without a signature: keyed by position
            return
        positional = [
            parameter.name
            for parameter in parameters
            if parameter.kind
            in (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        ]
        if positional and positional[0] in ("self", "cls"):
            self.skip = 1
            positional = positional[1:]
        self.keys = tuple(INPUTS_PREFIX + name for name in positional)
        for parameter in parameters:
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                self.varargs = INPUTS_PREFIX + parameter.name


#: A value the redaction hook failed on: nothing is recorded for it.
_SKIP: Final = object()


def _redacted(settings: Capture, hook: Callable[[str, Any], Any], key: str, value: Any) -> Any:
    try:
        return hook(key, value)
    except Exception as error:
        if not settings.redact_warned:
            settings.redact_warned = True
            warnings.warn(
                f"agenta_notebook: the redact hook raised {type(error).__name__}: {error}; "
                f"{key} (and any other value it fails on) is not recorded",
                RuntimeWarning,
                stacklevel=2,
            )
        return _SKIP


def _json_default(value: Any) -> Any:
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump()
    return repr(value)


def _encode_other(value: Any) -> Any:
    """A value that is not str/int/float/bool/None, as Agenta encodes it (uncut)."""
    try:
        if isinstance(value, bytes):
            return value
        if isinstance(value, str):  # a subclass (a StrEnum): its text, as Agenta keeps it
            return str.__str__(value)
        if isinstance(value, (dict, list)) or callable(getattr(value, "model_dump", None)):
            try:
                return JSON_PREFIX + json.dumps(value, default=_json_default, ensure_ascii=False)
            except (TypeError, ValueError, RecursionError):  # tuple keys, a cycle: its repr
                return repr(value)
        return repr(value)
    except Exception:  # the user's object cannot be shown: a placeholder, never a failure
        return f"<{type(value).__name__} that cannot be shown>"


def _cut(text: Any, room: int) -> Any:
    """`text` within `room` characters, cut ones ending with CUT (JSON ones lose the
    `@ag.type=json:` prefix, as they are no longer JSON)."""
    if len(text) <= room:
        return text
    if isinstance(text, bytes):
        return text[: max(room, 0)]
    if text.startswith(JSON_PREFIX):
        text = text[len(JSON_PREFIX) :]
    return text[: max(room - 1, 0)] + CUT


def _put(captured: dict[str, Any], key: str, value: Any, settings: Capture, used: int) -> int:
    """Record `value` under `key` in `captured`; returns the characters used so far."""
    hook = settings.redact
    if hook is not None:
        value = _redacted(settings, hook, key, value)
        if value is _SKIP:
            return used
    kind = type(value)
    if kind is str:
        pass
    elif kind is int or kind is float or kind is bool:
        captured[key] = value
        return used
    elif value is None:
        return used
    else:
        value = _encode_other(value)
        if not isinstance(value, (str, bytes)):
            captured[key] = value
            return used
    room = min(settings.max_chars, settings.max_total - used)
    if len(value) > room:
        value = _cut(value, room) if room > 0 else CUT
    captured[key] = value
    return used + len(value)


def _capture_inputs(
    parameters: _Parameters, args: tuple[Any, ...], kwargs: dict[str, Any], settings: Capture
) -> tuple[dict[str, Any], int]:
    captured: dict[str, Any] = {}
    used = 0
    try:
        if parameters.skip:
            args = args[1:]
        keys = parameters.keys
        plain = settings.redact is None
        max_chars = settings.max_chars
        max_total = settings.max_total
        for key, value in zip(keys, args, strict=False):
            kind = type(value)
            if plain:  # the fast path of `_put` for the common small values
                if kind is str and len(value) <= max_chars and used + len(value) <= max_total:
                    captured[key] = value
                    used += len(value)
                    continue
                if kind is int or kind is float or kind is bool:
                    captured[key] = value
                    continue
            used = _put(captured, key, value, settings, used)
        if len(args) > len(keys):
            used = _put(captured, parameters.varargs, list(args[len(keys) :]), settings, used)
        for name, value in kwargs.items():
            used = _put(captured, INPUTS_PREFIX + name, value, settings, used)
    except Exception:
        internal_error("capturing the inputs of a span")
    return captured, used


def _capture_output(span: otel_trace.Span, result: Any, settings: Capture, used: int) -> None:
    try:
        captured: dict[str, Any] = {}
        if isinstance(result, dict):
            if "message" in result and "cost" in result and "usage" in result:
                _put(captured, DEFAULT_OUTPUT, result["message"], settings, used)
            else:
                for key, value in result.items():
                    used = _put(captured, OUTPUTS_PREFIX + str(key), value, settings, used)
        else:
            _put(captured, DEFAULT_OUTPUT, result, settings, used)
        if captured:
            span.set_attributes(captured)
    except Exception:
        internal_error("capturing the output of a span")


class _Yields:
    """What a generator yielded: the first `max_items` items and a count."""

    __slots__ = ("count", "items", "limit")

    def __init__(self, limit: int) -> None:
        self.items: list[Any] = []
        self.count = 0
        self.limit = limit

    def add(self, item: Any) -> None:
        self.count += 1
        if self.count <= self.limit:
            self.items.append(item)

    def record(self, span: otel_trace.Span, settings: Capture, used: int) -> None:
        try:
            items = self.items
            more = self.count > len(items)
            output: Any
            if all(type(item) is str for item in items):
                output = "".join(items) + (CUT if more else "")
            else:
                output = [*items, CUT] if more else items
            captured: dict[str, Any] = {}
            _put(captured, DEFAULT_OUTPUT, output, settings, used)
            captured[YIELDED_ATTRIBUTE] = self.count
            span.set_attributes(captured)
        except Exception:
            internal_error("capturing what a generator yielded")


def _capture_modes(capture: Capturing) -> tuple[bool, bool]:
    if capture is True or capture is False:
        return capture, capture
    if capture == "inputs":
        return True, False
    if capture == "outputs":
        return False, True
    raise ValueError(f"span: capture must be True, False, 'inputs' or 'outputs', not {capture!r}")


def _open(
    name: str,
    attributes: dict[str, Any],
    parameters: _Parameters,
    inputs: bool,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> tuple[otel_trace.Span, Capture | None, int]:
    """Start a decorated call's span with its captured inputs; the capture settings
    (None when capture is off) and the characters the inputs used."""
    settings = RUNTIME.capture
    if not settings.enabled:
        return get_tracer().start_span(name, attributes=attributes), None, 0
    if not inputs:
        return get_tracer().start_span(name, attributes=attributes), settings, 0
    captured, used = _capture_inputs(parameters, args, kwargs, settings)
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
        _capture_modes(capture)  # a bad value fails here, before anything is decorated
        self.capture = capture

    # -- decorator -----------------------------------------------------------------------
    def __call__(self, func: F) -> F:
        name = self.name or getattr(func, "__qualname__", None) or repr(func)
        attributes = self.attributes
        legacy = self.type.lower() in MODEL_CALL_TYPES
        inputs, outputs = _capture_modes(self.capture)
        parameters = _Parameters(func)
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
                    if outputs and settings is not None:
                        _capture_output(span, result, settings, used)
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
                if outputs and settings is not None:
                    _capture_output(span, result, settings, used)
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
    parameters: _Parameters,
    inputs: bool,
    outputs: bool,
) -> Callable[..., Generator[Any, Any, Any]]:
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        __tracebackhide__ = True  # IPython and pytest leave this frame out
        span, settings, used = _open(name, attributes, parameters, inputs, args, kwargs)
        yields = _Yields(settings.max_items) if outputs and settings is not None else None
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
            if yields is not None and settings is not None:
                yields.record(span, settings, used)
            span.end()

    return wrapper


def _async_generator_wrapper(
    func: Callable[..., AsyncGenerator[Any, Any]],
    name: str,
    attributes: dict[str, Any],
    parameters: _Parameters,
    inputs: bool,
    outputs: bool,
) -> Callable[..., AsyncGenerator[Any, Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        __tracebackhide__ = True  # IPython and pytest leave this frame out
        span, settings, used = _open(name, attributes, parameters, inputs, args, kwargs)
        yields = _Yields(settings.max_items) if outputs and settings is not None else None
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
            if yields is not None and settings is not None:
                yields.record(span, settings, used)
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
