"""The span API: decorator and context manager on every kind of callable; record_usage."""

from __future__ import annotations

import asyncio
import contextvars
import gc
import threading
from collections.abc import AsyncIterator, Iterator
from decimal import Decimal
from typing import Any

import pytest
from opentelemetry import trace as otel_trace

import agenta_notebook as an
from agenta_notebook.core.rollup import SpanNode
from agenta_notebook.spans import SpanSpec


def names(result: an.Trace) -> list[tuple[int, str]]:
    return [(n.depth, n.name) for n in result.nodes]


def exception_events(node: SpanNode) -> list[str]:
    return [
        str(event.attributes.get("exception.type"))
        for event in node.record.events
        if event.name == "exception"
    ]


# --- sync and async functions -------------------------------------------------------------


def test_sync_function() -> None:
    @an.span(type="tool")
    def search(query: str) -> list[str]:
        return [query, query]

    with an.trace("sync") as result:
        assert search("q") == ["q", "q"]
    [_, node] = result.nodes
    assert node.name.endswith("search") and node.type == "tool"
    assert node.record.status == "UNSET" and not node.running
    assert search.__name__ == "search"  # functools.wraps


def test_bare_decorator_and_explicit_name() -> None:
    @an.span
    def plain() -> int:
        return 1

    @an.span("named step", type="chain")
    def other() -> int:
        return 2

    with an.trace("names") as result:
        assert plain() + other() == 3
    assert result.nodes[1].name.endswith("plain") and result.nodes[1].type == "task"
    assert result.nodes[2].name == "named step" and result.nodes[2].type == "chain"


def test_sync_function_raising_records_the_error() -> None:
    @an.span(type="tool")
    def broken() -> None:
        raise KeyError("missing")

    with an.trace("raise") as result, pytest.raises(KeyError):
        broken()
    node = result.nodes[1]
    assert node.record.status == "ERROR"
    assert "KeyError" in (node.record.status_message or "")
    assert exception_events(node) == ["KeyError"]
    assert node.is_error_origin and result.totals.errors == 1


def test_async_function_and_nesting() -> None:
    @an.span(type="llm")
    async def call(tokens: int) -> int:
        await asyncio.sleep(0)
        an.record_usage(total_tokens=tokens)
        return tokens

    @an.span(type="agent")
    async def agent() -> int:
        return await call(3) + await call(4)

    with an.trace("async") as result:
        assert asyncio.run(agent()) == 7
    assert [(d, n.rsplit(".", 1)[-1]) for d, n in names(result)] == [
        (0, "async"),
        (1, "agent"),
        (2, "call"),
        (2, "call"),
    ]
    assert result.totals.total_tokens == 7


def test_async_function_raising() -> None:
    @an.span(type="tool")
    async def broken() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("no")

    with an.trace("async raise") as result, pytest.raises(RuntimeError):
        asyncio.run(broken())
    assert result.nodes[1].record.status == "ERROR"
    assert exception_events(result.nodes[1]) == ["RuntimeError"]


def test_recorded_stack_trace_leaves_our_wrapper_frames_out() -> None:
    @an.span
    def inner() -> None:
        raise ValueError("inner failed")

    @an.span
    def outer() -> None:
        try:
            inner()
        except ValueError as error:
            raise KeyError("outer failed") from error

    with an.trace("hidden") as result, pytest.raises(KeyError):
        outer()
    texts = {}
    for node in result.nodes[1:]:
        [event] = [e for e in node.record.events if e.name == "exception"]
        texts[node.name.rsplit(".", 1)[-1]] = str(event.attributes["exception.stacktrace"])
        assert event.attributes["exception.escaped"] == "False"
    assert "agenta_notebook/spans.py" not in texts["inner"] and ", in inner" in texts["inner"]
    assert texts["inner"].rstrip().endswith("ValueError: inner failed")
    # the chain is kept, each part without our frames
    assert "agenta_notebook/spans.py" not in texts["outer"]
    assert "direct cause of the following exception" in texts["outer"]
    assert ", in inner" in texts["outer"] and ", in outer" in texts["outer"]
    assert texts["outer"].rstrip().endswith("KeyError: 'outer failed'")


def test_recorded_stack_trace_of_an_exception_group_leaves_our_frames_out() -> None:
    @an.span
    def inner() -> None:
        raise ValueError("inner failed")

    @an.span
    def outer() -> None:
        try:
            inner()
        except ValueError as error:
            raise ExceptionGroup("both failed", [error]) from None

    with an.trace("group") as result, pytest.raises(ExceptionGroup):
        outer()
    [node] = [node for node in result.nodes if node.name.endswith("outer")]
    [event] = [e for e in node.record.events if e.name == "exception"]
    text = str(event.attributes["exception.stacktrace"])
    assert ", in inner" in text and "ValueError: inner failed" in text
    assert "agenta_notebook/spans.py" not in text


def test_an_exception_whose_str_fails_is_still_recorded_and_raised() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no text")

    @an.span
    def failing() -> None:
        raise Unprintable()

    with an.trace("unprintable") as result, pytest.raises(Unprintable):
        failing()
    node = result.nodes[-1]
    assert node.record.status == "ERROR"
    assert "Unprintable" in (node.record.status_message or "")


# --- generators -----------------------------------------------------------------------------


def test_generator_exhausted_ends_the_span_with_the_items_as_children() -> None:
    @an.span("stream", type="llm")
    def stream(count: int) -> Iterator[int]:
        for index in range(count):
            with an.span(f"chunk {index}"):
                pass
            yield index
        an.record_usage(output_tokens=count)

    with an.trace("generator") as result:
        gen = stream(3)
        with an.span("consumer between items"):
            first = next(gen)
        rest = list(gen)
    assert [first, *rest] == [0, 1, 2]
    stream_node = result.find("stream")
    assert not stream_node.running and stream_node.record.status == "UNSET"
    assert [c.name for c in stream_node.children] == ["chunk 0", "chunk 1", "chunk 2"]
    # the consumer's code between items is not inside the generator's span
    assert result.find("consumer between items").parent is result.root
    assert stream_node.own.output_tokens == 3


def test_generator_closed_early_ends_the_span_without_error() -> None:
    cleaned: list[bool] = []

    @an.span("stream")
    def stream() -> Iterator[int]:
        try:
            yield from range(100)
        finally:
            cleaned.append(True)

    with an.trace("closed") as result:
        for item in stream():
            if item == 2:
                break
        gc.collect()
    node = result.find("stream")
    assert cleaned == [True]
    assert not node.running
    assert node.record.status == "UNSET" and not exception_events(node)
    assert result.totals.errors == 0


def test_generator_raising_records_the_error() -> None:
    @an.span("stream")
    def stream() -> Iterator[int]:
        yield 1
        raise ValueError("mid-stream")

    with an.trace("raising") as result, pytest.raises(ValueError):
        list(stream())
    node = result.find("stream")
    assert node.record.status == "ERROR" and exception_events(node) == ["ValueError"]


def test_generator_send_and_return_value_pass_through() -> None:
    @an.span("echo")
    def echo() -> Any:
        received = yield "ready"
        yield f"got {received}"
        return "done"

    with an.trace("send"):
        gen = echo()
        assert next(gen) == "ready"
        assert gen.send("x") == "got x"
        with pytest.raises(StopIteration) as stop:
            next(gen)
    assert stop.value.value == "done"


def test_async_generator_exhausted_closed_and_raising() -> None:
    @an.span("astream", type="llm")
    async def astream(count: int, fail: bool = False) -> AsyncIterator[int]:
        for index in range(count):
            await asyncio.sleep(0)
            yield index
        if fail:
            raise ValueError("async mid-stream")

    async def main() -> None:
        with an.span("exhausted"):
            assert [item async for item in astream(3)] == [0, 1, 2]
        with an.span("closed early"):
            gen = astream(10)
            async for item in gen:
                if item == 1:
                    break
            await gen.aclose()  # type: ignore[attr-defined]
        with an.span("raising"):
            with pytest.raises(ValueError):
                async for _ in astream(2, fail=True):
                    pass

    with an.trace("async generators") as result:
        asyncio.run(main())
    exhausted, closed, raising = (
        result.find(name).children[0] for name in ("exhausted", "closed early", "raising")
    )
    for node in (exhausted, closed, raising):
        assert node.name == "astream" and not node.running
    assert exhausted.record.status == closed.record.status == "UNSET"
    assert not exception_events(closed)
    assert raising.record.status == "ERROR"
    assert exception_events(raising) == ["ValueError"]
    assert result.totals.errors == 1


# --- context managers -----------------------------------------------------------------------


def test_context_manager_nesting_and_returned_span() -> None:
    with an.trace("cm") as result:
        with an.span("outer", type="chain") as outer:
            assert otel_trace.get_current_span() is outer
            with an.span("inner", type="tool"):
                pass
        assert otel_trace.get_current_span() is not outer
    assert names(result) == [(0, "cm"), (1, "outer"), (2, "inner")]


def test_context_manager_records_errors_but_not_generator_exit() -> None:
    with an.trace("cm errors") as result:
        with pytest.raises(ZeroDivisionError), an.span("fails"):
            _ = 1 / 0
    assert result.find("fails").record.status == "ERROR"
    assert exception_events(result.find("fails")) == ["ZeroDivisionError"]


def test_async_context_manager() -> None:
    async def main() -> None:
        async with an.span("async block", type="retriever"):
            await asyncio.sleep(0)
            async with an.span("inner"):
                pass

    with an.trace("acm") as result:
        asyncio.run(main())
    assert names(result) == [(0, "acm"), (1, "async block"), (2, "inner")]
    assert result.find("async block").type == "retriever"


def test_one_span_object_can_be_reentered_and_nested() -> None:
    step = an.span("step")
    with an.trace("reuse") as result:
        with step:
            with step:
                pass
        with step:
            pass
    assert names(result) == [(0, "reuse"), (1, "step"), (2, "step"), (1, "step")]


# --- the decorator keeps no per-call state ----------------------------------------------------


def test_decorator_keeps_no_per_call_state() -> None:
    spec = an.span("worker", type="tool")
    assert isinstance(spec, SpanSpec)

    @spec
    async def worker(index: int) -> int:
        await asyncio.sleep(0.001 * (5 - index))
        return index

    async def main() -> list[int]:
        return list(await asyncio.gather(*(worker(i) for i in range(5))))

    with an.trace("concurrent") as result:
        assert asyncio.run(main()) == list(range(5))
    assert spec.attributes == {"ag.type.node": "tool"} and spec.name == "worker"
    assert sorted(n.name for n in result.root.children) == ["worker"] * 5
    assert all(not n.running and n.parent is result.root for n in result.nodes[1:])
    # each call's span lasted as long as its own call: no call ended another's span
    durations = sorted(n.duration_ms or 0 for n in result.nodes[1:])
    assert durations[0] >= 0.5 and durations[-1] >= 4.0


def test_one_span_object_entered_by_concurrent_tasks(caplog: pytest.LogCaptureFixture) -> None:
    step = an.span("step", type="tool")

    async def worker(index: int) -> None:
        async with step as opened:
            # the first task to enter is the first to leave: a shared stack would mix
            await asyncio.sleep(0.004 * (index + 1))
            assert otel_trace.get_current_span() is opened
            with an.span(f"inner {index}"):
                pass

    async def main() -> None:
        await asyncio.gather(*(worker(i) for i in range(3)))

    with an.trace("shared block") as result:
        asyncio.run(main())
    steps = [n for n in result.nodes if n.name == "step"]
    assert len(steps) == 3 and all(not n.running for n in steps)
    assert sorted(c.name for n in steps for c in n.children) == ["inner 0", "inner 1", "inner 2"]
    for node in steps:
        [inner] = node.children
        index = int(inner.name.split()[-1])
        assert (node.duration_ms or 0) >= 4.0 * (index + 1) - 1.0
    assert "Failed to detach context" not in caplog.text


def test_one_span_object_entered_by_two_threads(caplog: pytest.LogCaptureFixture) -> None:
    step = an.span("step")
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def first() -> None:
        with step:
            first_in.set()
            second_in.wait(timeout=10)
        first_out.set()  # the first to enter leaves while the second is still inside

    def second() -> None:
        first_in.wait(timeout=10)
        with step:
            second_in.set()
            first_out.wait(timeout=10)

    def run(body: Any, context: contextvars.Context) -> None:
        try:
            context.run(body)
        except BaseException as error:
            errors.append(error)

    with an.trace("threads") as result:
        workers = [
            threading.Thread(target=run, args=(body, contextvars.copy_context()))
            for body in (first, second)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=10)
    assert not errors
    steps = result.root.children
    assert [n.name for n in steps] == ["step", "step"]
    # the second block outlived the first: its span must too
    assert steps[0].record.end_time_ns is not None and steps[1].record.end_time_ns is not None
    assert steps[1].record.end_time_ns > steps[0].record.end_time_ns
    assert "Failed to detach context" not in caplog.text


# --- record_usage and the legacy dict pattern ---------------------------------------------------


def test_record_usage_writes_agenta_keys() -> None:
    with an.trace("keys") as result:
        with an.span("call", type="llm"):
            an.record_usage(
                model="gpt-4o",
                provider="openai",
                input_tokens=100,
                output_tokens=20,
                total_tokens=120,
                cache_read_tokens=50,
                cache_write_tokens=10,
                reasoning_tokens=5,
                cost=0.0125,
            )
    attributes = result.find("call").record.attributes
    assert attributes["ag.type.node"] == "llm"
    assert attributes["ag.meta.response.model"] == "gpt-4o"
    assert attributes["ag.meta.system"] == "openai"
    assert attributes["ag.metrics.unit.tokens.prompt"] == 100
    assert attributes["ag.metrics.unit.tokens.completion"] == 20
    assert attributes["ag.metrics.unit.tokens.total"] == 120
    assert attributes["ag.metrics.unit.tokens.cache_read"] == 50
    assert attributes["gen_ai.usage.cache_creation.input_tokens"] == 10
    assert attributes["ag.metrics.unit.tokens.reasoning"] == 5
    assert attributes["ag.metrics.unit.costs.total"] == 0.0125
    assert result.totals.cost == Decimal("0.0125")
    assert result.find("call").priced.source == "reported"


def test_record_usage_takes_an_openai_style_usage_dict() -> None:
    usage = {
        "prompt_tokens": 30,
        "completion_tokens": 6,
        "total_tokens": 36,
        "prompt_tokens_details": {"cached_tokens": 10},
        "completion_tokens_details": {"reasoning_tokens": 2},
    }
    with an.trace("openai dict") as result:
        with an.span("call", type="chat"):
            an.record_usage(model="gpt-4o-mini", usage=usage, output_tokens=7)
    own = result.find("call").own
    assert (own.input_tokens, own.output_tokens, own.total_tokens) == (30, 7, 36)
    assert (own.cache_read_tokens, own.reasoning_tokens) == (10, 2)


def test_record_usage_on_an_explicit_span_and_without_one() -> None:
    with an.trace("explicit") as result:
        with an.span("target", type="llm") as target, an.span("elsewhere"):
            an.record_usage(total_tokens=9, span=target)
    assert result.find("target").own.total_tokens == 9
    assert result.find("elsewhere").usage.reports_usage is False
    with pytest.warns(UserWarning, match="no recording span"):
        an.record_usage(total_tokens=1)


def test_legacy_dict_return_from_an_llm_function_is_recorded() -> None:
    @an.span(type="llm")
    def legacy() -> dict[str, Any]:
        return {
            "message": "hi",
            "cost": 0.0042,
            "usage": {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15},
        }

    @an.span(type="llm")
    async def legacy_async() -> dict[str, Any]:
        return {"cost": "0.001", "usage": {"prompt_tokens": 1, "completion_tokens": 1}}

    @an.span(type="tool")
    def not_a_model_call() -> dict[str, Any]:
        return {"cost": 5, "usage": {"prompt_tokens": 1000}}

    with an.trace("legacy") as result:
        assert legacy()["message"] == "hi"
        asyncio.run(legacy_async())
        not_a_model_call()
    first, second, tool = result.nodes[1:]
    assert (first.own.input_tokens, first.own.output_tokens, first.own.total_tokens) == (
        12,
        3,
        15,
    )
    assert first.own.cost == Decimal("0.0042")
    assert second.own.cost == Decimal("0.001") and second.own.total_tokens == 2
    assert not tool.usage.reports_usage  # only model-call functions are read this way
    assert result.totals.total_tokens == 17
    assert result.totals.cost == Decimal("0.0052")


def test_spans_outside_a_trace_are_not_kept() -> None:
    before = {t.trace_id for t in an.get_collector().traces()}

    @an.span(type="tool")
    def lonely() -> int:
        return 1

    assert lonely() == 1
    with an.span("also lonely"):
        pass
    after = {t.trace_id for t in an.get_collector().traces()}
    assert after <= before


def test_numpy_counts_and_costs_are_numbers() -> None:
    np = pytest.importorskip("numpy")
    with an.trace("numpy") as trace:
        with an.span("direct", type="llm"):
            an.record_usage(
                model="gpt-4o", input_tokens=np.int64(1000), output_tokens=np.int32(100)
            )
        with an.span("dict", type="llm"):
            an.record_usage(
                model="gpt-4o",
                usage={"prompt_tokens": np.int64(1000), "completion_tokens": np.uint16(100)},
                cost=np.float32(0.5),
            )
    direct, through_dict = trace.nodes[1:]
    for node in (direct, through_dict):
        assert (node.own.input_tokens, node.own.output_tokens) == (1000, 100)
        assert not node.warnings
    assert direct.own.cost == an.calculate_cost(
        "gpt-4o", {"input_tokens": 1000, "output_tokens": 100}
    )
    assert through_dict.own.cost == Decimal("0.5")


def test_bad_values_in_a_usage_dict_are_warned_on_the_span() -> None:
    @an.span(type="llm")
    def legacy() -> dict[str, Any]:
        return {"cost": 0.01, "usage": {"prompt_tokens": "abc", "completion_tokens": -5}}

    with an.trace("bad dicts") as trace:
        with an.span("via usage=", type="llm"):
            an.record_usage(model="gpt-4o", usage={"prompt_tokens": "abc", "completion_tokens": 7})
        legacy()
    via_usage, returned = trace.nodes[1:]
    assert via_usage.own.output_tokens == 7 and via_usage.own.input_tokens is None
    assert [w for w in via_usage.warnings if "'abc'" in w]
    assert len(returned.warnings) == 2 and returned.own.cost == Decimal("0.01")


def test_cancelled_siblings_are_not_errors() -> None:
    """One failure in an asyncio.TaskGroup cancels the siblings: one error origin, and
    the cancelled spans say so (rollup.md rule 8)."""

    @an.span(type="llm")
    async def call(index: int) -> None:
        if index == 0:
            await asyncio.sleep(0.01)
            raise ValueError("one failure")
        await asyncio.sleep(5)

    async def main() -> None:
        async with asyncio.TaskGroup() as group:
            for index in range(4):
                group.create_task(call(index))

    with pytest.raises(ExceptionGroup), an.trace("group") as trace:
        asyncio.run(main())
    calls = [node for node in trace.nodes if node.type == "llm"]
    assert len(calls) == 4
    assert trace.totals.errors == 1
    assert sum(node.is_error_origin for node in calls) == 1
    cancelled = [n for n in calls if n.record.attributes.get("agenta_notebook.cancelled")]
    assert len(cancelled) == 3 and all(n.record.status == "UNSET" for n in cancelled)
