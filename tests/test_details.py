"""The details pane, for people: conversations from every convention we read, inputs and
outputs, long values folded, plain words, tracebacks without our frames, bounded size.

The conversations of OpenInference, OpenLLMetry and the official GenAI instrumentation are
rendered from spans those instrumentors recorded with the real `openai` client against the
stand-in at 127.0.0.1; the expected texts come from the messages sent and from the reply
the client handed back, never from our own code.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any

import openai
import pytest
from conftest import RecordFactory, keys
from opentelemetry import trace as otel_trace

import agenta_notebook as an
from agenta_notebook import demo
from agenta_notebook.core.rollup import SpanEvent, SpanNode, SpanRecord
from agenta_notebook.live import Trace
from agenta_notebook.views.details import DETAILS_CSS, FOLD_CHARS, details_html

WEATHER_TOOL: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The weather in a city.",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]
#: A conversation with every role: system, user, an assistant's tool call, the tool's answer.
MESSAGES: list[Any] = [
    {"role": "system", "content": "You are a weather assistant. Be brief."},
    {"role": "user", "content": "What is the weather in Paris today?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "call_1",
                "type": "function",
                "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 degrees"},
]


# -- reading the pane ---------------------------------------------------------------------


@dataclass
class Shown:
    """One rendered message: its role class, its label and all its text."""

    role: str
    classes: list[str]
    label: str = ""
    text: str = ""


@dataclass
class Pane(HTMLParser):
    """The messages of a pane's conversation, its `<details>` and their state, its text."""

    messages: list[Shown] = field(default_factory=list)
    details: list[tuple[str, bool, str]] = field(default_factory=list)  # class, open, summary
    text: str = ""
    conversations: int = 0

    def __post_init__(self) -> None:
        super().__init__()
        self._stack: list[tuple[str, str]] = []  # (tag, class)
        self._in_message: int | None = None
        self._in_label: int | None = None
        self._summary: int | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        css = attributes.get("class") or ""
        self._stack.append((tag, css))
        classes = css.split()
        if "agn-conversation" in classes:
            self.conversations += 1
        if tag == "div" and "agn-msg" in classes:
            role = next(c[len("agn-msg-") :] for c in classes if c.startswith("agn-msg-"))
            self.messages.append(Shown(role, classes))
            self._in_message = len(self._stack)
        if tag == "div" and "agn-msg-role" in classes:
            self._in_label = len(self._stack)
        if tag == "details":
            self.details.append((css, "open" in attributes, ""))
        if tag == "summary":
            self._summary = len(self._stack)

    def handle_endtag(self, tag: str) -> None:
        depth = len(self._stack)
        if self._in_message == depth:
            self._in_message = None
        if self._in_label == depth:
            self._in_label = None
        if self._summary == depth:
            self._summary = None
        self._stack.pop()

    def handle_data(self, data: str) -> None:
        self.text += data
        if self._in_message is not None:
            self.messages[-1].text += data
        if self._in_label is not None:
            self.messages[-1].label += data
        if self._summary is not None and self.details:
            css, is_open, summary = self.details[-1]
            self.details[-1] = (css, is_open, summary + data)


def pane(markup: str) -> Pane:
    parsed = Pane()
    parsed.feed(markup)
    parsed.close()
    assert not parsed._stack, "every element is closed"
    return parsed


def without_raw(markup: str) -> str:
    """The pane's markup without its closed "all attributes" section (its last part)."""
    start = markup.index('<details class="agn-d-raw">')
    assert markup.endswith("</details></div>")
    return markup[:start] + "</div>"


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def assert_weather_conversation(markup: str, reply: str) -> None:
    """The pane of a call sending `MESSAGES`: one conversation, the four messages sent in
    order, then the reply; the tool call by name and arguments; the raw section closed."""
    shown = pane(markup)
    assert shown.conversations == 1
    roles = [message.role for message in shown.messages]
    assert roles == ["system", "user", "assistant", "tool", "assistant"], roles
    system, user, call, answer, out = shown.messages
    assert MESSAGES[0]["content"] in system.text
    assert MESSAGES[1]["content"] in user.text
    assert "get_weather" in call.text and '"city"' in call.text and "Paris" in call.text
    assert MESSAGES[3]["content"] in answer.text
    assert flat(reply) in flat(out.text)
    assert "agn-msg-out" in out.classes and "agn-msg-out" not in call.classes
    raw = [d for d in shown.details if "agn-d-raw" in d[0]]
    assert len(raw) == 1 and raw[0][1] is False  # closed by default
    assert re.fullmatch(r"all attributes \(\d+\)", raw[0][2])


# -- conversations recorded by real instrumentors -----------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[demo.DemoServer]:
    with demo.start() as running:
        yield running


@pytest.fixture()
def openinference(server: demo.DemoServer, monkeypatch: pytest.MonkeyPatch) -> openai.OpenAI:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-dummy-for-the-stand-in")  # 127.0.0.1 only
    an.instrument_openai()
    return openai.OpenAI(base_url=server.base_url, max_retries=0, timeout=10)


def test_openinference_messages_render_as_a_conversation(openinference: openai.OpenAI) -> None:
    """OpenInference's `llm.input_messages.*` / `llm.output_messages.*`, recorded by its
    instrumentor around the real client: the whole exchange, tool call included."""
    try:
        with an.trace("weather") as trace:
            reply = openinference.chat.completions.create(
                model="gpt-4o", messages=MESSAGES, tools=WEATHER_TOOL
            )
    finally:
        an.uninstrument_openai()
    [call] = [node for node in trace.nodes if node.usage.is_model_call]
    assert any(key.startswith("llm.input_messages.") for key in call.record.attributes)
    markup = details_html(call)
    assert_weather_conversation(markup, reply.choices[0].message.content or "")
    # the attributes rendered as a conversation are still in the raw section
    raw = markup[markup.index('<details class="agn-d-raw">') :]
    assert "llm.input_messages.1.message.content" in raw
    # the request body is not shown a second time outside the raw section
    assert "input.value" not in without_raw(markup)


SUBPROCESS_SCRIPT = r"""
import json, os, sys
import openai
import agenta_notebook as an
from agenta_notebook import demo
from agenta_notebook.views.details import details_html

which, messages, tools = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
an.get_collector()  # our provider is the global one: the instrumentor's spans reach us
if which == "openllmetry":
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor
else:
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
OpenAIInstrumentor().instrument()
with demo.start() as server:
    os.environ["OPENAI_API_KEY"] = "sk-dummy-for-the-stand-in"
    client = openai.OpenAI(base_url=server.base_url, max_retries=0, timeout=10)
    with an.trace("weather") as trace:
        reply = client.chat.completions.create(model="gpt-4o", messages=messages, tools=tools)
    [call] = [node for node in trace.nodes if node.usage.is_model_call]
    print(json.dumps({
        "keys": sorted(call.record.attributes),
        "html": details_html(call),
        "reply": reply.choices[0].message.content,
    }))
"""


@pytest.mark.parametrize(
    ("which", "environment"),
    [
        ("openllmetry", {}),
        (
            "openai-v2",
            {
                "OTEL_SEMCONV_STABILITY_OPT_IN": "gen_ai_latest_experimental",
                "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "SPAN_ONLY",
            },
        ),
    ],
)
def test_genai_messages_render_as_a_conversation(which: str, environment: dict[str, str]) -> None:
    """The GenAI conventions' `gen_ai.input.messages` / `gen_ai.output.messages` (JSON,
    parts-based: text, tool_call, tool_call_response), as OpenLLMetry's instrumentor and
    the official `opentelemetry-instrumentation-openai-v2` record them, each in an
    interpreter of its own (both patch openai globally)."""
    base = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SUBPROCESS_SCRIPT,
            which,
            json.dumps(MESSAGES),
            json.dumps(WEATHER_TOOL),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**base, **environment},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    data = json.loads(result.stdout.strip().splitlines()[-1])
    assert "gen_ai.input.messages" in data["keys"] and "gen_ai.output.messages" in data["keys"]
    assert_weather_conversation(data["html"], data["reply"])


# -- conversations from hand-made spans in the other shapes -------------------------------


def node_of(records: RecordFactory, name: str) -> SpanNode:
    trace = Trace(records.trace_id, "trace", records=records.all)
    [node] = [node for node in trace.nodes if node.name == name]
    return node


def test_openllmetry_indexed_prompt_and_completion_keys(records: RecordFactory) -> None:
    """OpenLLMetry's older `gen_ai.prompt.N.*` / `gen_ai.completion.N.*` keys, tool calls
    as `...tool_calls.M.name/arguments`."""
    root = records.add("root")
    records.add(
        "openai.chat",
        root,
        type="llm",
        **keys(
            {
                "gen_ai.request.model": "gpt-4o",
                "gen_ai.prompt.0.role": "system",
                "gen_ai.prompt.0.content": "Answer in French.",
                "gen_ai.prompt.1.role": "user",
                "gen_ai.prompt.1.content": "Hello there",
                "gen_ai.completion.0.role": "assistant",
                "gen_ai.completion.0.finish_reason": "tool_calls",
                "gen_ai.completion.0.tool_calls.0.id": "call_9",
                "gen_ai.completion.0.tool_calls.0.name": "translate",
                "gen_ai.completion.0.tool_calls.0.arguments": '{"text": "Hello there"}',
            }
        ),
    )
    shown = pane(details_html(node_of(records, "openai.chat")))
    assert [m.role for m in shown.messages] == ["system", "user", "assistant"]
    assert "Answer in French." in shown.messages[0].text
    assert (
        "translate" in shown.messages[2].text and '"text": "Hello there"' in shown.messages[2].text
    )


def test_genai_events_render_as_a_conversation(records: RecordFactory) -> None:
    """The GenAI conventions' message events (`gen_ai.system.message`, `gen_ai.user.message`,
    `gen_ai.assistant.message`, `gen_ai.tool.message`, `gen_ai.choice`), their bodies as
    span event attributes; the events section itself stays closed."""
    tool_calls = [
        {"id": "c7", "type": "function", "function": {"name": "lookup", "arguments": '{"q": 1}'}}
    ]
    events = (
        SpanEvent("gen_ai.system.message", 1, {"gen_ai.system": "openai", "content": "Be terse."}),
        SpanEvent("gen_ai.user.message", 2, {"gen_ai.system": "openai", "content": "Find q."}),
        SpanEvent(
            "gen_ai.assistant.message",
            3,
            {"gen_ai.system": "openai", "tool_calls": json.dumps(tool_calls)},
        ),
        SpanEvent("gen_ai.tool.message", 4, {"id": "c7", "content": "q is 42"}),
        SpanEvent(
            "gen_ai.choice",
            5,
            {
                "index": 0,
                "finish_reason": "stop",
                "message": json.dumps({"role": "assistant", "content": "It is 42."}),
            },
        ),
    )
    root = records.add("root")
    records.add("chat", root, type="llm", events=events, **keys({"gen_ai.request.model": "gpt-4o"}))
    markup = details_html(node_of(records, "chat"))
    shown = pane(markup)
    assert [m.role for m in shown.messages] == ["system", "user", "assistant", "tool", "assistant"]
    assert "lookup" in shown.messages[2].text and '"q": 1' in shown.messages[2].text
    assert "answers c7" in shown.messages[3].label
    assert "It is 42." in shown.messages[4].text and "agn-msg-out" in shown.messages[4].classes
    [events_section] = [d for d in shown.details if "agn-d-events" in d[0]]
    assert events_section[1] is False and events_section[2] == "events (5)"


def test_agenta_inputs_and_outputs(records: RecordFactory) -> None:
    """Agenta's flattened `ag.data.inputs.*` / `ag.data.outputs.*`, JSON values marked
    `@ag.type=json:`: the messages as a conversation, the other arguments as a list, the
    return value as outputs; a function's plain arguments as a key/value list."""
    chat = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi!"}]
    root = records.add("root")
    records.add(
        "generate",
        root,
        type="task",
        **keys(
            {
                "ag.data.inputs.messages": "@ag.type=json:" + json.dumps(chat),
                "ag.data.inputs.temperature": 0.2,
                "ag.data.outputs.__default__": "Hello! How can I help?",
            }
        ),
    )
    records.add(
        "add",
        root,
        type="tool",
        **keys(
            {
                "ag.data.inputs.a": 2,
                "ag.data.inputs.options": '@ag.type=json:{"round": true, "digits": 3}',
                "ag.data.outputs.__default__": "@ag.type=json:[5, 6]",
            }
        ),
    )
    records.add(  # the same, flattened as Agenta's SDK does without a depth limit
        "generate flat",
        root,
        type="task",
        **keys(
            {
                "ag.data.inputs.messages.0.role": "system",
                "ag.data.inputs.messages.0.content": "Be kind.",
                "ag.data.inputs.messages.1.role": "user",
                "ag.data.inputs.messages.1.content": "Hi!",
                "ag.data.inputs.temperature": 0.2,
                "ag.data.outputs.__default__.0": "Hello!",
                "ag.data.outputs.__default__.1": "How can I help?",
            }
        ),
    )
    flat_pane = pane(details_html(node_of(records, "generate flat")))
    assert [(m.role, m.text) for m in flat_pane.messages] == [
        ("system", "systemBe kind."),
        ("user", "userHi!"),
    ]
    assert re.search(r'\[\s*"Hello!",\s*"How can I help\?"\s*\]', flat_pane.text)
    shown = pane(details_html(node_of(records, "generate")))
    assert [m.role for m in shown.messages] == ["system", "user"]
    assert "temperature" in shown.text and "0.2" in shown.text
    assert "Hello! How can I help?" in shown.text
    markup = details_html(node_of(records, "add"))
    plain = pane(without_raw(markup))
    assert plain.conversations == 0
    assert re.search(r'<table class="agn-args"><tr><th>a</th><td><div class="agn-v">2<', markup)
    assert '"round": true' in plain.text and '"digits": 3' in plain.text  # pretty JSON
    assert "@ag.type" not in plain.text
    outputs = without_raw(markup).split('agn-d-outputs">', 1)[1]
    assert re.sub(r"<[^>]*>|\s", "", outputs) == "outputs[5,6]"


def test_openinference_request_body_and_json_output(records: RecordFactory) -> None:
    """`input.value` that is a chat request body (no `llm.input_messages`) renders its
    messages; a long JSON `output.value` is pretty-printed, wrapped and folded, with its
    first characters as the summary."""
    body = {"model": "gpt-4o", "messages": [{"role": "user", "content": "Count to three."}]}
    answer = {"items": [{"index": i, "text": f"item number {i} " * 3} for i in range(40)]}
    root = records.add("root")
    records.add(
        "chain",
        root,
        **keys(
            {
                "input.value": json.dumps(body),
                "input.mime_type": "application/json",
                "output.value": json.dumps(answer),
                "output.mime_type": "application/json",
            }
        ),
    )
    markup = details_html(node_of(records, "chain"))
    shown = pane(markup)
    assert [m.role for m in shown.messages] == ["user"]
    assert "Count to three." in shown.messages[0].text
    visible = without_raw(markup)
    folds = [d for d in pane(visible).details if "agn-v-fold" in d[0]]
    assert len(folds) == 1 and folds[0][1] is False
    pretty = json.dumps(answer, indent=2, ensure_ascii=False)
    assert folds[0][2].startswith(pretty[:FOLD_CHARS].rstrip())
    assert pretty in pane(visible).text  # the whole value, pretty, inside the fold
    assert "white-space:pre-wrap" in DETAILS_CSS and "overflow-wrap:anywhere" in DETAILS_CSS


# -- plain words ----------------------------------------------------------------------------


def test_plain_words_for_status_role_kind_and_pricing(records: RecordFactory) -> None:
    root = records.add("root")
    agent = records.add(
        "agent", root, type="agent", **keys({"gen_ai.usage.input_tokens": 12})
    )  # a claim the call below also reports
    records.add(
        "call",
        agent,
        type="llm",
        **keys({"gen_ai.request.model": "my-local-llama", "gen_ai.usage.input_tokens": 12}),
    )
    records.add("search", root, type="tool")
    failing = SpanRecord(
        records.trace_id,
        99,
        root.span_id,
        "fetch",
        5_000,
        6_000,
        status="ERROR",
        status_message="timed out",
        kind="CLIENT",
    )
    records.all.append(failing)
    markups = {
        name: without_raw(details_html(node_of(records, name)))
        for name in ("root", "agent", "call", "search", "fetch")
    }
    visible = {name: pane(markup).text for name, markup in markups.items()}
    for text in visible.values():
        assert "UNSET" not in text and "role none" not in text and "CLIENT" not in text
    for name in ("root", "agent", "call", "search"):
        assert re.search(r'<span class="agn-d-status[^"]*">ok</span>', markups[name]), name
    assert "failed: timed out" in visible["fetch"]
    assert "not added twice" in visible["agent"] and "counted there" in visible["agent"]
    assert "usage is counted here" in visible["call"]
    pricing = re.findall(r'<div class="agn-d-pricing">([^<]*)</div>', markups["call"])
    assert pricing and "unpriced" in pricing[0] and "my-local-llama" in pricing[0]
    for name in ("search", "fetch", "root"):
        assert "agn-d-pricing" not in markups[name]  # no pricing line off model calls
        assert "counted here" not in visible[name]  # role "none": no sentence
        assert "counted there" not in visible[name]
    raw = details_html(node_of(records, "fetch"))
    assert "CLIENT" in raw[raw.index('<details class="agn-d-raw">') :]


# -- tracebacks -------------------------------------------------------------------------------


@pytest.mark.usefixtures("collector")
def test_tracebacks_hide_our_frames() -> None:
    """A real traceback that passes through `@an.span` wrappers, recorded by someone
    else's span (OpenTelemetry's own `record_exception`, as an instrumentor records it):
    the frames of our wrappers are dropped from the pane and counted, the user's stay.
    (Our own spans record the traceback without those frames already.)"""

    @an.span
    def inner_step() -> None:
        raise ValueError("the bad value")

    @an.span
    def outer_step() -> None:
        inner_step()

    tracer = otel_trace.get_tracer("someone else")
    with pytest.raises(ValueError), an.trace("failing") as trace:
        with tracer.start_as_current_span("user code"):
            outer_step()
    [outer] = [node for node in trace.nodes if node.name == "user code"]
    [event] = [e for e in outer.record.events if e.name == "exception"]
    recorded = str(event.attributes["exception.stacktrace"])
    package = os.path.dirname(an.__file__)
    files = re.findall(r'^  File "([^"]*)", line', recorded, flags=re.MULTILINE)
    ours = [f for f in files if os.path.abspath(f).startswith(package + os.sep)]
    assert ours and len(ours) < len(files)  # the recorded text has both
    shown = pane(details_html(outer)).text
    assert f"({len(ours)} frames of agenta_notebook hidden)" in shown
    assert package not in shown
    assert "inner_step" in shown and "outer_step" in shown and __file__ in shown
    assert 'raise ValueError("the bad value")' in shown
    assert "ValueError: the bad value" in shown
    kept = re.findall(r'^  File "([^"]*)", line', shown, flags=re.MULTILINE)
    assert kept == [f for f in files if f not in ours]


# -- size and style ---------------------------------------------------------------------------


def test_pane_stays_bounded_with_huge_conversations(records: RecordFactory) -> None:
    huge = "word " * 200_000
    attributes: dict[str, Any] = {}
    for index in range(500):
        attributes[f"llm.input_messages.{index}.message.role"] = "user"
        attributes[f"llm.input_messages.{index}.message.content"] = huge
    attributes["output.value"] = json.dumps({"text": huge})
    root = records.add("root")
    records.add(
        "big", root, type="llm", events=(SpanEvent("log", 1, {"x": huge}),) * 400, **attributes
    )
    markup = details_html(node_of(records, "big"))
    assert len(markup) < 400_000
    shown = pane(markup)
    assert shown.messages and shown.messages[0].role == "user"
    assert re.search(r"… [\d,]+ more messages", shown.text)
    assert re.search(r"… [\d,]+ more events", shown.text)


def test_details_css_is_scoped_and_themed() -> None:
    rules = [rule for rule in DETAILS_CSS.split("}") if rule.strip()]
    assert len(rules) > 10
    for rule in rules:
        selectors, declarations = rule.split("{")
        assert all(s.strip().startswith(".agn-root ") for s in selectors.split(",")), rule
        for variable in re.findall(r"var\(([^)]*)\)", declarations):
            assert variable.startswith("--jp-") and "," in variable, rule  # a fallback
    for role in ("system", "user", "assistant", "tool", "other"):
        assert f".agn-msg-{role}{{" in DETAILS_CSS


# -- values too deeply nested for json ------------------------------------------------------

DEEP = "[" * 3000 + "]" * 3000


@pytest.mark.parametrize(
    ("attributes", "in_content"),
    [
        ({"ag.data.inputs.question": "@ag.type=json:" + DEEP}, True),
        ({"ag.data.outputs": "@ag.type=json:" + DEEP}, True),
        ({"input.value": DEEP, "input.mime_type": "application/json"}, True),
        ({"gen_ai.input.messages": json.dumps([{"role": "user", "content": DEEP}])}, True),
        (
            {
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": DEEP,
            },
            True,
        ),
        # Not messages at all once unreadable: its text is under "all attributes".
        ({"gen_ai.input.messages": DEEP}, False),
        ({"gen_ai.system_instructions": DEEP}, False),
        (
            {
                "gen_ai.output.messages": json.dumps([{"role": "x", "content": "X"}]).replace(
                    '"X"', DEEP
                )
            },
            False,
        ),
    ],
    ids=[
        "agenta input",
        "agenta output",
        "input.value",
        "content",
        "indexed",
        "genai",
        "system",
        "messages",
    ],
)
def test_deeply_nested_json_shows_as_bounded_text(
    records: RecordFactory, attributes: dict[str, Any], in_content: bool
) -> None:
    root = records.add("root")
    records.add("deep", root, type="llm", **attributes)
    markup = details_html(node_of(records, "deep"))
    shown = pane(markup)
    assert "[" * 100 in (without_raw(markup) if in_content else markup)
    assert "deep" in shown.text
    assert len(markup) < 200_000


def test_deep_json_parsed_near_the_limit_still_draws() -> None:
    """A value json can parse at the top of the stack but not deeper down (as in a widget's
    click handler) shows as its text too."""
    depth = 900
    records = RecordFactory()
    root = records.add("root")
    records.add("deep", root, **{"output.value": "[" * depth + "]" * depth})
    node = node_of(records, "deep")

    def nested(levels: int) -> str:
        return details_html(node) if levels == 0 else nested(levels - 1)

    markup = nested(200)
    assert "[" * 100 in without_raw(markup)


def deep_view(records: RecordFactory) -> tuple[Any, SpanRecord, SpanRecord]:
    from agenta_notebook.views.widget import TraceView

    root = records.add("root")
    good = records.add("good", root, **{"output.value": "the good answer"})
    bad = records.add("bad", root, **{"ag.data.outputs": "@ag.type=json:" + DEEP})
    trace = Trace(records.trace_id, "root", root_span_id=root.span_id, records=records.all)
    return TraceView(trace), good, bad


def test_a_bad_span_clicked_after_a_good_one_shows_its_own_pane(records: RecordFactory) -> None:
    view, good, bad = deep_view(records)
    try:
        view.click(good.span_id)
        assert "the good answer" in view.details.value
        view.click(bad.span_id)
        assert view.state.selected == bad.span_id
        assert "the good answer" not in view.details.value
        assert "[" * 100 in view.details.value
    finally:
        view.close()


def test_a_pane_that_fails_to_draw_shows_a_short_note(
    records: RecordFactory, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from agenta_notebook.views import widget

    monkeypatch.setenv("AGENTA_NOTEBOOK_STRICT", "0")
    real = widget.details_html

    def failing(node: SpanNode) -> str:
        if node.name == "bad":
            raise RuntimeError("a bug of ours")
        return real(node)

    monkeypatch.setattr(widget, "details_html", failing)
    view, good, bad = deep_view(records)
    try:
        view.click(good.span_id)
        assert "the good answer" in view.details.value
        with caplog.at_level("ERROR", logger="agenta_notebook"):
            view.click(bad.span_id)
        assert view.state.selected == bad.span_id
        assert "the good answer" not in view.details.value
        assert "the details of this span cannot be shown" in view.details.value
        assert any("drawing a span's details" in r.getMessage() for r in caplog.records)
        monkeypatch.setattr(widget, "details_html", real)
        view.click(good.span_id)  # the good one again: drawn again, not taken for drawn
        assert "the good answer" in view.details.value
        view.click(bad.span_id)
        assert "the details of this span cannot be shown" not in view.details.value
        assert "[" * 100 in view.details.value
    finally:
        view.close()


def test_a_span_ending_before_it_starts_lasts_zero() -> None:
    skewed = SpanRecord(1, 2, 1, "skewed", 50_000_000, 40_000_000)
    root = SpanRecord(1, 1, None, "root", 0, 100_000_000)
    trace = Trace(1, "root", root_span_id=1, records=[root, skewed])
    markup = details_html(trace.find("skewed"))
    meta = re.search(r'<div class="agn-d-meta">.*?</div>', markup)
    assert meta is not None and meta.group(0).endswith("· 0.00 ms</div>")
