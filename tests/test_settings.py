"""Public settings are checked before anything is stored: a bad value changes nothing."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

import agenta_notebook as an
from agenta_notebook.collector import Collector
from agenta_notebook.io.otlp import current_export
from agenta_notebook.runtime import RUNTIME

pytestmark = pytest.mark.usefixtures("fresh_runtime")


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"max_traces": "10"}, TypeError),
        ({"max_traces": 10.0}, TypeError),
        ({"max_traces": True}, TypeError),
        ({"max_traces": 0}, ValueError),
        ({"max_spans": -5}, ValueError),
        ({"max_traces": 3, "max_spans": "100"}, TypeError),  # the good one is not kept
        ({"max_traces": "3", "max_spans": 100}, TypeError),
    ],
)
def test_a_bad_retention_changes_nothing(
    collector: Collector, arguments: dict[str, Any], error: type[Exception]
) -> None:
    an.set_retention(max_traces=50, max_spans=5_000)
    for index in range(12):
        with an.trace(f"t{index}"):
            pass
    with pytest.raises(error):
        an.set_retention(**arguments)
    assert (collector.max_traces, collector.max_spans) == (50, 5_000)
    assert len(collector.traces()) == 12  # nothing dropped
    with an.trace("after"):  # and retention still works as set
        pass
    assert len(collector.traces()) == 13


def test_a_good_retention_is_applied(collector: Collector) -> None:
    for index in range(5):
        with an.trace(f"t{index}"):
            pass
    an.set_retention(max_traces=2)
    assert [trace.name for trace in collector.traces()] == ["t3", "t4"]


@pytest.mark.parametrize(
    ("model", "rates", "error"),
    [
        (123, {"input": 1, "output": 1}, TypeError),
        ("  ", {"input": 1, "output": 1}, ValueError),
        ("m", {"input": 1, "output": "two"}, ValueError),
        ("m", {"input": 1, "output": 1, "cache_read": "1e999990"}, ValueError),
    ],
)
def test_a_bad_price_changes_nothing(model: Any, rates: dict[str, Any], error: type) -> None:
    an.set_prices("m", input=5, output=6)
    before = RUNTIME.prices.current()
    with pytest.raises(error):
        an.set_prices(model, **rates)
    assert RUNTIME.prices.current() is before
    assert an.calculate_cost("m", {"input_tokens": 1_000_000}) == Decimal(5)


@pytest.mark.parametrize(
    "arguments",
    [
        {"endpoint": 4318},
        {"headers": ["Authorization"]},
        {"headers": {"Authorization": 123}},
        {"timeout": "10"},
        {"timeout": float("nan")},
        {"timeout": -1},
        {"schedule_delay_millis": "5"},
        {"max_queue_size": "100"},
        {"max_queue_size": 0},
        {"max_export_batch_size": 2.5},
        {"max_export_batch_size": 50, "max_queue_size": 10},
    ],
)
def test_a_bad_export_setting_changes_nothing(arguments: dict[str, Any]) -> None:
    assert current_export() is None
    with pytest.raises((TypeError, ValueError)):
        an.export_to(**{"endpoint": "http://127.0.0.1:9/v1/traces", **arguments})
    assert current_export() is None
    assert RUNTIME.exports.processor is None


@pytest.mark.parametrize(
    ("arguments", "error"),
    [
        ({"tracer_provider": "not a provider"}, TypeError),
        ({"libraries": (123,)}, TypeError),
        ({"libraries": ("openai", "no-such-library")}, ValueError),
    ],
)
def test_a_bad_instrument_call_changes_nothing(arguments: dict[str, Any], error: type) -> None:
    libraries = arguments.pop("libraries", ("openai",))
    with pytest.raises(error):
        an.instrument(*libraries, **arguments)
    assert not RUNTIME.instruments.undo
    assert not RUNTIME.instruments.pending
