"""`@span` records its functions' inputs and outputs under Agenta's keys (issue 13)."""

from __future__ import annotations

import asyncio
import enum
import gc
import json
import warnings
import weakref
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanContext

import agenta_notebook as an
from agenta_notebook.capture import CUT, DEFAULT_OUTPUT, JSON_PREFIX, YIELDED_ATTRIBUTE

pytestmark = pytest.mark.usefixtures("fresh_runtime")


def captured(result: an.Trace, index: int = 1) -> dict[str, Any]:
    """The `ag.data.*` attributes of the trace's `index`-th node (0 is the root)."""
    attributes = result.nodes[index].record.attributes
    return {key: value for key, value in attributes.items() if key.startswith("ag.data.")}


def as_json(value: Any) -> Any:
    assert isinstance(value, str) and value.startswith(JSON_PREFIX), value
    return json.loads(value[len(JSON_PREFIX) :])


class Unshowable:
    def __repr__(self) -> str:
        raise RuntimeError("no repr")


class Model:
    """Quacks like a pydantic model."""

    def model_dump(self) -> dict[str, Any]:
        return {"field": 1}


def test_inputs_and_output_under_agentas_keys() -> None:
    @an.span
    def answer(question: str, k: int = 3, *rest: int, **options: Any) -> str:
        return "forty-two"

    with an.trace("t") as result:
        answer("why?", 5, 6, 7, temperature=0.5, stop=["x"], nothing=None)
    data = captured(result)
    assert data["ag.data.inputs.question"] == "why?"
    assert data["ag.data.inputs.k"] == 5
    assert as_json(data["ag.data.inputs.rest"]) == [6, 7]
    assert data["ag.data.inputs.temperature"] == 0.5
    assert as_json(data["ag.data.inputs.stop"]) == ["x"]
    assert "ag.data.inputs.nothing" not in data  # None is not recorded (as in Agenta)
    assert data[DEFAULT_OUTPUT] == "forty-two"


def test_defaults_are_not_recorded_and_dict_outputs_are_flattened() -> None:
    @an.span
    def plan(question: str, k: int = 3) -> dict[str, Any]:
        return {"steps": [1, 2], "nested": {"a": {"b": 1}}, "why": "because"}

    with an.trace("t") as result:
        plan(question="q")
    data = captured(result)
    assert data["ag.data.inputs.question"] == "q"
    assert "ag.data.inputs.k" not in data
    assert as_json(data["ag.data.outputs.steps"]) == [1, 2]
    assert as_json(data["ag.data.outputs.nested"]) == {"a": {"b": 1}}
    assert data["ag.data.outputs.why"] == "because"
    assert DEFAULT_OUTPUT not in data


def test_agenta_message_cost_usage_result_records_the_message() -> None:
    @an.span(type="llm")
    def call() -> dict[str, Any]:
        return {"message": "hello", "cost": 0.5, "usage": {"total_tokens": 3}}

    with an.trace("t") as result:
        call()
    assert captured(result)[DEFAULT_OUTPUT] == "hello"


def test_self_and_cls_are_skipped_and_odd_objects_do_not_fail() -> None:
    class Agent:
        @an.span
        def run(self, thing: Any, model: Any) -> Any:
            return Unshowable()

    with an.trace("t") as result:
        assert isinstance(Agent().run(Unshowable(), Model()), Unshowable)
    data = captured(result)
    assert "ag.data.inputs.self" not in data
    assert data["ag.data.inputs.thing"] == "<Unshowable that cannot be shown>"
    assert as_json(data["ag.data.inputs.model"]) == {"field": 1}
    assert data[DEFAULT_OUTPUT] == "<Unshowable that cannot be shown>"


def test_str_subclasses_as_text_and_what_json_cannot_hold_as_repr() -> None:
    class Colour(enum.StrEnum):
        RED = "red"

    @an.span
    def paint(colour: Colour, table: dict[tuple[int, int], int], loop: list[Any]) -> None:
        return None

    cyclic: list[Any] = [1]
    cyclic.append(cyclic)
    with an.trace("t") as result:
        paint(Colour.RED, {(1, 2): 3}, cyclic)
    assert captured(result) == {
        "ag.data.inputs.colour": "red",
        "ag.data.inputs.table": "{(1, 2): 3}",
        "ag.data.inputs.loop": "[1, [...]]",
    }


def test_values_are_cut_at_the_caps_visibly() -> None:
    an.set_capture(max_chars=10, max_total=25)

    @an.span
    def long(a: str, b: list[int], c: str, d: str) -> str:
        return "y" * 50

    with an.trace("t") as result:
        long("x" * 50, list(range(100)), "short", "z" * 50)
    data = captured(result)
    assert data["ag.data.inputs.a"] == "x" * 9 + CUT
    # cut JSON is no longer JSON: it loses the prefix
    assert data["ag.data.inputs.b"] == "[0, 1, 2," + CUT
    assert data["ag.data.inputs.c"] == "short"
    assert data["ag.data.inputs.d"] == CUT  # the span's 25 characters are spent
    assert data[DEFAULT_OUTPUT] == CUT
    assert all(len(str(value)) <= 10 for value in data.values())


def test_capture_off_per_span_per_kind_and_globally() -> None:
    @an.span(capture=False)
    def off(x: int) -> int:
        return x

    @an.span(capture="inputs")
    def inputs_only(x: int) -> int:
        return x

    @an.span(capture="outputs")
    def outputs_only(x: int) -> int:
        return x

    @an.span
    def default(x: int) -> int:
        return x

    with an.trace("t") as result:
        off(1), inputs_only(2), outputs_only(3)
    assert captured(result, 1) == {}
    assert captured(result, 2) == {"ag.data.inputs.x": 2}
    assert captured(result, 3) == {DEFAULT_OUTPUT: 3}

    an.set_capture(enabled=False)
    with an.trace("t") as result:
        default(4)
    assert captured(result) == {}
    assert "capture of inputs/outputs: off" in an.RUNTIME.describe()
    an.RUNTIME.reset()
    with an.trace("t") as result:
        default(5)
    assert captured(result) == {"ag.data.inputs.x": 5, DEFAULT_OUTPUT: 5}


def test_bad_settings_are_refused_and_change_nothing() -> None:
    with pytest.raises(ValueError, match="capture"):
        an.span(capture="everything")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_chars"):
        an.set_capture(enabled=False, max_chars=0)
    with pytest.raises(TypeError, match="redact"):
        an.set_capture(enabled=False, redact="yes")  # type: ignore[arg-type]
    assert an.RUNTIME.capture.enabled and an.RUNTIME.capture.redact is None


def test_redaction_hook_sees_keys_and_values() -> None:
    seen: list[str] = []

    def redact(key: str, value: Any) -> Any:
        seen.append(key)
        if key.endswith(".api_key"):
            return "***"
        if key == DEFAULT_OUTPUT:
            return None  # records nothing
        return value

    an.set_capture(redact=redact)

    @an.span
    def login(user: str, api_key: str) -> str:
        return "token"

    with an.trace("t") as result:
        login("ann", api_key="sk-secret")
    assert captured(result) == {"ag.data.inputs.user": "ann", "ag.data.inputs.api_key": "***"}
    assert seen == ["ag.data.inputs.user", "ag.data.inputs.api_key", DEFAULT_OUTPUT]


def test_a_failing_redaction_hook_records_nothing_and_warns_once() -> None:
    def redact(key: str, value: Any) -> Any:
        if key.endswith("secret"):
            raise KeyError("boom")
        return value

    an.set_capture(redact=redact)

    @an.span
    def f(secret: str, other: str) -> str:
        return "out"

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with an.trace("t") as result:
            assert f("s", "o") == "out"
            assert f("s", "o") == "out"
    assert captured(result) == {"ag.data.inputs.other": "o", DEFAULT_OUTPUT: "out"}
    assert len([w for w in caught if "redact hook" in str(w.message)]) == 1


def test_generators_record_what_they_yielded() -> None:
    an.set_capture(max_items=3)

    @an.span
    def tokens(n: int) -> Iterator[str]:
        for index in range(n):
            yield f"t{index} "

    @an.span
    def numbers(n: int) -> Iterator[int]:
        yield from range(n)

    with an.trace("t") as result:
        assert list(tokens(2)) == ["t0 ", "t1 "]
        assert list(numbers(5)) == [0, 1, 2, 3, 4]
    assert captured(result, 1)[DEFAULT_OUTPUT] == "t0 t1 "
    assert result.nodes[1].record.attributes[YIELDED_ATTRIBUTE] == 2
    assert as_json(captured(result, 2)[DEFAULT_OUTPUT]) == [0, 1, 2, CUT]
    assert result.nodes[2].record.attributes[YIELDED_ATTRIBUTE] == 5


def test_async_functions_and_async_generators() -> None:
    @an.span
    async def fetch(url: str) -> dict[str, int]:
        return {"status": 200}

    @an.span
    async def stream(n: int) -> AsyncIterator[str]:
        for index in range(n):
            yield str(index)

    async def main() -> None:
        await fetch("http://x")
        assert [item async for item in stream(3)] == ["0", "1", "2"]

    with an.trace("t") as result:
        asyncio.run(main())
    assert captured(result, 1) == {
        "ag.data.inputs.url": "http://x",
        "ag.data.outputs.status": 200,
    }
    assert captured(result, 2) == {"ag.data.inputs.n": 3, DEFAULT_OUTPUT: "012"}


def test_the_context_manager_form_captures_nothing() -> None:
    with an.trace("t") as result, an.span("block"):
        pass
    assert captured(result) == {}


# -- bounded work, generators, big ints, bytes (review of issue 13) -----------------------


class Leaf:
    """A leaf that counts how often the encoder asks for it (as JSON, via model_dump)."""

    asked = 0

    def model_dump(self) -> float:
        Leaf.asked += 1
        return 0.1234567


def test_big_values_are_encoded_only_up_to_the_cap() -> None:
    an.set_capture(max_chars=2_000, max_total=16_000)
    Leaf.asked = 0

    @an.span
    def embed(x: list[list[Leaf]]) -> list[list[Leaf]]:
        return x

    big = [[Leaf()] * 1536] * 300  # 460,800 leaves
    with an.trace("t") as result:
        embed(big)
    # Each leaf is at least 3 characters of JSON: input and output together ask for at
    # most about 2 x 2,000 / 3 of them, never the 460,800.
    assert 0 < Leaf.asked <= 2 * 2_000 // 3
    data = captured(result)
    whole = json.dumps([[0.1234567] * 1536] * 300, ensure_ascii=False)
    assert data["ag.data.inputs.x"] == whole[:1_999] + CUT
    assert data[DEFAULT_OUTPUT] == whole[:1_999] + CUT


def test_nothing_is_encoded_once_the_spans_budget_is_spent() -> None:
    an.set_capture(max_chars=100, max_total=100)
    Leaf.asked = 0

    @an.span
    def f(first: str, second: list[Leaf]) -> dict[str, Any]:
        return {"third": [Leaf()]}

    with an.trace("t") as result:
        f("x" * 500, [Leaf()] * 10)
    assert Leaf.asked == 0
    data = captured(result)
    assert data["ag.data.inputs.first"] == "x" * 99 + CUT
    assert data["ag.data.inputs.second"] == CUT
    assert data["ag.data.outputs.third"] == CUT


class Counted:
    """An object that counts how often its repr is asked for."""

    asked = 0

    def __repr__(self) -> str:
        Counted.asked += 1
        return "C"


def test_big_values_json_cannot_hold_are_cut_from_their_repr() -> None:
    an.set_capture(max_chars=50)
    cyclic: list[Any] = list(range(1_000))
    cyclic.append(cyclic)
    table = {(index, -index): Counted() for index in range(1_000)}

    @an.span
    def g(loop: list[Any], table: dict[tuple[int, int], str], nested: tuple[Any, ...]) -> None:
        return None

    nested = ({"a": [1.5, None, True]}, "text", (7,)) * 100
    with an.trace("t") as result:
        g(cyclic, table, nested)
    data = captured(result)
    assert data["ag.data.inputs.loop"] == repr(cyclic)[:49] + CUT
    assert Counted.asked <= 10  # only the first few of the 1,000 values were shown
    assert data["ag.data.inputs.table"] == repr(table)[:49] + CUT
    assert data["ag.data.inputs.nested"] == repr(nested)[:49] + CUT  # a tuple: its repr


class Tracked:
    """A yielded object we can watch being collected; big as JSON."""

    def model_dump(self) -> dict[str, Any]:
        return {"data": [0.5] * 10_000}


def test_generators_encode_each_item_when_yielded() -> None:
    @an.span
    def states() -> Iterator[dict[str, int]]:
        state = {"n": 0}
        for index in range(3):
            state["n"] = index
            yield state

    with an.trace("t") as result:
        assert [item["n"] for item in states()] == [0, 1, 2]
    assert as_json(captured(result)[DEFAULT_OUTPUT]) == [{"n": 0}, {"n": 1}, {"n": 2}]


def test_generators_do_not_keep_what_they_yielded() -> None:
    alive: weakref.WeakSet[Tracked] = weakref.WeakSet()
    seen_alive: list[int] = []

    @an.span
    def stream(n: int) -> Iterator[Tracked]:
        for _ in range(n):
            item = Tracked()
            alive.add(item)
            yield item
            del item
        gc.collect()
        seen_alive.append(len(alive))

    with an.trace("t") as result:
        for _ in stream(10_000):
            pass
    assert seen_alive == [0] or seen_alive[0] <= 1
    node = result.nodes[1].record.attributes
    assert node[YIELDED_ATTRIBUTE] == 10_000
    output = node[DEFAULT_OUTPUT]
    assert isinstance(output, str) and output.endswith(CUT)
    assert len(output) == 2_000  # one item's JSON, cut at max_chars
    assert output.startswith('[{"data": [0.5, 0.5')


def test_generators_mix_of_text_then_objects_and_the_item_cap() -> None:
    an.set_capture(max_items=3, max_chars=50)

    @an.span
    def mixed() -> Iterator[Any]:
        yield "a"
        yield 'b"'
        yield {"c": 1}
        yield "never kept"

    @an.span
    def long_text() -> Iterator[str]:
        yield "x" * 30
        yield "y" * 30
        yield "z"

    with an.trace("t") as result:
        list(mixed())
        list(long_text())
    assert as_json(captured(result, 1)[DEFAULT_OUTPUT]) == ["a", 'b"', {"c": 1}, CUT]
    assert captured(result, 2)[DEFAULT_OUTPUT] == "x" * 30 + "y" * 19 + CUT
    assert result.nodes[2].record.attributes[YIELDED_ATTRIBUTE] == 3


def test_ints_past_64_bits_are_recorded_as_their_decimal_text() -> None:
    @an.span
    def count(small: int, big: int, negative: int, huge: int) -> dict[str, int]:
        return {"big": 2**64, "fits": 2**63 - 1}

    with an.trace("t") as result:
        count(5, 2**70, -(2**63) - 1, 2**20_000)
    data = captured(result)
    assert data["ag.data.inputs.huge"] == "(an integer of 20001 bits)"  # past Python's str()
    assert data["ag.data.inputs.small"] == 5
    assert data["ag.data.inputs.big"] == str(2**70)
    assert data["ag.data.inputs.negative"] == str(-(2**63) - 1)
    assert data["ag.data.outputs.big"] == str(2**64)
    assert data["ag.data.outputs.fits"] == 2**63 - 1
    # what the OTLP exporters send: every attribute encodes
    span = ReadableSpan(
        name="count",
        context=SpanContext(1, 2, is_remote=False),
        attributes=result.nodes[1].record.attributes,
        resource=Resource.create({}),
    )
    request = encode_spans([span])
    sent = {
        attribute.key: attribute.value
        for attribute in request.resource_spans[0].scope_spans[0].spans[0].attributes
    }
    assert sent["ag.data.inputs.big"].string_value == str(2**70)


def test_bytes_are_decoded_as_utf8_and_cut_as_text() -> None:
    an.set_capture(max_chars=5)

    @an.span
    def send(short: bytes, long: bytes, broken: bytes, buffer: bytearray) -> None:
        return None

    with an.trace("t") as result:
        send("é!".encode(), "ééééééé".encode(), b"ab\xffcd", bytearray(b"xyz"))
    assert captured(result) == {
        "ag.data.inputs.short": "é!",
        "ag.data.inputs.long": "éééé" + CUT,  # characters, never half of one
        "ag.data.inputs.broken": "ab\ufffdcd",
        "ag.data.inputs.buffer": "xyz",
    }


def test_the_redaction_hook_sees_each_yielded_item() -> None:
    seen: list[Any] = []

    def redact(key: str, value: Any) -> Any:
        seen.append((key, value))
        return None if value == "secret " else value

    an.set_capture(redact=redact)

    @an.span
    def words() -> Iterator[str]:
        yield from ("a ", "secret ", "b")

    with an.trace("t") as result:
        assert list(words()) == ["a ", "secret ", "b"]
    assert captured(result)[DEFAULT_OUTPUT] == "a b"
    assert result.nodes[1].record.attributes[YIELDED_ATTRIBUTE] == 3
    assert seen == [(DEFAULT_OUTPUT, "a "), (DEFAULT_OUTPUT, "secret "), (DEFAULT_OUTPUT, "b")]
